//! The response body of a Subscribe stream.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tonic::Status;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The pushes a session hands over, each already a whole gRPC message,
/// then `grpc-status: 0` trailers once the session ends (it ends the
/// stream; errors before the stream opens are trailers-only responses).
///
/// The channel holds one update: while HTTP/2 has no room for it (the
/// peer reads slowly) the session waits, and its next update covers every
/// change meanwhile, so a slow proxy gets fewer, larger deltas rather than
/// a queue.
pub struct PushBody {
    pushes: mpsc::Receiver<Bytes>,
    ended: bool,
}

impl PushBody {
    /// Sends what `pushes` is given.
    pub(super) fn new(pushes: mpsc::Receiver<Bytes>) -> Self {
        Self {
            pushes,
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
        match ready!(self.pushes.poll_recv(cx)) {
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
    async fn every_update_in_order_then_ok_trailers() {
        let (tx, rx) = mpsc::channel(2);
        let mut body = PushBody::new(rx);
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        for expected in [&b"first"[..], b"second"] {
            let data = body.frame().await.expect("a frame").expect("ok");
            assert_eq!(
                data.into_data().expect("data"),
                Bytes::from_static(expected)
            );
        }
        let trailers = body.frame().await.expect("a frame").expect("ok");
        let trailers = trailers.into_trailers().expect("trailers");
        assert_eq!(trailers[GRPC_STATUS], "0");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
