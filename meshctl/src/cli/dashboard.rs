//! `meshctl dashboard`: the mesh in a browser (the service graph with calls/s
//! and success per edge, coloured by health; each service's routes, subsets
//! and weights; endpoint health and ejections; every proxy's version and
//! ACK state), served by meshctl on loopback and updated live by polling.
//!
//! It opens nothing by itself: it prints the address. The page is static
//! (HTML, CSS and JavaScript embedded in the binary: no CDN, it works
//! offline) and read-only: it has no action, and it reads the mesh with the
//! operator identity meshctl itself runs as, so it shows what that
//! operator may see. The figures are `meshctl stat`'s, refreshed every
//! interval.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;

use super::output::OutputFormat;
use super::stat::{compute, Snapshot, StatArgs, StatKind};
use super::ControlPlaneArgs;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Options of `meshctl dashboard`.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    /// Where to serve the page. Loopback by default: it shows what this
    /// operator may read, to whoever reaches it.
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: SocketAddr,
    /// How often the figures refresh; each covers the interval before it.
    #[arg(long, default_value = "2s", value_parser = mesh::identity::parse_lifetime)]
    pub interval: Duration,
}

/// Everything the page shows, as JSON (`/api/state`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DashboardState {
    /// Seconds the figures cover.
    pub interval_seconds: f64,
    /// When they were read (Unix milliseconds).
    pub updated_unix_ms: u128,
    /// Why the last refresh failed, if it did (the figures are older).
    pub problem: Option<String>,
    /// Every mesh service, and the gateway.
    pub services: Vec<ServiceNode>,
    /// Who calls whom.
    pub edges: Vec<Edge>,
    /// The routes.
    pub routes: Vec<RouteView>,
    /// Every registered endpoint and whether some proxy holds it out.
    pub endpoints: Vec<EndpointView>,
    /// Every connected proxy and its version and ACK state.
    pub proxies: Vec<ProxyView>,
}

/// A service in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceNode {
    /// Its name (`gateway` for the gateway).
    pub name: String,
    /// Calls it answered per second.
    pub calls_per_second: f64,
    /// Share answered OK; none without calls.
    pub success_rate: Option<f64>,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Its registered instances.
    pub instances: usize,
    /// Its endpoints out of rotation at some proxy.
    pub ejected: usize,
    /// `healthy`, `degraded`, `failing` or `idle`.
    pub health: &'static str,
}

/// Calls from one service (or the gateway) to another.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// Calls per second.
    pub calls_per_second: f64,
    /// Share OK.
    pub success_rate: Option<f64>,
    /// `healthy`, `degraded`, `failing` or `idle`.
    pub health: &'static str,
}

/// A route: where its calls go.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// The gRPC service (and method) it takes.
    pub matches: String,
    /// The destination service.
    pub destination: String,
    /// `public` or `internal`.
    pub exposure: String,
    /// The default split: `subset weight` pairs (empty: every endpoint).
    pub split: Vec<(String, u32)>,
    /// Header rules before the split.
    pub rules: usize,
}

/// One endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// Its service.
    pub service: String,
    /// Its instance id.
    pub instance: String,
    /// Its address.
    pub address: String,
    /// Its subset.
    pub version: String,
    /// Its weight.
    pub weight: u32,
    /// Held out of rotation by some proxy (outlier detection).
    pub ejected: bool,
}

/// One proxy's configuration state.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyView {
    /// Its service, or `gateway`.
    pub service: String,
    /// Its instance id.
    pub instance: String,
    /// Last revision pushed to it.
    pub pushed_version: u64,
    /// Last revision it acknowledged.
    pub acked_version: u64,
    /// `SYNCED`, `STALE` or `NACKED`.
    pub state: &'static str,
    /// What it refuses, if anything.
    pub nack_reason: String,
}

