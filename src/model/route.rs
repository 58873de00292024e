//! A route: which mesh service takes the calls of a gRPC service (or one of
//! its methods), and how they are split across that service's subsets.
//!
//! ```yaml
//! kind: Route
//! metadata:
//!   name: inventory
//! spec:
//!   match:
//!     service: shop.inventory.v1.InventoryService
//!   destination: inventory
//!   rules:                      # first rule whose headers all match wins
//!     - headers:
//!         - name: x-canary
//!           exact: "true"
//!       split:
//!         - { subset: v2, weight: 1 }
//!   split:                      # everything else; empty = every endpoint
//!     - { subset: v1, weight: 90 }
//!     - { subset: v2, weight: 10 }
//!   loadBalancer: peak-ewma     # or weighted-round-robin (default), least-request
//!   exposure: public            # reachable at the gateway; default: internal
//!   externalHeaders: [x-canary] # routing headers outside clients may set
//!   rateLimit:                  # enforced by the destination's sidecars
//!     total: { requestsPerSecond: 500 }
//!     perCaller: { requestsPerSecond: 20, burst: 40 }
//! ```

use serde::{Deserialize, Serialize};

use super::policy::{ConcurrencyLimits, FaultInjection, OutlierDetection, RetryPolicy};
use super::rate_limit::RateLimit;
use super::validation::{is_dns_label, is_proto_ident, ValidationError};

/// The `kind` every route document carries.
pub const ROUTE_KIND: &str = "Route";

/// A route document as written by operators (kubectl habits: kind,
/// metadata, spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Always `Route`; lets one YAML stream carry several kinds later.
    pub kind: String,
    /// Identity of the route.
    pub metadata: RouteMetadata,
    /// What the route does.
    pub spec: RouteSpec,
}

/// Identity of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMetadata {
    /// Unique name (a DNS label): the key the route is stored and deleted by.
    pub name: String,
}

/// What a route matches and where the matched calls go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Which calls the route takes, by gRPC path.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// The mesh service whose endpoints receive the calls.
    pub destination: String,
    /// Header-based rules, tried in order before `split`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// Weighted split across subsets for calls no rule took. Empty means
    /// every endpoint of the destination, whatever its subset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedSubset>,
    /// Longest a call may take (e.g. `250ms`, `2s`, `1m`); a caller's
    /// shorter `grpc-timeout` wins. Absent: only the caller's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries of failed calls; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Circuit breaking per endpoint of the destination; absent: none.
    #[serde(
        default,
        rename = "outlierDetection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<OutlierDetection>,
    /// Caps on calls in flight; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimits>,
    /// Deliberate failures for drills; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// How an endpoint of the chosen subset is picked: one of
    /// [`LoadBalancer`]'s names; absent: `weighted-round-robin`. Kept as
    /// written (like durations) so a typo is refused by `validate` with
    /// its field path, not by the parser.
    #[serde(
        default,
        rename = "loadBalancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<String>,
    /// Who may reach the route from outside the mesh: `public` (through a
    /// gateway's ingress) or `internal` (the default: mesh callers only).
    /// Kept as written, like `loadBalancer`, so a typo is refused with its
    /// field path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<String>,
    /// Headers the rules match on that an outside client may set at the
    /// gateway (e.g. `x-canary` for a public canary); every other routing
    /// header is removed from external requests, so the outside cannot
    /// steer calls to subsets. Only on public routes.
    #[serde(
        default,
        rename = "externalHeaders",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_headers: Vec<String>,
    /// Local rate limits on the route's calls, applied by the
    /// destination's sidecars; absent: none.
    #[serde(default, rename = "rateLimit", skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Who may reach a route from outside the mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Exposure {
    /// `internal`: only mesh callers; the gateway answers UNIMPLEMENTED,
    /// as if the service did not exist, and its reflection hides it.
    #[default]
    Internal,
    /// `public`: the gateway's ingress forwards outside calls to it.
    Public,
}

impl Exposure {
    /// Every exposure by its name in a route.
    pub const NAMES: [(&'static str, Self); 2] =
        [("internal", Self::Internal), ("public", Self::Public)];

    /// The exposure called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
    }
}

/// How a route picks an endpoint within a subset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LoadBalancer {
    /// `weighted-round-robin`: smooth weighted round-robin, each endpoint
    /// exactly its share, interleaved. Blind to load: a slow endpoint gets
    /// its share too.
    #[default]
    WeightedRoundRobin,
    /// `least-request`: of two endpoints drawn by weight, the one with
    /// fewer calls in flight per unit of weight (power of two choices).
    LeastRequest,
    /// `peak-ewma`: of two endpoints drawn by weight, the one with the
    /// lower cost: its round-trip time's moving average (peak-sensitive:
    /// jumps up at once, decays over ~10 s) times its calls in flight
    /// plus one, per unit of weight (Finagle's and Linkerd's default).
    PeakEwma,
}

