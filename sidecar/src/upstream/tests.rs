use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;

use bytes::Bytes;
use http_body_util::Full;
use mesh::identity::transport::PeerIdentity;
use mesh::identity::{ClientAuth, MeshTls, SpiffeId};

use super::*;
use crate::table::UpstreamPool;
use crate::test_pki::TestCa;

const TD: &str = "mesh.local";

fn service(name: &str) -> SpiffeId {
    SpiffeId::service(TD, name).unwrap()
}

/// TLS state proving `id`, trusting `ca`.
fn tls_for(ca: &TestCa, id: &SpiffeId) -> Arc<MeshTls> {
    let tls = MeshTls::new(TD, ca.bundle(0), ClientAuth::Required).unwrap();
    tls.set_credential(ca.credential(id, Duration::from_secs(3600)));
    Arc::new(tls)
}

/// A mesh server on port 0 proving `id`: it answers every call with gRPC
/// OK and notes who each client proved to be.
async fn server(ca: &TestCa, id: &SpiffeId) -> (SocketAddr, Arc<StdMutex<Vec<PeerIdentity>>>) {
    let tls = tls_for(ca, id);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clients = Arc::new(StdMutex::new(Vec::new()));
    let seen = clients.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok((stream, peer)) = mesh::identity::transport::accept(&tls, tcp).await else {
                    return;
                };
                seen.lock().unwrap().push(peer);
                let service = hyper::service::service_fn(|_req| async {
                    let mut response = http::Response::new(Full::new(Bytes::new()));
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static("0"));
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, clients)
}

fn upstream(ca: &TestCa, addr: SocketAddr, expected: &SpiffeId) -> (Upstream, IdentityMetrics) {
    let metrics = IdentityMetrics::default();
    let upstream = Upstream::new(&addr.to_string(), Duration::from_secs(2))
        .unwrap()
        .with_peer(UpstreamPeer {
            tls: tls_for(ca, &service("orders")),
            id: expected.clone(),
            metrics: metrics.clone(),
        });
    (upstream, metrics)
}

#[tokio::test]
async fn connects_when_the_endpoint_proves_its_service_and_shows_ours() {
    let ca = TestCa::new();
    let payments = service("payments");
    let (addr, clients) = server(&ca, &payments).await;
    let (upstream, _) = upstream(&ca, addr, &payments);
    let sender = upstream
        .sender()
        .await
        .expect("the right identity connects");
    assert!(!sender.is_closed());
    assert_eq!(upstream.view().connection, "connected");
    assert_eq!(
        upstream.view().identity.as_deref(),
        Some("spiffe://mesh.local/svc/payments")
    );
    // Mutual: the server learned who called (its side of a TLS 1.3
    // handshake ends after ours).
    tokio::time::timeout(Duration::from_secs(5), async {
        while clients.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server finished its handshake");
    assert_eq!(
        clients.lock().unwrap().as_slice(),
        &[PeerIdentity(Some(service("orders")))]
    );
}

#[tokio::test]
async fn an_endpoint_proving_another_identity_is_never_used() {
    let ca = TestCa::new();
    let (addr, clients) = server(&ca, &service("impostor")).await;
    let (upstream, metrics) = upstream(&ca, addr, &service("payments"));

    let error = upstream.sender().await.expect_err("another identity");
    assert!(
        matches!(error, ConnectError::PeerIdentityMismatch(_)),
        "{error:?}"
    );
    assert!(error.is_identity_mismatch());
    // Backing off now, and still saying why.
    let again = upstream.sender().await.expect_err("backing off");
    assert!(
        matches!(again, ConnectError::BackingOff { .. }) && again.is_identity_mismatch(),
        "{again:?}"
    );
    assert_eq!(upstream.view().connection, "backing-off");
    // Nothing was served there, and the handshake failure was counted.
    assert!(clients.lock().unwrap().is_empty());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register_for_tests(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"tls_handshake_failures_total{listener="upstream",reason="peer-identity-mismatch"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_endpoint_of_another_trust_anchor_fails_as_a_plain_connect_failure() {
    let (ours, theirs) = (TestCa::new(), TestCa::new());
    let payments = service("payments");
    let (addr, _) = server(&theirs, &payments).await;
    let (upstream, _) = upstream(&ours, addr, &payments);
    let error = upstream.sender().await.expect_err("untrusted");
    assert!(matches!(error, ConnectError::Failed(_)), "{error:?}");
    assert!(!error.is_identity_mismatch());
}

#[test]
fn pool_slots_are_per_service_so_a_reused_address_is_not_trusted() {
    let ca = TestCa::new();
    let pool = UpstreamPool::new(
        Duration::from_secs(1),
        Some((tls_for(&ca, &service("orders")), IdentityMetrics::default())),
    );
    let a = pool.get("payments", "10.0.0.1:15006").unwrap();
    let b = pool.get("catalog", "10.0.0.1:15006").unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(
        &a,
        &pool.get("payments", "10.0.0.1:15006").unwrap()
    ));
    assert_eq!(
        b.view().identity.as_deref(),
        Some("spiffe://mesh.local/svc/catalog")
    );
}
