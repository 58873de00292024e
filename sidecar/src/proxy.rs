//! The forwarding service behind every gRPC listener: pick where a call
//! goes, hand it to that upstream's HTTP/2 connection, pass the response
//! back. Bodies and trailers stream through untouched; protobuf is never
//! decoded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::uri::{Scheme, Uri};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use tower::ServiceExt;

use crate::deadline;
use crate::mesh_reflection::MeshReflection;
use crate::metrics::{Direction, Metrics, RouteCounters};
use crate::proxy_error::{ProxyBody, ProxyError};
use crate::table::{LiveTable, Target};
use crate::upstream::Upstream;

/// Where a listener's calls go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Routed by the table (outbound and gateway ingress).
    Routed(Arc<LiveTable>),
    /// Always the local app (inbound).
    App {
        /// The app's connection slot.
        upstream: Arc<Upstream>,
        /// Counters of calls to the app.
        counters: RouteCounters,
    },
}

/// A cheap-to-clone handle, one per listener, shared by its connections.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    direction: Direction,
    destination: Destination,
    /// The gateway's own mesh-wide reflection (control-plane mode).
    reflection: Option<Arc<MeshReflection>>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// A proxy for one listener. With `reflection`, reflection calls are
    /// answered by the proxy itself instead of routed.
    pub fn new(
        direction: Direction,
        destination: Destination,
        reflection: Option<Arc<MeshReflection>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(ProxyInner {
                direction,
                destination,
                reflection,
                metrics,
            }),
        }
    }

    async fn handle(self, req: Request<Incoming>) -> Response<ProxyBody> {
        match self.forward(req).await {
            Ok(response) => response,
            Err(error) => {
                let direction = self.inner.direction;
                tracing::debug!(direction = direction.as_str(), %error, "proxy error");
                self.inner
                    .metrics
                    .record_proxy_error(direction, error.reason);
                error.into_response()
            }
        }
    }

    async fn forward(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(reflection) = &self.inner.reflection {
            if MeshReflection::handles(req.uri().path()) {
                if let Some(service) = reflection.current() {
                    let Ok(response) = service.oneshot(req).await;
                    return Ok(response.map(Either::Right));
                }
            }
        }
        let target = match &self.inner.destination {
            Destination::Routed(table) => table.load().route(req.uri().path(), req.headers())?,
            Destination::App { upstream, counters } => Target {
                upstream: upstream.clone(),
                counters: counters.clone(),
                timeout: None,
            },
        };
        let upstream = &target.upstream;
        let mut sender = upstream
            .sender()
            .await
            .map_err(|e| ProxyError::connect_failed(upstream.addr(), e))?;
        target.counters.record_request();

        // The upstream sees its own authority, as if called directly.
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(upstream.authority().clone());
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::malformed_path(&e.to_string()))?;

        // The caller's deadline and the route's: the smaller wins, and the
        // upstream is told what is left of it.
        let caller = req
            .headers()
            .get(deadline::GRPC_TIMEOUT)
            .and_then(deadline::parse);
        let budget = match (caller, target.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sent = sender.send_request(match budget {
            Some(budget) => {
                req.headers_mut()
                    .insert(deadline::GRPC_TIMEOUT, deadline::encode(budget));
                req
            }
            None => req,
        });
        let response = match budget {
            // Dropping the response future on expiry resets the upstream
            // stream (RST_STREAM CANCEL): the upstream sees the cancellation.
            Some(budget) => tokio::time::timeout(budget, sent)
                .await
                .map_err(|_| ProxyError::deadline_exceeded(budget, caller == Some(budget)))?,
            None => sent.await,
        }
        .map_err(|e| ProxyError::upstream_reset(upstream.addr(), e))?;
        Ok(response.map(Either::Left))
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
