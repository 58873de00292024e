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
//! - [`server`]: [`ServerSpanLayer`].
//! - [`client`]: [`ClientSpanLayer`].
//! - [`status`]: reading `grpc-status` and deciding what is an error.
//! - [`future`] and [`body`]: the response future and body that carry the
//!   span to the end of the call.

mod body;
mod client;
mod future;
mod server;
mod status;

pub use body::RpcBody;
pub use client::{ClientSpan, ClientSpanLayer};
pub use future::RpcFuture;
pub use server::{ServerSpan, ServerSpanLayer};

use tracing::Span;

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

/// A new span for one call on `path`; its parent is the current span
/// (the server layer may replace it with the caller's context before
/// the span is first entered).
fn rpc_span(side: Side, path: &str) -> Span {
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
    tracing::info_span!(
        "grpc",
        otel.name = %name,
        otel.kind = kind,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
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
