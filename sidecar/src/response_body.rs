//! The response body the proxy sends back: the upstream's, frame for frame,
//! watched on the way through. Its trailers' `grpc-status` is the call's
//! outcome, fed to the endpoint's breaker; when the call's deadline passes
//! mid-stream, the proxy ends the stream itself with DEADLINE_EXCEEDED and
//! drops the upstream stream (which cancels it upstream).
//!
//! When the upstream stream breaks after the response headers went to the
//! client (a reset, the connection lost), the proxy ends the client's
//! stream itself with trailers `grpc-status: 14` (UNAVAILABLE) and
//! `x-mesh-error: upstream-reset`, as its metrics count it. Passing the
//! error on would make the server reset the client's stream (RST_STREAM),
//! which gRPC clients report as INTERNAL or CANCELLED, not as what it is.
//!
//! Frames the proxy read ahead (to look for a retryable status in the
//! trailers before committing to a response) are sent first, watched the
//! same way.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use std::sync::Arc;

use mesh::telemetry::rpc::status;
use mesh::telemetry::rpc::Side;
use tokio::time::Instant;
use tracing::Span;

use crate::concurrency::Permit;
use crate::metrics::{Direction, GrpcPath, Metrics};
use crate::outcome::{CallGuard, Outcome};
use crate::replay_body::BodyError;
use crate::upstream::StreamSlot;

/// An upstream response body on its way to the client (`B` is generic
/// for tests; the proxy's is hyper's [`Incoming`]).
pub struct ResponseBody<B = Incoming> {
    /// Frames read ahead, sent before the rest of `inner`.
    held: VecDeque<Frame<Bytes>>,
    inner: Option<B>,
    deadline: Option<Pin<Box<Sleep>>>,
    guard: Option<CallGuard>,
    observer: Option<Observer>,
    /// The call's place under its route's concurrency cap, held until the
    /// response ends.
    _permit: Option<Permit>,
    /// The stream's place on the upstream connection, held until the
    /// response ends.
    _slot: Option<StreamSlot>,
}

impl<B> ResponseBody<B> {
    /// Watches `inner`; `guard` hears the outcome; `deadline` ends it;
    /// `permit` and `slot` are held until it ends.
    pub fn new(
        inner: B,
        guard: Option<CallGuard>,
        permit: Option<Permit>,
        deadline: Option<Pin<Box<Sleep>>>,
        observer: Option<Observer>,
        slot: Option<StreamSlot>,
    ) -> Self {
        Self {
            held: VecDeque::new(),
            inner: Some(inner),
            deadline,
            guard,
            observer,
            _permit: permit,
            _slot: slot,
        }
    }

    /// The same body with `held` (frames already read from `inner`) first.
    pub fn with_held(mut self, held: VecDeque<Frame<Bytes>>) -> Self {
        self.held = held;
        self
    }

    /// Watches a frame on its way out: trailers end the call.
    fn observe(&mut self, frame: &Frame<Bytes>) {
        if let Some(trailers) = frame.trailers_ref() {
            if let Some(code) = grpc_status(trailers) {
                self.report(Outcome::Status(code));
                let message = status_message(trailers);
                self.finish(code, &message);
            }
        }
    }

    fn finish(&mut self, code: i32, message: &str) {
        if let Some(observer) = self.observer.take() {
            observer.finish(code, message);
        }
    }

    /// Ends the call with the proxy's own status (trailers it made).
    fn finish_with_error(&mut self, code: i32, reason: &'static str, message: &str) {
        if let Some(observer) = self.observer.take() {
            observer
                .metrics
                .record_proxy_error(observer.direction, reason);
            observer.finish(code, message);
        }
    }

    fn report(&mut self, outcome: Outcome) {
        if let Some(guard) = self.guard.as_mut() {
            guard.report(outcome);
        }
    }
}

