//! Undoing what a failed saga did: refund the charge, release the stock.
//! Each step is retried a few times with bounded backoff, since the failure
//! that started the compensation (a flaky network, an overloaded service)
//! often hits the undo too; what still fails is logged at error for a human.

use std::future::Future;
use std::time::Duration;

use mesh::proto::shop::inventory::v1::ReservationLine;
use mesh::proto::shop::payments::v1::RefundRequest;
use tonic::{Code, Status};

use crate::downstream::Downstream;
use crate::undo::{is_refusal, Effect, Undone};

/// Calls per compensation step before giving up.
pub const ATTEMPTS: u32 = 5;
/// Backoff before the first retry; doubled each time.
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The wait before retry number `retry` (1-based): exponential, capped, with
/// "equal jitter" (half fixed, half random) so compensations started by
/// the same outage do not retry in lockstep.
fn backoff(retry: u32, jitter: f64) -> Duration {
    let exponential = BASE_BACKOFF.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    let capped = exponential.min(MAX_BACKOFF);
    capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Whether a failed undo call is worth repeating: the callee may be back,
/// and every undo call is idempotent.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Whether a failed `Release` is worth repeating: as [`is_transient`], and
/// also NOT_FOUND. Inventory replicas do not share state (each keeps its
/// reservations in memory) and the mesh balances every call, so the release
/// may have reached a replica other than the one holding the reservation;
/// the next attempt is likely balanced to another one. Release is
/// idempotent, so asking again is harmless.
fn is_release_retryable(code: Code) -> bool {
    is_transient(code) || code == Code::NotFound
}

/// Calls `call` until it succeeds, fails for good (`retryable` says no), or
/// [`ATTEMPTS`] are used.
async fn retrying<T, F, Fut>(
    what: &str,
    order_id: &str,
    retryable: fn(Code) -> bool,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if attempt < ATTEMPTS && retryable(status.code()) => {
                let wait = backoff(attempt, rand::random());
                tracing::warn!(%order_id, what, attempt, ?wait, code = ?status.code(), message = status.message(), "compensation call failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Refunds the order's charge if one was, or may have been, made.
pub async fn refund(downstream: &Downstream, order_id: &str, charge: &Effect) -> Undone {
    let request = match charge {
        Effect::None => return Undone::Nothing,
        Effect::Done(payment_id) => RefundRequest {
            idempotency_key: format!("refund-{order_id}"),
            payment_id: payment_id.clone(),
            charge_idempotency_key: String::new(),
        },
        // The charge's answer was lost: refund by the key it was made with
        // (the order id). NOT_FOUND means there was no charge, and payments
        // voids the key so a late charge cannot land either.
        Effect::Unknown => RefundRequest {
            idempotency_key: format!("refund-{order_id}"),
            payment_id: String::new(),
            charge_idempotency_key: order_id.to_owned(),
        },
    };
    match retrying("refund", order_id, is_transient, || {
        downstream.refund(request.clone())
    })
    .await
    {
        Ok(payment) => {
            tracing::info!(%order_id, payment_id = %payment.payment_id, "payment refunded");
            Undone::Done
        }
        Err(status) if *charge == Effect::Unknown && status.code() == Code::NotFound => {
            tracing::debug!(%order_id, "no charge was made; nothing to refund");
            Undone::Nothing
        }
        Err(status) => Undone::Failed(describe(&status)),
    }
}

/// Releases the order's reservation if one was, or may have been, made.
pub async fn release(
    downstream: &Downstream,
    order_id: &str,
    lines: &[ReservationLine],
    reservation: &Effect,
) -> Undone {
    let reservation_id = match reservation {
        Effect::None => return Undone::Nothing,
        Effect::Done(id) => id.clone(),
        // The reservation's answer was lost. Reserve is idempotent by
        // request id (the order id): asking again returns the reservation
        // if it was made, and a refusal means none exists. Either way the
        // id to release comes back.
        Effect::Unknown => {
            match retrying(
                "reserve (to find the reservation)",
                order_id,
                is_transient,
                || downstream.reserve(order_id, lines.to_vec()),
            )
            .await
            {
                Ok(found) => found.reservation_id,
                Err(status) if is_refusal(status.code()) => {
                    tracing::debug!(%order_id, code = ?status.code(), "no reservation was made; nothing to release");
                    return Undone::Nothing;
                }
                Err(status) => return Undone::Failed(describe(&status)),
            }
        }
    };
    match retrying("release", order_id, is_release_retryable, || {
        downstream.release(&reservation_id)
    })
    .await
    {
        Ok(_) => {
            tracing::info!(%order_id, %reservation_id, "reservation released");
            Undone::Done
        }
        Err(status) => Undone::Failed(describe(&status)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(30, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.5), MAX_BACKOFF.mul_f64(0.75));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_then_gives_up() {
        let calls = AtomicU32::new(0);
        let result: Result<(), Status> = retrying("test", "ord-1", is_transient, || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(result.map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_success_or_a_definite_answer() {
        let calls = AtomicU32::new(0);
        let result = retrying("test", "ord-1", is_transient, || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 2 {
                    Err(Status::deadline_exceeded("slow"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.ok(), Some(2));

        let calls = AtomicU32::new(0);
        let result: Result<(), Status> = retrying("test", "ord-1", is_transient, || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(Status::not_found("gone")) }
        })
        .await;
        assert_eq!(result.map_err(|s| s.code()), Err(Code::NotFound));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
