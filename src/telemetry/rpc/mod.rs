//! Trace context over gRPC, written once for every service: a tower layer
//! for tonic servers that continues the caller's trace in a server span,
//! and one for client channels that makes a client span and puts its
//! context on the outgoing call.
//!
//! Spans follow the OpenTelemetry RPC conventions: named
//! `package.Service/Method`, with `rpc.system`, `rpc.service`,
//! `rpc.method` and, once the call's status is known (in the response
//! headers of a trailers-only answer, else in the trailers),
//! `rpc.grpc.status_code`. A span lasts until the response body ends, so
//! a streaming call's span covers the stream.
//!
//! - `server`: [`ServerSpanLayer`], the callee's half.
//! - `client`: [`ClientSpanLayer`], the caller's half.
//! - `status`: reading `grpc-status` and deciding what is an error.
//! - `future` and `body`: [`RpcFuture`] and [`RpcBody`], which carry the
//!   span to the end of the call.

mod body;
mod client;
mod future;
mod server;
pub mod status;

pub use body::RpcBody;
pub use client::{ClientSpan, ClientSpanLayer};
pub use future::RpcFuture;
pub use server::{ServerSpan, ServerSpanLayer};

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Which end of a call a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The callee: a span of kind server.
    Server,
    /// The caller: a span of kind client.
    Client,
}

/// The gRPC service and method of a request path (`/pkg.Service/Method`);
/// a path that is not gRPC-shaped is kept whole as the service.
pub fn service_and_method(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => (service, method),
        _ => (trimmed, ""),
    }
}

/// A new span for one call on `path`, child of `parent` (the caller's
/// context, on a server) or else of the current span.
///
/// Only the span's name and kind are `tracing` fields (they must be, for
/// tracing-opentelemetry); the `rpc.*` attributes go to the OpenTelemetry
/// span alone, so log lines stay short.
pub fn rpc_span(side: Side, path: &str, parent: Option<opentelemetry::Context>) -> Span {
    let (service, method) = service_and_method(path);
    let name = if method.is_empty() {
        service.to_owned()
    } else {
        format!("{service}/{method}")
    };
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    let span = tracing::info_span!("grpc", otel.name = %name, otel.kind = kind);
    if let Some(parent) = parent {
        // Before anything starts the span: the parent is fixed when it does.
        let _ = span.set_parent(parent);
    }
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service.to_owned());
    span.set_attribute("rpc.method", method.to_owned());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            service_and_method("/shop.orders.v1.OrdersService/PlaceOrder"),
            ("shop.orders.v1.OrdersService", "PlaceOrder")
        );
        assert_eq!(service_and_method("/health"), ("health", ""));
        assert_eq!(service_and_method("/a/"), ("a/", ""));
    }
}
