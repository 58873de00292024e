//! The routing table: a [`Bootstrap`] (or, later, a control-plane push)
//! compiled once into lookup structures that requests read without locks or
//! allocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use mesh::model::{compile_header_regex, Bootstrap, Endpoint, HeaderMatch, Route, WeightedSubset};
use regex::Regex;

use tokio::time::Instant;

use mesh::identity::{MeshTls, SpiffeId};

use crate::metrics::{Direction, IdentityMetrics, Metrics, RouteCounters};
use crate::outlier::Admission;
use crate::policy::RoutePolicy;
use crate::proxy_error::ProxyError;
use crate::upstream::{Upstream, UpstreamPeer};
use crate::wrr::SmoothWeightedRoundRobin;

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

/// An immutable routing table. A new source builds a new table; the proxy
/// swaps it in whole, and in-flight calls finish on the one they started on.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes keyed by `/svc/method` (method routes) and `/svc/` (service routes).
    by_path: HashMap<String, CompiledRoute>,
    /// The source, for `/config`.
    source: Bootstrap,
    version: String,
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

/// Picks an endpoint for a split: first a subset by the split's weights,
/// then an endpoint of that subset by the endpoints' weights, both smooth
/// weighted round-robin.
#[derive(Debug)]
pub struct Balancer {
    service: String,
    subsets: Vec<Subset>,
    by_weight: Option<SmoothWeightedRoundRobin>,
}

#[derive(Debug)]
struct Subset {
    /// `None` when the split is empty: every endpoint of the service.
    name: Option<Arc<str>>,
    endpoints: Arc<[Arc<Upstream>]>,
    by_weight: Option<SmoothWeightedRoundRobin>,
}

impl Balancer {
    fn new(
        service: &str,
        split: &[WeightedSubset],
        endpoints: &[(&Endpoint, Arc<Upstream>)],
    ) -> Self {
        let subset = |name: Option<&str>| {
            let members: Vec<_> = endpoints
                .iter()
                .filter(|(ep, _)| ep.service == service && name.is_none_or(|n| ep.version == n))
                .collect();
            Subset {
                name: name.map(Arc::from),
                by_weight: SmoothWeightedRoundRobin::new(members.iter().map(|(ep, _)| ep.weight)),
                endpoints: members
                    .into_iter()
                    .map(|(_, up)| up.clone())
                    .collect::<Vec<_>>()
                    .into(),
            }
        };
        let (subsets, by_weight) = if split.is_empty() {
            (vec![subset(None)], SmoothWeightedRoundRobin::new([1]))
        } else {
            (
                split.iter().map(|s| subset(Some(&s.subset))).collect(),
                SmoothWeightedRoundRobin::new(split.iter().map(|s| s.weight)),
            )
        };
        Self {
            service: service.to_owned(),
            subsets,
            by_weight,
        }
    }

    /// Picks an endpoint for an attempt: a subset by the split's weights,
    /// then an endpoint of it by weight, passing over endpoints tried
    /// already (`avoid`) and, with `breakers`, ejected ones. If every
    /// endpoint is out, one is used anyway (a guess beats a certain failure).
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
        let wrr = subset
            .by_weight
            .as_ref()
            .ok_or_else(|| ProxyError::no_endpoints(&self.service, subset.name.as_deref()))?;
        let pick = |upstream: &Arc<Upstream>, admission| Pick {
            upstream: upstream.clone(),
            peers: subset.endpoints.clone(),
            admission,
            subset: subset.name.clone(),
        };
        // Second choices: an endpoint tried already (better than none),
        // else any (every endpoint ejected: a guess beats a sure failure).
        let admit = |candidate: &Arc<Upstream>| {
            let admission = if breakers {
                candidate.breaker().admit(now)
            } else {
                Admission::Normal
            };
            (admission != Admission::Refused).then(|| pick(candidate, admission))
        };
        let mut tried_already = None;
        for _ in 0..subset.endpoints.len() {
            let candidate = &subset.endpoints[wrr.pick()];
            if avoid.iter().any(|a| Arc::ptr_eq(a, candidate)) {
                tried_already = tried_already.or(Some(candidate));
                continue;
            }
            if let Some(picked) = admit(candidate) {
                return Ok(picked);
            }
        }
        if let Some(picked) = tried_already.and_then(admit) {
            return Ok(picked);
        }
        let any = &subset.endpoints[wrr.pick()];
        Ok(pick(any, Admission::Normal))
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
    slots: Mutex<HashMap<(String, String), Arc<Upstream>>>,
}

