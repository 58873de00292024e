//! Reading what is left of a request the proxy answered early (no route,
//! unauthorized) before the client finished sending it.
//!
//! Dropping an unfinished request body makes HTTP/2 reset the stream, and
//! a DATA frame the client had already sent then arrives on a reset
//! stream: h2 counts that as a local error reset, and past the
//! connection's cap (`max_local_error_reset_streams`, the MadeYouReset
//! defence) it sends GOAWAY. So a client whose unary calls are refused
//! early would lose its whole connection. Reading the rest of a small body
//! (bounded in bytes and time, off the call's path) lets the stream end
//! cleanly instead.

use std::time::Duration;

use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Most bytes read from a body answered early; a bigger one is reset.
const MAX_DRAIN_BYTES: usize = 64 << 10;
/// Longest time spent reading it.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads the rest of `body` in a task of its own, within the bounds.
pub fn drain(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0usize;
        let _ = tokio::time::timeout(MAX_DRAIN_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    if read > MAX_DRAIN_BYTES {
                        return;
                    }
                }
            }
        })
        .await;
    });
}
