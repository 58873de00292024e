//! The routing table: a [`Bootstrap`] (a static file, or what the control
//! plane pushed) compiled once into lookup structures that requests read
//! without locks: routes by gRPC path with their balancers and policies,
//! which routes the edge may reach (`exposure`, `externalHeaders`), rate
//! limiters, and at a gateway the bearer-token verifier.
//!
//! What outlives one table is kept beside it in [`LiveTable`]: connection
//! slots ([`UpstreamPool`]: breakers, calls in flight, round-trip times)
//! and route state ([`RouteStates`]: retry budgets, concurrency counters,
//! round-robin positions), so a push changes what it says and nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use mesh::model::{compile_header_regex, Bootstrap, Endpoint, Exposure, HeaderMatch, Route};
use regex::Regex;

use tokio::time::Instant;

use mesh::identity::{MeshTls, SpiffeId};

use crate::authn::Authenticator;
use crate::balance::BalancerScope;
pub use crate::balance::{Balancer, Pick};
use crate::call::error::ProxyError;
use crate::metrics::{Direction, IdentityMetrics, Metrics, RouteCounters};
use crate::on_demand::{OnDemand, FIRST_CALL_WAIT};
use crate::policy::RoutePolicy;
use crate::rate_limit::RouteLimiter;
use crate::response_labels::{methods_of, LabelIndex};
use crate::route_state::{Piece, RouteStates, StateBuilder};
use crate::upstream::{Upstream, UpstreamPeer};

/// A table that cannot be built from its source.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The source has a value the model refuses.
    #[error("invalid table: {0}")]
    Invalid(#[from] mesh::model::ValidationError),
    /// An endpoint's service names no valid identity.
    #[error("endpoint identity: {0}")]
    Identity(#[from] mesh::identity::SpiffeIdError),
    /// An endpoint address is not a URI authority.
    #[error("endpoint {address:?}: {source}")]
    Address {
        /// The address.
        address: String,
        /// Why it does not parse.
        source: http::uri::InvalidUri,
    },
}

/// An immutable routing table. A new source builds a new table; the proxy
/// swaps it in whole, and in-flight calls finish on the one they started on.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes keyed by `/svc/method` (method routes) and `/svc/` (service routes).
    by_path: HashMap<String, CompiledRoute>,
    /// The source, for `/config`.
    source: Bootstrap,
    version: String,
    /// Every header a route rule matches on: what an outside client may
    /// not set unless the route it calls allows it.
    routing_headers: Vec<http::HeaderName>,
    /// Bearer token checks (gateway ingress, with request authentications).
    authenticator: Option<Authenticator>,
    /// Some route has a rate limit (else inbound calls skip the lookup).
    rate_limited: bool,
}

/// A route compiled: its rules' balancers, counters and policies.
#[derive(Debug)]
pub struct CompiledRoute {
    rules: Vec<(Vec<CompiledHeaderMatch>, Balancer)>,
    default: Balancer,
    /// Counters of the calls it takes.
    pub counters: RouteCounters,
    /// Timeouts, retries, breakers, limits, faults.
    pub policy: Arc<RoutePolicy>,
    /// Reachable from outside, through a gateway's ingress.
    public: bool,
    /// Routing headers outside clients may set on this route.
    external_headers: Vec<http::HeaderName>,
    /// Its rate limits, enforced by the destination's inbound sidecars.
    rate_limiter: Option<Arc<RouteLimiter>>,
}

impl CompiledRoute {
    /// Which rule `balancer` belongs to (`None`: the default split).
    pub fn rule_of(&self, balancer: &Balancer) -> Option<usize> {
        self.rules
            .iter()
            .position(|(_, b)| std::ptr::eq(b, balancer))
    }

    /// The route's rate limiters, if it has limits.
    pub fn rate_limiter(&self) -> Option<&RouteLimiter> {
        self.rate_limiter.as_deref()
    }
}

#[derive(Debug)]
enum CompiledHeaderMatch {
    Exact(String, String),
    Regex(String, Regex),
}

impl CompiledHeaderMatch {
    fn compile(h: &HeaderMatch) -> Result<Self, regex::Error> {
        Ok(match (&h.exact, &h.regex) {
            (_, Some(re)) => Self::Regex(h.name.clone(), compile_header_regex(re)?),
            (exact, None) => Self::Exact(h.name.clone(), exact.clone().unwrap_or_default()),
        })
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        match self {
            Self::Exact(name, want) => headers
                .get(name.as_str())
                .is_some_and(|v| v.as_bytes() == want.as_bytes()),
            Self::Regex(name, re) => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| re.is_match(v)),
        }
    }
}

