//! The server half: every call a tonic server takes runs in a server span
//! that continues the caller's trace (W3C `traceparent` and `tracestate`).

use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt;
use tracing::Span;

use super::{rpc_span, RpcFuture, Side};
use crate::telemetry::propagation::extract_context;

/// Health checks come every few seconds from every probe and sidecar: as
/// traces they would bury the calls people look for.
const UNTRACED_PREFIX: &str = "/grpc.health.v1.Health/";

/// Wraps a tonic server (`Server::builder().layer(ServerSpanLayer)`) so
/// every call but health checks gets a server span, child of the caller's
/// span when the request carries one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl<S> tower_layer::Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpan { inner }
    }
}

/// The service made by [`ServerSpanLayer`].
#[derive(Debug, Clone)]
pub struct ServerSpan<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for ServerSpan<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<super::RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let span = if path.starts_with(UNTRACED_PREFIX) {
            Span::none()
        } else {
            let caller = extract_context(request.headers());
            let caller = caller.span().span_context().is_valid().then_some(caller);
            rpc_span(Side::Server, path, caller)
        };
        let future = span.in_scope(|| self.inner.call(request));
        RpcFuture::new(future, span, Side::Server)
    }
}
