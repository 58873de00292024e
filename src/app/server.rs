//! Serving a shop service: the app's own gRPC services plus health and
//! reflection, with graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use super::{AppArgs, ServedByLayer};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::telemetry::ServerSpanLayer;

/// Why a service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The instance id cannot be sent as a header value.
    #[error("instance id {0:?} is not a valid header value")]
    InstanceId(String),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed while running.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` (the app's own services, named in `service_names`) plus
/// `grpc.health.v1.Health` and server reflection v1 and v1alpha (grpcurl 1.8
/// speaks only v1alpha), until `shutdown` fires.
///
/// Every call but health checks runs in a server span that continues the
/// caller's trace ([`ServerSpanLayer`]).
///
/// On shutdown the health status turns NOT_SERVING first (so probes and
/// sidecars stop sending), then in-flight calls get
/// `args.shutdown_grace_seconds` to finish.
pub async fn serve(
    service: &str,
    args: &AppArgs,
    service_names: &[&str],
    routes: Routes,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let instance = args.instance_id(service);
    let served_by =
        ServedByLayer::new(&instance).map_err(|_| ServeError::InstanceId(instance.clone()))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    for name in service_names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    // Register the whole descriptor set (so `describe` resolves every type)
    // but list only what this app serves.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let addr = SocketAddr::new(args.listen_host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(%service, %instance, version = %args.version_label, %local, "serving");

    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let stop = shutdown.clone();
    let health_on_stop = health.clone();
    // The builder's `tcp_nodelay` applies only to listeners tonic binds
    // itself: set it on the incoming stream. Without it, a response whose
    // trailers follow a larger DATA frame in a second write waits for the
    // peer's delayed ACK (Nagle), up to 40 ms on Linux.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Streams, header size and the reset-stream caps stated, not tonic's
    // defaults (unlimited streams, no cap on locally reset streams).
    let http2 = crate::listen::Limits::mesh().http2;
    let server = http2
        .tonic(tonic::transport::Server::builder())
        // Except the cap on locally reset streams, stated off: the app's
        // one client is its own sidecar, whose listeners bound what reaches
        // it, and h2 counts that cap over the connection's whole life, so
        // every call the app answers before reading its body (an unknown
        // method) would add up until the app sent its sidecar GOAWAY,
        // failing the good calls sharing that connection.
        .http2_max_local_error_reset_streams(None)
        .layer(ServerSpanLayer)
        .layer(served_by)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            health_on_stop
                .set_service_status("", ServingStatus::NotServing)
                .await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over with calls still in flight; stopping");
        }
    }
    tracing::info!(%service, "stopped");
    Ok(())
}
