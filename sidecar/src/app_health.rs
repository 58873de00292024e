//! Whether the local app can take calls, for `/ready`: by its gRPC health
//! service (`grpc.health.v1`, the default), by a TCP connect, or not at all
//! (`--app-health grpc|tcp|none`). Most gRPC servers people already run have
//! no health service: in `grpc` mode an app that answers UNIMPLEMENTED for
//! health is taken as having none, and a TCP connect decides instead, so any
//! gRPC server can join the mesh unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How the sidecar tells that its app is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AppHealthMode {
    /// The app's `grpc.health.v1.Health/Check` answers SERVING; an app
    /// without a health service (UNIMPLEMENTED) is checked by TCP connect.
    #[default]
    Grpc,
    /// A TCP connect to the app's address succeeds.
    Tcp,
    /// The app is taken as ready whenever the sidecar is.
    None,
}

/// The readiness check of one app.
#[derive(Debug, Clone)]
pub struct AppHealth {
    mode: AppHealthMode,
    addr: SocketAddr,
    timeout: Duration,
    client: Option<HealthClient<Channel>>,
}

impl AppHealth {
    /// Checks the app at `addr` the `mode` way, each check bounded by
    /// `timeout`.
    pub fn new(mode: AppHealthMode, addr: SocketAddr, timeout: Duration) -> Self {
        let client = (mode == AppHealthMode::Grpc).then(|| {
            // Lazy: the app may start after its sidecar.
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a socket address is a valid URI")
                .connect_timeout(timeout)
                .connect_lazy();
            HealthClient::new(channel)
        });
        Self {
            mode,
            addr,
            timeout,
            client,
        }
    }

    /// `Ok` when the app can take calls; why not otherwise.
    pub async fn check(&self) -> Result<(), String> {
        let Some(client) = &self.client else {
            return match self.mode {
                AppHealthMode::None => Ok(()),
                _ => self.connects().await,
            };
        };
        let mut client = client.clone();
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(self.timeout, check).await {
            Err(_) => Err("app health check timed out".into()),
            // No health service: a gRPC server that answers is up.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => self.connects().await,
            Ok(Err(status)) => Err(format!("app health check failed: {}", status.message())),
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(reply)) => Err(format!("app reports status {}", reply.get_ref().status)),
        }
    }

    async fn connects(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(self.addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("app at {} refuses connections: {error}", self.addr)),
            Err(_) => Err(format!(
                "app at {} does not accept within {:?}",
                self.addr, self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC server with no health service (only reflection), as most
    /// existing servers are; its address.
    async fn server_without_health() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reflection = tonic_reflection::server::Builder::configure()
            .build_v1()
            .expect("reflection");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(reflection)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_server_without_health_is_ready_by_connect_and_a_dead_one_is_not() {
        let timeout = Duration::from_secs(2);
        let up = server_without_health().await;
        let down = closed_port().await;
        for mode in [AppHealthMode::Grpc, AppHealthMode::Tcp] {
            AppHealth::new(mode, up, timeout)
                .check()
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert!(
                AppHealth::new(mode, down, timeout).check().await.is_err(),
                "{mode:?} took a dead app as ready"
            );
        }
        AppHealth::new(AppHealthMode::None, down, timeout)
            .check()
            .await
            .expect("none never checks");
    }
}