impl UpstreamPool {
    /// An empty pool whose connections time out connecting after
    /// `connect_timeout`; with `tls`, every connection is mutual TLS.
    pub fn new(connect_timeout: Duration, tls: Option<(Arc<MeshTls>, IdentityMetrics)>) -> Self {
        Self {
            connect_timeout,
            tls,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The slot for `service`'s endpoint at `address`, created on first use.
    pub fn get(&self, service: &str, address: &str) -> Result<Arc<Upstream>, TableError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.to_owned(), address.to_owned());
        if let Some(up) = slots.get(&key) {
            return Ok(up.clone());
        }
        let mut up =
            Upstream::new(address, self.connect_timeout).map_err(|source| TableError::Address {
                address: address.to_owned(),
                source,
            })?;
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
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl LiveTable {
    /// An empty table (every call: no route) until the first [`LiveTable::apply`].
    pub fn new(pool: UpstreamPool, metrics: Arc<Metrics>, direction: Direction) -> Self {
        Self {
            current: ArcSwap::from_pointee(RouteTable::empty()),
            loaded: AtomicBool::new(false),
            applied_at: Mutex::new(None),
            pool,
            metrics,
            direction,
        }
    }

    /// Builds a table from `source` and swaps it in; on error the current
    /// table stays.
    pub fn apply(&self, source: Bootstrap, version: String) -> Result<(), TableError> {
        let table = RouteTable::build(source, version, &self.pool, &self.metrics, self.direction)?;
        tracing::info!(
            version = table.version(),
            routes = table.source().routes.len(),
            endpoints = table.source().endpoints.len(),
            "table applied"
        );
        self.current.store(Arc::new(table));
        self.loaded.store(true, Ordering::Release);
        *self.applied_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(())
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
        }
    }

    /// Compiles `source` into a table, taking connection slots from `pool`.
    pub fn build(
        source: Bootstrap,
        version: String,
        pool: &UpstreamPool,
        metrics: &Metrics,
        direction: Direction,
    ) -> Result<Self, TableError> {
        source.validate()?;
        let endpoints = source
            .endpoints
            .iter()
            .map(|ep| pool.get(&ep.service, &ep.address).map(|up| (ep, up)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_path = HashMap::new();
        for route in &source.routes {
            by_path.insert(
                route.path(),
                compile_route(route, &endpoints, metrics, direction)?,
            );
        }
        let addresses: Vec<(&str, &str)> = source
            .endpoints
            .iter()
            .map(|e| (e.service.as_str(), e.address.as_str()))
            .collect();
        pool.retain(&addresses);
        Ok(Self {
            by_path,
            source,
            version,
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

    fn lookup(&self, path: &str) -> Result<&CompiledRoute, ProxyError> {
        // A gRPC path is exactly "/" service "/" method, both non-empty.
        let (service, _method) = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            .ok_or_else(|| ProxyError::malformed_path(path))?;
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

fn compile_route(
    route: &Route,
    endpoints: &[(&Endpoint, Arc<Upstream>)],
    metrics: &Metrics,
    direction: Direction,
) -> Result<CompiledRoute, TableError> {
    let service = &route.spec.destination;
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
        rules.push((matches, Balancer::new(service, &rule.split, endpoints)));
    }
    Ok(CompiledRoute {
        rules,
        default: Balancer::new(service, &route.spec.split, endpoints),
        counters: metrics.route_counters(direction, service, &route.metadata.name),
        policy: Arc::new(RoutePolicy::compile(route)?),
    })
}
