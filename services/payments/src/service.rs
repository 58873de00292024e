//! The gRPC edge of payments: validates requests, runs the drill, calls the
//! ledger and maps its answers (and [`LedgerError`]s) to responses and
//! statuses.

use mesh::proto::shop::payments::v1::{
    payments_service_server::PaymentsService, ChargeRequest, GetPaymentRequest, Payment,
    PaymentStatus, RefundRequest,
};
use tonic::{Request, Response, Status};

use crate::drill::Drill;
use crate::ledger::{self, Charge, Ledger, LedgerError, RefundTarget};

/// `shop.payments.v1.PaymentsService` over a [`Ledger`].
#[derive(Debug)]
pub struct Payments {
    ledger: Ledger,
    drill: Drill,
}

impl Payments {
    /// Serves `ledger`, disturbing charges and refunds as `drill` says.
    pub fn new(ledger: Ledger, drill: Drill) -> Self {
        Self { ledger, drill }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Self {
        let message = e.to_string();
        match e {
            LedgerError::ChargeKeyReused(_)
            | LedgerError::ChargeKeyVoided(_)
            | LedgerError::RefundKeyReused(_) => Status::failed_precondition(message),
            LedgerError::UnknownPayment(_) | LedgerError::NoCharge(_) => Status::not_found(message),
        }
    }
}

fn payment(p: ledger::Payment) -> Payment {
    let status = if p.refunded {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::Captured
    };
    Payment {
        payment_id: p.id,
        customer_id: p.customer_id,
        reference: p.reference,
        amount_minor: p.amount_minor,
        currency: p.currency,
        status: status.into(),
    }
}

/// Checks an id or key: non-empty unless `optional`, and bounded.
fn id(field: &str, value: &str, optional: bool) -> Result<(), Status> {
    if optional {
        mesh::app::validate::optional_id(field, value)
    } else {
        mesh::app::validate::required_id(field, value)
    }
}

/// Validates a charge request.
fn charge(request: ChargeRequest) -> Result<Charge, Status> {
    id("idempotency_key", &request.idempotency_key, false)?;
    id("customer_id", &request.customer_id, false)?;
    id("reference", &request.reference, true)?;
    if request.amount_minor <= 0 {
        return Err(Status::invalid_argument(format!(
            "amount_minor: {} is not positive",
            request.amount_minor
        )));
    }
    if request.currency.len() != 3 || !request.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Status::invalid_argument(format!(
            "currency: {:?} is not an ISO 4217 code (three uppercase letters)",
            request.currency
        )));
    }
    Ok(Charge {
        idempotency_key: request.idempotency_key,
        customer_id: request.customer_id,
        reference: request.reference,
        amount_minor: request.amount_minor,
        currency: request.currency,
    })
}

/// Validates a refund request: exactly one target, an optional key.
fn refund(request: RefundRequest) -> Result<(RefundTarget, Option<String>), Status> {
    id("payment_id", &request.payment_id, true)?;
    id(
        "charge_idempotency_key",
        &request.charge_idempotency_key,
        true,
    )?;
    id("idempotency_key", &request.idempotency_key, true)?;
    let target = match (
        request.payment_id.is_empty(),
        request.charge_idempotency_key.is_empty(),
    ) {
        (false, true) => RefundTarget::Payment(request.payment_id),
        (true, false) => RefundTarget::ChargeKey(request.charge_idempotency_key),
        _ => {
            return Err(Status::invalid_argument(
                "payment_id, charge_idempotency_key: set exactly one",
            ))
        }
    };
    let key = Some(request.idempotency_key).filter(|k| !k.is_empty());
    Ok((target, key))
}

