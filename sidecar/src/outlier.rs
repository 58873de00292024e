//! Circuit breaking per endpoint (outlier detection): a small state
//! machine, not a service (as in linkerd2-proxy's consecutive-failures
//! breaker). N failures in a row eject the endpoint for a time that doubles
//! with each ejection up to a cap; when it is over, one probe call decides
//! (half-open): success readmits, failure ejects again for longer.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A probe that has not answered within this long is given up on, and the
/// next call may probe instead (a cancelled probe must not wedge the
/// endpoint in half-open forever).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A route's outlier detection, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutlierPolicy {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// gRPC codes that count as failures.
    pub failure_codes: Vec<i32>,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of a subset that may be ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl OutlierPolicy {
    /// True if `code` counts as a failure of the endpoint.
    pub fn is_failure(&self, code: i32) -> bool {
        self.failure_codes.contains(&code)
    }

    /// True if one more of `total` endpoints may be ejected when
    /// `ejected` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= self.max_ejection_percent as usize * total
    }
}

/// Whether a call may go to the endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: go ahead.
    Normal,
    /// The ejection is over: this call is the probe that decides.
    Probe,
    /// Ejected (or another call is probing): pick another endpoint.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Ejected { until: Instant },
    Probing { since: Instant },
}

#[derive(Debug)]
struct State {
    mode: Mode,
    consecutive: u32,
    ejections: u32,
    failures: u64,
    last_failure: String,
    healthy_since: Option<Instant>,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

/// What `/endpoints` shows of a breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    /// `healthy`, `ejected` or `probing`.
    pub state: &'static str,
    /// Milliseconds until the ejection ends (ejected only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// Why it was last counted as failing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_failure: String,
    /// Failures in a row now.
    pub consecutive_failures: u32,
    /// Failures seen in all.
    pub failures: u64,
    /// Times ejected (decays after a healthy stretch).
    pub ejections: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                mode: Mode::Healthy,
                consecutive: 0,
                ejections: 0,
                failures: 0,
                last_failure: String::new(),
                healthy_since: None,
            }),
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go there now? Hands out at most one probe at a time.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match s.mode {
            Mode::Healthy => Admission::Normal,
            Mode::Ejected { until } if now < until => Admission::Refused,
            Mode::Probing { since } if now.duration_since(since) < PROBE_TIMEOUT => {
                Admission::Refused
            }
            Mode::Ejected { .. } | Mode::Probing { .. } => {
                s.mode = Mode::Probing { since: now };
                Admission::Probe
            }
        }
    }

    /// True while out of rotation (ejected or being probed).
    pub fn is_ejected(&self) -> bool {
        !matches!(self.lock().mode, Mode::Healthy)
    }

    /// A call succeeded: a probe's success readmits the endpoint.
    pub fn on_success(&self, now: Instant, policy: &OutlierPolicy) -> bool {
        let mut s = self.lock();
        s.consecutive = 0;
        match s.mode {
            Mode::Probing { .. } => {
                s.mode = Mode::Healthy;
                s.healthy_since = Some(now);
                true
            }
            Mode::Healthy => {
                // After a long healthy stretch, forget past ejections.
                if s.healthy_since
                    .is_some_and(|t| now.duration_since(t) > policy.max_ejection)
                {
                    s.ejections = 0;
                    s.healthy_since = None;
                }
                false
            }
            Mode::Ejected { .. } => false,
        }
    }

    /// A call failed. Returns how long the endpoint is now ejected for, if
    /// this failure ejected it. `may_eject` says whether the subset can
    /// spare one more endpoint (max ejection percent).
    pub fn on_failure(
        &self,
        now: Instant,
        reason: &str,
        policy: &OutlierPolicy,
        may_eject: bool,
    ) -> Option<Duration> {
        let mut s = self.lock();
        s.failures += 1;
        s.consecutive += 1;
        reason.clone_into(&mut s.last_failure);
        let eject = match s.mode {
            // The probe failed: out again, for longer (it is already
            // counted as ejected, so the percentage does not change).
            Mode::Probing { .. } => true,
            Mode::Healthy => s.consecutive >= policy.consecutive_failures && may_eject,
            Mode::Ejected { .. } => false,
        };
        if !eject {
            return None;
        }
        s.ejections += 1;
        // Exact, not jittered: an operator reads the ejection time off the
        // policy.
        let length =
            mesh::backoff::exponential(policy.base_ejection, policy.max_ejection, s.ejections);
        s.mode = Mode::Ejected {
            until: now + length,
        };
        s.consecutive = 0;
        Some(length)
    }

    /// For `/endpoints`.
    pub fn view(&self, now: Instant) -> BreakerView {
        let s = self.lock();
        let (state, ejected_for_ms) = match s.mode {
            Mode::Healthy => ("healthy", None),
            Mode::Ejected { until } => (
                "ejected",
                Some(until.saturating_duration_since(now).as_millis() as u64),
            ),
            Mode::Probing { .. } => ("probing", None),
        };
        BreakerView {
            state,
            ejected_for_ms,
            last_failure: s.last_failure.clone(),
            consecutive_failures: s.consecutive,
            failures: s.failures,
            ejections: s.ejections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            failure_codes: vec![14],
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn n_failures_in_a_row_eject_and_a_success_resets_the_count() {
        let (b, p, t) = (Breaker::default(), policy(), Instant::now());
        assert_eq!(b.on_failure(t, "x", &p, true), None);
        assert_eq!(b.on_failure(t, "x", &p, true), None);
        b.on_success(t, &p);
        assert_eq!(b.on_failure(t, "x", &p, true), None);
        assert_eq!(b.on_failure(t, "x", &p, true), None);
        assert_eq!(b.on_failure(t, "x", &p, true), Some(Duration::from_secs(1)));
        assert_eq!(b.admit(t), Admission::Refused);
        assert!(b.is_ejected());
    }

    #[test]
    fn one_probe_after_the_ejection_decides_and_ejections_grow_to_the_cap() {
        let (b, p, t) = (Breaker::default(), policy(), Instant::now());
        for _ in 0..3 {
            b.on_failure(t, "x", &p, true);
        }
        let t1 = t + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Refused, "one probe at a time");
        assert_eq!(
            b.on_failure(t1, "x", &p, true),
            Some(Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert_eq!(
            b.on_failure(t2, "x", &p, true),
            Some(Duration::from_secs(3)),
            "capped"
        );
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(b.admit(t3), Admission::Probe);
        assert!(b.on_success(t3, &p), "readmitted");
        assert_eq!(b.admit(t3), Admission::Normal);
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let (b, p, t) = (Breaker::default(), policy(), Instant::now());
        for _ in 0..5 {
            assert_eq!(b.on_failure(t, "x", &p, false), None);
        }
        assert_eq!(b.admit(t), Admission::Normal);
        assert!(p.may_eject(0, 2));
        assert!(!p.may_eject(1, 2));
        assert!(!p.may_eject(0, 1));
    }

    #[test]
    fn an_abandoned_probe_is_given_up_on() {
        let (b, p, t) = (Breaker::default(), policy(), Instant::now());
        for _ in 0..3 {
            b.on_failure(t, "x", &p, true);
        }
        let t1 = t + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1 + PROBE_TIMEOUT), Admission::Probe);
    }
}
