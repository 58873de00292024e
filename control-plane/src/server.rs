//! One control-plane replica: follow the store, serve Discovery and
//! MeshAdmin (plus health and reflection, for grpcurl), publish the
//! replica's status, and answer `/ready` and `/metrics` on an HTTP admin
//! port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::proto::mesh::v1::mesh_admin_server::MeshAdminServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::AdminService;
use crate::discovery::{DiscoveryServer, DiscoveryService};
use crate::index::Published;
use crate::metrics::Metrics;
use crate::replica::{self, Identity};
use crate::sessions::Sessions;
use crate::store::Store;
use crate::watcher;

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// gRPC listener (Discovery, MeshAdmin).
    pub listen: SocketAddr,
    /// HTTP admin listener (`/live`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    /// TTL of registrations: a dead sidecar is gone within it.
    pub lease_ttl: Duration,
    /// After start, how long sidecars that already have a table wait for
    /// their first push (so others can re-register first).
    pub warmup: Duration,
    /// This replica's id.
    pub id: String,
}

/// Why a replica could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a replica on `store` until `shutdown`.
pub async fn run<S: Store>(
    store: S,
    settings: ReplicaSettings,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let grpc = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let admin = tokio::net::TcpListener::bind(settings.admin)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.admin,
            source,
        })?;
    let listen = grpc.local_addr().unwrap_or(settings.listen);

    let (publish, published) = watch::channel(Arc::new(Published::default()));
    let sessions = Arc::new(Sessions::default());
    let metrics = Arc::new(Metrics::default());
    let background = CancellationToken::new();
    let watcher = tokio::spawn(watcher::run(
        store.clone(),
        publish,
        background.clone(),
        metrics.clone(),
    ));
    let status = tokio::spawn(replica::run(
        store.clone(),
        Identity {
            id: settings.id.clone(),
            address: listen.to_string(),
        },
        settings.lease_ttl,
        sessions.clone(),
        published.clone(),
        background.clone(),
        metrics.clone(),
    ));
    let admin_task = tokio::spawn(serve_admin(
        admin,
        published.clone(),
        sessions.clone(),
        metrics.clone(),
        background.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mesh::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("mesh.v1.Discovery")
            .with_service_name("mesh.v1.MeshAdmin")
            .with_service_name("grpc.health.v1.Health")
    };
    tracing::info!(replica = %settings.id, %listen, admin = %settings.admin, "control plane serving");
    // Streams end when `shutdown` fires: each session sees the stop and
    // revokes its sidecar's lease, and sidecars move to another replica.
    let sessions_stop = shutdown.clone();
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(DiscoveryServer::new(DiscoveryService::new(
            store.clone(),
            published.clone(),
            settings.lease_ttl,
            settings.warmup,
            sessions,
            sessions_stop,
            metrics,
        )))
        .add_service(MeshAdminServer::new(AdminService::new(store, published)))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        // The builder's tcp_nodelay covers only listeners tonic binds
        // itself: without it here, a push could wait for a delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await;
    background.cancel();
    let _ = tokio::join!(watcher, status, admin_task);
    tracing::info!(replica = %settings.id, "control plane stopped");
    Ok(result?)
}

/// `/live` always; `/ready` once the store has been read; `/metrics` in
/// Prometheus text format.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    published: watch::Receiver<Arc<Published>>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        let published = published.clone();
        let sessions = sessions.clone();
        let metrics = metrics.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let revision = published.borrow().revision;
                let ready = revision > 0;
                let (status, body) = match (req.uri().path(), ready) {
                    ("/live", _) => (200, Bytes::from_static(b"live\n")),
                    ("/ready", true) => (200, Bytes::from_static(b"ready\n")),
                    ("/ready", false) => {
                        (503, Bytes::from_static(b"not ready: store not read yet\n"))
                    }
                    ("/metrics", _) => (
                        200,
                        Bytes::from(metrics.encode(sessions.list().len(), revision)),
                    ),
                    _ => (
                        404,
                        Bytes::from_static(b"not found; try /live, /ready, /metrics\n"),
                    ),
                };
                let is_metrics = req.uri().path() == "/metrics";
                async move {
                    let mut response = hyper::Response::new(Full::new(body));
                    *response.status_mut() =
                        hyper::StatusCode::from_u16(status).unwrap_or_default();
                    if is_metrics {
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                    }
                    Ok::<_, Infallible>(response)
                }
            });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
