//! `meshctl stat`: is a service healthy, who calls it, and how slow is it
//! right now, from the proxies' own metrics over a window, with no
//! Prometheus to install.
//!
//! meshctl gathers the numbers itself: it asks the control plane for the
//! connected proxies (their admin addresses), the routes and the endpoints,
//! reads every proxy's `/metrics` at the start and at the end of the window
//! and shows the difference. So it needs to reach the proxies' admin ports,
//! as `meshctl describe` does (on loopback for `meshctl up`; in Kubernetes,
//! from inside the cluster or through a port-forward).
//!
//! - per service: what the service's own sidecars answered (direction
//!   `inbound`), whoever called;
//! - per route: what callers' proxies sent by the route (`outbound`,
//!   `ingress`);
//! - `--edges`: per caller -> callee, from the callers' proxies.
//!
//! Success is gRPC status OK; latencies are from the proxies' histograms
//! (interpolated within a bucket); retries per second are the callers'
//! retries on routes to the service; ejected is how many of the service's
//! endpoints at least one proxy holds out of rotation at the window's end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use mesh::proto::mesh::v1::{
    ConnectedSidecar, ListEndpointsRequest, ListRoutesRequest, StatusRequest,
};
use serde::Serialize;

use super::output::{self, print, OutputFormat, Table};
use super::scrape::{samples, Sample};
use super::{AdminClient, ControlPlaneArgs, GrpcError};

/// What `meshctl stat` reports on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatKind {
    /// Mesh services.
    #[default]
    #[value(alias = "services", alias = "svc")]
    Service,
    /// Routes.
    #[value(alias = "routes")]
    Route,
}

/// Options of `meshctl stat`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatArgs {
    /// `service` (default) or `route`.
    #[arg(value_enum, default_value_t)]
    pub kind: StatKind,
    /// Only this service or route.
    pub name: Option<String>,
    /// Per caller -> callee instead (services only).
    #[arg(long)]
    pub edges: bool,
    /// How long to measure (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = mesh::identity::parse_lifetime)]
    pub window: Duration,
    /// Refresh in place every window until Ctrl-C.
    #[arg(long, short)]
    pub watch: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// One row of figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    /// The service, the route, or `caller -> callee`.
    pub name: String,
    /// Calls answered in the window.
    pub calls: u64,
    /// Share of them with status OK; none without calls.
    pub success_rate: Option<f64>,
    /// Calls per second.
    pub calls_per_second: f64,
    /// Latency quantiles in milliseconds; none without calls.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Retries per second (services and routes).
    pub retries_per_second: f64,
    /// Endpoints out of rotation at some proxy (services only).
    pub ejected_endpoints: usize,
}

/// Runs `meshctl stat`.
pub async fn run(control_plane: &ControlPlaneArgs, args: StatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(args.edges && args.kind == StatKind::Route),
        "--edges is for services"
    );
    let mut client = control_plane.connect().await?;
    let mut before = Snapshot::take(&mut client, true).await?;
    loop {
        eprintln!(
            "meshctl stat: read {} proxies; measuring for {:?}",
            before.proxies.len(),
            args.window
        );
        tokio::select! {
            () = tokio::time::sleep(args.window) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let after = Snapshot::take(&mut client, true).await?;
        let stats = compute(&before, &after, &args);
        let text = render(&stats, &args)?;
        if args.watch {
            // Clear the screen and go home: the figures update in place.
            print(&format!("\x1b[2J\x1b[H{text}"))?;
            before = after;
        } else {
            return print(&text);
        }
    }
}

/// What one proxy said, and who it is.
#[derive(Debug, Clone, Default)]
pub(super) struct ProxyNumbers {
    /// Its mesh service, or `gateway`.
    pub(super) caller: String,
    pub(super) samples: Vec<Sample>,
}

/// Everything read at one instant.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    /// By proxy name (`service/instance`).
    pub(super) proxies: BTreeMap<String, ProxyNumbers>,
    /// Route name -> destination service.
    pub(super) destinations: BTreeMap<String, String>,
    /// Service -> its endpoints out of rotation at some proxy.
    pub(super) ejected: BTreeMap<String, BTreeSet<String>>,
    /// The connected proxies, as the control plane reports them.
    pub(super) sidecars: Vec<ConnectedSidecar>,
    /// The stored routes (with routes and health only).
    pub(super) routes: Vec<mesh::model::Route>,
    /// The registered endpoints (with routes and health only).
    pub(super) endpoints: Vec<mesh::proto::mesh::v1::RegisteredEndpoint>,
}

