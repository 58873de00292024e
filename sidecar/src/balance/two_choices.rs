//! The power of two choices (Mitzenmacher): draw two endpoints at random,
//! take the less loaded. Nearly as good as scanning for the least loaded,
//! without herding every proxy onto the same "best" endpoint at once.
//!
//! Draws are weighted (an endpoint of weight 3 is drawn three times as
//! often as one of weight 1) and the two are distinct: drawing the same
//! endpoint twice would send it a call whatever its load, a share of
//! `(1/n)^2` that a slow endpoint would get however slow it is.

/// Draws two distinct indexes among the `eligible` ones, each with
/// probability proportional to its weight, and returns the one of lower
/// `cost` (the first drawn on a tie); the only one if one is eligible;
/// `None` if none is (or every eligible weight is 0).
pub fn pick(
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let first = draw(weights, &eligible, None)?;
    let Some(second) = draw(weights, &eligible, Some(first)) else {
        return Some(first);
    };
    Some(if cost(second) < cost(first) {
        second
    } else {
        first
    })
}

/// One weighted draw among the eligible indexes other than `except`.
fn draw(
    weights: &[u32],
    eligible: &impl Fn(usize) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    let candidate = |i: &usize| Some(*i) != except && eligible(*i);
    let total: u64 = (0..weights.len())
        .filter(candidate)
        .map(|i| u64::from(weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::random_range(0..total);
    for i in (0..weights.len()).filter(candidate) {
        let w = u64::from(weights[i]);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_of_two_distinct_draws_wins() {
        // Index 0 is expensive: it only wins when it is the only one left.
        let weights = [1, 1];
        for _ in 0..200 {
            assert_eq!(pick(&weights, |_| true, |i| [9.0, 1.0][i]), Some(1));
        }
        assert_eq!(pick(&weights, |i| i == 0, |i| [9.0, 1.0][i]), Some(0));
        assert_eq!(pick(&weights, |_| false, |_| 0.0), None);
        assert_eq!(pick(&[0, 0], |_| true, |_| 0.0), None);
    }

    #[test]
    fn ties_go_by_weight() {
        let weights = [3, 1, 0];
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            counts[pick(&weights, |_| true, |_| 0.0).unwrap_or(2)] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 is never drawn");
        let share = f64::from(counts[0]) / 4000.0;
        assert!((0.70..0.80).contains(&share), "{counts:?}");
    }
}
