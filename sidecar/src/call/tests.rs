//! The proxy in-process, end to end on loopback: an HTTP/2 upstream on
//! port 0 whose answers each test scripts, a [`Proxy`] with a routing
//! table applied from a [`Bootstrap`], served over HTTP/2 as the listeners
//! serve it (hyper directly, so the tests do not depend on the accept
//! loop), and a raw HTTP/2 client that sees every frame the proxy sends
//! back (headers, DATA, trailers) — what a gRPC client would decode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::model::Bootstrap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::call::error::ERROR_REASON_HEADER;
use crate::metrics::{Direction, Metrics, StateSnapshot};
use crate::proxy::{Destination, Proxy};
use crate::replay_body::ReplayBudget;
use crate::table::{LiveTable, UpstreamPool};
use crate::upstream::{StreamLimits, Upstream};

/// Bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

/// A response body the upstream sends.
type UpBody = BoxBody<Bytes, Infallible>;

/// How the upstream answers request number `n` (0-based) with body `body`.
type Script = Arc<dyn Fn(usize, Bytes) -> Response<UpBody> + Send + Sync>;

/// An HTTP/2 upstream on loopback that answers as its script says and
/// remembers every request body it read.
struct TestUpstream {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TestUpstream {
    async fn start(script: Script) -> Self {
        Self::start_on("127.0.0.1:0", script, Arc::default()).await
    }

    /// Starts on `addr`, appending to `bodies` (shared across restarts).
    async fn start_on(addr: &str, script: Script, bodies: Arc<Mutex<Vec<Bytes>>>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let bodies = bodies.clone();
            let connections = connections.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let script = script.clone();
                    let bodies = bodies.clone();
                    let count = count.clone();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let script = script.clone();
                        let bodies = bodies.clone();
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            // Like a gRPC server: the whole request first.
                            let body = match req.into_body().collect().await {
                                Ok(body) => body.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            bodies.lock().unwrap().push(body.clone());
                            Ok::<_, Infallible>(script(n, body))
                        }
                    });
                    let connection = tokio::spawn(async move {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                    connections.lock().unwrap().push(connection);
                }
            }
        });
        Self {
            addr,
            bodies,
            accept,
            connections,
        }
    }

    /// Kills the upstream as a crash would: the listener and every
    /// connection gone at once, no GOAWAY, no trailers.
    fn kill(&self) {
        self.accept.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC message: the 5-byte prefix (uncompressed, length) and `payload`.
fn message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(0);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

fn status_trailers(code: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(code));
    trailers
}

/// Response headers of a gRPC answer (no status: that comes later).
fn grpc_response(body: UpBody) -> Response<UpBody> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A body of `frames`, then its end.
fn frames(frames: Vec<Frame<Bytes>>) -> UpBody {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    ))
    .boxed()
}

/// A body the test sends frame by frame.
fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, UpBody) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(8);
    let stream = futures_util::StreamExt::map(ReceiverStream::new(rx), Ok::<_, Infallible>);
    (tx, StreamBody::new(stream).boxed())
}

/// A trailers-only answer (the status in the response's HEADERS, which
/// end the stream).
fn trailers_only(code: &'static str) -> Response<UpBody> {
    let mut response = grpc_response(frames(Vec::new()));
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static(code));
    response
}

/// A routing table: one service `echo` (gRPC service `test.Echo`) with
/// `endpoints`, its route with `route_extra` (YAML lines under `spec`).
fn bootstrap(endpoints: &[SocketAddr], route_extra: &str) -> Bootstrap {
    let mut text = String::from("endpoints:\n");
    for (i, addr) in endpoints.iter().enumerate() {
        text.push_str(&format!(
            "  - {{ service: echo, instance: echo-{i}, address: \"{addr}\", version: v1 }}\n"
        ));
    }
    text.push_str(&format!(
        "routes:\n  - kind: Route\n    metadata: {{ name: echo }}\n    spec:\n      match: {{ service: test.Echo }}\n      destination: echo\n      exposure: public\n{route_extra}"
    ));
    Bootstrap::parse(&text, Path::new("test.yaml")).expect("bootstrap")
}

/// Retries: three attempts, UNAVAILABLE retried, short backoff.
const RETRIES: &str =
    "      retries: { attempts: 3, retryOn: [unavailable], backoff: { base: 1ms, max: 5ms } }\n";

