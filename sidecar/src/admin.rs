//! The admin HTTP API, on two listeners.
//!
//! - Admin (loopback by default): `/live`, `/ready`, `/config`,
//!   `/endpoints` (each endpoint's connection and breaker state),
//!   `/identity` (this proxy's SPIFFE ID, certificate validity and trust
//!   bundle version: never key material), `/metrics`, and `/drain`: `POST`
//!   leaves the mesh ahead of a shutdown (the Kubernetes preStop hook),
//!   `DELETE` rejoins it. For people (curl) on the host.
//! - Probes (every interface): `GET`/`HEAD` of `/live`, `/ready` and
//!   `/metrics`, for the kubelet and Prometheus; nothing that changes
//!   anything or shows the table.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::app_health::AppHealth;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::identity::{Identity, IdentityView};
use crate::membership::Membership;
use crate::metrics::{Metrics, StateSnapshot};
use crate::table::LiveTable;

/// What `/drain` does: leave the mesh now, answer after the delay.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Registered or drained.
    pub membership: Arc<Membership>,
    /// How long peers get to learn of it.
    pub delay: Duration,
}

/// Which listener a request came in on: it decides what may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Loopback: everything.
    Admin,
    /// Reachable from the network: health and metrics, read-only.
    Probe,
}

/// What a request asks for, once its listener, path and method allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Live,
    Ready,
    Config,
    Endpoints,
    Identity,
    Metrics,
    Drain,
    Undrain,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    Do(Action),
    NotFound,
    /// The path exists; the methods it takes (the `Allow` header, RFC
    /// 9110 section 15.5.6).
    MethodNotAllowed(&'static str),
}

const READ_ONLY: &str = "GET, HEAD";

fn route(listener: Listener, method: &Method, path: &str) -> Routed {
    let read = |action| {
        if method == Method::GET || method == Method::HEAD {
            Routed::Do(action)
        } else {
            Routed::MethodNotAllowed(READ_ONLY)
        }
    };
    match (listener, path) {
        (_, "/live") => read(Action::Live),
        (_, "/ready") => read(Action::Ready),
        (_, "/metrics") => read(Action::Metrics),
        (Listener::Probe, _) => Routed::NotFound,
        (Listener::Admin, "/config") => read(Action::Config),
        (Listener::Admin, "/endpoints") => read(Action::Endpoints),
        (Listener::Admin, "/identity") => read(Action::Identity),
        (Listener::Admin, "/drain") => match *method {
            Method::POST => Routed::Do(Action::Drain),
            Method::DELETE => Routed::Do(Action::Undrain),
            _ => Routed::MethodNotAllowed("POST, DELETE"),
        },
        (Listener::Admin, _) => Routed::NotFound,
    }
}

/// How long `/ready` waits for the app's health answer.
pub const APP_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// The admin service of one listener; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<AdminInner>,
    listener: Listener,
}

struct AdminInner {
    table: Arc<LiveTable>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// The local app's readiness check (sidecar mode); `None` at a gateway.
    app_health: Option<AppHealth>,
    /// This proxy's identity; `None` with mTLS off.
    identity: Option<Arc<Identity>>,
    /// The mesh-wide mode as pushed (strict or permissive), for `/identity`.
    mode: crate::server::InboundMode,
}

impl Admin {
    /// An admin API over the proxy's table and metrics. `app_health`
    /// checks the local app, whose readiness is the sidecar's.
    pub fn new(
        table: Arc<LiveTable>,
        metrics: Arc<Metrics>,
        app_health: Option<AppHealth>,
        drain: Drain,
        identity: Option<Arc<Identity>>,
        mode: crate::server::InboundMode,
    ) -> Self {
        Self {
            inner: Arc::new(AdminInner {
                table,
                metrics,
                drain,
                app_health,
                identity,
                mode,
            }),
            listener: Listener::Admin,
        }
    }

