//! Replayable bodies sent through real HTTP/2 connections on loopback
//! (client -> a forwarder that keeps the body -> upstream), checked by what
//! the upstream receives: how a body ends decides whether END_STREAM rides
//! on its last DATA frame or follows in a frame of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::upstream::Upstream;

/// What the upstream saw of one request.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    /// Whether the request ended with its HEADERS frame.
    headers_only: bool,
    /// Per DATA frame: its length, and whether the stream had ended once
    /// it was read (END_STREAM on that frame).
    data: Vec<(usize, bool)>,
    /// Whether trailers came.
    trailers: bool,
}

/// An HTTP/2 server that reports each request's frames on `seen`.
async fn upstream(seen: mpsc::UnboundedSender<Received>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let mut body = req.into_body();
                    let mut received = Received {
                        headers_only: body.is_end_stream(),
                        data: Vec::new(),
                        trailers: false,
                    };
                    while let Some(frame) = body.frame().await {
                        let frame = frame.expect("request frame");
                        received.trailers |= frame.is_trailers();
                        if let Ok(data) = frame.into_data() {
                            received.data.push((data.len(), body.is_end_stream()));
                        }
                    }
                    let _ = seen.send(received);
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A forwarder that keeps each request's body for replay and sends it to
/// `to` twice, as a call that is retried once would: the first attempt
/// streams from the client, the second replays the kept chunks. Reports
/// each attempt body's size hint on `hints`.
async fn forwarder(to: SocketAddr, hints: mpsc::UnboundedSender<Option<u64>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = Arc::new(Upstream::new(&to.to_string(), Duration::from_secs(5)).expect("addr"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let hints = hints.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let upstream = upstream.clone();
                let hints = hints.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let replay = Replay::new(body, 64 * 1024, ReplayBudget::new(1 << 20), None);
                    for _attempt in 0..2 {
                        let body = replay.body();
                        let _ = hints.send(body.size_hint().exact());
                        let uri = format!("http://{}{}", upstream.authority(), parts.uri.path());
                        let request = Request::post(uri)
                            .body(RequestBody::Replay(body))
                            .expect("request");
                        let mut sender = upstream.sender().await.expect("connect");
                        let response = sender.send_request(request).await.expect("response");
                        response.into_body().collect().await.expect("response body");
                    }
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// Sends one request with `body` through a forwarder; what the upstream
/// saw of each attempt, and each attempt body's size hint.
async fn forward<B>(body: B) -> (Vec<Received>, Vec<Option<u64>>)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (hints_tx, mut hints) = mpsc::unbounded_channel();
    let front = forwarder(upstream(seen_tx).await, hints_tx).await;
    let tcp = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    let (mut client, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::post(format!("http://{front}/bench.v1.EchoService/Echo"))
        .body(body)
        .expect("request");
    let response = client.send_request(request).await.expect("response");
    response.into_body().collect().await.expect("response body");
    let mut received = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        received.push(seen.recv().await.expect("an upstream request"));
        sizes.push(hints.recv().await.expect("a size hint"));
    }
    (received, sizes)
}

#[tokio::test]
async fn a_unary_body_ends_on_its_last_data_frame_in_every_attempt() {
    // A gRPC unary request: 5-byte prefix and an 18-byte message, sent as
    // one DATA frame with END_STREAM (as every gRPC client does).
    let (received, hints) = forward(Full::new(Bytes::from_static(&[7u8; 23]))).await;
    let one_frame = Received {
        headers_only: false,
        data: vec![(23, true)],
        trailers: false,
    };
    // Not DATA(23) and then an empty DATA frame with END_STREAM: the
    // upstream would know the request is whole only from a second frame.
    assert_eq!(received[0], one_frame, "first attempt");
    assert_eq!(received[1], one_frame, "replayed attempt");
    assert_eq!(hints, [Some(23), Some(23)]);
}

#[tokio::test]
async fn an_empty_body_ends_with_the_headers_in_every_attempt() {
    let (received, hints) = forward(Empty::<Bytes>::new()).await;
    let headers_only = Received {
        headers_only: true,
        data: Vec::new(),
        trailers: false,
    };
    assert_eq!(received[0], headers_only, "first attempt");
    assert_eq!(received[1], headers_only, "replayed attempt");
    assert_eq!(hints, [Some(0), Some(0)]);
}

#[tokio::test]
async fn trailers_are_forwarded_after_the_data_in_every_attempt() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("7"));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]));
    let (received, _) = forward(body).await;
    // The data cannot carry END_STREAM: the trailers' HEADERS frame does.
    let with_trailers = Received {
        headers_only: false,
        data: vec![(5, false)],
        trailers: true,
    };
    assert_eq!(received[0], with_trailers, "first attempt");
    assert_eq!(received[1], with_trailers, "replayed attempt");
}

/// A keeper with nothing left to read, `cap` bytes per call, charged to `budget`.
fn keeper(cap: usize, budget: &Arc<ReplayBudget>) -> Shared {
    Shared {
        source: None,
        chunks: Vec::new(),
        kept: 0,
        cap,
        budget: budget.clone(),
        on_exhausted: None,
        trailers: None,
        ended: false,
        overflowed: false,
        failed: false,
    }
}

#[test]
fn bodies_share_one_budget_and_give_it_back() {
    let budget = ReplayBudget::new(100);
    let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut a = keeper(1000, &budget);
    let mut b = keeper(1000, &budget);
    b.on_exhausted = Some(Box::new({
        let counted = counted.clone();
        move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }));
    assert!(a.keep(&Bytes::from_static(&[0; 60])));
    assert_eq!(budget.in_use(), 60);
    // The second body does not fit in what is left: it stops keeping for
    // good (forwarded, never retried), is counted once, and frees its part.
    assert!(b.keep(&Bytes::from_static(&[0; 30])));
    assert!(!b.keep(&Bytes::from_static(&[0; 30])));
    assert!(!b.keep(&Bytes::from_static(&[0; 1])));
    assert!(b.overflowed && b.chunks.is_empty());
    assert_eq!(counted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(budget.in_use(), 60);
    drop(a);
    assert_eq!(budget.in_use(), 0);
    // A body over its own cap stops keeping too, without touching the budget.
    let mut c = keeper(10, &budget);
    assert!(!c.keep(&Bytes::from_static(&[0; 11])));
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn unary_means_one_whole_message_and_an_ended_body() {
    let budget = ReplayBudget::new(1 << 20);
    let frame = |payload: &[u8]| {
        let mut out = vec![0u8];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        Bytes::from(out)
    };
    let one = frame(b"hello");
    let with = |chunks: &[Bytes], ended: bool| {
        let mut shared = keeper(1 << 20, &budget);
        for chunk in chunks {
            shared.keep(chunk);
        }
        shared.ended = ended;
        shared.is_one_message()
    };
    assert!(with(std::slice::from_ref(&one), true));
    // Split anywhere, even inside the 5-byte prefix.
    assert!(with(&[one.slice(..3), one.slice(3..)], true));
    assert!(
        !with(std::slice::from_ref(&one), false),
        "not ended: may stream"
    );
    assert!(!with(&[one.clone(), frame(b"again")], true), "two messages");
    assert!(!with(&[one.slice(..7)], true), "a message cut short");
    assert!(!with(&[], true), "no message");
}
