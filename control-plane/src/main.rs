//! `control-plane`: one stateless replica of the mesh's control plane.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use control_plane::server::{self, ReplicaSettings};
use control_plane::store::{EtcdStore, MemoryStore};
use mesh::telemetry::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// etcd: the production store; replicas share it.
    Etcd,
    /// In memory: one replica only, state lost on exit (demo without etcd).
    Memory,
}

#[derive(Debug, Parser)]
#[command(
    name = "control-plane",
    version,
    about = "A replica of the mesh's control plane"
)]
struct Args {
    /// gRPC listener: Discovery for sidecars, MeshAdmin for meshctl.
    #[arg(long, env = "MESH_CP_LISTEN", default_value = "0.0.0.0:15010")]
    listen: SocketAddr,
    /// HTTP admin listener: /live, /ready, /metrics.
    #[arg(long, env = "MESH_CP_ADMIN", default_value = "0.0.0.0:15020")]
    admin_addr: SocketAddr,
    /// Where state lives.
    #[arg(long, env = "MESH_CP_STORE", value_enum, default_value_t = StoreKind::Etcd)]
    store: StoreKind,
    /// etcd endpoints (comma-separated or repeated).
    #[arg(
        long,
        env = "MESH_CP_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd: Vec<String>,
    /// Seconds a dead sidecar stays registered at most.
    #[arg(long, env = "MESH_CP_LEASE_TTL_SECONDS", default_value_t = 10)]
    lease_ttl_seconds: u64,
    /// Seconds after start during which sidecars that already have a table
    /// keep it, while the others register again (after an outage).
    #[arg(long, env = "MESH_CP_WARMUP_SECONDS", default_value_t = 3)]
    warmup_seconds: u64,
    /// This replica's id; defaults to $HOSTNAME or `cp-<pid>`.
    #[arg(long, env = "MESH_CP_REPLICA_ID")]
    replica_id: Option<String>,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// OTLP/gRPC collector to send traces to; beats
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mesh::telemetry::init(
        "control-plane",
        args.log_format,
        args.otlp_endpoint.as_deref(),
    )?;
    let result = run(args).await;
    telemetry.shutdown().await;
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=3600).contains(&args.lease_ttl_seconds),
        "--lease-ttl-seconds must be between 2 and 3600"
    );
    let shutdown = mesh::shutdown::on_signal()?;
    let settings = ReplicaSettings {
        listen: args.listen,
        admin: args.admin_addr,
        lease_ttl: Duration::from_secs(args.lease_ttl_seconds),
        warmup: Duration::from_secs(args.warmup_seconds),
        id: mesh::app::instance_id(args.replica_id.as_deref(), "cp"),
    };
    match args.store {
        StoreKind::Etcd => {
            // etcd may start after us (or be restarting): keep trying.
            let mut wait = Duration::from_millis(100);
            let store = loop {
                match EtcdStore::connect(&args.etcd, Duration::from_secs(3)).await {
                    Ok(store) => break store,
                    Err(error) => {
                        tracing::warn!(etcd = %args.etcd.join(","), %error, "cannot reach etcd; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = shutdown.cancelled() => return Ok(()),
                        }
                        wait = (wait * 2).min(Duration::from_secs(3));
                    }
                }
            };
            server::run(store, settings, shutdown).await?;
        }
        StoreKind::Memory => {
            tracing::warn!("in-memory store: state is lost on exit and replicas do not share it");
            server::run(MemoryStore::new(), settings, shutdown).await?;
        }
    }
    Ok(())
}