impl Snapshot {
    /// Every connected proxy's metrics now; with `routes_and_health`, the
    /// routes' destinations and the endpoints out of rotation too.
    pub(super) async fn take(
        client: &mut AdminClient,
        routes_and_health: bool,
    ) -> anyhow::Result<Self> {
        let status = client
            .status(StatusRequest {})
            .await
            .map_err(GrpcError)
            .context("cannot list the proxies")?
            .into_inner();
        let mut snapshot = Self::default();
        let reads = status.sidecars.iter().map(read_proxy);
        for (name, numbers) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
        {
            snapshot.proxies.insert(name, numbers);
        }
        if !routes_and_health {
            snapshot.sidecars = status.sidecars;
            return Ok(snapshot);
        }
        let routes = client
            .list_routes(ListRoutesRequest {})
            .await
            .map_err(GrpcError)
            .context("cannot list routes")?
            .into_inner();
        let endpoints = client
            .list_endpoints(ListEndpointsRequest::default())
            .await
            .map_err(GrpcError)
            .context("cannot list endpoints")?
            .into_inner()
            .endpoints;
        for stored in &routes.routes {
            if let Ok(route) = super::RevisionedRoute::try_from(stored) {
                snapshot.destinations.insert(
                    route.route.metadata.name.clone(),
                    route.route.spec.destination.clone(),
                );
                snapshot.routes.push(route.route);
            }
        }
        let (views, _) = super::health::collect(&status.sidecars).await;
        let service_of: BTreeMap<&str, &str> = endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.service.as_str()))
            .collect();
        for (_, view) in views {
            for endpoint in view.iter().filter(|e| e.state != "healthy") {
                if let Some(service) = service_of.get(endpoint.address.as_str()) {
                    snapshot
                        .ejected
                        .entry((*service).to_owned())
                        .or_default()
                        .insert(endpoint.address.clone());
                }
            }
        }
        drop(service_of);
        snapshot.sidecars = status.sidecars;
        snapshot.endpoints = endpoints;
        Ok(snapshot)
    }
}

/// One proxy's `/metrics`; none if it does not answer (it left).
async fn read_proxy(proxy: &ConnectedSidecar) -> Option<(String, ProxyNumbers)> {
    let addr: SocketAddr = proxy.admin_address.parse().ok()?;
    let (status, text) = crate::demo::admin_call(addr, http::Method::GET, "/metrics")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let caller = if proxy.gateway {
        "gateway".to_owned()
    } else {
        proxy.service.clone()
    };
    let name = format!("{caller}/{}", proxy.instance);
    Some((
        name,
        ProxyNumbers {
            caller,
            samples: samples(&text, "mesh_"),
        },
    ))
}

/// Calls, successes and latency buckets gathered for one row.
#[derive(Debug, Clone, Default)]
pub(super) struct Totals {
    pub(super) calls: f64,
    pub(super) ok: f64,
    /// Upper bound (seconds, `+Inf` as infinity) -> cumulative count.
    buckets: BTreeMap<String, (f64, f64)>,
    retries: f64,
}

impl Totals {
    /// Counts `delta` of a response or latency sample; other samples are
    /// not counted.
    pub(super) fn add(&mut self, sample: &Sample, delta: f64) {
        match sample.name.as_str() {
            "mesh_responses_total" => {
                self.calls += delta;
                if sample.label("code") == "0" {
                    self.ok += delta;
                }
            }
            "mesh_request_duration_seconds_bucket" => {
                let le = sample.label("le");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                self.buckets.entry(le.to_owned()).or_insert((bound, 0.0)).1 += delta;
            }
            _ => {}
        }
    }
}

/// Every sample of `after` with how much it grew since `before`, by proxy
/// (a series a proxy did not have before, or a proxy that restarted and
/// counts from zero again, counts whole).
pub(super) fn window<'a>(
    before: &'a Snapshot,
    after: &'a Snapshot,
) -> impl Iterator<Item = (&'a ProxyNumbers, &'a Sample, f64)> + 'a {
    after.proxies.iter().flat_map(move |(proxy, numbers)| {
        // Each series' value at the start, looked up once per series.
        let earlier: BTreeMap<(&str, &BTreeMap<String, String>), f64> = before
            .proxies
            .get(proxy)
            .map(|e| {
                e.samples
                    .iter()
                    .map(|s| ((s.name.as_str(), &s.labels), s.value))
                    .collect()
            })
            .unwrap_or_default();
        numbers.samples.iter().map(move |sample| {
            let previous = earlier
                .get(&(sample.name.as_str(), &sample.labels))
                .copied()
                .unwrap_or(0.0);
            let delta = if sample.value >= previous {
                sample.value - previous
            } else {
                sample.value
            };
            (numbers, sample, delta)
        })
    })
}

