//! Request bodies that can be sent again. A retry needs the request body a
//! second time, but the proxy must not hold a call back until its body has
//! ended (a bidi client may wait for an answer before it sends more). So the
//! body is forwarded as it arrives while a copy of each chunk (a reference
//! count on the same bytes, not a copy of them) is kept, up to a cap. A
//! retry replays the kept chunks and then continues from the source. Once
//! the body outgrows the cap the copies are dropped and the call can no
//! longer be retried.
//!
//! Every kept byte is also charged to one process-wide [`ReplayBudget`], so
//! the copies of all calls together stay bounded whatever clients send: a
//! call whose body would exceed what is left of the budget stops keeping
//! (it is forwarded as it comes and never retried) and is counted.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The process-wide bound on bytes kept for replay, across every call.
/// Without it each call's cap (`retries.bufferBytes`) multiplies by the
/// number of calls in flight, which clients choose.
#[derive(Debug)]
pub struct ReplayBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ReplayBudget {
    /// The default: 64 MiB kept at most for all calls together.
    pub const DEFAULT_BYTES: usize = 64 << 20;

    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes kept now by every call.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Charges `bytes` if they fit under the limit.
    fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Called once when a call's body no longer fits in the [`ReplayBudget`]
/// (to count it).
pub type OnBudgetExhausted = Box<dyn Fn() + Send + Sync>;

/// Errors of request bodies, boxed as hyper wants them.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, passed through (no retries on this route).
    Direct(Incoming),
    /// The client's body, kept for a retry.
    Replay(ReplayBody),
}

struct Shared {
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    kept: usize,
    cap: usize,
    budget: Arc<ReplayBudget>,
    on_exhausted: Option<OnBudgetExhausted>,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("kept", &self.kept)
            .field("cap", &self.cap)
            .field("ended", &self.ended)
            .field("overflowed", &self.overflowed)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Keeps `data` if it fits under the call's cap and the process-wide
    /// budget; else stops keeping for good and frees what was kept.
    fn keep(&mut self, data: &Bytes) -> bool {
        if self.overflowed {
            return false;
        }
        if self.kept + data.len() <= self.cap {
            if self.budget.try_reserve(data.len()) {
                self.kept += data.len();
                self.chunks.push(data.clone());
                return true;
            }
            tracing::debug!(
                in_use = self.budget.in_use(),
                limit = self.budget.limit,
                "replay budget exhausted: this call is forwarded unbuffered and not retried"
            );
            if let Some(count) = self.on_exhausted.take() {
                count();
            }
        }
        // Too big to retry: stop keeping, free what was kept.
        self.overflowed = true;
        self.chunks = Vec::new();
        self.budget.release(std::mem::take(&mut self.kept));
        false
    }

    /// True when the body has ended and holds exactly one gRPC message
    /// (5-byte prefix: flag, big-endian length; then the message).
    fn is_one_message(&self) -> bool {
        if !self.ended || self.overflowed || self.failed {
            return false;
        }
        let mut prefix = [0u8; 5];
        let mut filled = 0;
        for chunk in &self.chunks {
            let take = (prefix.len() - filled).min(chunk.len());
            prefix[filled..filled + take].copy_from_slice(&chunk[..take]);
            filled += take;
            if filled == prefix.len() {
                break;
            }
        }
        if filled < prefix.len() {
            return false;
        }
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        self.kept == 5 + length
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.release(self.kept);
    }
}

/// The keeper of a request body for every attempt of a call.
#[derive(Debug, Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// One attempt's view of a [`Replay`].
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    next_chunk: usize,
    trailers_sent: bool,
}

impl Replay {
    /// Keeps up to `cap` bytes of `body` for replay, charged to `budget`;
    /// `on_exhausted` is called if the budget runs out for this body.
    pub fn new(
        body: Incoming,
        cap: usize,
        budget: Arc<ReplayBudget>,
        on_exhausted: Option<OnBudgetExhausted>,
    ) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                chunks: Vec::new(),
                kept: 0,
                cap,
                budget,
                on_exhausted,
                trailers: None,
                ended: false,
                overflowed: false,
                failed: false,
            })),
        }
    }

    /// A body for the next attempt: the kept chunks, then the rest.
    pub fn body(&self) -> ReplayBody {
        ReplayBody {
            shared: self.shared.clone(),
            next_chunk: 0,
            trailers_sent: false,
        }
    }

    /// True while everything read so far is kept: another attempt would
    /// send the same body.
    pub fn can_replay(&self) -> bool {
        let shared = lock(&self.shared);
        !shared.overflowed && !shared.failed
    }

    /// True when the request is a unary one as far as the proxy can tell:
    /// the client ended its body after exactly one message (kept whole).
    /// Decided conservatively: anything else counts as streaming.
    pub fn is_unary(&self) -> bool {
        lock(&self.shared).is_one_message()
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if this.next_chunk < shared.chunks.len() {
            let chunk = shared.chunks[this.next_chunk].clone();
            this.next_chunk += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if shared.keep(data) {
                        this.next_chunk = shared.chunks.len();
                    } else {
                        this.next_chunk = 0;
                    }
                    // END_STREAM came with this DATA frame (and no trailers
                    // wait behind it): the body ends here, so that
                    // `is_end_stream` is true now and hyper puts END_STREAM
                    // on this chunk's frame instead of sending an empty
                    // DATA frame after the next poll (RFC 9113, 8.1).
                    if shared.source.as_ref().is_some_and(Body::is_end_stream) {
                        shared.ended = true;
                        shared.source = None;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.ended = true;
                    shared.source = None;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        if self.next_chunk < shared.chunks.len() {
            return false;
        }
        if shared.ended {
            return self.trailers_sent || shared.trailers.is_none();
        }
        // Not read to its end, but the source may have nothing left (a
        // request that came as HEADERS with END_STREAM): then the
        // upstream request can end with its HEADERS too.
        shared.source.as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let shared = lock(&self.shared);
        // The kept chunks this attempt has still to send, then whatever
        // the source has left (its content-length, when the client sent one).
        let kept: u64 = shared
            .chunks
            .get(self.next_chunk..)
            .unwrap_or_default()
            .iter()
            .map(|chunk| chunk.len() as u64)
            .sum();
        let rest = match &shared.source {
            Some(source) if !shared.ended => source.size_hint(),
            _ => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(kept.saturating_add(rest.lower()));
        if let Some(upper) = rest.upper() {
            hint.set_upper(kept.saturating_add(upper));
        }
        hint
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Replay(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(body) => body.is_end_stream(),
            Self::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(body) => body.size_hint(),
            Self::Replay(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
