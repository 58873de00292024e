//! Exponential backoff with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"): many sidecars losing one control plane at once must
//! not come back in lockstep.

use std::time::Duration;

/// Waits that double from `base` up to `cap`, each drawn uniformly from
/// `[0, current]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `base`, never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            current: base,
        }
    }

    /// The next wait.
    pub fn next(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = self.current.saturating_mul(2).min(self.cap);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_secs(1));
        }
        assert_eq!(b.current, Duration::from_secs(1));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