/// A proxy listener in front of a routing table.
struct TestProxy {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    served: JoinHandle<()>,
}

impl TestProxy {
    async fn routed(direction: Direction, table: Bootstrap) -> Self {
        Self::routed_with(
            direction,
            table,
            ReplayBudget::new(ReplayBudget::DEFAULT_BYTES),
        )
        .await
    }

    async fn routed_with(
        direction: Direction,
        table: Bootstrap,
        replay_budget: Arc<ReplayBudget>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let live = Arc::new(LiveTable::new(
            UpstreamPool::new(Duration::from_secs(2), None),
            metrics.clone(),
            direction,
        ));
        live.apply(table, "test".to_owned()).expect("table");
        let proxy = Proxy::new(direction, Destination::Routed(live), None, metrics.clone())
            .with_replay_budget(replay_budget);
        Self::serve(proxy, metrics).await
    }

    /// Serves `proxy` as the listeners do (HTTP/2, prior knowledge), with
    /// hyper directly so these tests do not depend on the accept loop.
    async fn serve(proxy: Proxy, metrics: Arc<Metrics>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.timer(TokioTimer::new());
                let connection = builder.serve_connection(TokioIo::new(tcp), proxy.clone());
                tokio::spawn(connection);
            }
        });
        Self {
            addr,
            metrics,
            served,
        }
    }

    async fn client(&self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    fn metrics_text(&self) -> String {
        self.metrics.render(&StateSnapshot::default())
    }

    async fn stop(self) {
        self.served.abort();
        let _ = self.served.await;
    }
}

/// What the client got back.
#[derive(Debug)]
struct Reply {
    headers: HeaderMap,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    /// The call's gRPC status: from the trailers, or the headers of a
    /// trailers-only answer.
    fn status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }

    fn reason(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(ERROR_REASON_HEADER))
            .or_else(|| self.headers.get(ERROR_REASON_HEADER))
            .and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

fn request(path: &str, body: Bytes, timeout: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("http://proxy{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        builder = builder.header("grpc-timeout", timeout);
    }
    builder.body(Full::new(body)).expect("request")
}

