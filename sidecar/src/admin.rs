//! The admin HTTP API: `/live`, `/ready`, `/config`, `/endpoints` (each
//! endpoint's connection and breaker state), `/identity` (this proxy's
//! SPIFFE ID, certificate validity and trust bundle version: never key
//! material), `/metrics`, and `/drain`
//! (leave the mesh ahead of a shutdown: the Kubernetes preStop hook). For people
//! (curl), Kubernetes probes and Prometheus.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::identity::{Identity, IdentityView};
use crate::metrics::{Metrics, StateSnapshot};
use crate::table::LiveTable;

/// What `/drain` does: deregister now, answer after the delay.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Cancelling it ends the discovery stream, which deregisters.
    pub deregister: tokio_util::sync::CancellationToken,
    /// How long peers get to learn of it.
    pub delay: Duration,
}

/// How long `/ready` waits for the app's health answer.
const APP_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// The admin service; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<AdminInner>,
}

struct AdminInner {
    table: Arc<LiveTable>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// The local app's health service (sidecar mode); `None` at a gateway.
    app_health: Option<HealthClient<Channel>>,
    /// This proxy's identity; `None` with mTLS off.
    identity: Option<Arc<Identity>>,
}

impl Admin {
    /// An admin API over the proxy's table and metrics. `app` is the local
    /// app's address, whose gRPC health decides readiness.
    pub fn new(
        table: Arc<LiveTable>,
        metrics: Arc<Metrics>,
        app: Option<std::net::SocketAddr>,
        drain: Drain,
        identity: Option<Arc<Identity>>,
    ) -> Self {
        let app_health = app.map(|addr| {
            // Lazy: the app may start after its sidecar.
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a socket address is a valid URI")
                .connect_timeout(APP_HEALTH_TIMEOUT)
                .connect_lazy();
            HealthClient::new(channel)
        });
        Self {
            inner: Arc::new(AdminInner {
                table,
                metrics,
                drain,
                app_health,
                identity,
            }),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/drain" => {
                // Leave the mesh, then answer once peers have had time to
                // hear it; the listeners keep serving meanwhile.
                let drain = &self.inner.drain;
                if !drain.deregister.is_cancelled() {
                    tracing::info!("drain requested: deregistering");
                    drain.deregister.cancel();
                    tokio::time::sleep(drain.delay).await;
                }
                text(StatusCode::OK, "drained\n".into())
            }
            "/ready" => match self.app_ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/config" => {
                let table = self.inner.table.load();
                let body = serde_json::json!({
                    "version": table.version(),
                    "endpoints": table.source().endpoints,
                    "routes": table.source().routes,
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
            "/identity" => {
                let view = match &self.inner.identity {
                    Some(identity) => identity.view(),
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
            "/endpoints" => {
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
            "/metrics" => {
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
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live, /ready, /config, /endpoints, /identity, /metrics\n".into(),
            ),
        }
    }

    /// Ready once a table is loaded, a certificate is installed (mTLS), and
    /// the local app answers SERVING (a gateway has no app).
    async fn app_ready(&self) -> Result<(), String> {
        if !self.inner.table.is_loaded() {
            return Err("no routing table yet".into());
        }
        if self.inner.drain.deregister.is_cancelled() {
            return Err("draining".into());
        }
        if let Some(identity) = &self.inner.identity {
            if identity.tls().credential().is_none() {
                return Err("no certificate yet".into());
            }
        }
        let Some(client) = &self.inner.app_health else {
            return Ok(());
        };
        let mut client = client.clone();
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(APP_HEALTH_TIMEOUT, check).await {
            Err(_) => Err("app health check timed out".into()),
            Ok(Err(status)) => Err(format!("app health check failed: {}", status.message())),
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(reply)) => Err(format!("app reports status {}", reply.get_ref().status)),
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