/// Runs `meshctl dashboard` until Ctrl-C.
pub async fn run(control_plane: &ControlPlaneArgs, args: DashboardArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.interval >= Duration::from_millis(200),
        "--interval: at least 200ms"
    );
    let mut client = control_plane.connect().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        eprintln!(
            "meshctl dashboard: {address} is not loopback: anyone who reaches it sees what this operator may read"
        );
    }
    let state = Arc::new(RwLock::new(Bytes::from(serde_json::to_vec(
        &DashboardState::default(),
    )?)));
    let mut before = Snapshot::take(&mut client, true).await?;
    eprintln!("meshctl dashboard: http://{address}/ (read-only; Ctrl-C stops it)");
    let refresh = {
        let state = state.clone();
        let interval = args.interval;
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut taken = std::time::Instant::now();
            loop {
                tick.tick().await;
                let next = match Snapshot::take(&mut client, true).await {
                    Ok(after) => {
                        // Rates over the time that really passed (a slow
                        // or failed read makes it longer than the interval).
                        let now = std::time::Instant::now();
                        let view = build(&before, &after, now - taken);
                        before = after;
                        taken = now;
                        view
                    }
                    Err(error) => DashboardState {
                        problem: Some(format!("{error:#}")),
                        ..DashboardState::default()
                    },
                };
                if let Ok(json) = serde_json::to_vec(&next) {
                    *state.write().unwrap_or_else(|e| e.into_inner()) = Bytes::from(json);
                }
            }
        }
    };
    // On loopback, only requests named for loopback: a web page elsewhere
    // that rebinds its own name to 127.0.0.1 cannot read the mesh through
    // the operator's browser.
    let hosts: Option<Arc<Vec<String>>> = address.ip().is_loopback().then(|| {
        let port = address.port();
        Arc::new(vec![
            address.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ])
    });
    tokio::select! {
        () = refresh => Ok(()),
        result = serve(listener, state, hosts) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Serves the page and its state, one HTTP/1 connection per task.
async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<RwLock<Bytes>>,
    hosts: Option<Arc<Vec<String>>>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let state = state.clone();
        let hosts = hosts.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let host_allowed = hosts.as_ref().is_none_or(|hosts| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .is_some_and(|h| hosts.iter().any(|allowed| allowed == h))
                });
                let response = if host_allowed {
                    respond(req.method(), req.uri().path(), &state)
                } else {
                    plain(
                        421,
                        "the dashboard answers requests for its own loopback address only\n",
                    )
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to `method` `path`: the embedded page, its state, or 404/405.
fn respond(
    method: &http::Method,
    path: &str,
    state: &RwLock<Bytes>,
) -> hyper::Response<Full<Bytes>> {
    if method != http::Method::GET {
        return plain(405, "the dashboard is read-only\n");
    }
    let (content_type, body) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX_HTML.as_bytes()),
        ),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            Bytes::from_static(APP_JS.as_bytes()),
        ),
        "/style.css" => (
            "text/css; charset=utf-8",
            Bytes::from_static(STYLE_CSS.as_bytes()),
        ),
        "/api/state" => (
            "application/json",
            state.read().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
        _ => return plain(404, "not found\n"),
    };
    let mut response = hyper::Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    // Nothing from elsewhere: no CDN, no inline script.
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static("default-src 'self'"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

fn plain(status: u16, text: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response
}

/// Health from a success rate: what the graph is coloured by.
fn health(success_rate: Option<f64>) -> &'static str {
    match success_rate {
        None => "idle",
        Some(rate) if rate >= 0.99 => "healthy",
        Some(rate) if rate >= 0.9 => "degraded",
        Some(_) => "failing",
    }
}