/// The figures of the window between `before` and `after`.
pub(super) fn compute(before: &Snapshot, after: &Snapshot, args: &StatArgs) -> Vec<Stat> {
    let mut rows: BTreeMap<String, Totals> = BTreeMap::new();
    for (numbers, sample, delta) in window(before, after) {
        if sample.name == "mesh_retries_total" {
            // Retries are counted by route at the caller.
            let route = sample.label("route");
            let row = match args.kind {
                StatKind::Route => Some(route.to_owned()),
                StatKind::Service if args.edges => after
                    .destinations
                    .get(route)
                    .map(|to| format!("{} -> {to}", numbers.caller)),
                StatKind::Service => after.destinations.get(route).cloned(),
            };
            if let Some(row) = row {
                rows.entry(row).or_default().retries += delta;
            }
        } else if let Some(row) = row_of(sample, &numbers.caller, args) {
            rows.entry(row).or_default().add(sample, delta);
        }
    }
    let seconds = args.window.as_secs_f64().max(f64::EPSILON);
    rows.into_iter()
        .filter(|(name, _)| {
            args.name
                .as_ref()
                .is_none_or(|only| row_matches(name, only, args))
        })
        .map(|(name, totals)| {
            let quantile = |q| latency_ms(&totals, q);
            let ejected_endpoints = if args.kind == StatKind::Service && !args.edges {
                after.ejected.get(&name).map_or(0, BTreeSet::len)
            } else {
                0
            };
            Stat {
                calls: totals.calls.round() as u64,
                success_rate: (totals.calls > 0.0).then(|| totals.ok / totals.calls),
                calls_per_second: totals.calls / seconds,
                p50_ms: quantile(0.5),
                p95_ms: quantile(0.95),
                p99_ms: quantile(0.99),
                retries_per_second: totals.retries / seconds,
                ejected_endpoints,
                name,
            }
        })
        .collect()
}

/// The row a response or latency sample counts in, if any.
fn row_of(sample: &Sample, caller: &str, args: &StatArgs) -> Option<String> {
    if !matches!(
        sample.name.as_str(),
        "mesh_responses_total" | "mesh_request_duration_seconds_bucket"
    ) {
        return None;
    }
    let direction = sample.label("direction");
    let sent = direction == "outbound" || direction == "ingress";
    match args.kind {
        StatKind::Service if args.edges => {
            sent.then(|| format!("{caller} -> {}", sample.label("service")))
        }
        StatKind::Service => (direction == "inbound").then(|| sample.label("service").to_owned()),
        StatKind::Route => {
            (sent && !sample.label("route").is_empty()).then(|| sample.label("route").to_owned())
        }
    }
}

/// Whether row `name` is the one asked for (an edge matches either end).
fn row_matches(name: &str, only: &str, args: &StatArgs) -> bool {
    if args.edges {
        name.split(" -> ").any(|end| end == only)
    } else {
        name == only
    }
}

/// Quantile `q` of the latency histogram, in milliseconds, interpolated
/// linearly within its bucket (the last finite bound if it falls beyond).
pub(super) fn latency_ms(totals: &Totals, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = totals.buckets.values().copied().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in &buckets {
        if count >= target {
            if bound.is_infinite() {
                return Some(lower.0 * 1e3);
            }
            let share = if count > lower.1 {
                (target - lower.1) / (count - lower.1)
            } else {
                0.0
            };
            return Some((lower.0 + (bound - lower.0) * share) * 1e3);
        }
        lower = (bound, count);
    }
    Some(lower.0 * 1e3)
}

