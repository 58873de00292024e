//! Smooth weighted round-robin (nginx's algorithm, `ngx_http_upstream_get_peer`).
//!
//! Each pick adds every item's weight to its running score, takes the item
//! with the highest score and subtracts the total weight from it. Over any
//! window of `total` picks each item is chosen exactly `weight` times, and
//! the picks interleave (3:1 gives a a b a, not a a a b), so a heavy
//! endpoint never receives a burst.

use std::sync::Mutex;

/// Picks indexes `0..weights.len()` in proportion to their weights.
///
/// The running scores sit behind a mutex held for one pass over the
/// weights: a few nanoseconds for the handful of endpoints a subset has,
/// far below the cost of the request it routes.
#[derive(Debug)]
pub struct SmoothWeightedRoundRobin {
    weights: Vec<i64>,
    total: i64,
    scores: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    /// Items with weight 0 are never picked. `None` when no item has a
    /// positive weight.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Option<Self> {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        let total = weights.iter().sum();
        (total > 0).then(|| Self {
            scores: Mutex::new(vec![0; weights.len()]),
            weights,
            total,
        })
    }

    /// One item of weight 1: always index 0.
    pub fn single() -> Self {
        Self {
            weights: vec![1],
            total: 1,
            scores: Mutex::new(vec![0]),
        }
    }

    /// The next index.
    pub fn pick(&self) -> usize {
        // A poisoned lock only means another pick panicked mid-update; the
        // scores are still integers, so carry on with them.
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        // Highest score among items with positive weight; ties go to the first.
        let mut best: Option<usize> = None;
        for i in 0..scores.len() {
            if self.weights[i] == 0 {
                continue;
            }
            scores[i] += self.weights[i];
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        // `new` guarantees some positive weight, so `best` is set.
        let best = best.unwrap_or(0);
        scores[best] -= self.total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let wrr = SmoothWeightedRoundRobin::new(weights.iter().copied()).unwrap();
        (0..n).map(|_| wrr.pick()).collect()
    }

    #[test]
    fn interleaves_like_nginx() {
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
        assert_eq!(picks(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(picks(&[3, 1], 8), vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn exact_proportions_over_each_cycle() {
        let seq = picks(&[3, 1, 2], 600);
        for (i, want) in [(0, 300), (1, 100), (2, 200)] {
            assert_eq!(seq.iter().filter(|&&p| p == i).count(), want);
        }
    }

    #[test]
    fn zero_weights_are_skipped_and_all_zero_is_none() {
        assert!(picks(&[0, 2, 0], 10).iter().all(|&p| p == 1));
        assert!(SmoothWeightedRoundRobin::new([0, 0]).is_none());
        assert!(SmoothWeightedRoundRobin::new([]).is_none());
    }
}
