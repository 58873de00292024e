//! The response body the proxy sends back: the upstream's, frame for frame,
//! watched on the way through. Its trailers' `grpc-status` is the call's
//! outcome, fed to the endpoint's breaker; when the call's deadline passes
//! mid-stream, the proxy ends the stream itself with DEADLINE_EXCEEDED and
//! drops the upstream stream (which cancels it upstream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::concurrency::Permit;
use crate::outcome::{CallGuard, Outcome};
use crate::replay_body::BodyError;

/// An upstream response body on its way to the client.
pub struct ResponseBody {
    inner: Option<Incoming>,
    deadline: Option<Pin<Box<Sleep>>>,
    guard: Option<CallGuard>,
    /// The call's place under its route's concurrency cap, held until the
    /// response ends.
    _permit: Option<Permit>,
}

impl ResponseBody {
    /// Watches `inner`; `guard` hears the outcome; `deadline` ends it.
    pub fn new(
        inner: Incoming,
        guard: Option<CallGuard>,
        permit: Option<Permit>,
        deadline: Option<Pin<Box<Sleep>>>,
    ) -> Self {
        Self {
            inner: Some(inner),
            deadline,
            guard,
            _permit: permit,
        }
    }

    fn report(&mut self, outcome: Outcome) {
        if let Some(guard) = self.guard.as_mut() {
            guard.report(outcome);
        }
    }
}

/// The `grpc-status` in a header map, if any (0 = OK).
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("4"));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static("deadline exceeded while streaming the response"),
    );
    trailers.insert(
        crate::proxy_error::ERROR_REASON_HEADER,
        HeaderValue::from_static("deadline-exceeded"),
    );
    trailers
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.inner = None; // RST_STREAM(CANCEL) upstream
                this.deadline = None;
                this.guard = None;
                return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers()))));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.report(Outcome::Reset(error.to_string()));
                this.inner = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.report(Outcome::Status(code));
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}
