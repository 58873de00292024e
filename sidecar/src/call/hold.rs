//! Holding a response back before committing to it. gRPC servers often
//! send response headers first and the failure status later, in trailers
//! (gRPC over HTTP/2: `Response-Headers *Length-Prefixed-Message
//! Trailers`); once the headers are on their way to the client the call
//! can no longer be retried. So for a call that could be retried the proxy
//! reads ahead of the headers: the first frame (or, with
//! `retries.bufferResponse`, the whole response up to that size), within
//! the attempt's budget. If the trailers come first and carry a retryable
//! status, the attempt failed and nothing was sent on; otherwise the held
//! frames are sent first and the rest streams behind them.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::response_body::grpc_status;

/// Frames held at most, whatever their size: an upstream sending empty
/// DATA frames cannot grow the hold without bound.
const MAX_HELD_FRAMES: usize = 64;

/// What the read-ahead found.
#[derive(Debug)]
pub enum Held {
    /// The response ended within the hold: every frame is in `frames`;
    /// `status` is its trailers' `grpc-status` (`None`: none came).
    Complete {
        /// The whole response body.
        frames: VecDeque<Frame<Bytes>>,
        /// Its gRPC status.
        status: Option<i32>,
    },
    /// The response goes on (more than the hold takes, or past its time):
    /// commit, sending `frames` first.
    Streaming {
        /// What was read so far.
        frames: VecDeque<Frame<Bytes>>,
    },
    /// The upstream stream broke before anything was sent on.
    Broken(String),
}

/// Reads `body` ahead until its trailers, more than `max_bytes` of DATA
/// (0: stop at the first DATA frame), or `until`, whichever first.
pub async fn hold<B>(body: &mut B, max_bytes: usize, until: Option<Instant>) -> Held
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut frames = VecDeque::new();
    let mut bytes = 0usize;
    while frames.len() < MAX_HELD_FRAMES {
        let next = match until {
            Some(until) => match tokio::time::timeout_at(until, body.frame()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => body.frame().await,
        };
        match next {
            None => {
                return Held::Complete {
                    frames,
                    status: None,
                }
            }
            Some(Err(error)) => return Held::Broken(error.to_string()),
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = grpc_status(trailers);
                    frames.push_back(frame);
                    return Held::Complete { frames, status };
                }
                if let Some(data) = frame.data_ref() {
                    bytes = bytes.saturating_add(data.len());
                }
                frames.push_back(frame);
                if bytes > max_bytes {
                    break;
                }
            }
        }
    }
    Held::Streaming { frames }
}

/// Looks at `body`'s first frame without waiting for it: for calls that
/// may stream, where the proxy must not hold the headers back. Trailers
/// already there mean a response with nothing streamed, safe to retry.
pub fn peek<B>(body: &mut B) -> Held
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut frames = VecDeque::new();
    match body.frame().now_or_never() {
        None => Held::Streaming { frames },
        Some(None) => Held::Complete {
            frames,
            status: None,
        },
        Some(Some(Err(error))) => Held::Broken(error.to_string()),
        Some(Some(Ok(frame))) => {
            let status = frame.trailers_ref().and_then(grpc_status);
            let trailers = frame.is_trailers();
            frames.push_back(frame);
            if trailers {
                Held::Complete { frames, status }
            } else {
                Held::Streaming { frames }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::HeaderMap;
    use http_body_util::StreamBody;

    use super::*;

    fn trailers(code: &'static str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(t)
    }

    /// A body of `frames`, then its end.
    fn body(frames: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn trailers_first_are_a_complete_answer_with_their_status() {
        let held = hold(&mut body(vec![trailers("14")]), 0, None).await;
        assert!(
            matches!(held, Held::Complete { status: Some(14), ref frames } if frames.len() == 1)
        );
        let held = peek(&mut body(vec![trailers("14")]));
        assert!(matches!(
            held,
            Held::Complete {
                status: Some(14),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn data_first_commits_unless_the_whole_response_fits() {
        let data = || Frame::data(Bytes::from_static(&[0u8; 10]));
        let held = hold(&mut body(vec![data(), trailers("14")]), 0, None).await;
        assert!(matches!(held, Held::Streaming { ref frames } if frames.len() == 1));
        let held = hold(&mut body(vec![data(), data(), trailers("14")]), 64, None).await;
        assert!(
            matches!(held, Held::Complete { status: Some(14), ref frames } if frames.len() == 3)
        );
        let held = hold(&mut body(vec![data(), data(), trailers("0")]), 15, None).await;
        assert!(matches!(held, Held::Streaming { ref frames } if frames.len() == 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_hold_ends_at_its_time_and_commits() {
        let mut pending = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let until = Instant::now() + Duration::from_millis(50);
        let held = hold(&mut pending, 0, Some(until)).await;
        assert!(matches!(held, Held::Streaming { ref frames } if frames.is_empty()));
        assert!(Instant::now() >= until);
        assert!(matches!(peek(&mut pending), Held::Streaming { .. }));
    }
}
