//! The mesh's data-plane proxy.
//!
//! A sidecar sits beside one app instance: the app sends every call to the
//! outbound listener, which routes it by gRPC path to an endpoint of the
//! destination service (smooth weighted round-robin); calls from other
//! sidecars arrive at the inbound listener and go to the app. In gateway
//! mode an ingress listener routes external clients' calls like outbound.
//!
//! # Layout
//!
//! - [`settings`]: flags and environment, validated at start.
//! - `table`: the routing table compiled from its source, swapped whole.
//! - `wrr`: smooth weighted round-robin.
//! - `upstream`: one multiplexed HTTP/2 connection per endpoint.
//! - `proxy`: the forwarding service behind each gRPC listener.
//! - `proxy_error`: errors the proxy answers itself, as gRPC statuses.
//! - `server`: accept loops with graceful drain.
//! - `admin`: `/live`, `/ready`, `/config`, `/metrics`.
//! - `metrics`: Prometheus counters.

mod admin;
mod metrics;
mod proxy;
mod proxy_error;
mod server;
pub mod settings;
mod table;
mod upstream;
mod wrr;

use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh::model::Bootstrap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Direction, Metrics};
use crate::proxy::{Destination, Proxy};
use crate::settings::{Mode, Settings};
use crate::table::{RouteTable, UpstreamPool};
use crate::upstream::Upstream;

pub use crate::proxy_error::ERROR_REASON_HEADER;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Flags that do not go together.
    #[error("settings: {0}")]
    Settings(#[from] settings::SettingsError),
    /// The bootstrap file is unreadable or invalid.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] mesh::model::BootstrapError),
    /// The bootstrap parsed but cannot become a table.
    #[error("table: {0}")]
    Table(#[from] table::TableError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Runs the proxy until `shutdown` fires, then drains: listeners stop
/// accepting, in-flight calls get `settings.drain()` to finish.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    settings.validate()?;
    let metrics = Arc::new(Metrics::default());
    let pool = UpstreamPool::new(settings.connect_timeout());
    let routed_direction = match settings.mode {
        Mode::Sidecar => Direction::Outbound,
        Mode::Gateway => Direction::Ingress,
    };
    let bootstrap = Bootstrap::load(&settings.bootstrap)?;
    let table = RouteTable::build(
        bootstrap,
        "bootstrap".to_owned(),
        &pool,
        &metrics,
        routed_direction,
    )?;
    tracing::info!(
        version = table.version(),
        routes = table.source().routes.len(),
        endpoints = table.source().endpoints.len(),
        "table applied"
    );
    let table = Arc::new(ArcSwap::from_pointee(table));
    let routed = Proxy::new(
        routed_direction,
        Destination::Routed(table.clone()),
        metrics.clone(),
    );

    let tasks = TaskTracker::new();
    let drain = settings.drain();
    let app = match settings.mode {
        Mode::Sidecar => {
            let outbound = bind("outbound", settings.outbound_addr).await?;
            let inbound = bind("inbound", settings.inbound_addr).await?;
            let app = Upstream::new(&settings.app_addr.to_string(), settings.connect_timeout())
                .expect("a socket address is a valid authority");
            let to_app = Proxy::new(
                Direction::Inbound,
                Destination::App {
                    upstream: Arc::new(app),
                    counters: metrics.route_counters(Direction::Inbound, settings.service_name()),
                },
                metrics.clone(),
            );
            tasks.spawn(server::serve_grpc(
                "outbound",
                outbound,
                routed,
                shutdown.clone(),
                drain,
            ));
            tasks.spawn(server::serve_grpc(
                "inbound",
                inbound,
                to_app,
                shutdown.clone(),
                drain,
            ));
            Some(settings.app_addr)
        }
        Mode::Gateway => {
            let ingress = bind("ingress", settings.ingress_addr).await?;
            tasks.spawn(server::serve_grpc(
                "ingress",
                ingress,
                routed,
                shutdown.clone(),
                drain,
            ));
            None
        }
    };
    let admin_listener = bind("admin", settings.admin_addr).await?;
    let admin = admin::Admin::new(table, metrics, app);
    // Admin outlives the data listeners' drain so probes and scrapes keep
    // answering while calls finish.
    let admin_shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(server::serve_http(
        admin_listener,
        admin,
        admin_shutdown.clone(),
    ));
    tracing::info!(
        mode = ?settings.mode,
        service = settings.service_name(),
        instance = %settings.instance_id(),
        "proxy started"
    );

    tasks.close();
    tasks.wait().await;
    admin_shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("proxy stopped");
    Ok(())
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    tracing::info!(listener = what, addr = %listener.local_addr().unwrap_or(addr), "listening");
    Ok(listener)
}
