//! Prometheus metrics of the proxy, served at the admin port's `/metrics`
//! (OpenMetrics text).
//!
//! Counters a request touches on its way in are registered when a table is
//! built and handed to the route ([`RouteCounters`]), so that part of the
//! hot path increments an atomic and never looks up a label set. A call's
//! end is counted under [`ResponseLabels`], bounded by the route table and
//! the registered descriptors (see [`crate::response_labels`]): the path
//! is looked up in the listener's [`LabelIndex`], whose shared strings the
//! labels take, so there is no allocation once the label set exists.
//! Gauges about state (ejected endpoints, connections, table version and
//! age, dropped spans) are read when scraped.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{PathAndQuery, Uri};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use crate::response_labels::ResponseLabels;
use crate::response_labels::{methods_of, LabelIndex};

/// Which listener a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local app, out to the mesh.
    Outbound,
    /// From another sidecar, in to the local app.
    Inbound,
    /// From an external client, at the gateway.
    Ingress,
}

impl Direction {
    /// Its place in per-direction arrays.
    fn index(self) -> usize {
        match self {
            Self::Outbound => 0,
            Self::Inbound => 1,
            Self::Ingress => 2,
        }
    }

    /// The route label of calls to the local app.
    pub const INBOUND_ROUTE: &'static str = "inbound";

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Ingress => "ingress",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// A call's gRPC path (`/pkg.Service/Method`), sharing the request's bytes:
/// cloning it costs a reference count, not a copy.
#[derive(Debug, Clone)]
pub struct GrpcPath(PathAndQuery);

impl GrpcPath {
    /// The path of `uri` (`/` when it has none).
    pub fn of(uri: &Uri) -> Self {
        Self(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    }

    /// The path, with its leading `/`.
    pub fn as_str(&self) -> &str {
        self.0.path()
    }
}

impl PartialEq for GrpcPath {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for GrpcPath {}

impl Hash for GrpcPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// State read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    /// Endpoints out of rotation (ejected or probing).
    pub ejected_endpoints: usize,
    /// Upstream HTTP/2 connections open.
    pub upstream_connections: usize,
    /// Attempts in flight.
    pub in_flight: usize,
    /// The running table's version (0 before the first).
    pub table_version: i64,
    /// Time since the running table was applied.
    pub table_age: Option<Duration>,
}

/// Every metric of one proxy process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    durations: Family<ResponseLabels, Histogram>,
    proxy_errors: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    ejections: Family<Labels, Counter>,
    ejected_endpoints: Gauge,
    upstream_connections: Gauge,
    in_flight: Gauge,
    table_version: Gauge,
    table_age_ms: Gauge,
    spans_dropped: Counter,
    spans_dropped_seen: AtomicU64,
    identity: IdentityMetrics,
    listeners: mesh::listen::ListenerStats,
    authz: crate::authz::AuthzMetrics,
    rate_limits: crate::rate_limit::RateLimitMetrics,
    /// How each direction's calls are labelled (indexed by
    /// [`Direction::index`]).
    labels: [ArcSwap<LabelIndex>; 3],
}

/// Identity and TLS metrics, shared with the tasks that renew certificates
/// and accept connections (cheap to clone: every metric is a shared atomic).
#[derive(Debug, Clone, Default)]
pub struct IdentityMetrics {
    expiry_seconds: Gauge,
    renewals: Family<Labels, Counter>,
    bundle_version: Gauge,
    handshake_failures: Family<Labels, Counter>,
    inbound_connections: Family<Labels, Counter>,
}

impl IdentityMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "identity_certificate_expiry_seconds",
            "Seconds until this proxy's certificate expires, read when scraped (-1: no certificate yet, or mTLS off)",
            self.expiry_seconds.clone(),
        );
        registry.register(
            "identity_renewals",
            "Certificate requests to the control plane's CA, by result (ok or error)",
            self.renewals.clone(),
        );
        registry.register(
            "trust_bundle_version",
            "Version of the trust bundle in use (0: read from the --trust-bundle file)",
            self.bundle_version.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Inbound and upstream TLS handshakes that failed, by listener (or upstream) and reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "inbound_connections",
            "Connections served by the mTLS listener, by listener and whether over TLS (tls=\"false\": plaintext taken in permissive mode)",
            self.inbound_connections.clone(),
        );
    }

    /// Registers these metrics alone, for tests that read them.
    #[cfg(test)]
    pub fn register_for_tests(&self, registry: &mut Registry) {
        self.register(registry);
    }

    /// Counts a certificate request's outcome.
    pub fn record_renewal(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.renewals
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// Counts a failed handshake (`reason` from `HandshakeError::reason`).
    pub fn record_handshake_failure(&self, listener: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&labels(&[("listener", listener), ("reason", reason)]))
            .inc();
    }

    /// Counts a connection served by an mTLS listener: over TLS, or
    /// plaintext (permissive mode).
    pub fn record_inbound_connection(&self, listener: &'static str, tls: bool) {
        let tls = if tls { "true" } else { "false" };
        self.inbound_connections
            .get_or_create(&labels(&[("listener", listener), ("tls", tls)]))
            .inc();
    }

    /// Sets the state gauges: seconds left on the certificate (`None`: no
    /// certificate yet) and the bundle version.
    pub fn set_state(&self, expiry: Option<i64>, bundle_version: u64) {
        self.expiry_seconds.set(expiry.unwrap_or(-1));
        self.bundle_version
            .set(i64::try_from(bundle_version).unwrap_or(i64::MAX));
    }
}

