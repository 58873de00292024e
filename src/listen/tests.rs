use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::AsyncReadExt;

use super::*;

/// Bounded wait for a condition the listener reaches on its own.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

fn ok_service() -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

struct Running {
    addr: SocketAddr,
    stats: ListenerStats,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Running {
    let stats = ListenerStats::default();
    let listener = Listener::bind(
        "test",
        "127.0.0.1:0".parse().unwrap(),
        limits,
        stats.clone(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        listener.serve(stop.clone(), Duration::from_secs(2), |accepted| {
            let Accepted {
                stream, connection, ..
            } = accepted;
            async move {
                let _ = connection.serve_h2(stream, ok_service()).await;
            }
        }),
    );
    Running {
        addr,
        stats,
        stop,
        task,
    }
}

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn call(sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>) -> Bytes {
    let request = Request::builder()
        .uri("http://test/a.B/C")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// True once the server closed `tcp` (EOF or reset), within 10 s.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn limits(edit: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::mesh();
    edit(&mut limits);
    limits
}

#[tokio::test]
async fn beyond_the_cap_a_connection_is_closed_at_once_and_counted() {
    let running = start(limits(|l| l.connection.max_connections = 2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(h2_client(running.addr).await);
    }
    let mut extra = TcpStream::connect(running.addr).await.unwrap();
    assert!(
        closed_by_server(&mut extra).await,
        "the third connection is closed"
    );
    assert_eq!(
        running.stats.count("test", ConnectionEvent::RefusedAtLimit),
        1
    );
    // The held ones are still served; when one goes, a new one gets in.
    assert_eq!(call(&mut held[0]).await, "ok");
    held.pop();
    eventually("the freed place is seen", || {
        running.stats.open("test") == 1
    })
    .await;
    let mut again = h2_client(running.addr).await;
    assert_eq!(call(&mut again).await, "ok");
    running.stop.cancel();
    running.task.await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_preface_timeout() {
    let running = start(limits(|l| {
        l.connection.preface_timeout = Duration::from_millis(200);
    }))
    .await;
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await);
    assert_eq!(
        running.stats.count("test", ConnectionEvent::PrefaceTimeout),
        1
    );
    // A client that speaks is served, and later kept past the timeout.
    let mut client = h2_client(running.addr).await;
    assert_eq!(call(&mut client).await, "ok");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(call(&mut client).await, "ok");
    assert_eq!(
        running.stats.count("test", ConnectionEvent::PrefaceTimeout),
        1
    );
    running.stop.cancel();
    running.task.await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_goes_away_gracefully() {
    let running = start(limits(|l| {
        l.connection.idle_timeout = Duration::from_millis(300);
        // The supervisor looks at idleness once the preface time is over.
        l.connection.preface_timeout = Duration::from_millis(100);
    }))
    .await;
    let mut client = h2_client(running.addr).await;
    assert_eq!(call(&mut client).await, "ok");
    eventually("the idle timeout fires", || {
        running.stats.count("test", ConnectionEvent::IdleTimeout) == 1
    })
    .await;
    eventually("the idle connection is closed", || client.is_closed()).await;
    assert_eq!(running.stats.count("test", ConnectionEvent::IdleTimeout), 1);
    eventually("the gauge comes back to zero", || {
        running.stats.open("test") == 0
    })
    .await;
    running.stop.cancel();
    running.task.await.unwrap();
}

#[tokio::test]
async fn a_silent_response_stream_ends_with_unavailable_in_trailers() {
    let stats = ListenerStats::default();
    let mut limits = Limits::mesh();
    limits.connection.stream_idle_timeout = Some(Duration::from_millis(200));
    let listener = Listener::bind("test", "127.0.0.1:0".parse().unwrap(), limits, stats)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // A server stream that sends one message and then nothing, forever.
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let frames = futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(
            Bytes::from_static(b"first"),
        ))])
        .chain(futures_util::stream::pending());
        Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
    });
    let task =
        tokio::spawn(
            listener.serve(stop.clone(), Duration::from_secs(1), move |a| async move {
                let _ = a.connection.serve_h2(a.stream, service).await;
            }),
        );
    let mut client = h2_client(addr).await;
    let request = Request::builder()
        .uri("http://test/a.B/Watch")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the stream ends")
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(trailers["x-mesh-error"], "stream-idle-timeout");
    assert_eq!(collected.to_bytes(), "first");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_calls_finish_and_closes_connections() {
    let running = start(Limits::mesh()).await;
    let mut client = h2_client(running.addr).await;
    assert_eq!(call(&mut client).await, "ok");
    running.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("the listener stops within its drain")
        .unwrap();
    eventually("the client sees GOAWAY", || client.is_closed()).await;
    assert!(TcpStream::connect(running.addr).await.is_err());
}

#[tokio::test]
async fn a_client_that_cancels_most_calls_at_once_is_cut() {
    // Every call waits (as a proxied call waits for its upstream), so a
    // cancel always comes while the call is in flight.
    let stats = ListenerStats::default();
    let listener = Listener::bind(
        "test",
        "127.0.0.1:0".parse().unwrap(),
        Limits::mesh(),
        stats.clone(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let dispatched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = dispatched.clone();
    let slow = hyper::service::service_fn(move |_req: Request<Incoming>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let task = tokio::spawn(
        listener.serve(stop.clone(), Duration::from_secs(1), move |a| {
            let slow = slow.clone();
            async move {
                let _ = a.connection.serve_h2(a.stream, slow).await;
            }
        }),
    );
    let mut client = h2_client(addr).await;
    let mut cancelled = 0;
    while !client.is_closed() && cancelled < 5_000 {
        let request = Request::builder()
            .uri("http://test/a.B/C")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let Ok(ready) = tokio::time::timeout(Duration::from_secs(5), client.ready()).await else {
            break;
        };
        if ready.is_err() {
            break;
        }
        let call = client.send_request(request);
        // Cancel (drop) once the server dispatched the call.
        let dispatched_now = || dispatched.load(std::sync::atomic::Ordering::SeqCst) > cancelled;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::pin!(call);
            while !dispatched_now() {
                tokio::select! {
                    _ = &mut call => return,
                    () = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        })
        .await;
        cancelled += 1;
    }
    eventually("the connection is cut", || {
        stats.count("test", ConnectionEvent::RapidReset) == 1
    })
    .await;
    assert!(cancelled < 5_000, "cut after {cancelled} cancelled calls");
    // A polite client is still served.
    let mut polite = h2_client(addr).await;
    let request = Request::builder()
        .uri("http://test/a.B/C")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), polite.send_request(request))
        .await
        .expect("served")
        .unwrap();
    assert_eq!(response.status(), 200);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn an_old_connection_is_asked_to_go_away() {
    let running = start(limits(|l| {
        l.connection.max_connection_age = Some(Duration::from_millis(300));
        l.connection.preface_timeout = Duration::from_millis(100);
    }))
    .await;
    let mut client = h2_client(running.addr).await;
    assert_eq!(call(&mut client).await, "ok");
    eventually("the old connection is closed", || client.is_closed()).await;
    assert_eq!(running.stats.count("test", ConnectionEvent::MaxAge), 1);
    running.stop.cancel();
    running.task.await.unwrap();
}