/// One unary call; the whole reply. A stream the proxy reset (instead of
/// ending it with trailers) fails here.
async fn call(
    client: &mut SendRequest<Full<Bytes>>,
    body: Bytes,
    timeout: Option<&'static str>,
) -> Reply {
    let exchange = async {
        let response = client
            .send_request(request("/test.Echo/Say", body, timeout))
            .await
            .expect("response headers");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("a body that ends cleanly");
        let trailers = collected.trailers().cloned();
        Reply {
            headers: parts.headers,
            data: collected.to_bytes(),
            trailers,
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the call ends in time")
}

#[tokio::test]
async fn a_unary_call_answered_with_headers_then_unavailable_trailers_is_retried() {
    let upstream = TestUpstream::start(Arc::new(|n, body| {
        if n == 0 {
            // Headers first, the failure in trailers: not trailers-only.
            grpc_response(frames(vec![Frame::trailers(status_trailers("14"))]))
        } else {
            grpc_response(frames(vec![
                Frame::data(body),
                Frame::trailers(status_trailers("0")),
            ]))
        }
    }))
    .await;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], RETRIES)).await;
    let mut client = proxy.client().await;

    let sent = message(b"hello, twice");
    let reply = call(&mut client, sent.clone(), None).await;
    assert_eq!(reply.status(), Some("0"), "{reply:?}");
    // The second attempt replayed the request body, and its answer came back.
    assert_eq!(reply.data, sent);
    assert_eq!(upstream.requests(), 2);
    assert!(upstream.bodies.lock().unwrap().iter().all(|b| *b == sent));
    let metrics = proxy.metrics_text();
    assert!(
        metrics.lines().any(|l| l.contains("retries_total{")
            && l.contains(r#"route="echo""#)
            && l.ends_with(" 1")),
        "one retry counted: {metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_trailers_only_unavailable_is_retried_with_the_body_replayed() {
    let upstream = TestUpstream::start(Arc::new(|n, body| {
        if n < 2 {
            trailers_only("14")
        } else {
            grpc_response(frames(vec![
                Frame::data(body),
                Frame::trailers(status_trailers("0")),
            ]))
        }
    }))
    .await;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], RETRIES)).await;
    let mut client = proxy.client().await;
    let sent = message(&[7u8; 3000]);
    let reply = call(&mut client, sent.clone(), None).await;
    assert_eq!(reply.status(), Some("0"), "{reply:?}");
    assert_eq!(reply.data, sent);
    let bodies = upstream.bodies.lock().unwrap().clone();
    assert_eq!(bodies, vec![sent.clone(), sent.clone(), sent]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_status_after_data_is_retried_only_within_buffer_response() {
    let script: Script = Arc::new(|n, _| {
        let code = if n == 0 { "14" } else { "0" };
        grpc_response(frames(vec![
            Frame::data(message(b"partial")),
            Frame::trailers(status_trailers(code)),
        ]))
    });
    // Without bufferResponse the DATA commits the call: the client gets
    // the first attempt's answer.
    let upstream = TestUpstream::start(script.clone()).await;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], RETRIES)).await;
    let reply = call(&mut proxy.client().await, message(b"x"), None).await;
    assert_eq!(reply.status(), Some("14"), "{reply:?}");
    assert_eq!(reply.data, message(b"partial"));
    assert_eq!(upstream.requests(), 1);
    proxy.stop().await;

    // With it, the whole answer fits, so the status in its trailers is retried.
    let upstream = TestUpstream::start(script).await;
    let buffered = "      retries: { attempts: 3, retryOn: [unavailable], backoff: { base: 1ms, max: 5ms }, bufferResponse: 1KiB }\n";
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], buffered)).await;
    let reply = call(&mut proxy.client().await, message(b"x"), None).await;
    assert_eq!(reply.status(), Some("0"), "{reply:?}");
    assert_eq!(reply.data, message(b"partial"));
    assert_eq!(upstream.requests(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_call_past_the_replay_budget_is_forwarded_but_not_retried_and_counted() {
    let upstream = TestUpstream::start(Arc::new(|_, _| trailers_only("14"))).await;
    let budget = ReplayBudget::new(1024);
    let proxy = TestProxy::routed_with(
        Direction::Outbound,
        bootstrap(&[upstream.addr], RETRIES),
        budget.clone(),
    )
    .await;
    let reply = call(&mut proxy.client().await, message(&[1u8; 4096]), None).await;
    assert_eq!(reply.status(), Some("14"), "{reply:?}");
    assert_eq!(upstream.requests(), 1, "not retried");
    assert_eq!(
        upstream.bodies.lock().unwrap()[0].len(),
        4101,
        "forwarded whole"
    );
    let metrics = proxy.metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("replay-budget-exhausted") && l.ends_with(" 1")),
        "{metrics}"
    );
    // A small call still fits, and every kept byte is given back.
    let reply = call(&mut proxy.client().await, message(b"small"), None).await;
    assert_eq!(reply.status(), Some("14"));
    assert_eq!(upstream.requests(), 4, "the small call was retried");
    tokio::time::timeout(PATIENCE, async {
        while budget.in_use() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the budget is returned");
    proxy.stop().await;
}

/// The next frame of `body`, within [`PATIENCE`].
async fn next(body: &mut Incoming) -> Frame<Bytes> {
    tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("not an error")
}

#[tokio::test]
async fn a_response_streams_through_frame_by_frame() {
    let (tx, body) = channel_body();
    let body = Mutex::new(Some(body));
    let upstream = TestUpstream::start(Arc::new(move |_, _| {
        let body = body.lock().unwrap().take().expect("one call");
        grpc_response(body)
    }))
    .await;
    // A retrying route: the proxy holds the headers for the first frame
    // and must then pass the rest on as it comes.
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], RETRIES)).await;
    let mut client = proxy.client().await;
    let response = tokio::time::timeout(PATIENCE, async {
        let pending = client.send_request(request("/test.Echo/Say", message(b"go"), None));
        tx.send(Frame::data(message(b"one"))).await.expect("send");
        pending.await.expect("headers")
    })
    .await
    .expect("headers in time");
    let mut body = response.into_body();
    assert_eq!(next(&mut body).await.into_data().unwrap(), message(b"one"));
    // The second frame is sent only now: the first came through alone.
    tx.send(Frame::data(message(b"two"))).await.expect("send");
    assert_eq!(next(&mut body).await.into_data().unwrap(), message(b"two"));
    tx.send(Frame::trailers(status_trailers("0")))
        .await
        .expect("send");
    assert_eq!(
        next(&mut body).await.into_trailers().unwrap()["grpc-status"],
        "0"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_killed_mid_stream_gives_the_client_unavailable_trailers() {
    let (tx, body) = channel_body();
    let body = Mutex::new(Some(body));
    let upstream = TestUpstream::start(Arc::new(move |_, _| {
        grpc_response(body.lock().unwrap().take().expect("one call"))
    }))
    .await;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], "")).await;
    let mut client = proxy.client().await;
    let pending = client.send_request(request("/test.Echo/Say", message(b"go"), None));
    tx.send(Frame::data(message(b"first"))).await.expect("send");
    let response = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("in time")
        .expect("headers");
    let mut body = response.into_body();
    assert_eq!(
        next(&mut body).await.into_data().unwrap(),
        message(b"first")
    );

    upstream.kill();
    // Trailers, not a reset (which `next` would fail on).
    let trailers = next(&mut body).await.into_trailers().expect("trailers");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(trailers[ERROR_REASON_HEADER], "upstream-reset");
    drop(tx);
    let metrics = proxy.metrics_text();
    assert!(
        metrics.lines().any(|l| l.contains("code=\"14\"")),
        "metrics say UNAVAILABLE too: {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(r#"reason="upstream-reset""#) && l.ends_with(" 1")),
        "and count the proxy's own error: {metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_burst_past_the_stream_limit_waits_a_bounded_time_then_fails_queue_full() {
    // Every answer stays open until the test lets it end.
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let upstream = TestUpstream::start(Arc::new(move |_, _| {
        let mut release = release.clone();
        let stream = futures_util::stream::once(async move {
            let _ = release.wait_for(|go| *go).await;
            Ok::<_, Infallible>(Frame::trailers(status_trailers("0")))
        });
        grpc_response(StreamBody::new(stream).boxed())
    }))
    .await;
    let app = Arc::new(
        Upstream::new(&upstream.addr.to_string(), Duration::from_secs(2))
            .expect("addr")
            .with_stream_limits(StreamLimits {
                max_streams: 2,
                max_waiting: 1,
            }),
    );
    let metrics = Arc::new(Metrics::default());
    let proxy = Proxy::new(
        Direction::Inbound,
        Destination::App {
            upstream: app.clone(),
            counters: metrics.route_counters(Direction::Inbound, "echo", "inbound"),
            service: "echo".into(),
        },
        None,
        metrics.clone(),
    );
    let proxy = TestProxy::serve(proxy, metrics).await;
    let client = proxy.client().await;

    // Two calls take both stream slots (their answers stay open).
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut client = client.clone();
        open.push(tokio::spawn(async move {
            call(&mut client, message(b"hold"), None).await
        }));
    }
    tokio::time::timeout(PATIENCE, async {
        while upstream.requests() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("both calls reach the upstream");

    // A third waits, at most its deadline; a fourth finds the queue full.
    let waiter = tokio::spawn({
        let mut client = client.clone();
        async move {
            let started = tokio::time::Instant::now();
            let reply = call(&mut client, message(b"wait"), Some("300m")).await;
            (reply, started.elapsed())
        }
    });
    tokio::time::timeout(PATIENCE, async {
        while app.waiting_for_streams() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the third call waits");
    let refused = call(&mut client.clone(), message(b"no room"), None).await;
    assert_eq!(refused.status(), Some("14"), "{refused:?}");
    assert_eq!(refused.reason(), Some("upstream-queue-full"));

    let (waited, elapsed) = waiter.await.expect("waiter");
    assert_eq!(waited.status(), Some("14"), "{waited:?}");
    assert_eq!(waited.reason(), Some("upstream-queue-full"));
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(
        upstream.requests(),
        2,
        "nothing past the limit reached the upstream"
    );

    // Released, the held calls end and the slots are free again.
    release_tx.send(true).expect("release");
    for call in open {
        assert_eq!(call.await.expect("call").status(), Some("0"));
    }
    let again = call(&mut client.clone(), message(b"room"), None).await;
    assert_eq!(again.status(), Some("0"), "{again:?}");
    let metrics = proxy.metrics_text();
    assert!(metrics.contains("upstream-queue-full"), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn calls_reach_an_upstream_again_after_it_restarts() {
    let ok: Script = Arc::new(|_, body| {
        grpc_response(frames(vec![
            Frame::data(body),
            Frame::trailers(status_trailers("0")),
        ]))
    });
    let upstream = TestUpstream::start(ok.clone()).await;
    let addr = upstream.addr;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[addr], "")).await;
    let mut client = proxy.client().await;
    assert_eq!(
        call(&mut client, message(b"1"), None).await.status(),
        Some("0")
    );

    upstream.kill();
    drop(upstream);
    let down = call(&mut client, message(b"2"), None).await;
    assert_eq!(down.status(), Some("14"), "{down:?}");

    let restarted = TestUpstream::start_on(&addr.to_string(), ok, Arc::default()).await;
    // The proxy backs off between connects (50 ms at first): calls fail
    // fast meanwhile, then one reconnects.
    let back = tokio::time::timeout(PATIENCE, async {
        loop {
            let reply = call(&mut client, message(b"3"), None).await;
            if reply.status() == Some("0") {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("reconnected in time");
    assert_eq!(back.data, message(b"3"));
    assert!(restarted.requests() >= 1);
    proxy.stop().await;
}

#[tokio::test]
async fn errors_at_the_ingress_hide_internal_addresses_and_the_mesh_sees_them() {
    // A port nobody listens on (bound, then closed).
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    for (direction, redacted) in [(Direction::Ingress, true), (Direction::Outbound, false)] {
        let proxy = TestProxy::routed(direction, bootstrap(&[closed], "")).await;
        let reply = call(&mut proxy.client().await, message(b"x"), None).await;
        assert_eq!(reply.status(), Some("14"), "{reply:?}");
        assert_eq!(reply.reason(), Some("upstream-connect-failed"));
        let address = closed.to_string();
        if redacted {
            assert_eq!(
                reply.message(),
                "upstream unavailable (upstream-connect-failed)"
            );
        } else {
            assert!(reply.message().contains(&address), "{reply:?}");
        }
        proxy.stop().await;
    }
}

/// 64 KiB of zeros: the slow reader's response is made of these.
static CHUNK: [u8; 64 << 10] = [0; 64 << 10];

#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_other_calls_on_the_shared_connection() {
    // The upstream answers `/test.Echo/Big` with an endless stream and
    // `/test.Echo/Say` with a short answer; `produced` counts what the
    // endless streams handed to HTTP/2 so far.
    let produced = Arc::new(AtomicUsize::new(0));
    let upstream = TestUpstream::start(Arc::new({
        let produced = produced.clone();
        move |_, body| {
            if body == message(b"big") {
                let produced = produced.clone();
                let endless = futures_util::stream::repeat_with(move || {
                    produced.fetch_add(CHUNK.len(), Ordering::Relaxed);
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))
                });
                grpc_response(StreamBody::new(endless).boxed())
            } else {
                grpc_response(frames(vec![
                    Frame::data(body),
                    Frame::trailers(status_trailers("0")),
                ]))
            }
        }
    }))
    .await;
    let proxy = TestProxy::routed(Direction::Outbound, bootstrap(&[upstream.addr], "")).await;

    // Eight callers on their own connections open the big stream and
    // never read it. With the old windows (1 MiB per stream, 4 MiB per
    // connection) four of them used up the upstream connection's window.
    const STALLED: usize = 8;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut client = proxy.client().await;
        let response = tokio::time::timeout(
            PATIENCE,
            client.send_request(request("/test.Echo/Big", message(b"big"), None)),
        )
        .await
        .expect("headers in time")
        .expect("headers");
        stalled.push((client, response));
    }
    // Wait until they are stalled: nothing more is produced between checks.
    tokio::time::timeout(PATIENCE, async {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = produced.load(Ordering::Relaxed);
            if now == last && now > 0 {
                return;
            }
            last = now;
        }
    })
    .await
    .expect("the big streams stall");

    // Another caller of the same endpoint (the same upstream connection)
    // is still served.
    let mut good = proxy.client().await;
    let reply = call(&mut good, message(b"still served"), Some("2S")).await;
    assert_eq!(reply.status(), Some("0"), "{reply:?}");
    assert_eq!(reply.data, message(b"still served"));
    drop(stalled);
    proxy.stop().await;
}