/// The counters of one route, bumped by every call it takes.
#[derive(Debug, Clone)]
pub struct RouteCounters {
    requests: Counter,
    /// Ejections of the route's endpoints.
    pub ejections: Counter,
}

impl RouteCounters {
    /// Counts one call.
    pub fn record_request(&self) {
        self.requests.inc();
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Calls taken and forwarded upstream, by direction and destination mesh service",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "responses",
            "Calls answered, by direction, mesh service, gRPC method and status code",
            responses.clone(),
        );
        let durations = Family::<ResponseLabels, Histogram>::new_with_constructor(|| {
            // 0.25 ms to ~16 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
        });
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival to the end of its response, by direction, mesh service, gRPC method and status code",
            durations.clone(),
        );
        let proxy_errors = Family::<Labels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Calls the proxy answered itself with an error (or retries it declined), by direction and reason",
            proxy_errors.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "retries",
            "Attempts beyond the first, by direction and route",
            retries.clone(),
        );
        let ejections = Family::<Labels, Counter>::default();
        registry.register(
            "endpoint_ejections",
            "Endpoints taken out of rotation by outlier detection, by direction and route",
            ejections.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let ejected_endpoints = gauge(
            &mut registry,
            "ejected_endpoints",
            "Endpoints out of rotation now",
        );
        let upstream_connections = gauge(
            &mut registry,
            "upstream_connections",
            "Upstream HTTP/2 connections open now",
        );
        let in_flight = gauge(
            &mut registry,
            "in_flight_attempts",
            "Upstream attempts in flight now",
        );
        let table_version = gauge(
            &mut registry,
            "table_version",
            "Version of the routing table in use",
        );
        let table_age_ms = gauge(
            &mut registry,
            "table_age_milliseconds",
            "Time since the routing table in use was applied (last push age)",
        );
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans lost on the way to the collector (queue full or export failed)",
            spans_dropped.clone(),
        );
        let identity = IdentityMetrics::default();
        identity.register(&mut registry);
        let listeners = mesh::listen::ListenerStats::default();
        listeners.register(&mut registry);
        let authz = crate::authz::AuthzMetrics::default();
        authz.register(&mut registry);
        let rate_limits = crate::rate_limit::RateLimitMetrics::default();
        rate_limits.register(&mut registry);
        Self {
            listeners,
            authz,
            rate_limits,
            registry,
            requests,
            responses,
            durations,
            proxy_errors,
            retries,
            ejections,
            ejected_endpoints,
            upstream_connections,
            in_flight,
            table_version,
            table_age_ms,
            spans_dropped,
            spans_dropped_seen: AtomicU64::new(0),
            identity,
            labels: [
                ArcSwap::from_pointee(LabelIndex::default()),
                ArcSwap::from_pointee(LabelIndex::app(
                    Direction::INBOUND_ROUTE,
                    &HashSet::new(),
                    None,
                )),
                ArcSwap::from_pointee(LabelIndex::default()),
            ],
        }
    }
}

