//! Exponential backoff with jitter, one for the whole mesh: sidecars
//! reconnecting to a control plane or an upstream, retries of failed
//! calls, outlier ejection times, the control plane reconnecting to etcd.
//! Waits double from a base up to a cap; drawn at random below that
//! ceiling (full jitter, AWS architecture blog "Exponential Backoff And
//! Jitter") so many clients that failed together do not come back in
//! lockstep.

use std::time::Duration;

/// The ceiling of the wait after `attempt` failures (1-based): `base`
/// doubled per earlier failure, at most `cap`. Deterministic: for waits
/// that must not vary (outlier ejection) and as the bound of the jittered
/// ones.
pub fn exponential(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(cap)
}

/// Full jitter: a point of `[0, ceiling]` chosen by `unit` (in `[0, 1]`;
/// clamped), so a caller can pass its own random number (tests pass fixed
/// ones).
pub fn jittered(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Successive waits of one retry loop: [`exponential`] ceilings, each wait
/// [`jittered`] below its ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(self.ceiling(), rand::random::<f64>())
    }

    /// The current ceiling (what the last wait was drawn below).
    pub fn ceiling(&self) -> Duration {
        exponential(self.base, self.cap, self.failures.max(1))
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap_and_waits_stay_below_them() {
        let ms = Duration::from_millis;
        let ceilings: Vec<_> = (1..=6).map(|n| exponential(ms(100), ms(1000), n)).collect();
        assert_eq!(
            ceilings,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(exponential(ms(1), Duration::MAX, u32::MAX), ms(1 << 16));
        assert_eq!(jittered(ms(800), 0.5), ms(400));
        assert_eq!(jittered(ms(800), 7.0), ms(800));

        let mut b = Backoff::new(ms(100), Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next_wait() <= Duration::from_secs(1));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.ceiling(), ms(100));
        assert!(b.next_wait() <= ms(100));
    }
}