/// What is recorded when a call ends: its metrics and its spans. Holding
/// it keeps the call's spans open until the response is done.
pub struct Observer {
    /// Where the call is counted.
    pub metrics: Arc<Metrics>,
    /// Its listener.
    pub direction: Direction,
    /// Its destination mesh service.
    pub service: Arc<str>,
    /// Its gRPC path.
    pub path: GrpcPath,
    /// When it arrived.
    pub started: Instant,
    /// The request span.
    pub span: Span,
    /// The request span's side (server for inbound and ingress).
    pub side: Side,
    /// The span of the attempt that answered.
    pub attempt: Span,
}

impl Observer {
    /// Records the call's end with gRPC status `code`.
    pub fn finish(self, code: i32, message: &str) {
        self.metrics.record_response(
            self.direction,
            &self.service,
            &self.path,
            code,
            self.started.elapsed(),
        );
        status::record(&self.span, self.side, i64::from(code), message);
        status::record(&self.attempt, Side::Client, i64::from(code), message);
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        self.finish(1, "cancelled by the client");
    }
}

/// The percent-decoded `grpc-message`, if any.
pub fn status_message(headers: &HeaderMap) -> String {
    status::grpc_status(headers)
        .map(|(_, message)| message)
        .unwrap_or_default()
}

/// The `grpc-status` in a header map, if any (0 = OK).
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The trailers that end a client's stream whose upstream stream broke.
pub fn reset_trailers(message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    let encoded = crate::call::error::percent_encode(message);
    trailers.insert(
        "grpc-message",
        HeaderValue::from_str(&encoded)
            .unwrap_or_else(|_| HeaderValue::from_static("upstream reset the stream")),
    );
    trailers.insert(
        crate::call::error::ERROR_REASON_HEADER,
        HeaderValue::from_static("upstream-reset"),
    );
    trailers
}

fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("4"));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static("deadline exceeded while streaming the response"),
    );
    trailers.insert(
        crate::call::error::ERROR_REASON_HEADER,
        HeaderValue::from_static("deadline-exceeded"),
    );
    trailers
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(frame) = this.held.pop_front() {
            this.observe(&frame);
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.inner = None; // RST_STREAM(CANCEL) upstream
                this.deadline = None;
                this.guard = None;
                this.finish_with_error(
                    4,
                    "deadline-exceeded",
                    "deadline exceeded while streaming the response",
                );
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
                this.finish(2, "the response ended without a grpc-status");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                // Headers (and maybe data) went to the client already: end
                // its stream with an honest status instead of a reset.
                let detail = error.to_string();
                this.report(Outcome::Reset(detail.clone()));
                let message = format!("upstream reset the stream: {detail}");
                tracing::debug!(%message, "upstream stream broke mid-response");
                this.finish_with_error(14, "upstream-reset", &message);
                this.inner = None;
                this.deadline = None;
                this.guard = None;
                Poll::Ready(Some(Ok(Frame::trailers(reset_trailers(&message)))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.observe(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn body(
        frames: Vec<Result<Frame<Bytes>, io::Error>>,
    ) -> impl Body<Data = Bytes, Error = io::Error> + Unpin {
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn an_upstream_failure_after_headers_ends_the_stream_with_unavailable_trailers() {
        let upstream = body(vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection lost",
            )),
        ]);
        let response = ResponseBody::new(upstream, None, None, None, None, None);
        // No error reaches the server (which would reset the client's stream).
        let collected = response.collect().await.expect("ends with trailers");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(
            trailers[crate::call::error::ERROR_REASON_HEADER],
            "upstream-reset"
        );
        let message = trailers["grpc-message"].to_str().unwrap();
        assert!(message.contains("connection lost"), "{message}");
        assert_eq!(collected.to_bytes(), "abc");
    }

    #[tokio::test]
    async fn held_frames_go_first_and_their_trailers_end_the_call() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let held = VecDeque::from([
            Frame::data(Bytes::from_static(b"held ")),
            Frame::data(Bytes::from_static(b"ahead ")),
        ]);
        let rest = body(vec![
            Ok(Frame::data(Bytes::from_static(b"then the rest"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let response = ResponseBody::new(rest, None, None, None, None, None).with_held(held);
        assert!(!response.is_end_stream());
        let collected = response.collect().await.expect("whole");
        assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "held ahead then the rest");
    }
}