/// The page's state for the interval between `before` and `after`.
fn build(before: &Snapshot, after: &Snapshot, interval: Duration) -> DashboardState {
    let stat_args = |edges| StatArgs {
        kind: StatKind::Service,
        name: None,
        edges,
        window: interval,
        watch: false,
        output: OutputFormat::Table,
    };
    let services = compute(before, after, &stat_args(false));
    let mut names: std::collections::BTreeSet<String> =
        after.endpoints.iter().map(|e| e.service.clone()).collect();
    names.extend(after.routes.iter().map(|r| r.spec.destination.clone()));
    names.extend(services.iter().map(|s| s.name.clone()));
    if after.sidecars.iter().any(|s| s.gateway) {
        names.insert("gateway".to_owned());
    }
    let service_nodes = names
        .into_iter()
        .map(|name| {
            let stat = services.iter().find(|s| s.name == name);
            let success_rate = stat.and_then(|s| s.success_rate);
            let ejected = after.ejected.get(&name).map_or(0, |e| e.len());
            ServiceNode {
                calls_per_second: stat.map_or(0.0, |s| s.calls_per_second),
                p50_ms: stat.and_then(|s| s.p50_ms),
                p99_ms: stat.and_then(|s| s.p99_ms),
                instances: after.endpoints.iter().filter(|e| e.service == name).count(),
                ejected,
                health: if ejected > 0 && health(success_rate) == "healthy" {
                    "degraded"
                } else {
                    health(success_rate)
                },
                success_rate,
                name,
            }
        })
        .collect();
    let edges = compute(before, after, &stat_args(true))
        .into_iter()
        .filter_map(|stat| {
            let (from, to) = stat.name.split_once(" -> ")?;
            Some(Edge {
                from: from.to_owned(),
                to: to.to_owned(),
                calls_per_second: stat.calls_per_second,
                success_rate: stat.success_rate,
                health: health(stat.success_rate),
            })
        })
        .collect();
    let routes = after
        .routes
        .iter()
        .map(|route| RouteView {
            name: route.metadata.name.clone(),
            matches: route.path(),
            destination: route.spec.destination.clone(),
            exposure: if route.spec.exposure() == mesh::model::Exposure::Public {
                "public".to_owned()
            } else {
                "internal".to_owned()
            },
            split: route
                .spec
                .split
                .iter()
                .map(|s| (s.subset.clone(), s.weight))
                .collect(),
            rules: route.spec.rules.len(),
        })
        .collect();
    let endpoints = after
        .endpoints
        .iter()
        .map(|e| EndpointView {
            service: e.service.clone(),
            instance: e.instance.clone(),
            address: e.address.clone(),
            version: e.version.clone(),
            weight: e.weight,
            ejected: after
                .ejected
                .get(&e.service)
                .is_some_and(|out| out.contains(&e.address)),
        })
        .collect();
    let proxies = after
        .sidecars
        .iter()
        .map(|s| ProxyView {
            service: if s.gateway {
                "gateway".to_owned()
            } else {
                s.service.clone()
            },
            instance: s.instance.clone(),
            pushed_version: s.pushed_version,
            acked_version: s.acked_version,
            state: if !s.nack_reason.is_empty() {
                "NACKED"
            } else if s.acked_version < s.pushed_version {
                "STALE"
            } else {
                "SYNCED"
            },
            nack_reason: s.nack_reason.clone(),
        })
        .collect();
    DashboardState {
        interval_seconds: interval.as_secs_f64(),
        updated_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        problem: None,
        services: service_nodes,
        edges,
        routes,
        endpoints,
        proxies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_by_success_rate() {
        assert_eq!(health(None), "idle");
        assert_eq!(health(Some(1.0)), "healthy");
        assert_eq!(health(Some(0.95)), "degraded");
        assert_eq!(health(Some(0.5)), "failing");
    }

    #[test]
    fn the_page_is_embedded_and_read_only() {
        let state = RwLock::new(Bytes::from_static(b"{}"));
        let page = respond(&http::Method::GET, "/", &state);
        assert_eq!(page.status(), 200);
        assert!(INDEX_HTML.contains("app.js") && !INDEX_HTML.contains("http"));
        assert_eq!(
            respond(&http::Method::POST, "/api/state", &state).status(),
            405
        );
        assert_eq!(respond(&http::Method::GET, "/nope", &state).status(), 404);
        let api = respond(&http::Method::GET, "/api/state", &state);
        assert_eq!(
            api.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
    }
}
