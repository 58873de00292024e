//! Accept loops: HTTP/2 (h2c, or over mutual TLS) for the gRPC listeners,
//! HTTP/1 and 2 for admin. Each stops accepting on shutdown, then gives
//! open connections a grace period to finish their calls.
//!
//! A TLS listener runs each handshake in the connection's own task, never
//! in the accept loop: a client that stalls mid-handshake holds up nobody
//! else, and a failed handshake is counted and logged, never the end of
//! the listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use mesh::identity::PeerIdentity;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::coalesced_io::CoalescedIo;
use crate::handshake;
use crate::identity::Identity;
use crate::proxy::Proxy;
use crate::proxy_error::ProxyBody;

/// Serves gRPC (HTTP/2 with prior knowledge, as gRPC clients speak it) on
/// `listener` until `shutdown`, then drains for at most `drain`. With
/// `identity`, every connection is mutual TLS first, and each request
/// carries the client's [`PeerIdentity`].
pub async fn serve_grpc(
    name: &'static str,
    listener: TcpListener,
    proxy: Proxy,
    identity: Option<Arc<Identity>>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024)
        // Bounded headers: a request with more gets a protocol error, not
        // unbounded memory.
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off a
                    // moment rather than spin on the error.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let proxy = proxy.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            // TLS goes over the write combiner: the records of one
            // event-loop turn still leave in one system call.
            let io = CoalescedIo::new(stream);
            let served = match identity {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(io), proxy))
                        .await
                }
                Some(identity) => match handshake::accept(identity.tls(), io).await {
                    Ok((tls, client)) => {
                        if let Some(id) = &client.0 {
                            tracing::debug!(listener = name, %peer, mesh.peer.identity = %id, "TLS connection");
                        }
                        let service = WithPeer {
                            proxy,
                            peer: client,
                        };
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tls), service))
                            .await
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
        });
    }
    drop(listener);
    drain_connections(name, graceful, drain).await;
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
/// both work) until `shutdown`.
pub async fn serve_http<S>(listener: TcpListener, service: S, shutdown: CancellationToken)
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
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(listener = "admin", %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service.clone())
                .into_owned(),
        );
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    drain_connections("admin", graceful, Duration::from_secs(1)).await;
}

async fn drain_connections(name: &'static str, graceful: GracefulShutdown, drain: Duration) {
    let open = graceful.count();
    if open > 0 {
        tracing::info!(listener = name, open, ?drain, "draining connections");
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain period over; closing remaining connections"
        );
    }
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

    #[tokio::test]
    async fn a_plaintext_client_is_refused_counted_and_the_listener_keeps_serving() {
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve_grpc(
            "inbound",
            listener,
            proxy,
            Some(identity.clone()),
            stop.clone(),
            Duration::from_secs(1),
        ));

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
