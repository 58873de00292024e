//! What the sidecar serves on its listeners: HTTP/2 (h2c, or over mutual
//! TLS) for the gRPC listeners, HTTP/1 and 2 for admin. Accepting, limits,
//! timeouts and draining are [`mesh::listen`]'s; this module adds the
//! handshakes and puts the peer's identity on each request.
//!
//! A TLS listener runs each handshake in the connection's own task, never
//! in the accept loop: a client that stalls mid-handshake holds up nobody
//! else, and a failed handshake is counted and logged, never the end of
//! the listener.
//!
//! The mesh-wide mode ([`InboundMode`], pushed by the control plane) is
//! read per connection: in strict mode every connection goes straight to
//! the handshake; in permissive mode the task first peeks at the client's
//! first bytes and serves the HTTP/2 preface plaintext (no peer identity),
//! anything else through TLS as in strict mode.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use mesh::identity::PeerIdentity;

use mesh::listen::{Accepted, Listener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::call::error::ProxyBody;
use crate::coalesced_io::CoalescedIo;
use crate::handshake::{self, FirstBytes};
use crate::identity::Identity;
use crate::proxy::Proxy;
use crate::settings::MeshMtlsMode;

/// The mesh-wide mTLS mode in force, shared by discovery (which applies
/// pushes) and the mTLS listener (which reads it once per connection).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct InboundMode(Arc<watch::Sender<MeshMtlsMode>>);

impl Default for InboundMode {
    /// Strict until the control plane says otherwise.
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(MeshMtlsMode::Strict)))
    }
}

impl InboundMode {
    /// The mode new connections are accepted under.
    pub fn get(&self) -> MeshMtlsMode {
        *self.0.borrow()
    }

    /// Applies `mode` to connections accepted from now on (open ones keep
    /// what they were accepted under).
    pub fn set(&self, mode: MeshMtlsMode) {
        if self
            .0
            .send_if_modified(|current| std::mem::replace(current, mode) != mode)
        {
            tracing::info!(mode = mode.as_str(), "mesh-wide mTLS mode applied");
        }
    }
}

/// What makes a gRPC listener an mTLS one: this proxy's identity, and the
/// mode that may widen it to plaintext too.
#[derive(Debug, Clone)]
pub struct InboundTls {
    /// Certificate, trust bundle and handshake metrics.
    pub identity: Arc<Identity>,
    /// Strict or permissive, as pushed.
    pub mode: InboundMode,
}

/// TLS on a gRPC listener.
#[derive(Debug, Clone)]
pub enum ListenerTls {
    /// The mesh's mutual TLS (the inbound listener).
    Mesh(InboundTls),
    /// Server-authenticated TLS for external clients (the gateway's
    /// ingress, with `--ingress-tls-cert`).
    Edge(Arc<tokio_rustls::rustls::ServerConfig>),
}

/// Serves gRPC (HTTP/2 with prior knowledge, as gRPC clients speak it) on
/// `listener`, under its limits, until `shutdown`, then drains for at most
/// `drain`. With mesh TLS, every connection is mutual TLS first, and each
/// request carries the client's [`PeerIdentity`]; in permissive mode
/// plaintext HTTP/2 is served too, with no identity. With edge TLS,
/// clients check the listener's certificate and present none.
pub async fn serve_grpc(
    listener: Listener,
    proxy: Proxy,
    tls: Option<ListenerTls>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let (tls, edge) = match tls {
        Some(ListenerTls::Mesh(tls)) => (Some(tls), None),
        Some(ListenerTls::Edge(config)) => (None, Some(tokio_rustls::TlsAcceptor::from(config))),
        None => (None, None),
    };
    listener
        .serve(shutdown, drain, move |accepted| {
            serve_connection(accepted, proxy.clone(), tls.clone(), edge.clone())
        })
        .await;
}

