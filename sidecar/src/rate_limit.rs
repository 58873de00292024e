//! Local rate limits (`rateLimit` on a route), enforced by the
//! destination's inbound sidecars before a call reaches the app: GCRA (the
//! `governor` crate), a total rate for all callers of the route together
//! and a rate per caller, with overrides for named callers. A call over a
//! limit is answered RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms` (when
//! the next call would pass) and never reaches the app.
//!
//! A caller is the mesh service its certificate proves, or for a call a
//! gateway forwarded with a verified token, the token's subject (so one
//! customer cannot use up a public route for everyone); a gateway call
//! without one counts as the gateway, a plaintext call as one caller.
//!
//! Per-caller state is one small cell per caller seen; cells of callers
//! idle long enough to be back at a full burst are pruned every 10 s, so
//! memory follows the callers of the last moments, not all ever seen.
//! Limiters are route state ([`crate::route_state`]): a push that does not
//! change a route's limits keeps their state.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use mesh::identity::{PeerIdentity, Workload};
use mesh::model::{Rate, RateLimit};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::call::error::ProxyError;
use crate::table::LiveTable;

/// How often idle callers' cells are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;
type Keyed = RateLimiter<CallerKey, DefaultKeyedStateStore<CallerKey>, DefaultClock>;

/// Who a call is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// A mesh service (its certificate's identity).
    Service(Arc<str>),
    /// A token subject a gateway verified.
    Subject(String),
    /// A gateway's own calls (from outside, without a verified token).
    Gateway(Arc<str>),
    /// A caller without a certificate (permissive mode, `--mtls off`).
    Plaintext,
}

impl CallerKey {
    /// The caller of a call from `peer` with `headers`: a gateway's
    /// forwarded subject counts only from a gateway's certificate.
    pub fn of(peer: Option<&PeerIdentity>, headers: &HeaderMap) -> Self {
        match peer.and_then(|p| p.0.as_ref()).map(|id| id.workload()) {
            Some(Workload::Gateway(name)) => headers
                .get(crate::authn::SUBJECT_HEADER)
                .and_then(|v| v.to_str().ok())
                .map_or_else(
                    || Self::Gateway(Arc::from(name.as_str())),
                    |sub| Self::Subject(sub.to_owned()),
                ),
            Some(Workload::Service(name)) => Self::Service(Arc::from(name.as_str())),
            Some(Workload::ControlPlane) => Self::Service(Arc::from("control-plane")),
            Some(Workload::Operator(name)) => Self::Service(Arc::from(name.as_str())),
            None => Self::Plaintext,
        }
    }
}

/// One route's limiters.
pub struct RouteLimiter {
    total: Option<Direct>,
    per_caller: Option<Keyed>,
    overrides: HashMap<CallerKey, Direct>,
    clock: DefaultClock,
    /// When cells were last pruned (ms since `started`).
    last_prune: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("total", &self.total.is_some())
            .field("callers", &self.callers())
            .field("overrides", &self.overrides.len())
            .finish()
    }
}

