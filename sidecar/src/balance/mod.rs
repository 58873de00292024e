//! Choosing the endpoint of one attempt: a subset by the split's weights
//! (smooth weighted round-robin), then an endpoint of that subset by the
//! route's [`LoadBalancer`]:
//!
//! - `weighted-round-robin` ([`wrr`]): each endpoint exactly its share,
//!   interleaved; blind to load.
//! - `least-request` ([`least_request`]): power of two choices over calls
//!   in flight per unit of weight.
//! - `peak-ewma` ([`peak_ewma`]): power of two choices over round-trip
//!   time x (calls in flight + 1) per unit of weight.
//!
//! Whatever the balancer, a pick passes over endpoints the call has tried
//! already and, with outlier detection, ejected ones; when every endpoint
//! is out, one is used anyway (a guess beats a certain failure).
//!
//! Load (calls in flight, round-trip times) lives on the endpoints' slots
//! and round-robin positions in the route state map, so both outlast a
//! table change.

pub mod least_request;
pub mod peak_ewma;
mod two_choices;
pub mod wrr;

use std::sync::Arc;

use mesh::model::{Endpoint, LoadBalancer, WeightedSubset};
use tokio::time::Instant;

use crate::call::error::ProxyError;
use crate::outlier::Admission;
use crate::route_state::{Piece, StateBuilder};
use crate::upstream::Upstream;

pub use peak_ewma::RttEstimate;
use wrr::SmoothWeightedRoundRobin;

/// An endpoint picked for one attempt.
#[derive(Debug, Clone)]
pub struct Pick {
    /// Its connection slot.
    pub upstream: Arc<Upstream>,
    /// The subset it was picked from (for max-ejection-percent).
    pub peers: Arc<[Arc<Upstream>]>,
    /// Whether this attempt is the probe of an ejected endpoint.
    pub admission: Admission,
    /// The subset's `version` label (`None`: every endpoint).
    pub subset: Option<Arc<str>>,
}

/// Picks an endpoint for a split: first a subset by the split's weights,
/// then an endpoint of that subset by the route's balancer.
#[derive(Debug)]
pub struct Balancer {
    service: String,
    subsets: Vec<Subset>,
    by_weight: Option<Arc<SmoothWeightedRoundRobin>>,
}

#[derive(Debug)]
struct Subset {
    /// `None` when the split is empty: every endpoint of the service.
    name: Option<Arc<str>>,
    endpoints: Arc<[Arc<Upstream>]>,
    weights: Vec<u32>,
    /// `None` when no endpoint has a positive weight.
    chooser: Option<Chooser>,
}

/// How a subset's next candidate is found.
#[derive(Debug)]
enum Chooser {
    RoundRobin(Arc<SmoothWeightedRoundRobin>),
    LeastRequest,
    PeakEwma,
}

/// Where a balancer sits in its route, naming its state in the state map.
#[derive(Debug, Clone, Copy)]
pub struct BalancerScope<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The rule's index; `None`: the route's default split.
    pub rule: Option<usize>,
    /// The route's balancer.
    pub kind: LoadBalancer,
}

impl Balancer {
    /// The balancer of `split` over `endpoints` of `service`, taking its
    /// round-robin positions from `states` when the members are unchanged.
    pub fn new(
        service: &str,
        split: &[WeightedSubset],
        endpoints: &[(&Endpoint, Arc<Upstream>)],
        scope: BalancerScope<'_>,
        states: &mut StateBuilder<'_>,
    ) -> Self {
        let mut subset = |name: Option<&str>| {
            let members: Vec<_> = endpoints
                .iter()
                .filter(|(ep, _)| ep.service == service && name.is_none_or(|n| ep.version == n))
                .collect();
            let weights: Vec<u32> = members.iter().map(|(ep, _)| ep.weight).collect();
            let chooser = weights.iter().any(|w| *w > 0).then(|| match scope.kind {
                LoadBalancer::WeightedRoundRobin => {
                    let piece = Piece::EndpointRotation {
                        rule: scope.rule,
                        subset: name.map(str::to_owned),
                        members: members
                            .iter()
                            .map(|(ep, _)| (ep.service.clone(), ep.address.clone(), ep.weight))
                            .collect(),
                    };
                    Chooser::RoundRobin(rotation(states, scope.route, piece, &weights))
                }
                LoadBalancer::LeastRequest => Chooser::LeastRequest,
                LoadBalancer::PeakEwma => Chooser::PeakEwma,
            });
            Subset {
                name: name.map(Arc::from),
                endpoints: members
                    .into_iter()
                    .map(|(_, up)| up.clone())
                    .collect::<Vec<_>>()
                    .into(),
                weights,
                chooser,
            }
        };
        let (subsets, weights): (Vec<_>, Vec<u32>) = if split.is_empty() {
            (vec![subset(None)], vec![1])
        } else {
            (
                split.iter().map(|s| subset(Some(&s.subset))).collect(),
                split.iter().map(|s| s.weight).collect(),
            )
        };
        let piece = Piece::SubsetSplit {
            rule: scope.rule,
            split: split.iter().map(|s| (s.subset.clone(), s.weight)).collect(),
        };
        let by_weight = weights
            .iter()
            .any(|w| *w > 0)
            .then(|| rotation(states, scope.route, piece, &weights));
        Self {
            service: service.to_owned(),
            subsets,
            by_weight,
        }
    }

