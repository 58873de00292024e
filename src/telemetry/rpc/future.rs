//! The response future of both RPC layers: runs the inner call inside the
//! span, records a trailers-only status from the response headers, and
//! hands the span on to the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::Span;

use super::body::RpcBody;
use super::{status, Side};

pin_project_lite::pin_project! {
    /// Response future of [`super::ServerSpan`] and [`super::ClientSpan`].
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        side: Side,
    }
}

impl<F> RpcFuture<F> {
    pub(crate) fn new(inner: F, span: Span, side: Side) -> Self {
        Self { inner, span, side }
    }
}

impl<F, B, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<http::Response<RpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => {
                // A trailers-only answer (usually an error) carries its
                // status in the headers; otherwise it comes in the trailers.
                let known = status::grpc_status(response.headers());
                if let Some((code, message)) = &known {
                    status::record(this.span, *this.side, *code, message);
                }
                let span = this.span.clone();
                let side = *this.side;
                Poll::Ready(Ok(
                    response.map(|body| RpcBody::new(body, span, side, known.is_some()))
                ))
            }
            Err(error) => {
                status::record_failure(this.span, &error.to_string());
                Poll::Ready(Err(error))
            }
        }
    }
}
