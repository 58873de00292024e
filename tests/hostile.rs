//! The data path under hostile traffic: real processes (control plane,
//! gateway, catalog and its sidecar, all over mTLS), a real attacker on a
//! socket of its own, and good clients beside it that must all be served.
//! Each test also reads the gateway's memory and threads from /proc and
//! holds them to a bound. Every loop is bounded in count and time.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::TestMesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway under attack, with a catalog behind it.
fn gateway_mesh(gateway_args: &[&str]) -> TestMesh {
    let mut topology = support::secure_catalog();
    topology.gateway_args = gateway_args.iter().map(|s| (*s).to_owned()).collect();
    TestMesh::start(&topology)
}

/// Resident memory (bytes) and threads of a running process, from /proc.
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

fn gateway_pid(mesh: &mut TestMesh) -> u32 {
    *mesh.pids().get("gateway").expect("the gateway runs")
}

/// Reads (and drops: the server's SETTINGS) until the peer closes.
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// `n` good calls through the gateway, each on the shared channel; all
/// must succeed.
async fn good_calls(channel: &tonic::transport::Channel, n: usize) {
    for _ in 0..n {
        let product =
            tokio::time::timeout(Duration::from_secs(10), support::first_product(channel))
                .await
                .expect("a good call is answered within 10 s");
        assert!(!product.sku.is_empty());
    }
}

/// Runs `attack` beside good clients; asserts every good call succeeds and
/// the gateway's memory grows by less than `max_growth` bytes and its
/// threads stay as they were.
fn under_attack<F>(mesh: &mut TestMesh, max_growth: u64, attack: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let pid = gateway_pid(mesh);
    let uri = mesh.gateway_uri();
    let (rss_before, threads_before) = rss_and_threads(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let watched = peak.clone();
    support::block_on(async move {
        let channel = support::channel(uri).await;
        good_calls(&channel, 3).await;
        let attack = tokio::spawn(attack);
        let good = tokio::spawn(async move {
            // Good clients keep calling while the attack runs.
            for _ in 0..20 {
                good_calls(&channel, 5).await;
                let (rss, _) = rss_and_threads(pid);
                watched.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
            }
        });
        attack.await.expect("the attack ran");
        good.await.expect("every good call succeeded");
    });
    let (rss_after, threads_after) = rss_and_threads(pid);
    let peak = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(rss_after);
    eprintln!(
        "gateway RSS before {} MiB, peak {} MiB, after {} MiB; threads {threads_before} -> {threads_after}",
        rss_before >> 20,
        peak >> 20,
        rss_after >> 20
    );
    assert!(
        peak.saturating_sub(rss_before) < max_growth,
        "the gateway grew by {} MiB (bound {} MiB)",
        (peak - rss_before) >> 20,
        max_growth >> 20
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads {threads_before} -> {threads_after}"
    );
}

#[test]
fn idle_connections_that_never_send_a_preface_are_bounded_and_closed() {
    const IDLE: usize = 5_000;
    let mut mesh = gateway_mesh(&["--preface-timeout", "3s", "--max-connections", "8000"]);
    let ingress = mesh.serving("gateway");
    under_attack(&mut mesh, 256 << 20, async move {
        let mut held = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            match TcpStream::connect(ingress).await {
                Ok(stream) => held.push(stream),
                Err(error) => panic!("connect {}: {error}", held.len()),
            }
        }
        // Every one is closed by the gateway once its preface time is
        // over: a read ends (EOF or reset) within a bounded time.
        let deadline = Instant::now() + Duration::from_secs(60);
        for mut stream in held {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                tokio::time::timeout(left, closed_by_peer(&mut stream))
                    .await
                    .is_ok(),
                "an idle connection is closed by the gateway"
            );
        }
    });
    let timeouts = mesh.counter(
        "gateway",
        "mesh_listener_connections_total",
        &[("listener", "ingress"), ("event", "preface-timeout")],
    );
    assert!(
        timeouts >= IDLE as f64,
        "preface timeouts counted: {timeouts}"
    );
}