/// One gRPC connection: its TLS handshake (in its own task, so a client
/// that stalls mid-handshake holds up nobody else), then HTTP/2.
async fn serve_connection(
    accepted: Accepted,
    proxy: Proxy,
    tls: Option<InboundTls>,
    edge: Option<tokio_rustls::TlsAcceptor>,
) {
    let Accepted {
        stream,
        peer,
        connection,
    } = accepted;
    let name = connection.listener();
    if let Some(acceptor) = edge {
        let handshake = tokio::time::timeout(
            mesh::identity::transport::HANDSHAKE_TIMEOUT,
            acceptor.accept(CoalescedIo::new(stream)),
        );
        let served = match handshake.await {
            Ok(Ok(tls)) => connection.serve_h2(tls, proxy).await,
            Ok(Err(error)) => {
                tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(listener = name, %peer, "no TLS handshake in time");
                return;
            }
        };
        if let Err(error) = served {
            tracing::debug!(listener = name, %peer, %error, "connection ended with error");
        }
        return;
    }
    let plaintext = match &tls {
        None => true,
        Some(tls) => match tls.mode.get() {
            MeshMtlsMode::Strict => false,
            MeshMtlsMode::Permissive => match handshake::first_bytes(&stream).await {
                Ok(first) => first == FirstBytes::Http2Preface,
                Err(error) => {
                    tls.identity
                        .metrics()
                        .record_handshake_failure(name, error.reason());
                    tracing::info!(listener = name, %peer, %error, reason = error.reason(), "no first bytes");
                    return;
                }
            },
        },
    };
    // TLS goes over the write combiner: the records of one event-loop turn
    // still leave in one system call.
    let io = CoalescedIo::new(stream);
    let served = match tls {
        None => connection.serve_h2(io, proxy).await,
        Some(InboundTls { identity, .. }) if plaintext => {
            identity.metrics().record_inbound_connection(name, false);
            tracing::debug!(listener = name, %peer, "plaintext connection (permissive)");
            connection.serve_h2(io, proxy).await
        }
        Some(InboundTls { identity, .. }) => match handshake::accept(identity.tls(), io).await {
            Ok((tls, client)) => {
                identity.metrics().record_inbound_connection(name, true);
                if let Some(id) = &client.0 {
                    tracing::debug!(listener = name, %peer, mesh.peer.identity = %id, "TLS connection");
                }
                let service = WithPeer {
                    proxy,
                    peer: client,
                };
                connection.serve_h2(tls, service).await
            }
            Err(error) => {
                identity
                    .metrics()
                    .record_handshake_failure(name, error.reason());
                tracing::info!(listener = name, %peer, %error, reason = error.reason(), "TLS handshake failed");
                return;
            }
        },
    };
    if let Err(error) = served {
        tracing::debug!(listener = name, %peer, %error, "connection ended with error");
    }
}

/// The proxy, with the client's proven identity put on every request.
#[derive(Clone)]
struct WithPeer {
    proxy: Proxy,
    peer: PeerIdentity,
}

impl hyper::service::Service<Request<Incoming>> for WithPeer {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = <Proxy as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        hyper::service::Service::call(&self.proxy, req)
    }
}

