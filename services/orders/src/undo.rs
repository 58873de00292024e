//! What a failed saga must undo, decided from what each step answered.
//! Pure bookkeeping, so the rules are plain unit tests.
//!
//! The rule that matters: a call that failed *without a definite refusal*
//! (a timeout, a lost connection) may still have had its effect, so it is
//! undone too. Undoing is always safe to try: inventory's `Reserve` is
//! idempotent by request id and payments' `Refund` by charge key answers
//! NOT_FOUND (and voids the key) when nothing was charged.

use std::fmt;

use tonic::{Code, Status};

/// A step of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Getting each line's price from the catalog.
    Pricing,
    /// Reserving stock in inventory.
    Reservation,
    /// Charging the customer.
    Payment,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Self::Pricing => "pricing",
            Self::Reservation => "stock reservation",
            Self::Payment => "payment",
        }
    }
}

/// The step that failed and how. Its code is what `PlaceOrder` answers.
#[derive(Debug, Clone)]
pub struct StepFailure {
    /// The step.
    pub step: Step,
    /// What it failed with.
    pub status: Status,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self.status.message() {
            "" => self.status.code().description(),
            message => message,
        };
        write!(f, "{} failed: {message}", self.step.label())
    }
}

/// Whether a step's side effect (a reservation, a charge) happened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Effect {
    /// It did not: never called, or refused.
    #[default]
    None,
    /// It did, with this id.
    Done(String),
    /// The call failed in a way that does not say.
    Unknown,
}

impl Effect {
    /// The effect of a call that failed with `code`.
    pub fn after_error(code: Code) -> Self {
        if is_refusal(code) {
            Self::None
        } else {
            Self::Unknown
        }
    }
}

/// Whether `code` is a definite "not done": the callee (or the mesh in
/// front of it) refused the request before acting. Every other code, from
/// DEADLINE_EXCEEDED to UNAVAILABLE to INTERNAL, may come after the effect.
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated
    )
}

/// The effects a failed saga leaves behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undo {
    /// The stock reservation.
    pub reservation: Effect,
    /// The charge.
    pub charge: Effect,
}

/// What compensating one effect achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undone {
    /// There was nothing to undo.
    Nothing,
    /// The effect was undone (or had been already).
    Done,
    /// Undoing failed for good; someone has to repair it by hand.
    Failed(String),
}

impl Undone {
    /// Whether someone has to repair something.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// The message `PlaceOrder` fails with and the order's failure reason, e.g.
/// "payment failed: declined; order ord-ab12 cancelled, stock released".
pub fn cancellation_message(
    order_id: &str,
    failure: &StepFailure,
    refund: &Undone,
    release: &Undone,
) -> String {
    let mut message = format!("{failure}; order {order_id} cancelled");
    let parts = [
        (refund, "payment refunded", "refund failed"),
        (release, "stock released", "stock release failed"),
    ];
    for (undone, done, failed) in parts {
        match undone {
            Undone::Nothing => {}
            Undone::Done => {
                message.push_str(", ");
                message.push_str(done);
            }
            Undone::Failed(why) => {
                message.push_str(&format!(", but {failed}: {why}"));
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_mean_nothing_happened() {
        assert_eq!(Effect::after_error(Code::FailedPrecondition), Effect::None);
        assert_eq!(Effect::after_error(Code::InvalidArgument), Effect::None);
        assert_eq!(Effect::after_error(Code::NotFound), Effect::None);
    }

    #[test]
    fn ambiguous_failures_may_have_happened() {
        for code in [
            Code::DeadlineExceeded,
            Code::Unavailable,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            assert_eq!(Effect::after_error(code), Effect::Unknown, "{code:?}");
        }
    }

    #[test]
    fn message_says_what_failed_and_what_was_undone() {
        let failure = StepFailure {
            step: Step::Payment,
            status: Status::unavailable("injected failure (payments --failure-rate)"),
        };
        assert_eq!(
            cancellation_message("ord-ab12", &failure, &Undone::Nothing, &Undone::Done),
            "payment failed: injected failure (payments --failure-rate); order ord-ab12 cancelled, stock released"
        );
        assert_eq!(
            cancellation_message("ord-ab12", &failure, &Undone::Done, &Undone::Failed("timeout".into())),
            "payment failed: injected failure (payments --failure-rate); order ord-ab12 cancelled, \
             payment refunded, but stock release failed: timeout"
        );
        let pricing = StepFailure {
            step: Step::Pricing,
            status: Status::not_found(""),
        };
        assert_eq!(
            cancellation_message("ord-1", &pricing, &Undone::Nothing, &Undone::Nothing),
            format!(
                "pricing failed: {}; order ord-1 cancelled",
                Code::NotFound.description()
            )
        );
    }
}
