//! What a connection's supervisor needs to know to close it: whether the
//! client has sent anything yet, and whether any call is in flight and
//! since when. Fed by a thin IO wrapper (bytes read) and a service wrapper
//! (calls start and end, a call ending when its response body does).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Calls a connection must have made before its share of premature
/// resets is judged (Envoy's `premature_reset_total_stream_count`).
const PREMATURE_RESET_MIN_CALLS: u64 = 500;
/// A call the client cancels younger than this is a premature reset.
const PREMATURE_RESET_MAX_AGE: Duration = Duration::from_secs(1);

/// Shared between a connection's IO, its service and its supervisor.
#[derive(Debug)]
pub(super) struct Activity {
    born: Instant,
    spoke: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` of the last call start or end.
    last_change_ms: AtomicU64,
    calls: AtomicU64,
    premature_resets: AtomicU64,
    /// Woken when the client has reset too many calls (HTTP/2 rapid reset).
    abusive: tokio::sync::Notify,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            spoke: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            premature_resets: AtomicU64::new(0),
            abusive: tokio::sync::Notify::new(),
        })
    }

    /// Resolves once the client has cancelled more than half of at least
    /// [`PREMATURE_RESET_MIN_CALLS`] calls within a second of opening
    /// them: the pattern of HTTP/2 rapid reset (CVE-2023-44487), which no
    /// stream limit catches because every stream is gone at once.
    pub(super) async fn rapid_resets(&self) {
        self.abusive.notified().await;
    }

    fn call_cancelled_early(&self) {
        let premature = self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let calls = self.calls.load(Ordering::Relaxed);
        if calls >= PREMATURE_RESET_MIN_CALLS && premature * 2 > calls {
            self.abusive.notify_one();
        }
    }

    pub(super) fn born(&self) -> Instant {
        self.born
    }

    /// True once the client sent any byte after the handshake.
    pub(super) fn spoke(&self) -> bool {
        self.spoke.load(Ordering::Relaxed)
    }

    /// `None` while a call is in flight; else when the last one ended (or
    /// the connection was born).
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_change_ms.load(Ordering::Relaxed);
        Some(self.born + Duration::from_millis(ms))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    fn call_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight {
            activity: self.clone(),
            started: Instant::now(),
            completed: false,
        }
    }
}

/// One call in flight; its end when dropped. A call dropped before its
/// response completed was cancelled by the client (RST_STREAM).
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
    started: Instant,
    completed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.touch();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.completed && self.started.elapsed() < PREMATURE_RESET_MAX_AGE {
            activity.call_cancelled_early();
        }
    }
}

pin_project_lite::pin_project! {
    /// The connection's IO, noting the first byte the client sends.
    pub(super) struct Watched<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
    }
}

impl<IO> Watched<IO> {
    pub(super) fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        if buf.filled().len() > before && !this.activity.spoke.load(Ordering::Relaxed) {
            this.activity.spoke.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The service of one connection, counting its calls in flight.
#[derive(Debug, Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    stream_idle: Option<Duration>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>, stream_idle: Option<Duration>) -> Self {
        Self {
            inner,
            activity,
            stream_idle,
        }
    }
}

impl<S, ReqBody, B> hyper::service::Service<Request<ReqBody>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedCall<S::Future>;

    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        TrackedCall {
            in_flight: Some(self.activity.call_started()),
            stream_idle: self.stream_idle,
            call: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call until its response headers: the inner service's future,
    /// with the call's place counted (no allocation of its own per call).
    pub struct TrackedCall<F> {
        #[pin]
        call: F,
        in_flight: Option<InFlight>,
        stream_idle: Option<Duration>,
    }
}

impl<F, B, E> Future for TrackedCall<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.call.poll(cx))?;
        let mut in_flight = this.in_flight.take();
        if response.body().is_end_stream() {
            // Trailers-only: answered in full with the headers.
            complete(&mut in_flight);
        }
        let idle = this.stream_idle.map(|after| StreamIdle {
            after,
            last_frame: Instant::now(),
            sleep: None,
        });
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            in_flight,
            idle,
            ended: false,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted until it ends, and
    /// ends it with UNAVAILABLE if it carries nothing for the stream idle
    /// timeout (a server stream whose source went silent).
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
        idle: Option<StreamIdle>,
        ended: bool,
    }
}

/// The stream idle timer, armed only while the body waits: a body whose
/// frames are ready when asked for never touches the timer wheel.
struct StreamIdle {
    after: Duration,
    last_frame: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl StreamIdle {
    /// Ready once nothing came for `after` since the last frame.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.last_frame + self.after;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl<B> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The trailers a stream ended for silence gets.
fn stream_idle_trailers(after: Duration) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    if let Ok(message) =
        HeaderValue::from_str(&format!("stream idle timeout: nothing sent for {after:?}"))
    {
        trailers.insert("grpc-message", message);
    }
    trailers.insert(
        "x-mesh-error",
        HeaderValue::from_static("stream-idle-timeout"),
    );
    trailers
}

/// The call answered in full: not a client's cancellation.
fn complete(in_flight: &mut Option<InFlight>) {
    if let Some(mut call) = in_flight.take() {
        call.completed = true;
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.last_frame = Instant::now();
                }
                // hyper asks for nothing more after an end-of-stream frame
                // (trailers, or data the body says is its last).
                if matches!(&frame, Ok(f) if f.is_trailers()) || this.inner.is_end_stream() {
                    complete(this.in_flight);
                }
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => {
                *this.ended = true;
                complete(this.in_flight);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                ready!(idle.poll_expired(cx));
                let after = idle.after;
                *this.ended = true;
                complete(this.in_flight);
                tracing::debug!(?after, "stream idle timeout");
                Poll::Ready(Some(Ok(Frame::trailers(stream_idle_trailers(after)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