    /// The same API as the probe listener serves it.
    pub fn probes(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            listener: Listener::Probe,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let action = match route(self.listener, req.method(), req.uri().path()) {
            Routed::Do(action) => action,
            Routed::NotFound => {
                let paths = match self.listener {
                    Listener::Admin => {
                        "/live, /ready, /config, /endpoints, /identity, /metrics, POST|DELETE /drain"
                    }
                    Listener::Probe => "/live, /ready, /metrics",
                };
                return text(StatusCode::NOT_FOUND, format!("not found; try {paths}\n"));
            }
            Routed::MethodNotAllowed(allow) => {
                let mut response = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method not allowed; allowed: {allow}\n"),
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static(allow));
                return response;
            }
        };
        match action {
            Action::Live => text(StatusCode::OK, "live\n".into()),
            Action::Drain => {
                // Leave the mesh, then answer once peers have had time to
                // hear it; the listeners keep serving meanwhile.
                let drain = &self.inner.drain;
                if drain.membership.drain() {
                    tracing::info!("drain requested: deregistering");
                    tokio::time::sleep(drain.delay).await;
                }
                text(StatusCode::OK, "drained\n".into())
            }
            Action::Undrain => match self.inner.drain.membership.undrain() {
                Ok(changed) => {
                    if changed {
                        tracing::info!("drain undone: registering again");
                    }
                    text(StatusCode::OK, "registering\n".into())
                }
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            },
            Action::Ready => match self.app_ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            Action::Config => {
                let table = self.inner.table.load();
                let body = serde_json::json!({
                    "version": table.version(),
                    "endpoints": table.source().endpoints,
                    "routes": table.source().routes,
                    // Public keys only, as the control plane stored them.
                    "jwks": table.source().jwks,
                });
                let mut response = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Action::Identity => {
                let view = match &self.inner.identity {
                    Some(identity) => {
                        let mut view = identity.view();
                        // Permissive widens only the inbound port; the
                        // certificate and checks are the same.
                        view.mtls = self.inner.mode.get().as_str();
                        view
                    }
                    None => IdentityView {
                        mtls: "off",
                        identity: None,
                        certificate: None,
                        trust_bundle_version: None,
                        trust_anchors: None,
                    },
                };
                json(&view)
            }
            Action::Endpoints => {
                let views = self.inner.table.pool().views();
                let mut response = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&views).unwrap_or_default(),
                )));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Action::Metrics => {
                if let Some(identity) = &self.inner.identity {
                    identity.update_gauges();
                }
                let table = &self.inner.table;
                let views = table.pool().views();
                let state = StateSnapshot {
                    ejected_endpoints: views
                        .iter()
                        .filter(|v| v.breaker.state != "healthy")
                        .count(),
                    upstream_connections: views
                        .iter()
                        .filter(|v| v.connection == "connected")
                        .count(),
                    in_flight: views.iter().map(|v| v.in_flight).sum(),
                    table_version: table.load().version().parse().unwrap_or(0),
                    table_age: table.age(),
                };
                let mut response = text(StatusCode::OK, self.inner.metrics.render(&state));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
        }
    }

    /// Ready once a table is loaded, a certificate is installed (mTLS), and
    /// the local app passes its check (`--app-health`; a gateway has no app).
    async fn app_ready(&self) -> Result<(), String> {
        if !self.inner.table.is_loaded() {
            return Err("no routing table yet".into());
        }
        if self.inner.drain.membership.is_out() {
            return Err("draining".into());
        }
        if let Some(identity) = &self.inner.identity {
            if identity.tls().credential().is_none() {
                return Err("no certificate yet".into());
            }
        }
        match &self.inner.app_health {
            Some(app) => app.check().await,
            None => Ok(()),
        }
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

impl hyper::service::Service<Request<Incoming>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(listener: Listener, method: &str, path: &str) -> Routed {
        route(listener, &method.parse().unwrap(), path)
    }

    #[test]
    fn probes_answer_health_and_metrics_only_and_only_to_reads() {
        for (path, action) in [
            ("/live", Action::Live),
            ("/ready", Action::Ready),
            ("/metrics", Action::Metrics),
        ] {
            for method in ["GET", "HEAD"] {
                assert_eq!(
                    routed(Listener::Probe, method, path),
                    Routed::Do(action),
                    "{method} {path}"
                );
            }
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
                assert_eq!(
                    routed(Listener::Probe, method, path),
                    Routed::MethodNotAllowed("GET, HEAD"),
                    "{method} {path}"
                );
            }
        }
        for path in [
            "/drain",
            "/config",
            "/endpoints",
            "/identity",
            "/",
            "/live/",
            "/x",
        ] {
            for method in ["GET", "POST", "DELETE"] {
                assert_eq!(
                    routed(Listener::Probe, method, path),
                    Routed::NotFound,
                    "{method} {path} on the probe port"
                );
            }
        }
    }

    #[test]
    fn admin_reads_with_get_and_head() {
        for (path, action) in [
            ("/live", Action::Live),
            ("/ready", Action::Ready),
            ("/config", Action::Config),
            ("/endpoints", Action::Endpoints),
            ("/identity", Action::Identity),
            ("/metrics", Action::Metrics),
        ] {
            assert_eq!(routed(Listener::Admin, "GET", path), Routed::Do(action));
            assert_eq!(routed(Listener::Admin, "HEAD", path), Routed::Do(action));
            assert_eq!(
                routed(Listener::Admin, "POST", path),
                Routed::MethodNotAllowed("GET, HEAD"),
                "POST {path}"
            );
        }
        assert_eq!(routed(Listener::Admin, "GET", "/nope"), Routed::NotFound);
    }

    #[test]
    fn drain_is_post_and_undone_by_delete() {
        assert_eq!(
            routed(Listener::Admin, "POST", "/drain"),
            Routed::Do(Action::Drain)
        );
        assert_eq!(
            routed(Listener::Admin, "DELETE", "/drain"),
            Routed::Do(Action::Undrain)
        );
        for method in ["GET", "HEAD", "PUT"] {
            assert_eq!(
                routed(Listener::Admin, method, "/drain"),
                Routed::MethodNotAllowed("POST, DELETE"),
                "{method} /drain"
            );
        }
    }
}