impl Metrics {
    /// The counters for calls of `direction` to `service` by `route`.
    pub fn route_counters(
        &self,
        direction: Direction,
        service: &str,
        route: &str,
    ) -> RouteCounters {
        let d = direction.as_str();
        RouteCounters {
            requests: self
                .requests
                .get_or_create(&labels(&[("direction", d), ("service", service)]))
                .clone(),
            ejections: self
                .ejections
                .get_or_create(&labels(&[("direction", d), ("route", route)]))
                .clone(),
        }
    }

    /// Records a finished call: its count and its duration, under labels
    /// bounded by the listener's [`LabelIndex`].
    pub fn record_response(
        &self,
        direction: Direction,
        service: &Arc<str>,
        path: &GrpcPath,
        code: i32,
        elapsed: Duration,
    ) {
        let label = self.labels[direction.index()].load().label(path.as_str());
        let key = ResponseLabels {
            direction,
            service: service.clone(),
            route: label.route,
            method: label.method,
            code: ResponseLabels::bounded_code(code),
        };
        self.responses.get_or_create(&key).inc();
        self.durations
            .get_or_create(&key)
            .observe(elapsed.as_secs_f64());
    }

    /// Labels `direction`'s calls by `index` from now on (a table was
    /// applied, or descriptors learned).
    pub fn set_labels(&self, direction: Direction, index: LabelIndex) {
        self.labels[direction.index()].store(Arc::new(index));
    }

    /// How `direction`'s calls are labelled now.
    pub fn labels(&self, direction: Direction) -> Arc<LabelIndex> {
        self.labels[direction.index()].load_full()
    }

    /// Labels calls to the local app by its methods, read from its
    /// descriptors (an encoded `FileDescriptorSet`).
    pub fn learn_app_methods(&self, file_descriptor_set: &[u8]) {
        let methods = methods_of([file_descriptor_set]);
        let previous = self.labels(Direction::Inbound);
        self.set_labels(
            Direction::Inbound,
            LabelIndex::app(Direction::INBOUND_ROUTE, &methods, Some(&previous)),
        );
    }

    /// Counts a retry the route made.
    pub fn record_retry(&self, direction: Direction, route: &str) {
        self.retries
            .get_or_create(&labels(&[
                ("direction", direction.as_str()),
                ("route", route),
            ]))
            .inc();
    }

    /// Counts an error the proxy made (off the hot path: errors only).
    pub fn record_proxy_error(&self, direction: Direction, reason: &'static str) {
        self.proxy_errors
            .get_or_create(&labels(&[
                ("direction", direction.as_str()),
                ("reason", reason),
            ]))
            .inc();
    }

    /// The identity and TLS metrics.
    pub fn identity(&self) -> &IdentityMetrics {
        &self.identity
    }

    /// Inbound authorization decisions.
    pub fn authz(&self) -> &crate::authz::AuthzMetrics {
        &self.authz
    }

    /// The rate limits' counters.
    pub fn rate_limits(&self) -> &crate::rate_limit::RateLimitMetrics {
        &self.rate_limits
    }

    /// What the listeners did to connections (caps, timeouts).
    pub fn listeners(&self) -> &mesh::listen::ListenerStats {
        &self.listeners
    }

    /// The Prometheus text exposition of every metric, with the state
    /// gauges set from `state`.
    pub fn render(&self, state: &StateSnapshot) -> String {
        self.ejected_endpoints.set(state.ejected_endpoints as i64);
        self.upstream_connections
            .set(state.upstream_connections as i64);
        self.in_flight.set(state.in_flight as i64);
        self.table_version.set(state.table_version);
        self.table_age_ms
            .set(state.table_age.map_or(-1, |a| a.as_millis() as i64));
        let dropped = mesh::telemetry::dropped_spans();
        let seen = self.spans_dropped_seen.swap(dropped, Ordering::Relaxed);
        self.spans_dropped.inc_by(dropped.saturating_sub(seen));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
