//! The response body of a Subscribe stream.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::Status;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The pushes a session hands over, each already a whole gRPC message,
/// then `grpc-status: 0` trailers once the session ends (it ends the
/// stream; errors before the stream opens are trailers-only responses).
///
/// Only the latest push is taken: one HTTP/2 has no room for yet (the peer
/// reads slowly) is replaced by the next, so a slow sidecar skips versions
/// instead of queueing them.
pub struct PushBody {
    pushes: WatchStream<Bytes>,
    ended: bool,
}

impl PushBody {
    /// Sends what `pushes` is given from now on (not its current value).
    pub(super) fn new(pushes: watch::Receiver<Bytes>) -> Self {
        Self {
            pushes: WatchStream::from_changes(pushes),
            ended: false,
        }
    }
}

impl std::fmt::Debug for PushBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Body for PushBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.pushes).poll_next(cx)) {
            Some(push) => Poll::Ready(Some(Ok(Frame::data(push)))),
            None => {
                self.ended = true;
                let mut trailers = HeaderMap::with_capacity(1);
                trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_latest_push_then_ok_trailers() {
        let (tx, rx) = watch::channel(Bytes::new());
        let mut body = PushBody::new(rx);
        tx.send(Bytes::from_static(b"old")).expect("send");
        tx.send(Bytes::from_static(b"new")).expect("send");
        drop(tx);
        let data = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(data.into_data().expect("data"), Bytes::from_static(b"new"));
        let trailers = body.frame().await.expect("a frame").expect("ok");
        let trailers = trailers.into_trailers().expect("trailers");
        assert_eq!(trailers[GRPC_STATUS], "0");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