#[tonic::async_trait]
impl PaymentsService for Payments {
    async fn charge(&self, request: Request<ChargeRequest>) -> Result<Response<Payment>, Status> {
        // A drill makes the instance unhealthy: it fails before it even
        // looks at the request.
        let mut waiting = Abandoned::watch("charge");
        let disturbed = self.drill.disturb().await;
        waiting.over();
        disturbed.inspect_err(|_| tracing::debug!("charge failed by the drill"))?;
        let charge = charge(request.into_inner())?;
        tracing::debug!(key = %charge.idempotency_key, amount_minor = charge.amount_minor, currency = %charge.currency, "charge");
        let key = charge.idempotency_key.clone();
        let (paid, made) = self
            .ledger
            .charge(charge)
            .inspect_err(|e| tracing::debug!(%key, error = %e, "charge refused"))?;
        if made {
            tracing::info!(payment_id = %paid.id, %key, amount_minor = paid.amount_minor, currency = %paid.currency, "payment captured");
        } else {
            tracing::debug!(payment_id = %paid.id, %key, "charge repeated; returning the original payment");
        }
        Ok(Response::new(payment(paid)))
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<Payment>, Status> {
        let (target, key) = refund(request.into_inner())?;
        tracing::debug!(?target, ?key, "refund");
        self.drill
            .disturb()
            .await
            .inspect_err(|_| tracing::debug!(?target, "refund failed by the drill"))?;
        let (refunded, did) = self
            .ledger
            .refund(target.clone(), key.as_deref())
            .inspect_err(|e| tracing::debug!(?target, error = %e, "refund refused"))?;
        if did {
            tracing::info!(payment_id = %refunded.id, amount_minor = refunded.amount_minor, currency = %refunded.currency, "payment refunded");
        } else {
            tracing::debug!(payment_id = %refunded.id, "already refunded");
        }
        Ok(Response::new(payment(refunded)))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let payment_id = request.into_inner().payment_id;
        id("payment_id", &payment_id, false)?;
        tracing::debug!(%payment_id, "get payment");
        self.ledger
            .get(&payment_id)
            .map(|p| Response::new(payment(p)))
            .ok_or_else(|| LedgerError::UnknownPayment(payment_id).into())
    }
}

/// Says in the log when a caller abandons a call (cancels it, or its
/// deadline passes) while the drill delays it, before it reached the
/// ledger: an operator, and the deadline test, see that nothing was
/// recorded for it.
struct Abandoned {
    call: &'static str,
    over: bool,
}

impl Abandoned {
    /// Watches `call` until [`Abandoned::over`].
    fn watch(call: &'static str) -> Self {
        Self { call, over: false }
    }

    /// The wait is over: the call goes on (or fails) on its own.
    fn over(&mut self) {
        self.over = true;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.over && !std::thread::panicking() {
            tracing::info!(
                call = self.call,
                "call abandoned by its caller before it reached the ledger: nothing recorded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_request() -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "k1".into(),
            customer_id: "cus-1".into(),
            reference: "ord-1".into(),
            amount_minor: 100,
            currency: "EUR".into(),
        }
    }

    fn charge_error(edit: impl FnOnce(&mut ChargeRequest)) -> String {
        let mut request = charge_request();
        edit(&mut request);
        let status = charge(request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_owned()
    }

    #[test]
    fn charge_validation_names_the_field() {
        assert!(charge(charge_request()).is_ok());
        assert!(charge_error(|r| r.amount_minor = 0).starts_with("amount_minor"));
        assert!(charge_error(|r| r.amount_minor = -5).starts_with("amount_minor"));
        assert!(charge_error(|r| r.currency = "eur".into()).starts_with("currency"));
        assert!(charge_error(|r| r.idempotency_key.clear()).starts_with("idempotency_key"));
        assert!(charge_error(|r| r.customer_id.clear()).starts_with("customer_id"));
    }

    #[test]
    fn refund_needs_exactly_one_target() {
        let request = |payment_id: &str, charge_key: &str| RefundRequest {
            idempotency_key: String::new(),
            payment_id: payment_id.into(),
            charge_idempotency_key: charge_key.into(),
        };
        assert!(refund(request("", "")).is_err());
        assert!(refund(request("pay-1", "k1")).is_err());
        assert_eq!(
            refund(request("pay-1", "")).map(|(t, _)| t).ok(),
            Some(RefundTarget::Payment("pay-1".into()))
        );
        assert_eq!(
            refund(request("", "k1")).ok(),
            Some((RefundTarget::ChargeKey("k1".into()), None))
        );
    }
}
