//! Failure and latency injection: payments is the demo's fragile dependency,
//! so resilience drills (retries, timeouts, saga compensation) are run by
//! turning these knobs instead of breaking the network.

use std::fmt;
use std::time::Duration;

use tonic::Status;

/// Longest injected latency: a minute is already far past any sane call
/// timeout; more would only hold up shutdown.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// The message of an injected failure, naming the knob so nobody hunts for a
/// real outage.
pub const INJECTED_FAILURE: &str = "injected failure (payments --failure-rate)";

/// A failure rate outside `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BadFailureRate(pub f64);

impl fmt::Display for BadFailureRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failure rate {} is not within 0.0..=1.0", self.0)
    }
}

impl std::error::Error for BadFailureRate {}

/// Parses `--failure-rate` (clap value parser).
pub fn parse_failure_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    check_rate(rate).map_err(|e| e.to_string())
}

fn check_rate(rate: f64) -> Result<f64, BadFailureRate> {
    // `contains` is false for NaN, so NaN is refused too.
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(BadFailureRate(rate))
    }
}

/// What every Charge and Refund goes through before touching the ledger.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drill {
    failure_rate: f64,
    latency: Duration,
}

impl Drill {
    /// A drill failing a `failure_rate` share of calls after `latency`.
    pub fn new(failure_rate: f64, latency: Duration) -> Result<Self, BadFailureRate> {
        Ok(Self {
            failure_rate: check_rate(failure_rate)?,
            latency: latency.min(Duration::from_millis(MAX_LATENCY_MS)),
        })
    }

    /// Whether the drill changes anything.
    pub fn is_active(&self) -> bool {
        self.failure_rate > 0.0 || !self.latency.is_zero()
    }

    /// Waits the injected latency, then fails with UNAVAILABLE with
    /// probability `failure_rate`. Called before anything is recorded, so an
    /// injected failure is always safe to retry.
    pub async fn disturb(&self) -> Result<(), Status> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.fails(rand::random::<f64>()) {
            return Err(Status::unavailable(INJECTED_FAILURE));
        }
        Ok(())
    }

    /// Whether a call whose die came up `roll` (in `0.0..1.0`) fails.
    fn fails(&self, roll: f64) -> bool {
        roll < self.failure_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_validated() {
        assert_eq!(parse_failure_rate("0"), Ok(0.0));
        assert_eq!(parse_failure_rate("1.0"), Ok(1.0));
        assert!(parse_failure_rate("1.01").is_err());
        assert!(parse_failure_rate("-0.1").is_err());
        assert!(parse_failure_rate("NaN").is_err());
        assert!(parse_failure_rate("lots").is_err());
        assert!(Drill::new(2.0, Duration::ZERO).is_err());
    }

    #[test]
    fn rate_bounds_mean_never_and_always() {
        let never = Drill::new(0.0, Duration::ZERO).expect("valid");
        let always = Drill::new(1.0, Duration::ZERO).expect("valid");
        for roll in [0.0, 0.5, 0.999_999] {
            assert!(!never.fails(roll));
            assert!(always.fails(roll));
        }
        assert!(!never.is_active());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_comes_first() {
        let drill = Drill::new(1.0, Duration::from_millis(250)).expect("valid");
        let start = tokio::time::Instant::now();
        let status = drill.disturb().await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), INJECTED_FAILURE);
    }
}
