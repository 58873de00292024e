//! `control-plane`: one stateless replica of the mesh's control plane.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use control_plane::server::{self, ReplicaIdentity, ReplicaSettings};
use control_plane::store::{EtcdStore, EtcdTls, MemoryStore};
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
    /// HTTP/2 limits of the gRPC listener.
    #[command(flatten)]
    limits: mesh::listen::LimitArgs,
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
    /// CA certificates etcd's server certificate chains to (PEM); with
    /// `https://` endpoints. `meshctl identity issue-etcd` writes `ca.crt`.
    #[arg(long, env = "MESH_CP_ETCD_CA", requires_all = ["etcd_cert", "etcd_key"])]
    etcd_ca: Option<std::path::PathBuf>,
    /// The control plane's client certificate for etcd (PEM chain, leaf
    /// first): etcd runs with `--client-cert-auth`.
    #[arg(long, env = "MESH_CP_ETCD_CERT", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<std::path::PathBuf>,
    /// The key of `--etcd-cert` (PEM).
    #[arg(long, env = "MESH_CP_ETCD_KEY", requires_all = ["etcd_ca", "etcd_cert"])]
    etcd_key: Option<std::path::PathBuf>,
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
    /// Directory with the CA's files (`meshctl identity init`):
    /// `issuer.crt`, `issuer.key`, `bundle.crt`. The flags below override
    /// single files (a Kubernetes Secret and ConfigMap mount them apart).
    #[arg(long, env = "MESH_CP_IDENTITY_DIR")]
    identity_dir: Option<std::path::PathBuf>,
    /// The issuer certificate (PEM).
    #[arg(long, env = "MESH_CP_ISSUER_CERT")]
    issuer_cert: Option<std::path::PathBuf>,
    /// The issuer key (PEM): the control plane's secret.
    #[arg(long, env = "MESH_CP_ISSUER_KEY")]
    issuer_key: Option<std::path::PathBuf>,
    /// The trust anchors (PEM).
    #[arg(long, env = "MESH_TRUST_BUNDLE")]
    trust_bundle: Option<std::path::PathBuf>,
    /// The trust domain identities are in.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of the certificates issued to proxies (e.g. 24h; tests use
    /// seconds).
    #[arg(long, env = "MESH_CP_CERTIFICATE_LIFETIME", default_value = "24h", value_parser = mesh::identity::parse_lifetime)]
    certificate_lifetime: Duration,
    /// No TLS and no identity checks at all: anyone who reaches the port
    /// may register as any service and change routes. Only for a mesh
    /// that must run without mTLS, on request.
    #[arg(long, env = "MESH_CP_INSECURE")]
    insecure: bool,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// OTLP/gRPC collector to send traces to; beats
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

/// etcd's TLS from the flags, checked against the endpoints' schemes:
/// `https://` without a client certificate is refused here, at start-up,
/// rather than retried forever against an etcd that will never let us in.
fn etcd_tls(args: &Args) -> anyhow::Result<Option<EtcdTls>> {
    let tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(
            EtcdTls::from_files(ca, cert, key)
                .map_err(|e| anyhow::anyhow!("etcd TLS (--etcd-ca/--etcd-cert/--etcd-key): {e}"))?,
        ),
        _ => None,
    };
    EtcdTls::check_endpoints(&args.etcd, tls.as_ref()).map_err(anyhow::Error::msg)?;
    if tls.is_none() {
        tracing::warn!(etcd = %args.etcd.join(","), "etcd over plaintext: anyone who reaches it owns the mesh's state");
    }
    Ok(tls)
}

/// The CA and bundle from the flags; none only with `--insecure`.
fn identity(args: &Args) -> anyhow::Result<Option<ReplicaIdentity>> {
    use anyhow::Context;
    use mesh_ca::files;
    if args.insecure {
        tracing::warn!(
            "--insecure: no TLS, no identity checks; anyone who reaches this port owns the mesh"
        );
        return Ok(None);
    }
    let file = |flag: &Option<std::path::PathBuf>, name: &str, what: &str| {
        flag.clone()
            .or_else(|| args.identity_dir.as_ref().map(|d| d.join(name)))
            .with_context(|| format!("{what}: give --identity-dir (from `meshctl identity init`) or --{what}, or run with --insecure"))
    };
    let cert = file(&args.issuer_cert, files::ISSUER_CERT, "issuer-cert")?;
    let key = file(&args.issuer_key, files::ISSUER_KEY, "issuer-key")?;
    let bundle = file(&args.trust_bundle, files::BUNDLE, "trust-bundle")?;
    let authority =
        mesh_ca::Authority::load(&cert, &key, &args.trust_domain, args.certificate_lifetime)?;
    let bundle = mesh_ca::load_bundle(&bundle, 0)?;
    Ok(Some(ReplicaIdentity {
        authority: std::sync::Arc::new(authority),
        bundle,
    }))
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
        identity: identity(&args)?,
        limits: args.limits.apply(mesh::listen::Limits::mesh()),
    };
    match args.store {
        StoreKind::Etcd => {
            let tls = etcd_tls(&args)?;
            // etcd may start after us (or be restarting): keep trying.
            let mut backoff =
                mesh::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
            let store = loop {
                match EtcdStore::connect_with(&args.etcd, Duration::from_secs(3), tls.as_ref())
                    .await
                {
                    Ok(store) => break store,
                    Err(error) => {
                        tracing::warn!(etcd = %args.etcd.join(","), %error, "cannot reach etcd; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_wait()) => {}
                            () = shutdown.cancelled() => return Ok(()),
                        }
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
