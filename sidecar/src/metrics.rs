//! Prometheus metrics of the proxy, served at the admin port's `/metrics`.
//!
//! Counters a request touches are registered when a table is built and
//! handed to the route ([`RouteCounters`]), so the hot path increments an
//! atomic and never looks up or allocates a label set.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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

/// Every metric of one proxy process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    proxy_errors: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
}

/// The counters of one route, bumped by every call it takes.
#[derive(Debug, Clone)]
pub struct RouteCounters {
    requests: Counter,
}

impl RouteCounters {
    /// Counts one call.
    pub fn record_request(&self) {
        self.requests.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Calls forwarded upstream, by direction and destination mesh service",
            requests.clone(),
        );
        let proxy_errors = Family::<Labels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Calls the proxy answered itself with an error, by direction and reason",
            proxy_errors.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "retries",
            "Attempts beyond the first, by direction and route",
            retries.clone(),
        );
        Self {
            registry,
            requests,
            proxy_errors,
            retries,
        }
    }
}

impl Metrics {
    /// The counters for calls of `direction` to `service`.
    pub fn route_counters(&self, direction: Direction, service: &str) -> RouteCounters {
        RouteCounters {
            requests: self
                .requests
                .get_or_create(&vec![
                    ("direction", direction.as_str().to_owned()),
                    ("service", service.to_owned()),
                ])
                .clone(),
        }
    }

    /// Counts a retry the route made.
    pub fn record_retry(&self, direction: Direction, route: &str) {
        self.retries
            .get_or_create(&vec![
                ("direction", direction.as_str().to_owned()),
                ("route", route.to_owned()),
            ])
            .inc();
    }

    /// Counts an error the proxy made (off the hot path: errors only).
    pub fn record_proxy_error(&self, direction: Direction, reason: &'static str) {
        self.proxy_errors
            .get_or_create(&vec![
                ("direction", direction.as_str().to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