/// Serves the admin HTTP API (HTTP/1.1 or 2, so curl and Kubernetes probes
/// both work) on `listener`, under its limits, until `shutdown`.
pub async fn serve_http<S>(listener: Listener, service: S, shutdown: CancellationToken)
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<http_body_util::Full<bytes::Bytes>>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    listener
        .serve_http(shutdown, Duration::from_secs(1), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, IdentityMetrics, Metrics};
    use crate::proxy::Destination;
    use crate::test_pki::TestCa;
    use crate::upstream::Upstream;
    use mesh::identity::{ClientAuth, MeshTls, SpiffeId};
    use tokio::io::AsyncWriteExt;

    fn failures(metrics: &IdentityMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register_for_tests(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// An mTLS inbound listener of `orders` (its app unreachable: what
    /// matters is who gets a connection).
    struct Inbound {
        ca: TestCa,
        orders: SpiffeId,
        identity: Arc<Identity>,
        mode: InboundMode,
        addr: String,
        stop: CancellationToken,
        served: tokio::task::JoinHandle<()>,
    }

    async fn inbound() -> Inbound {
        let ca = TestCa::new();
        let orders = SpiffeId::service("mesh.local", "orders").unwrap();
        let identity =
            Identity::new(orders.clone(), ca.bundle(0), IdentityMetrics::default()).unwrap();
        identity
            .install(ca.credential(&orders, Duration::from_secs(3600)))
            .unwrap();
        let identity = Arc::new(identity);
        let metrics = Arc::new(Metrics::default());
        let proxy = Proxy::new(
            Direction::Inbound,
            Destination::App {
                upstream: Arc::new(Upstream::new("127.0.0.1:9", Duration::from_secs(1)).unwrap()),
                counters: metrics.route_counters(Direction::Inbound, "orders", "inbound"),
                service: "orders".into(),
            },
            None,
            metrics,
        );
        let listener = Listener::bind(
            "inbound",
            "127.0.0.1:0".parse().unwrap(),
            mesh::listen::Limits::mesh(),
            mesh::listen::ListenerStats::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let mode = InboundMode::default();
        let served = tokio::spawn(serve_grpc(
            listener,
            proxy,
            Some(ListenerTls::Mesh(InboundTls {
                identity: identity.clone(),
                mode: mode.clone(),
            })),
            stop.clone(),
            Duration::from_secs(1),
        ));
        Inbound {
            ca,
            orders,
            identity,
            mode,
            addr,
            stop,
            served,
        }
    }

    /// Sends the HTTP/2 preface and an empty SETTINGS frame; returns what
    /// the server answers before closing or within 5 s (whichever first).
    async fn plaintext_answer(addr: &str) -> Vec<u8> {
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain.write_all(handshake::HTTP2_PREFACE).await.unwrap();
        plain.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut plain, &mut answer),
        )
        .await
        .map_or(0, |read| read.unwrap_or(0));
        answer.truncate(n);
        answer
    }

    /// True when the answer opens with an HTTP/2 SETTINGS frame (RFC 9113
    /// §3.4: the server's preface), i.e. the connection is served.
    fn served_http2(answer: &[u8]) -> bool {
        answer.len() >= 9 && answer[3] == 0x4
    }

    #[tokio::test]
    async fn permissive_serves_plaintext_and_tls_and_strict_refuses_plaintext_again() {
        let Inbound {
            ca,
            orders,
            identity,
            mode,
            addr,
            stop,
            served,
        } = inbound().await;
        assert!(
            !served_http2(&plaintext_answer(&addr).await),
            "strict first"
        );

        mode.set(MeshMtlsMode::Permissive);
        assert!(
            served_http2(&plaintext_answer(&addr).await),
            "permissive serves h2c"
        );
        // mTLS callers are served as before.
        let caller = SpiffeId::service("mesh.local", "catalog").unwrap();
        let client = MeshTls::new("mesh.local", ca.bundle(0), ClientAuth::Required).unwrap();
        client.set_credential(ca.credential(&caller, Duration::from_secs(3600)));
        mesh::identity::transport::connect(&client, &addr, orders.clone())
            .await
            .expect("mTLS in permissive mode");
        // Neither TLS nor HTTP/2: refused like a failed handshake.
        let mut other = tokio::net::TcpStream::connect(&addr).await.unwrap();
        other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut other, &mut answer),
        )
        .await
        .expect("closed")
        .ok();
        assert!(!answer.starts_with(b"HTTP/1.1 2"), "{answer:?}");

        mode.set(MeshMtlsMode::Strict);
        assert!(
            !served_http2(&plaintext_answer(&addr).await),
            "strict again refuses h2c"
        );
        let text = failures(identity.metrics());
        assert!(
            text.contains(r#"inbound_connections_total{listener="inbound",tls="false"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"listener="inbound",tls="true"} 1"#),
            "{text}"
        );
        stop.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_plaintext_client_is_refused_counted_and_the_listener_keeps_serving() {
        let Inbound {
            ca,
            orders,
            identity,
            addr,
            stop,
            served,
            ..
        } = inbound().await;

        // An h2c client (what every caller was before mTLS).
        let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
        )
        .await
        .expect("the server closes the connection")
        .ok();
        // At most a TLS alert (content type 21), never HTTP/2 SETTINGS.
        assert!(answer.first().is_none_or(|&b| b == 21), "{answer:?}");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !failures(identity.metrics()).contains(r#"listener="inbound""#) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the failed handshake is counted");

        // A client without a certificate is refused too; one with a
        // certificate of the mesh gets through, and meets `orders`.
        let caller = SpiffeId::service("mesh.local", "catalog").unwrap();
        let anonymous = MeshTls::new("mesh.local", ca.bundle(0), ClientAuth::Required).unwrap();
        let client = MeshTls::new("mesh.local", ca.bundle(0), ClientAuth::Required).unwrap();
        client.set_credential(ca.credential(&caller, Duration::from_secs(3600)));
        mesh::identity::transport::connect(&client, &addr, orders.clone())
            .await
            .expect("a mesh client is served after a refused one");
        let refused = async {
            let mut tls = mesh::identity::transport::connect(&anonymous, &addr, orders.clone())
                .await
                .ok()?;
            // TLS 1.3: the server's refusal arrives after our Finished.
            let mut buf = [0u8; 64];
            let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
                .await
                .ok()?;
            (n > 0).then_some(())
        };
        assert!(
            refused.await.is_none(),
            "a client with no certificate is refused"
        );

        stop.cancel();
        served.await.unwrap();
    }
}