#[test]
fn beyond_the_connection_cap_connections_are_refused_at_once_and_counted() {
    let mesh = gateway_mesh(&["--max-connections", "200"]);
    let ingress = mesh.serving("gateway");
    // The attacker holds the cap's worth of connections and tries for more;
    // the ones beyond are closed at once. Good clients come back once the
    // attacker lets go (what the cap protects is the process, not a slot).
    support::block_on(async move {
        let mut held = Vec::new();
        for _ in 0..200 {
            held.push(TcpStream::connect(ingress).await.expect("connect"));
        }
        for _ in 0..50 {
            let mut extra = TcpStream::connect(ingress).await.expect("connect");
            let mut buf = [0u8; 16];
            let closed = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf)).await;
            // Closed before the server said anything (no SETTINGS frame).
            assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        }
        drop(held);
    });
    let refused = mesh.counter(
        "gateway",
        "mesh_listener_connections_total",
        &[("listener", "ingress"), ("event", "refused-at-limit")],
    );
    assert!(refused >= 50.0, "refused connections counted: {refused}");
    let uri = mesh.gateway_uri();
    support::block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let channel = tonic::transport::Channel::from_shared(uri.clone()).expect("uri");
            if let Ok(channel) = channel.connect().await {
                good_calls(&channel, 3).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "places free up once the attacker leaves"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// An HTTP/2 connection made with the `h2` crate, which lets a test do
/// what well-behaved clients never do (reset every stream at once).
async fn h2_connection(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[test]
fn rapid_reset_ends_the_attackers_connection_and_no_one_else_notices() {
    const STREAMS: u32 = 50_000;
    let mut mesh = gateway_mesh(&[]);
    let ingress = mesh.serving("gateway");
    under_attack(&mut mesh, 128 << 20, async move {
        // Raw frames: a client library would not send a stream's HEADERS
        // at all when it is reset before it left.
        let tcp = TcpStream::connect(ingress).await.expect("connect");
        let (mut reader, mut writer) = tcp.into_split();
        let draining = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        });
        let authority = ingress.to_string();
        let started = Instant::now();
        writer
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        writer
            .write_all(&frame(0x4, 0, 0, &[]))
            .await
            .expect("settings");
        let mut stream = 1u32;
        let mut opened = 0;
        'attack: while opened < STREAMS && started.elapsed() < Duration::from_secs(30) {
            let mut batch = Vec::new();
            for _ in 0..100 {
                let block = request_headers(&authority);
                batch.extend(frame(0x1, 0x4, stream, &block)); // HEADERS, END_HEADERS
                batch.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
                stream += 2;
                opened += 1;
            }
            if writer.write_all(&batch).await.is_err() {
                break 'attack;
            }
            if draining.is_finished() {
                break 'attack;
            }
        }
        let closed = tokio::time::timeout(Duration::from_secs(30), draining).await;
        assert!(
            closed.is_ok(),
            "the gateway closes a connection that opened and reset {opened} streams"
        );
        assert!(
            opened < STREAMS,
            "the gateway took all {opened} reset streams"
        );
        eprintln!("rapid reset: the gateway closed the connection after at most {opened} streams");
    });
    // Closed either by h2 (streams reset before they were accepted: GOAWAY
    // ENHANCE_YOUR_CALM past 20) or by the listener (calls cancelled as soon
    // as they were dispatched: `rapid-reset`); the gateway served on.
}

/// The HPACK block of a gRPC request's headers (no Huffman, no indexing).
fn request_headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    let mut literal_indexed_name = |index: u8, value: &[u8]| {
        block.push(index); // literal without indexing, name from the static table
        block.push(value.len() as u8);
        block.extend_from_slice(value);
    };
    literal_indexed_name(0x04, b"/shop.catalog.v1.CatalogService/ListProducts");
    literal_indexed_name(0x01, authority.as_bytes());
    block.extend(literal_header(b"content-type", b"application/grpc"));
    block
}