fn quota(rate: Rate) -> Quota {
    let per_second = NonZeroU32::new(rate.requests_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl RouteLimiter {
    /// Limiters for `limit` (validated: rates of at least one per second).
    pub fn new(limit: &RateLimit) -> Self {
        let clock = DefaultClock::default();
        let direct = |rate: Rate| RateLimiter::direct_with_clock(quota(rate), clock.clone());
        Self {
            total: limit.total.map(direct),
            per_caller: limit.per_caller.map(|rate| {
                RateLimiter::new(
                    quota(rate),
                    DefaultKeyedStateStore::default(),
                    clock.clone(),
                )
            }),
            overrides: limit
                .overrides
                .iter()
                .map(|o| {
                    let key = match (&o.service, &o.subject) {
                        (Some(service), _) => CallerKey::Service(Arc::from(service.as_str())),
                        (None, Some(subject)) => CallerKey::Subject(subject.clone()),
                        (None, None) => CallerKey::Plaintext,
                    };
                    (key, direct(o.rate()))
                })
                .collect(),
            clock,
            last_prune: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Charges one call to `caller`: its own limit (an override, or the
    /// per-caller rate) first, so a caller over its limit uses none of the
    /// total; then the total. `Err((scope, wait))` when refused.
    pub fn check(&self, caller: &CallerKey) -> Result<(), (&'static str, Duration)> {
        self.prune_now_and_then();
        let now = self.clock.now();
        if let Some(own) = self.overrides.get(caller) {
            own.check()
                .map_err(|n| ("per-caller", n.wait_time_from(now)))?;
        } else if let Some(per_caller) = &self.per_caller {
            per_caller
                .check_key(caller)
                .map_err(|n| ("per-caller", n.wait_time_from(now)))?;
        }
        if let Some(total) = &self.total {
            total
                .check()
                .map_err(|n| ("total", n.wait_time_from(now)))?;
        }
        Ok(())
    }

    /// Callers with a cell now.
    pub fn callers(&self) -> usize {
        self.per_caller.as_ref().map_or(0, Keyed::len)
    }

    fn prune_now_and_then(&self) {
        let Some(per_caller) = &self.per_caller else {
            return;
        };
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRUNE_EVERY.as_millis() as u64 {
            return;
        }
        // One call prunes; the others go on.
        if self
            .last_prune
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            per_caller.retain_recent();
            per_caller.shrink_to_fit();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitedLabels {
    service: Arc<str>,
    route: Arc<str>,
    scope: &'static str,
}

/// `mesh_rate_limited_total{service,route,scope}` and the callers tracked.
#[derive(Debug, Clone, Default)]
pub struct RateLimitMetrics {
    limited: Family<LimitedLabels, Counter>,
    callers: Gauge,
}

impl RateLimitMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Calls refused by a route's rate limit, by service, route and scope (total, per-caller)",
            self.limited.clone(),
        );
        registry.register(
            "rate_limit_callers",
            "Callers with rate-limit state on the last limited route checked (pruned every 10 s)",
            self.callers.clone(),
        );
    }
}

/// The inbound listener's rate limits for the local app's service.
#[derive(Debug, Clone)]
pub struct InboundLimits {
    service: Arc<str>,
    table: Arc<LiveTable>,
    metrics: RateLimitMetrics,
}

impl InboundLimits {
    /// Limits calls to `service` by the `rateLimit` of its routes in
    /// `table` (as pushed).
    pub fn new(service: Arc<str>, table: Arc<LiveTable>, metrics: RateLimitMetrics) -> Self {
        Self {
            service,
            table,
            metrics,
        }
    }

    /// Charges one call of `path`; an error is the answer to send instead.
    pub fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), ProxyError> {
        let table = self.table.load();
        if !table.has_rate_limits() {
            return Ok(());
        }
        let Some(route) = table.route_to(path, &self.service) else {
            return Ok(());
        };
        let Some(limiter) = route.rate_limiter() else {
            return Ok(());
        };
        let caller = CallerKey::of(peer, headers);
        let refused = limiter.check(&caller);
        self.metrics
            .callers
            .set(i64::try_from(limiter.callers()).unwrap_or(i64::MAX));
        let Err((scope, retry_after)) = refused else {
            return Ok(());
        };
        let route_name = route.policy.name.clone();
        self.metrics
            .limited
            .get_or_create(&LimitedLabels {
                service: self.service.clone(),
                route: route_name.clone(),
                scope,
            })
            .inc();
        tracing::debug!(target: "rate_limit", service = %self.service, route = %route_name, ?caller, scope, ?retry_after, "call over the rate limit");
        Err(ProxyError::RateLimited {
            route: route_name,
            scope,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(json: &str) -> RouteLimiter {
        let limit: RateLimit = serde_json::from_str(json).expect("a rate limit");
        RouteLimiter::new(&limit)
    }

    fn service(name: &str) -> CallerKey {
        CallerKey::Service(Arc::from(name))
    }

    #[test]
    fn a_caller_over_its_rate_is_refused_with_a_wait_and_others_are_not() {
        let limiter = limit(r#"{"perCaller": {"requestsPerSecond": 1, "burst": 3}}"#);
        for _ in 0..3 {
            limiter.check(&service("noisy")).expect("within the burst");
        }
        let (scope, wait) = limiter.check(&service("noisy")).expect_err("over");
        assert_eq!(scope, "per-caller");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        limiter.check(&service("quiet")).expect("another caller");
        limiter
            .check(&CallerKey::Subject("noisy".into()))
            .expect("a subject is not the service of the same name");
        assert_eq!(limiter.callers(), 3);
    }

    #[test]
    fn overrides_replace_the_per_caller_rate_and_the_total_caps_everyone() {
        let limiter = limit(
            r#"{"total": {"requestsPerSecond": 1, "burst": 5},
                "perCaller": {"requestsPerSecond": 1, "burst": 1},
                "overrides": [{"service": "orders", "requestsPerSecond": 1, "burst": 4}]}"#,
        );
        for _ in 0..4 {
            limiter
                .check(&service("orders"))
                .expect("orders' own burst");
        }
        assert_eq!(
            limiter.check(&service("orders")).unwrap_err().0,
            "per-caller"
        );
        limiter.check(&service("a")).expect("the total's last call");
        assert_eq!(limiter.check(&service("b")).unwrap_err().0, "total");
    }

    #[test]
    fn a_gateway_call_is_charged_to_its_subject_only_from_a_gateway() {
        let mut headers = HeaderMap::new();
        headers.insert(crate::authn::SUBJECT_HEADER, "usr_1".parse().unwrap());
        let peer = |workload| {
            PeerIdentity(Some(
                mesh::identity::SpiffeId::new("mesh.local", workload).unwrap(),
            ))
        };
        assert_eq!(
            CallerKey::of(Some(&peer(Workload::Gateway("gw".into()))), &headers),
            CallerKey::Subject("usr_1".into())
        );
        assert_eq!(
            CallerKey::of(Some(&peer(Workload::Service("orders".into()))), &headers),
            service("orders")
        );
        assert_eq!(
            CallerKey::of(
                Some(&peer(Workload::Gateway("gw".into()))),
                &HeaderMap::new()
            ),
            CallerKey::Gateway(Arc::from("gw"))
        );
        assert_eq!(CallerKey::of(None, &headers), CallerKey::Plaintext);
    }
}