/// Connection slots by service and address, shared by successive tables
/// so a table change keeps the connections of endpoints that did not
/// change. Keyed by the service too: with mTLS a slot's connection proved
/// one service's identity, and an address that moves to another service
/// must not inherit it.
#[derive(Debug)]
pub struct UpstreamPool {
    connect_timeout: Duration,
    /// `Some` with mTLS: upstreams must prove their service's identity.
    tls: Option<(Arc<MeshTls>, IdentityMetrics)>,
    /// Bounds on each endpoint connection's streams and waiting calls.
    stream_limits: crate::upstream::StreamLimits,
    slots: Mutex<HashMap<(String, String), Arc<Upstream>>>,
}

impl UpstreamPool {
    /// An empty pool whose connections time out connecting after
    /// `connect_timeout`; with `tls`, every connection is mutual TLS.
    pub fn new(connect_timeout: Duration, tls: Option<(Arc<MeshTls>, IdentityMetrics)>) -> Self {
        Self {
            connect_timeout,
            tls,
            stream_limits: crate::upstream::StreamLimits::default(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The same pool, whose endpoints bound their streams by `limits`.
    pub fn with_stream_limits(mut self, limits: crate::upstream::StreamLimits) -> Self {
        self.stream_limits = limits;
        self
    }

    /// The slot for `service`'s endpoint at `address`, created on first use.
    pub fn get(&self, service: &str, address: &str) -> Result<Arc<Upstream>, TableError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.to_owned(), address.to_owned());
        if let Some(up) = slots.get(&key) {
            return Ok(up.clone());
        }
        let mut up = Upstream::new(address, self.connect_timeout)
            .map_err(|source| TableError::Address {
                address: address.to_owned(),
                source,
            })?
            .with_stream_limits(self.stream_limits);
        if let Some((tls, metrics)) = &self.tls {
            up = up.with_peer(UpstreamPeer {
                tls: tls.clone(),
                id: SpiffeId::service(tls.trust_domain(), service)?,
                metrics: metrics.clone(),
            });
        }
        let up = Arc::new(up);
        slots.insert(key, up.clone());
        Ok(up)
    }

    /// Every slot's state, for `/endpoints`.
    pub fn views(&self) -> Vec<crate::upstream::UpstreamView> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut views: Vec<_> = slots.values().map(|u| u.view()).collect();
        views.sort_by(|a, b| a.address.cmp(&b.address));
        views
    }

    /// Forgets slots no table uses any more (their connections close when
    /// the last in-flight call on them ends).
    fn retain(&self, keep: &[(&str, &str)]) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|(service, addr), _| keep.contains(&(service.as_str(), addr.as_str())));
    }
}

/// The table requests read now, and what building the next one needs. A
/// new table replaces the old one whole (one atomic pointer swap); calls in
/// flight keep the `Arc` of the table they started on.
#[derive(Debug)]
pub struct LiveTable {
    current: ArcSwap<RouteTable>,
    loaded: AtomicBool,
    applied_at: Mutex<Option<Instant>>,
    pool: UpstreamPool,
    /// Budgets, limits and rotations carried from table to table.
    states: RouteStates,
    /// Methods (`pkg.Service/Method`) of the registered services, from
    /// their descriptors: the metrics label them by name.
    registered: Mutex<Arc<HashSet<String>>>,
    metrics: Arc<Metrics>,
    direction: Direction,
    /// Subscriptions on first use (a sidecar with a control plane).
    on_demand: std::sync::OnceLock<Arc<OnDemand>>,
}

impl LiveTable {
    /// An empty table (every call: no route) until the first [`LiveTable::apply`].
    pub fn new(pool: UpstreamPool, metrics: Arc<Metrics>, direction: Direction) -> Self {
        Self {
            current: ArcSwap::from_pointee(RouteTable::empty()),
            loaded: AtomicBool::new(false),
            applied_at: Mutex::new(None),
            pool,
            states: RouteStates::default(),
            registered: Mutex::new(Arc::new(HashSet::new())),
            metrics,
            direction,
            on_demand: std::sync::OnceLock::new(),
        }
    }

    /// Routes the table lacks are asked for through `on_demand` on first use.
    pub fn set_on_demand(&self, on_demand: Arc<OnDemand>) {
        let _ = self.on_demand.set(on_demand);
    }