impl LoadBalancer {
    /// Every balancer by its name in a route.
    pub const NAMES: [(&'static str, Self); 3] = [
        ("weighted-round-robin", Self::WeightedRoundRobin),
        ("least-request", Self::LeastRequest),
        ("peak-ewma", Self::PeakEwma),
    ];

    /// The balancer called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, lb)| *lb)
    }

    /// Its name in a route.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, lb)| *lb == self)
            .map_or("weighted-round-robin", |(n, _)| n)
    }
}

/// The gRPC path a route takes: `/service/method`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Fully qualified gRPC service, e.g. `shop.orders.v1.OrdersService`.
    pub service: String,
    /// One method of it; absent means every method. A method route wins
    /// over a service route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Calls whose headers all match go to this rule's split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Every one must match (logical and).
    pub headers: Vec<HeaderMatch>,
    /// Where matching calls go; empty means every endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedSubset>,
}

/// A condition on one request header: exactly one of `exact` or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, lowercase (HTTP/2 header names are lowercase on the wire).
    pub name: String,
    /// The value must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The whole value must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A subset (endpoints with `version: <subset>`) and its share of calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedSubset {
    /// The `version` label of the endpoints in this subset.
    pub subset: String,
    /// Relative share; 0 takes the subset out of rotation.
    pub weight: u32,
}

impl Route {
    /// The gRPC path prefix this route takes: `/svc/` or `/svc/method`.
    pub fn path(&self) -> String {
        match &self.spec.matches.method {
            Some(m) => format!("/{}/{}", self.spec.matches.service, m),
            None => format!("/{}/", self.spec.matches.service),
        }
    }

    /// Checks every field; the error names the first bad one by its path in
    /// the document (e.g. `spec.rules[0].headers[1].regex`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.kind != ROUTE_KIND {
            return Err(ValidationError::new(
                "kind",
                format!("expected {ROUTE_KIND:?}, got {:?}", self.kind),
            ));
        }
        if !is_dns_label(&self.metadata.name) {
            return Err(ValidationError::new(
                "metadata.name",
                format!(
                    "{:?} is not a DNS label (1-63 lowercase letters, digits, '-')",
                    self.metadata.name
                ),
            ));
        }
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

impl RouteSpec {
    /// The route's balancer; the default when absent (or, for a route
    /// that skipped `validate`, unknown).
    pub fn load_balancer(&self) -> LoadBalancer {
        self.load_balancer
            .as_deref()
            .and_then(LoadBalancer::from_name)
            .unwrap_or_default()
    }