    /// Picks an endpoint for an attempt: a subset by the split's weights,
    /// then an endpoint of it by the route's balancer, passing over
    /// endpoints tried already (`avoid`) and, with `breakers`, ejected
    /// ones. If every endpoint is out, one is used anyway (a guess beats a
    /// certain failure).
    pub fn pick(
        &self,
        avoid: &[Arc<Upstream>],
        breakers: bool,
        now: Instant,
    ) -> Result<Pick, ProxyError> {
        let subset = self
            .by_weight
            .as_ref()
            .map(|w| &self.subsets[w.pick()])
            .ok_or_else(|| ProxyError::no_endpoints(&self.service, None))?;
        let chooser = subset
            .chooser
            .as_ref()
            .ok_or_else(|| ProxyError::no_endpoints(&self.service, subset.name.as_deref()))?;
        let pick = |upstream: &Arc<Upstream>, admission| Pick {
            upstream: upstream.clone(),
            peers: subset.endpoints.clone(),
            admission,
            subset: subset.name.clone(),
        };
        let admit = |candidate: &Arc<Upstream>| {
            let admission = if breakers {
                candidate.breaker().admit(now)
            } else {
                Admission::Normal
            };
            (admission != Admission::Refused).then(|| pick(candidate, admission))
        };
        let avoided = |i: usize| avoid.iter().any(|a| Arc::ptr_eq(a, &subset.endpoints[i]));
        // Endpoints that refused this pick (ejected): not drawn again.
        let mut refused: Vec<usize> = Vec::new();
        let mut tried_already = None;
        for _ in 0..subset.endpoints.len() {
            let Some(i) = subset.next(chooser, now, |i| !avoided(i) && !refused.contains(&i))
            else {
                break;
            };
            let candidate = &subset.endpoints[i];
            if avoided(i) {
                tried_already = tried_already.or(Some(candidate));
                continue;
            }
            if let Some(picked) = admit(candidate) {
                return Ok(picked);
            }
            refused.push(i);
        }
        // Second choices: an endpoint tried already (better than none),
        // else any (every endpoint ejected: a guess beats a sure failure).
        let tried_already = tried_already.or_else(|| {
            (0..subset.endpoints.len())
                .find(|&i| avoided(i))
                .map(|i| &subset.endpoints[i])
        });
        if let Some(picked) = tried_already.and_then(admit) {
            return Ok(picked);
        }
        let any = subset.next(chooser, now, |_| true).unwrap_or(0);
        Ok(pick(&subset.endpoints[any], Admission::Normal))
    }
}

impl Subset {
    /// The next candidate. Round-robin hands out its sequence whatever
    /// `eligible` says (the caller skips), so the rotation stays exact;
    /// the two-choice balancers draw among the eligible only.
    fn next(
        &self,
        chooser: &Chooser,
        now: Instant,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match chooser {
            Chooser::RoundRobin(wrr) => Some(wrr.pick()),
            Chooser::LeastRequest => two_choices::pick(&self.weights, eligible, |i| {
                least_request::cost(&self.endpoints[i], self.weights[i])
            }),
            Chooser::PeakEwma => two_choices::pick(&self.weights, eligible, |i| {
                peak_ewma::cost(&self.endpoints[i], self.weights[i], now)
            }),
        }
    }
}

/// The round-robin of `piece` in `route`, kept from the last table when
/// its members and weights are the same.
fn rotation(
    states: &mut StateBuilder<'_>,
    route: &str,
    piece: Piece,
    weights: &[u32],
) -> Arc<SmoothWeightedRoundRobin> {
    states.get(route, piece, || {
        // The caller checked that some weight is positive; an all-zero
        // list still gets a rotation that never runs rather than a panic.
        Arc::new(
            SmoothWeightedRoundRobin::new(weights.iter().copied())
                .unwrap_or_else(SmoothWeightedRoundRobin::single),
        )
    })
}

#[cfg(test)]
mod tests;