    /// The table to route a call of `path` with, held for the whole call:
    /// when it has no route for the path's gRPC service and this proxy
    /// subscribes on first use, the table after the control plane's answer
    /// (or after [`FIRST_CALL_WAIT`] without one).
    pub async fn load_for(&self, path: &str) -> Arc<RouteTable> {
        let table = self.load_full();
        let Some(on_demand) = self.on_demand.get() else {
            return table;
        };
        if table.lookup(path).is_ok() {
            return table;
        }
        let Some(service) = grpc_service_of(path) else {
            return table;
        };
        on_demand.resolve(service, FIRST_CALL_WAIT).await;
        self.load_full()
    }

    /// Builds a table from `source` and swaps it in; on error the current
    /// table stays.
    pub fn apply(&self, source: Bootstrap, version: String) -> Result<(), TableError> {
        let table = RouteTable::build(
            source,
            version,
            &self.pool,
            &self.states,
            &self.metrics,
            self.direction,
        )?;
        tracing::info!(
            version = table.version(),
            routes = table.source().routes.len(),
            endpoints = table.source().endpoints.len(),
            "table applied"
        );
        self.relabel(table.source(), &self.registered());
        self.current.store(Arc::new(table));
        self.loaded.store(true, Ordering::Release);
        *self.applied_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(())
    }

    /// Learns the registered services' methods from their descriptors
    /// (encoded `FileDescriptorSet`s, as pushed to a gateway), so calls to
    /// them are counted by method; any other method is `other`.
    pub fn learn_descriptors(&self, file_descriptor_sets: &[Vec<u8>]) {
        let methods = Arc::new(methods_of(file_descriptor_sets.iter().map(Vec::as_slice)));
        *self.registered.lock().unwrap_or_else(|e| e.into_inner()) = methods.clone();
        self.relabel(self.current.load().source(), &methods);
    }

    /// Labels this listener's calls by `source`'s routes and the
    /// `registered` methods.
    fn relabel(&self, source: &Bootstrap, registered: &HashSet<String>) {
        let previous = self.metrics.labels(self.direction);
        let index = LabelIndex::routed(source, registered, &previous);
        self.metrics.set_labels(self.direction, index);
    }

    fn registered(&self) -> Arc<HashSet<String>> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics calls through this table are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The table to route a call with.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// The table to route a call with, held for the whole call (retries
    /// and all) even if a newer one is swapped in meanwhile.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// The connection slots of every endpoint.
    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    /// Time since the running table was applied.
    pub fn age(&self) -> Option<Duration> {
        self.applied_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|at| at.elapsed())
    }

    /// True once a table has been applied: before that the proxy is not ready.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

impl RouteTable {
    fn empty() -> Self {
        Self {
            by_path: HashMap::new(),
            source: Bootstrap::default(),
            version: "none".to_owned(),
            routing_headers: Vec::new(),
            authenticator: None,
            rate_limited: false,
        }
    }

