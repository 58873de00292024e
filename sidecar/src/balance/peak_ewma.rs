//! Peak-EWMA: Finagle's load estimate, Linkerd's default balancer (as in
//! tower's `load::peak_ewma`). An endpoint's cost is its round-trip time's
//! moving average times its calls in flight plus one: the time a new call
//! would expect to wait there.
//!
//! The average is peak-sensitive: a sample above it replaces it at once
//! (one slow answer is enough to steer calls away), a sample below it
//! pulls it down only as fast as the decay allows (time constant
//! [`DECAY`]). Without samples the estimate decays towards zero, so an
//! endpoint that was slow, and has since been avoided, is tried again
//! after a while instead of being shunned forever.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::Upstream;

/// How fast the estimate forgets: Linkerd's 10 s.
pub const DECAY: Duration = Duration::from_secs(10);

/// The estimate of an endpoint no call has come back from yet: Linkerd's
/// 30 ms, high enough that a new endpoint is not flooded before it has
/// answered once, low enough that it gets calls soon.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// One endpoint's round-trip time, peak-sensitive and decaying.
#[derive(Debug)]
pub struct RttEstimate {
    state: Mutex<Estimate>,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Nanoseconds.
    rtt: f64,
    /// When `rtt` was last brought up to date.
    at: Instant,
}

impl Default for RttEstimate {
    fn default() -> Self {
        Self {
            state: Mutex::new(Estimate {
                rtt: nanos(DEFAULT_RTT),
                at: Instant::now(),
            }),
        }
    }
}

impl Estimate {
    /// Moves the estimate to `now` with one sample of `rtt` nanoseconds
    /// (0: no sample, only decay).
    fn update(&mut self, rtt: f64, now: Instant) {
        if rtt > self.rtt {
            self.rtt = rtt;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.at));
            let decay = (-elapsed / nanos(DECAY)).exp();
            self.rtt = self.rtt * decay + rtt * (1.0 - decay);
        }
        self.at = self.at.max(now);
    }
}

impl RttEstimate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        // A poisoned lock only means a panic mid-update of two numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call that answered after `rtt`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        self.lock().update(nanos(rtt), now);
    }

    /// Counts a call that failed after `elapsed` without an answer (reset,
    /// refused): it may raise the estimate but never lowers it, so an
    /// endpoint that fails fast does not look fast and draw every call.
    pub fn observe_failure(&self, elapsed: Duration, now: Instant) {
        let mut estimate = self.lock();
        let held = estimate.rtt.max(nanos(elapsed));
        estimate.rtt = held;
        estimate.at = estimate.at.max(now);
    }

    /// The estimate at `now`, decayed since the last sample.
    pub fn get(&self, now: Instant) -> Duration {
        let mut estimate = self.lock();
        estimate.update(0.0, now);
        Duration::from_nanos(estimate.rtt as u64)
    }
}

/// The cost of a new call at `upstream` of `weight`, in nanoseconds:
/// RTT x (calls in flight per unit of weight + 1). With weight 1 that is
/// Linkerd's RTT x (pending + 1); a heavier endpoint is taken to hold more
/// calls before they queue, so under load calls in flight settle in
/// proportion to the weights. An idle endpoint's cost is its RTT alone,
/// whatever its weight: idle estimates decay towards zero, so with little
/// traffic the endpoint unused longest wins and shares even out; weights
/// show under load (and in how often each endpoint is drawn).
pub fn cost(upstream: &Upstream, weight: u32, now: Instant) -> f64 {
    let rtt = nanos(upstream.rtt().get(now));
    rtt * (upstream.in_flight() as f64 / f64::from(weight.max(1)) + 1.0)
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_slow_answer_counts_at_once_and_fast_ones_pull_it_down_slowly() {
        let t = Instant::now();
        let rtt = RttEstimate::default();
        rtt.observe(ms(1), t);
        // The default decays towards the 1 ms sample only as fast as time passes.
        assert!(rtt.get(t) > ms(29));
        rtt.observe(ms(200), t);
        assert_eq!(rtt.get(t), ms(200), "a peak replaces the estimate");
        rtt.observe(ms(1), t + ms(100));
        let after = rtt.get(t + ms(100));
        assert!(after > ms(190) && after < ms(200), "{after:?}");
        // After many time constants of fast answers it is fast again.
        for i in 1..=60 {
            rtt.observe(ms(1), t + Duration::from_secs(i));
        }
        assert!(rtt.get(t + Duration::from_secs(60)) < ms(2));
    }

    #[test]
    fn without_samples_the_estimate_decays_towards_zero() {
        let t = Instant::now();
        let rtt = RttEstimate::default();
        rtt.observe(ms(200), t);
        let later = rtt.get(t + DECAY);
        assert!(
            later > ms(70) && later < ms(75),
            "one time constant: {later:?}"
        );
        assert!(rtt.get(t + DECAY * 8) < ms(1));
    }

    #[test]
    fn a_fast_failure_never_makes_an_endpoint_look_fast() {
        let t = Instant::now();
        let rtt = RttEstimate::default();
        rtt.observe(ms(50), t);
        rtt.observe_failure(ms(0), t + ms(10));
        assert!(rtt.get(t + ms(10)) >= ms(49));
        rtt.observe_failure(ms(300), t + ms(20));
        assert_eq!(rtt.get(t + ms(20)), ms(300));
    }
}
