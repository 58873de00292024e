//! The client half: every call on a channel gets a client span, child of
//! the current span, whose context goes out in `traceparent` and
//! `tracestate`, so the callee's spans join the caller's trace.

use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{rpc_span, RpcFuture, Side};
use crate::telemetry::propagation::inject_context;

/// Wraps a client channel (`ClientSpanLayer.layer(channel)`, then build
/// the generated clients on it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSpanLayer;

impl<S> tower_layer::Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientSpan { inner }
    }
}

/// The service made by [`ClientSpanLayer`]: a channel whose calls are
/// traced. Cheap to clone when the channel is.
#[derive(Debug, Clone)]
pub struct ClientSpan<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for ClientSpan<S>
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

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let span = rpc_span(Side::Client, request.uri().path(), None);
        let mut cx = span.context();
        if !cx.span().span_context().is_valid() {
            // No tracing layer (or the span is disabled): still pass on the
            // trace we are part of, if any.
            cx = opentelemetry::Context::current();
        }
        inject_context(&cx, request.headers_mut());
        let future = span.in_scope(|| self.inner.call(request));
        RpcFuture::new(future, span, Side::Client)
    }
}