/// One HPACK "literal header field without indexing, new name" (RFC 7541
/// 6.2.2).
fn literal_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, prefix_bits: u8, mut n: usize) {
        let max = (1usize << prefix_bits) - 1;
        if n < max {
            out.push(n as u8);
            return;
        }
        out.push(max as u8);
        n -= max;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut out = vec![0u8];
    integer(&mut out, 7, name.len());
    out.extend_from_slice(name);
    integer(&mut out, 7, value.len());
    out.extend_from_slice(value);
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_continuation_flood_is_cut_off_without_growing_the_gateway() {
    const FRAME: usize = 16 << 10;
    const BOMB: usize = 64 << 20;
    let mut mesh = gateway_mesh(&[]);
    let ingress = mesh.serving("gateway");
    under_attack(&mut mesh, 64 << 20, async move {
        let mut tcp = TcpStream::connect(ingress).await.expect("connect");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        tcp.write_all(&frame(0x4, 0, 0, &[]))
            .await
            .expect("settings");
        // A header block of 64 MiB: HEADERS without END_HEADERS, then
        // CONTINUATION frames, none of which ends it.
        let (mut reader, mut writer) = tcp.into_split();
        let writing = tokio::spawn(async move {
            let block = literal_header(b"x-bomb", &vec![b'a'; BOMB]);
            let mut chunks = block.chunks(FRAME);
            let first = chunks.next().expect("a first chunk");
            let mut sent = 0usize;
            if writer.write_all(&frame(0x1, 0, 1, first)).await.is_err() {
                return sent;
            }
            for chunk in chunks {
                if writer.write_all(&frame(0x9, 0, 1, chunk)).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        // The gateway answers with GOAWAY or a reset and closes; it never
        // swallows the whole block.
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the gateway closes the flooding connection");
        let sent = tokio::time::timeout(Duration::from_secs(30), writing)
            .await
            .expect("the writer stops")
            .expect("writer task");
        assert!(
            sent < BOMB,
            "the gateway read the whole {BOMB}-byte header block"
        );
        eprintln!("continuation flood: cut off after {} KiB", sent >> 10);
    });
}

#[test]
fn an_oversized_header_block_is_refused_and_the_next_call_is_served() {
    let mut mesh = gateway_mesh(&[]);
    let ingress = mesh.serving("gateway");
    under_attack(&mut mesh, 64 << 20, async move {
        // 64 KiB of headers on a normal request: over the edge's 16 KiB.
        let big = "a".repeat(64 << 10);
        let mut client = h2_connection(ingress).await;
        let request = http::Request::post(format!(
            "http://{ingress}/shop.catalog.v1.CatalogService/ListProducts"
        ))
        .header("content-type", "application/grpc")
        .header("x-big", big.as_str())
        .body(())
        .expect("request");
        let refused = async {
            client = client.ready().await?;
            let (response, _) = client.send_request(request, true)?;
            response.await
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("an answer within 10 s");
        match answer {
            Err(_) => {}
            Ok(response) => assert_ne!(
                response.headers().get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "an oversized header block is not served"
            ),
        }
    });
}

#[test]
fn random_method_names_leave_the_metrics_bounded() {
    const CALLS: usize = 100_000;
    const IN_FLIGHT: usize = 64;
    let mut mesh = gateway_mesh(&[]);
    let ingress = mesh.serving("gateway");
    let admin_series = |mesh: &TestMesh| {
        let text = mesh.metrics_text("gateway");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    };
    let before = admin_series(&mesh);
    under_attack(&mut mesh, 64 << 20, async move {
        let tcp = TcpStream::connect(ingress).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        let mut sent = 0usize;
        while sent < CALLS && started.elapsed() < Duration::from_secs(240) {
            while calls.len() < IN_FLIGHT && sent < CALLS {
                // Most name services nobody routes; one in ten names a
                // method catalog does not have (forwarded, answered there).
                let path = if sent % 10 == 0 {
                    format!("/shop.catalog.v1.CatalogService/Nope{sent}")
                } else {
                    format!("/attack{sent}.Service{}/Method{sent}", sent % 7)
                };
                let mut sender = sender.clone();
                calls.spawn(async move {
                    let request = http::Request::post(format!("http://gateway{path}"))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                            0, 0, 0, 0, 0,
                        ])))
                        .expect("request");
                    let response = sender.send_request(request).await.expect("an answer");
                    let status = response
                        .headers()
                        .get("grpc-status")
                        .map(|v| v.as_bytes().to_vec());
                    let trailers = http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .ok()
                        .and_then(|c| c.trailers().cloned());
                    let status = status.or_else(|| {
                        trailers.and_then(|t| t.get("grpc-status").map(|v| v.as_bytes().to_vec()))
                    });
                    assert_eq!(status.as_deref(), Some(&b"12"[..]), "{path}: UNIMPLEMENTED");
                });
                sent += 1;
            }
            if let Some(done) = calls.join_next().await {
                done.expect("a call");
            }
        }
        while let Some(done) = calls.join_next().await {
            done.expect("a call");
        }
        eprintln!("random methods: {sent} calls in {:?}", started.elapsed());
        assert!(sent >= CALLS / 10, "only {sent} calls in the time allowed");
    });
    let after = admin_series(&mesh);
    eprintln!("gateway metrics: {before} series before, {after} after");
    assert!(
        after < before + 200,
        "random names grew the gateway's metrics from {before} to {after} series"
    );
}

/// Opens AdjustStock (a bidi stream) through the gateway, gets one answer
/// and keeps the stream open; returns the reply stream, the sender that
/// keeps it open and the instance that serves it.
async fn open_stream(
    gateway: String,
) -> (
    tonic::Streaming<mesh::proto::shop::inventory::v1::Stock>,
    tokio::sync::mpsc::Sender<mesh::proto::shop::inventory::v1::StockAdjustment>,
    String,
) {
    use mesh::proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
    use mesh::proto::shop::inventory::v1::StockAdjustment;
    let channel = support::channel(gateway).await;
    let sku = support::first_product(&channel).await.sku;
    let (send, receive) = tokio::sync::mpsc::channel(4);
    send.send(StockAdjustment { sku, delta: 1 })
        .await
        .expect("send");
    let response = InventoryServiceClient::new(channel)
        .adjust_stock(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
        .expect("AdjustStock");
    let served_by = response
        .metadata()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .expect("x-served-by")
        .to_owned();
    let mut replies = response.into_inner();
    replies
        .message()
        .await
        .expect("a first reply")
        .expect("the stream is open");
    (replies, send, served_by)
}

/// The stream's end after its upstream died: UNAVAILABLE with the mesh's
/// reason, never a bare reset (INTERNAL/UNKNOWN).
async fn stream_end(
    mut replies: tonic::Streaming<mesh::proto::shop::inventory::v1::Stock>,
) -> tonic::Status {
    let end = tokio::time::timeout(Duration::from_secs(30), replies.message())
        .await
        .expect("the stream ends within 30 s");
    end.expect_err("the stream ends with an error status")
}

fn assert_upstream_reset(mesh: &TestMesh, status: &tonic::Status) {
    if status.code() != tonic::Code::Unavailable {
        for name in ["gateway", "inventory-1-sidecar", "inventory-2-sidecar"] {
            let log = mesh.log(name);
            let tail: Vec<_> = log.lines().rev().take(15).collect();
            eprintln!("--- {name} (last lines, newest first)\n{}", tail.join("\n"));
        }
    }
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-mesh-error")
            .and_then(|v| v.to_str().ok()),
        Some("upstream-reset"),
        "{status:?}"
    );
}

// One runtime for the whole test: the client's connection lives as long
// as the streams it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_stream_ends_the_callers_stream_with_unavailable() {
    let mut topology = support::secure_services(&["catalog"]);
    topology.services.push((
        "inventory".to_owned(),
        vec![
            meshctl::demo::InstanceSpec::new("inventory-1"),
            meshctl::demo::InstanceSpec::new("inventory-2"),
        ],
    ));
    // The test streams to inventory (internal in the demo) from outside.
    topology.expose_internal = true;
    let mut mesh = TestMesh::start(&topology);
    let gateway = mesh.gateway_uri();

    // The app behind an inbound sidecar dies: that sidecar ends the stream.
    let (replies, _open, first) = open_stream(gateway.clone()).await;
    mesh.kill(&first);
    assert_upstream_reset(&mesh, &stream_end(replies).await);

    // The gateway's own upstream (the other instance's sidecar) dies: the
    // gateway ends the stream.
    let (replies, _open, second) = open_stream(gateway).await;
    assert_ne!(second, first, "the dead app's endpoint is not used");
    mesh.kill(&format!("{second}-sidecar"));
    assert_upstream_reset(&mesh, &stream_end(replies).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_upstream_stream_limit_waits_a_bounded_time_then_fails_clearly() {
    use mesh::proto::shop::payments::v1::payments_service_client::PaymentsServiceClient;
    use mesh::proto::shop::payments::v1::ChargeRequest;
    const BURST: usize = 24;
    // Two streams to payments at once, two calls waiting: every charge
    // takes 1.5 s, so a burst of 24 finds the bound at once.
    let mut topology = support::secure_services(&["payments"]);
    topology.expose_internal = true;
    topology.services[0].1[0] =
        meshctl::demo::InstanceSpec::new("payments-1").app_args(["--latency-ms", "1500"]);
    topology.gateway_args = ["--upstream-max-streams", "2", "--upstream-max-waiting", "2"]
        .map(str::to_owned)
        .to_vec();
    let mut mesh = TestMesh::start(&topology);
    let pid = gateway_pid(&mut mesh);
    let (rss_before, _) = rss_and_threads(pid);
    let channel = support::channel(mesh.gateway_uri()).await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let mut client = PaymentsServiceClient::new(channel.clone());
        calls.spawn(async move {
            let mut request = tonic::Request::new(ChargeRequest {
                idempotency_key: format!("burst-{i}"),
                customer_id: "alice".into(),
                reference: format!("order-{i}"),
                amount_minor: 100,
                currency: "EUR".into(),
            });
            request.set_timeout(Duration::from_secs(20));
            client.charge(request).await
        });
    }
    let (mut served, mut queue_full) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.expect("a call") {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert_eq!(
                    status
                        .metadata()
                        .get("x-mesh-error")
                        .and_then(|v| v.to_str().ok()),
                    Some("upstream-queue-full"),
                    "{status:?}"
                );
                queue_full += 1;
            }
        }
    }
    let took = started.elapsed();
    eprintln!("burst: {served} served, {queue_full} refused (queue full) in {took:?}");
    assert!(
        served >= 2,
        "the calls that got a place are served: {served}"
    );
    assert!(
        queue_full >= BURST - 8,
        "calls beyond the bound fail at once instead of queueing: {queue_full} of {BURST}"
    );
    assert!(
        took < Duration::from_secs(20),
        "nobody waited past the bound: {took:?}"
    );
    // The endpoint is usable again once the burst is over.
    let mut request = tonic::Request::new(ChargeRequest {
        idempotency_key: "after".into(),
        customer_id: "alice".into(),
        reference: "order-after".into(),
        amount_minor: 100,
        currency: "EUR".into(),
    });
    request.set_timeout(Duration::from_secs(20));
    PaymentsServiceClient::new(channel)
        .charge(request)
        .await
        .expect("a call after the burst is served");
    let (rss_after, _) = rss_and_threads(pid);
    assert!(
        rss_after.saturating_sub(rss_before) < 64 << 20,
        "the gateway grew by {} MiB",
        (rss_after - rss_before) >> 20
    );
}