    /// Whether the route is reachable from outside; internal when absent
    /// (or, for a route that skipped `validate`, unknown).
    pub fn exposure(&self) -> Exposure {
        self.exposure
            .as_deref()
            .and_then(Exposure::from_name)
            .unwrap_or_default()
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let service = &self.matches.service;
        if service.is_empty() || !service.split('.').all(is_proto_ident) {
            return Err(ValidationError::new(
                "match.service",
                format!("{service:?} is not a fully qualified gRPC service name (pkg.Service)"),
            ));
        }
        if let Some(method) = &self.matches.method {
            if !is_proto_ident(method) {
                return Err(ValidationError::new(
                    "match.method",
                    format!("{method:?} is not a gRPC method name"),
                ));
            }
        }
        if !is_dns_label(&self.destination) {
            return Err(ValidationError::new(
                "destination",
                format!(
                    "{:?} is not a mesh service name (DNS label)",
                    self.destination
                ),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| e.within(&format!("rules[{i}]")))?;
        }
        if let Some(timeout) = &self.timeout {
            parse_duration(timeout).map_err(|reason| ValidationError::new("timeout", reason))?;
        }
        if let Some(p) = &self.retries {
            p.validate().map_err(|e| e.within("retries"))?;
        }
        if let Some(p) = &self.outlier_detection {
            p.validate().map_err(|e| e.within("outlierDetection"))?;
        }
        if let Some(p) = &self.concurrency {
            p.validate().map_err(|e| e.within("concurrency"))?;
        }
        if let Some(p) = &self.fault {
            p.validate().map_err(|e| e.within("fault"))?;
        }
        if let Some(name) = &self.load_balancer {
            if LoadBalancer::from_name(name).is_none() {
                let known: Vec<&str> = LoadBalancer::NAMES.iter().map(|(n, _)| *n).collect();
                return Err(ValidationError::new(
                    "loadBalancer",
                    format!("{name:?} is not a load balancer ({})", known.join(", ")),
                ));
            }
        }
        self.validate_exposure()?;
        if let Some(limit) = &self.rate_limit {
            limit.validate().map_err(|e| e.within("rateLimit"))?;
        }
        validate_split(&self.split).map_err(|e| e.within("split"))
    }

    fn validate_exposure(&self) -> Result<(), ValidationError> {
        if let Some(name) = &self.exposure {
            if Exposure::from_name(name).is_none() {
                return Err(ValidationError::new(
                    "exposure",
                    format!("{name:?} is not an exposure (internal, public)"),
                ));
            }
        }
        if !self.external_headers.is_empty() && self.exposure() != Exposure::Public {
            return Err(ValidationError::new(
                "externalHeaders",
                "only a route with `exposure: public` takes headers from outside",
            ));
        }
        for (i, name) in self.external_headers.iter().enumerate() {
            let field = || format!("externalHeaders[{i}]");
            if !is_lowercase_header_name(name) {
                return Err(ValidationError::new(
                    field(),
                    format!("{name:?} is not a lowercase HTTP header name"),
                ));
            }
            if name.starts_with("x-mesh-") {
                return Err(ValidationError::new(
                    field(),
                    format!(
                        "{name:?}: x-mesh-* headers are the mesh's own and never come from outside"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// True for a header name as HTTP/2 carries it (lowercase, no pseudo-header).
fn is_lowercase_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && !name.bytes().any(|b| b.is_ascii_uppercase())
        && !name.starts_with(':')
}

impl RouteRule {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.headers.is_empty() {
            return Err(ValidationError::new(
                "headers",
                "a rule needs at least one header match (use spec.split for the default)",
            ));
        }
        for (i, h) in self.headers.iter().enumerate() {
            h.validate()
                .map_err(|e| e.within(&format!("headers[{i}]")))?;
        }
        validate_split(&self.split).map_err(|e| e.within("split"))
    }
}

impl HeaderMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        if !is_lowercase_header_name(&self.name) {
            return Err(ValidationError::new(
                "name",
                format!("{:?} is not a lowercase HTTP header name", self.name),
            ));
        }
        match (&self.exact, &self.regex) {
            (Some(_), None) => Ok(()),
            (None, Some(re)) => compile_header_regex(re)
                .map(drop)
                .map_err(|e| ValidationError::new("regex", e.to_string())),
            _ => Err(ValidationError::new(
                "exact",
                "exactly one of `exact` or `regex` must be set",
            )),
        }
    }
}

/// Parses a duration written `<number><unit>` with unit `ms`, `s` or `m`
/// (e.g. `250ms`, `1.5s`): positive, at most an hour.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("{text:?} needs a unit: ms, s or m (e.g. 250ms)"));
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms or 2s"))?;
    if value.is_nan() || value < 0.0 {
        return Err(format!("{text:?} is negative"));
    }
    let seconds = value * scale;
    if seconds == 0.0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    if seconds > 3600.0 {
        return Err(format!("{text:?} is more than an hour"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// Compiles a header regex anchored at both ends: a route that says
/// `regex: "v2"` should not match `v20-beta`. The size limit keeps a hostile
/// pattern from eating the proxy's memory.
pub fn compile_header_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 16)
        .build()
}

fn validate_split(split: &[WeightedSubset]) -> Result<(), ValidationError> {
    if split.is_empty() {
        return Ok(());
    }
    let mut total: u64 = 0;
    for (i, s) in split.iter().enumerate() {
        if !is_dns_label(&s.subset) {
            return Err(ValidationError::new(
                format!("[{i}].subset"),
                format!("{:?} is not a version label (DNS label)", s.subset),
            ));
        }
        if split[..i].iter().any(|o| o.subset == s.subset) {
            return Err(ValidationError::new(
                format!("[{i}].subset"),
                format!("subset {:?} appears twice", s.subset),
            ));
        }
        if s.weight > 1_000_000 {
            return Err(ValidationError::new(
                format!("[{i}].weight"),
                "must be at most 1000000",
            ));
        }
        total += u64::from(s.weight);
    }
    if total == 0 {
        return Err(ValidationError::new(
            "[*].weight",
            "weights sum to 0: no subset would get traffic",
        ));
    }
    Ok(())
}
