//! Least-request: of two endpoints drawn by weight, the one with fewer
//! calls in flight per unit of weight (Envoy's `LEAST_REQUEST` with two
//! choices). An endpoint that slows down keeps its calls longer, so its
//! count rises and it is passed over until it drains: load-aware without
//! measuring time.

use crate::upstream::Upstream;

/// The cost of a new call at `upstream` of `weight`: calls in flight per
/// unit of weight. Not "plus one": with nothing in flight every endpoint
/// ties, the first of the two draws wins, and since draws go by weight an
/// idle subset gets exactly its weights' shares.
pub fn cost(upstream: &Upstream, weight: u32) -> f64 {
    upstream.in_flight() as f64 / f64::from(weight.max(1))
}
