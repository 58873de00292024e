//! Request bodies that can be sent again. A retry needs the request body a
//! second time, but the proxy must not hold a call back until its body has
//! ended (a bidi client may wait for an answer before it sends more). So the
//! body is forwarded as it arrives while a copy of each chunk (a reference
//! count on the same bytes, not a copy of them) is kept, up to a cap. A
//! retry replays the kept chunks and then continues from the source. Once
//! the body outgrows the cap the copies are dropped and the call can no
//! longer be retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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

#[derive(Debug)]
struct Shared {
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    kept: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: bool,
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
    /// Keeps up to `cap` bytes of `body` for replay.
    pub fn new(body: Incoming, cap: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                chunks: Vec::new(),
                kept: 0,
                cap,
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
                    if !shared.overflowed {
                        if shared.kept + data.len() <= shared.cap {
                            shared.kept += data.len();
                            shared.chunks.push(data.clone());
                            this.next_chunk = shared.chunks.len();
                        } else {
                            // Too big to retry: stop keeping, free what was kept.
                            shared.overflowed = true;
                            shared.chunks = Vec::new();
                            this.next_chunk = 0;
                        }
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
