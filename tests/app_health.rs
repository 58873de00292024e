//! An app as most gRPC servers are, with neither `grpc.health.v1` nor
//! reflection, joins the mesh: its sidecar (the real binary) becomes ready
//! by a TCP connect (`--app-health grpc` falls back when health answers
//! UNIMPLEMENTED), and calls through the mesh reach it. With `--app-health
//! grpc` and a dead app, the sidecar is not ready and says why.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The one method the bare server has.
const HELLO: &str = "/test.Bare/Hello";

/// A gRPC server over real HTTP/2 with one method, `test.Bare/Hello`
/// (an empty message back); every other path, health and reflection
/// included, is UNIMPLEMENTED, as a server without them answers.
async fn bare_server() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    // Read the request to its end, as a server does.
                    let _ = req.into_body().collect().await;
                    let response = if path == HELLO {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let body = Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
                            .with_trailers(async move {
                                Some(Ok::<_, std::convert::Infallible>(trailers))
                            })
                            .boxed();
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                    } else {
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "12")
                            .body(Full::new(bytes::Bytes::new()).boxed())
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("response"))
                },
            );
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A sidecar process, killed when dropped.
struct Sidecar {
    child: Child,
    admin: SocketAddr,
    outbound: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sidecar of service `bare` in front of `app`, from a static table
/// that routes `test.Bare` to its own inbound listener.
fn sidecar(app: SocketAddr, app_health: &str, dir: &std::path::Path) -> Sidecar {
    let mut port = support::port_allocator();
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (inbound, outbound, admin) = (loopback(port()), loopback(port()), loopback(port()));
    let bootstrap = dir.join(format!("bootstrap-{}.yaml", admin.port()));
    std::fs::write(
        &bootstrap,
        format!(
            "endpoints:\n  - {{ service: bare, instance: bare-1, address: \"{inbound}\", version: v1, weight: 1 }}\n\
             routes:\n  - kind: Route\n    metadata: {{ name: bare }}\n    spec:\n      match: {{ service: test.Bare }}\n      destination: bare\n"
        ),
    )
    .expect("write the table");
    let child = Command::new(support::bin("sidecar"))
        .args([
            "--service",
            "bare",
            "--instance",
            "bare-1",
            "--inbound-addr",
            &inbound.to_string(),
            "--outbound-addr",
            &outbound.to_string(),
            "--admin-addr",
            &admin.to_string(),
            "--probe-addr",
            &loopback(port()).to_string(),
            "--app-addr",
            &app.to_string(),
            "--app-health",
            app_health,
            "--bootstrap",
            &bootstrap.display().to_string(),
            "--mtls",
            "off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sidecar");
    Sidecar {
        child,
        admin,
        outbound,
    }
}

/// `/ready`'s answer once the sidecar's admin port answers at all.
fn ready(sidecar: &Sidecar) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = meshctl::demo::admin_get(sidecar.admin, "/ready") {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar's admin port never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `/ready` says 200.
fn wait_ready(sidecar: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(sidecar);
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_health_or_reflection_joins_the_mesh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = bare_server().await;
    let path = dir.path().to_owned();
    let sidecar = tokio::task::spawn_blocking(move || {
        let sidecar = sidecar(app, "grpc", &path);
        wait_ready(&sidecar);
        sidecar
    })
    .await
    .expect("sidecar");

    // A call through the mesh: outbound, inbound, the app.
    let (headers, trailers) = support::raw_unary(sidecar.outbound, HELLO, &[], &[]).await;
    let status = headers
        .get("grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(status.as_deref(), Some("0"), "{headers:?} {trailers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_is_not_ready_and_the_sidecar_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let path = dir.path().to_owned();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let sidecar = sidecar(dead, "tcp", &path);
        ready(&sidecar)
    })
    .await
    .expect("sidecar");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("refuses connections") || body.contains("does not accept"),
        "{body}"
    );
}
