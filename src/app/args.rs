//! The flags every shop service takes (each also read from the environment,
//! which is how Kubernetes passes them).

use std::net::IpAddr;

use crate::logging::LogFormat;

/// Standard settings of a shop service. Flatten into the binary's own clap
/// struct with `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// Address to listen on. Loopback by default: in the mesh only the local
    /// sidecar talks to the app.
    #[arg(long, env = "LISTEN_HOST", default_value = "127.0.0.1")]
    pub listen_host: IpAddr,
    /// gRPC port.
    #[arg(long, env = "PORT", default_value_t = 50051)]
    pub port: u16,
    /// This instance's id, reported in `x-served-by`. Defaults to `$HOSTNAME`
    /// (the pod name on Kubernetes), else `<service>-<pid>`.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// The `version` label of this instance (its subset in routes).
    #[arg(long = "version-label", env = "VERSION_LABEL", default_value = "v1")]
    pub version_label: String,
    /// The local sidecar's outbound listener: the only way to other services.
    #[arg(long, env = "MESH_OUTBOUND", default_value = "http://127.0.0.1:15001")]
    pub outbound: String,
    /// Seconds in-flight calls get to finish after SIGTERM before the server
    /// stops anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/gRPC collector (e.g. Jaeger's `http://localhost:4317`) to send
    /// traces to; beats `OTEL_EXPORTER_OTLP_ENDPOINT`. Without either (or
    /// `OTEL_TRACES_EXPORTER=otlp`) no spans are exported.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

impl AppArgs {
    /// The instance id to report: the flag, `$HOSTNAME`, or `<service>-<pid>`.
    pub fn instance_id(&self, service: &str) -> String {
        instance_id(self.instance_id.as_deref(), service)
    }
}

/// The id a process of the mesh goes by: `flag` if given, else `$HOSTNAME`
/// (the pod name on Kubernetes), else `<prefix>-<pid>`. One rule for apps,
/// sidecars and control-plane replicas, so logs, traces and `meshctl
/// status` name a pod the same way everywhere.
pub fn instance_id(flag: Option<&str>, prefix: &str) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("{prefix}-{}", std::process::id()))
}