fn render(stats: &[Stat], args: &StatArgs) -> anyhow::Result<String> {
    match args.output {
        OutputFormat::Json => output::json(stats),
        OutputFormat::Yaml => output::yaml_stream(stats),
        OutputFormat::Table => {
            let first = match (args.kind, args.edges) {
                (StatKind::Route, _) => "ROUTE",
                (StatKind::Service, true) => "CALLER -> CALLEE",
                (StatKind::Service, false) => "SERVICE",
            };
            let mut table = Table::new([
                first,
                "SUCCESS",
                "RPS",
                "P50",
                "P95",
                "P99",
                "RETRIES/S",
                "EJECTED",
            ]);
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}ms"));
            for stat in stats {
                table.row([
                    stat.name.clone(),
                    stat.success_rate
                        .map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0)),
                    format!("{:.1}", stat.calls_per_second),
                    ms(stat.p50_ms),
                    ms(stat.p95_ms),
                    ms(stat.p99_ms),
                    format!("{:.1}", stat.retries_per_second),
                    stat.ejected_endpoints.to_string(),
                ]);
            }
            if table.is_empty() {
                table.note(format!("no calls in the last {:?}", args.window));
            }
            Ok(table.render())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: StatKind, edges: bool) -> StatArgs {
        StatArgs {
            kind,
            name: None,
            edges,
            window: Duration::from_secs(10),
            watch: false,
            output: OutputFormat::Json,
        }
    }

    fn proxy(caller: &str, text: &str) -> ProxyNumbers {
        ProxyNumbers {
            caller: caller.to_owned(),
            samples: samples(text, "mesh_"),
        }
    }

    fn snapshot(proxies: Vec<(&str, ProxyNumbers)>) -> Snapshot {
        Snapshot {
            proxies: proxies
                .into_iter()
                .map(|(name, numbers)| (name.to_owned(), numbers))
                .collect(),
            destinations: [("catalog".to_owned(), "catalog".to_owned())].into(),
            ejected: [("catalog".to_owned(), ["127.0.0.1:1".to_owned()].into())].into(),
            ..Snapshot::default()
        }
    }

    const BEFORE: &str = "\
mesh_responses_total{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"0.001\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"0.002\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"+Inf\"} 10
";
    // 30 more OK calls (20 under 1 ms, 10 between 1 and 2 ms), 10 NOT_FOUND
    // in under 1 ms.
    const AFTER: &str = "\
mesh_responses_total{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\"} 40
mesh_responses_total{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"Get\",code=\"5\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"0.001\"} 30
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"0.002\"} 40
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"List\",code=\"0\",le=\"+Inf\"} 40
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"Get\",code=\"5\",le=\"0.001\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"Get\",code=\"5\",le=\"0.002\"} 10
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",route=\"\",method=\"Get\",code=\"5\",le=\"+Inf\"} 10
";

    #[test]
    fn a_service_row_is_the_window_s_difference() {
        let before = snapshot(vec![("catalog/catalog-1", proxy("catalog", BEFORE))]);
        let after = snapshot(vec![
            ("catalog/catalog-1", proxy("catalog", AFTER)),
            (
                "gateway/gateway",
                proxy(
                    "gateway",
                    "mesh_responses_total{direction=\"ingress\",service=\"catalog\",route=\"catalog\",method=\"List\",code=\"0\"} 40\n\
                     mesh_retries_total{direction=\"ingress\",route=\"catalog\"} 5\n",
                ),
            ),
        ]);
        let stats = compute(&before, &after, &args(StatKind::Service, false));
        assert_eq!(stats.len(), 1, "{stats:#?}");
        let catalog = &stats[0];
        assert_eq!(catalog.name, "catalog");
        assert_eq!(catalog.calls, 40);
        assert_eq!(catalog.success_rate, Some(0.75));
        assert!((catalog.calls_per_second - 4.0).abs() < 1e-9);
        // 30 of 40 under 1 ms: the median interpolates to 2/3 ms, p95 to
        // 1.8 ms (within 1..2 ms).
        assert!(
            (catalog.p50_ms.unwrap() - 2.0 / 3.0).abs() < 1e-6,
            "{catalog:?}"
        );
        assert!((catalog.p95_ms.unwrap() - 1.8).abs() < 1e-6, "{catalog:?}");
        assert!((catalog.retries_per_second - 0.5).abs() < 1e-9);
        assert_eq!(catalog.ejected_endpoints, 1);
    }

    #[test]
    fn edges_and_routes_are_counted_at_the_caller() {
        let after = snapshot(vec![(
            "gateway/gateway",
            proxy(
                "gateway",
                "mesh_responses_total{direction=\"ingress\",service=\"catalog\",route=\"catalog\",method=\"List\",code=\"0\"} 8\n\
                 mesh_responses_total{direction=\"ingress\",service=\"catalog\",route=\"catalog\",method=\"List\",code=\"14\"} 2\n",
            ),
        )]);
        let edges = compute(&Snapshot::default(), &after, &args(StatKind::Service, true));
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].name, "gateway -> catalog");
        assert_eq!(edges[0].success_rate, Some(0.8));
        let routes = compute(&Snapshot::default(), &after, &args(StatKind::Route, false));
        assert_eq!(routes[0].name, "catalog");
        assert_eq!(routes[0].calls, 10);
        assert_eq!(routes[0].p50_ms, None, "no histogram, no latency");
        // A proxy that restarted counts from zero, not negative.
        let restarted = compute(&after, &Snapshot::default(), &args(StatKind::Route, false));
        assert!(restarted.is_empty());
    }
}