    /// Compiles `source` into a table, taking connection slots from `pool`
    /// and each route's budgets, limits and rotations from `states` (see
    /// [`crate::route_state`]).
    pub fn build(
        source: Bootstrap,
        version: String,
        pool: &UpstreamPool,
        states: &RouteStates,
        metrics: &Metrics,
        direction: Direction,
    ) -> Result<Self, TableError> {
        source.validate()?;
        let mut kept = states.rebuild();
        let endpoints = source
            .endpoints
            .iter()
            .map(|ep| pool.get(&ep.service, &ep.address).map(|up| (ep, up)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_path = HashMap::new();
        for route in &source.routes {
            by_path.insert(
                route.path(),
                compile_route(route, &endpoints, &mut kept, metrics, direction)?,
            );
        }
        kept.finish();
        let addresses: Vec<(&str, &str)> = source
            .endpoints
            .iter()
            .map(|e| (e.service.as_str(), e.address.as_str()))
            .collect();
        pool.retain(&addresses);
        let mut routing_headers: Vec<http::HeaderName> = source
            .routes
            .iter()
            .flat_map(|r| &r.spec.rules)
            .flat_map(|rule| &rule.headers)
            .filter_map(|h| http::HeaderName::from_bytes(h.name.as_bytes()).ok())
            .collect();
        routing_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        routing_headers.dedup();
        let authenticator = if direction == Direction::Ingress {
            let (authenticator, problems) = Authenticator::build(&source);
            for problem in problems {
                tracing::warn!(%problem, "bearer tokens: some keys are not usable");
            }
            authenticator
        } else {
            None
        };
        let rate_limited = by_path.values().any(|r| r.rate_limiter.is_some());
        Ok(Self {
            by_path,
            source,
            version,
            routing_headers,
            authenticator,
            rate_limited,
        })
    }

    /// Routes a call by its gRPC path (`/pkg.Service/Method`) and headers:
    /// the route and the balancer of the rule that takes it.
    pub fn route(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(&CompiledRoute, &Balancer), ProxyError> {
        let route = self.lookup(path)?;
        let balancer = route
            .rules
            .iter()
            .find(|(matches, _)| matches.iter().all(|m| m.matches(headers)))
            .map_or(&route.default, |(_, b)| b);
        Ok((route, balancer))
    }

    /// Routes a call from outside the mesh (a gateway's ingress): only to
    /// a public route (anything else is UNIMPLEMENTED, as if it did not
    /// exist), after removing the routing headers the route does not take
    /// from outside, so they neither steer this hop nor any behind it.
    pub fn route_external(
        &self,
        path: &str,
        headers: &mut HeaderMap,
    ) -> Result<(&CompiledRoute, &Balancer), ProxyError> {
        let route = self
            .lookup(path)
            .ok()
            .filter(|route| route.public)
            .ok_or_else(|| ProxyError::not_exposed(path))?;
        for name in &self.routing_headers {
            if !route.external_headers.contains(name) {
                headers.remove(name);
            }
        }
        self.route(path, headers)
    }

    /// The bearer token checks of the gateway's ingress, when the mesh has
    /// request authentications.
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.authenticator.as_ref()
    }

    /// True when some route has a rate limit.
    pub fn has_rate_limits(&self) -> bool {
        self.rate_limited
    }

    /// The route a call of `path` to `service` takes, if it has one (an
    /// inbound sidecar's view: the rate limits of its own routes).
    pub fn route_to(&self, path: &str, service: &str) -> Option<&CompiledRoute> {
        self.lookup(path)
            .ok()
            .filter(|route| &*route.policy.service == service)
    }

    fn lookup(&self, path: &str) -> Result<&CompiledRoute, ProxyError> {
        let service = grpc_service_of(path).ok_or_else(|| ProxyError::malformed_path(path))?;
        self.by_path
            .get(path)
            .or_else(|| self.by_path.get(&path[..service.len() + 2]))
            .ok_or_else(|| ProxyError::no_route(path))
    }

    /// The table's source, for `/config`.
    pub fn source(&self) -> &Bootstrap {
        &self.source
    }

    /// Which version of its source the table was built from.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The gRPC service of a gRPC path, which is exactly "/" service "/"
/// method, both non-empty; `None` for anything else.
fn grpc_service_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
        .map(|(service, _)| service)
}

fn compile_route(
    route: &Route,
    endpoints: &[(&Endpoint, Arc<Upstream>)],
    states: &mut StateBuilder<'_>,
    metrics: &Metrics,
    direction: Direction,
) -> Result<CompiledRoute, TableError> {
    let service = &route.spec.destination;
    let scope = |rule| BalancerScope {
        route: &route.metadata.name,
        rule,
        kind: route.spec.load_balancer(),
    };
    let mut rules = Vec::with_capacity(route.spec.rules.len());
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let matches = rule
            .headers
            .iter()
            .map(CompiledHeaderMatch::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| mesh::model::ValidationError {
                field: format!("spec.rules[{i}].headers"),
                reason: e.to_string(),
            })?;
        let balancer = Balancer::new(service, &rule.split, endpoints, scope(Some(i)), states);
        rules.push((matches, balancer));
    }
    Ok(CompiledRoute {
        rules,
        default: Balancer::new(service, &route.spec.split, endpoints, scope(None), states),
        counters: metrics.route_counters(direction, service, &route.metadata.name),
        policy: Arc::new(RoutePolicy::compile_in(route, states)?),
        rate_limiter: route.spec.rate_limit.as_ref().map(|limit| {
            states.get(
                &route.metadata.name,
                Piece::RateLimit(limit.clone()),
                || Arc::new(RouteLimiter::new(limit)),
            )
        }),
        public: route.spec.exposure() == Exposure::Public,
        external_headers: route
            .spec
            .external_headers
            .iter()
            .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .collect(),
    })
}

#[cfg(test)]
mod tests;
