//! The response body of both RPC layers: keeps the span open until the
//! call's last frame, and records the status from the trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tracing::Span;

use super::{status, Side};

pin_project_lite::pin_project! {
    /// A response body that ends its call's span when it ends (or is
    /// dropped).
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        span: Span,
        side: Side,
        recorded: bool,
    }
}

impl<B> RpcBody<B> {
    pub(crate) fn new(inner: B, span: Span, side: Side, recorded: bool) -> Self {
        Self {
            inner,
            span,
            side,
            recorded,
        }
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // Entered so the span's end is the stream's end, not the handler's.
        let _entered = this.span.enter();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if !*this.recorded {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some((code, message)) =
                        frame.trailers_ref().and_then(status::grpc_status)
                    {
                        status::record(this.span, *this.side, code, &message);
                        *this.recorded = true;
                    }
                }
                Some(Err(error)) => {
                    status::record_failure(this.span, &error.to_string());
                    *this.recorded = true;
                }
                None => {}
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
