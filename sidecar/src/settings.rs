//! Static settings of a sidecar process: where it listens, what it fronts,
//! where its table comes from. Validated once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh::identity::{SpiffeId, SpiffeIdError, Workload};
use mesh::logging::LogFormat;

/// What this proxy fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Beside an app: outbound for the app's calls, inbound for calls to it.
    Sidecar,
    /// At the mesh's edge: an ingress listener for external clients, routed
    /// like outbound; no local app.
    Gateway,
}

/// Whether hops between mesh processes are mutually authenticated TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MtlsMode {
    /// Inbound and upstream connections are TLS 1.3 with certificates on
    /// both sides; the default, so a mesh is never plaintext by accident.
    Strict,
    /// Plaintext everywhere: only for someone who asks for it explicitly.
    Off,
}

impl MtlsMode {
    /// The flag's spelling, for `/identity` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Off => "off",
        }
    }
}

/// The mesh-wide mode the control plane pushes with the table, which
/// widens (or not) what a proxy running `--mtls strict` accepts inbound.
/// `off` is not among them: a plaintext mesh is each process's explicit
/// flag, never a switch one write flips for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeshMtlsMode {
    /// Only mutual TLS reaches the inbound listener.
    #[default]
    Strict,
    /// The inbound listener also serves plaintext HTTP/2 (told apart by
    /// its first bytes), for moving a running mesh to mTLS; callers still
    /// use mTLS.
    Permissive,
}

impl MeshMtlsMode {
    /// The mode a push names; empty (a control plane that predates modes)
    /// is strict.
    pub fn from_pushed(value: &str) -> Result<Self, String> {
        match value {
            "" | "strict" => Ok(Self::Strict),
            "permissive" => Ok(Self::Permissive),
            other => Err(format!(
                "mtls_mode {other:?}: this proxy knows strict and permissive"
            )),
        }
    }

    /// The pushed spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

/// Where the kubelet's probes and Prometheus find a proxy, Istio's port.
pub const DEFAULT_PROBE_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 15021);

/// Command-line and environment settings of the `sidecar` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sidecar", version, about = "The mesh's data-plane proxy")]
pub struct Settings {
    /// Sidecar beside an app, or gateway at the edge.
    #[arg(long, env = "MESH_MODE", value_enum, default_value_t = Mode::Sidecar)]
    pub mode: Mode,
    /// The app's way out: it sends every call to other services here.
    #[arg(long, env = "MESH_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    /// Where other sidecars reach this instance; forwarded to the app.
    #[arg(long, env = "MESH_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    /// The ingress listener of gateway mode.
    #[arg(long, env = "MESH_INGRESS_ADDR", default_value = "0.0.0.0:8080")]
    pub ingress_addr: SocketAddr,
    /// TLS at the ingress (gateway mode): the certificate chain (PEM) that
    /// external clients check, e.g. one for the gateway's DNS name. Without
    /// it the ingress is plaintext; the mesh behind it is mTLS either way.
    #[arg(long, env = "MESH_INGRESS_TLS_CERT", requires = "ingress_tls_key")]
    pub ingress_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--ingress-tls-cert`.
    #[arg(long, env = "MESH_INGRESS_TLS_KEY", requires = "ingress_tls_cert")]
    pub ingress_tls_key: Option<PathBuf>,
    /// Admin HTTP: /config, /endpoints, /identity, /metrics, /drain (and
    /// /live, /ready). Loopback by default: /drain takes this instance out
    /// of the mesh, and the rest is for people on the host, not the network.
    #[arg(long, env = "MESH_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Probe HTTP for the kubelet and Prometheus: GET /live, /ready and
    /// /metrics only [default: 0.0.0.0:15021]. When not given and the
    /// default port is taken (several proxies on one host, as in
    /// `meshctl up`), the proxy runs without it and says so.
    #[arg(long, env = "MESH_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// The local app's gRPC address (sidecar mode).
    #[arg(long, env = "MESH_APP_ADDR", default_value = "127.0.0.1:50051")]
    pub app_addr: SocketAddr,
    /// How `/ready` tells the app is ready: `grpc` (its grpc.health.v1
    /// answers SERVING; an app without a health service, answering
    /// UNIMPLEMENTED, is checked by TCP connect instead), `tcp` (a connect
    /// succeeds) or `none` (ready with the sidecar).
    #[arg(long, env = "MESH_APP_HEALTH", value_enum, default_value_t)]
    pub app_health: crate::app_health::AppHealthMode,
    /// The mesh service this instance belongs to (sidecar mode), e.g. `orders`.
    #[arg(long, env = "MESH_SERVICE")]
    pub service: Option<String>,
    /// This instance's id; defaults to `$HOSTNAME` or `<service>-<pid>`.
    #[arg(long, env = "MESH_INSTANCE")]
    pub instance: Option<String>,
    /// Static endpoints and routes (YAML): the table when no control plane
    /// is used.
    #[arg(long, env = "MESH_BOOTSTRAP", conflicts_with = "control_plane")]
    pub bootstrap: Option<PathBuf>,
    /// Control-plane replicas (`http://host:port`, comma-separated or
    /// repeated); the sidecar registers with one and takes its tables from it,
    /// moving to another when it goes away.
    #[arg(long, env = "MESH_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Mesh services the app calls (comma-separated), declared to the
    /// control plane: their routes and endpoints come from the start. A
    /// service not listed still works: the first call to it subscribes
    /// (waiting for the control plane's answer, a round trip).
    #[arg(long, env = "MESH_CALLS", value_delimiter = ',')]
    pub calls: Vec<String>,
    /// The address other sidecars reach this one at (registered with the
    /// control plane). Defaults to the inbound address, with `$POD_IP` in
    /// place of an unspecified (0.0.0.0) host.
    #[arg(long, env = "MESH_ADVERTISE_ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// The `version` label of this instance (its subset in routes).
    #[arg(
        long = "version-label",
        env = "MESH_VERSION_LABEL",
        default_value = "v1"
    )]
    pub version_label: String,
    /// This instance's weight in weighted round-robin.
    #[arg(long, env = "MESH_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// Seconds in-flight calls get to finish after SIGTERM.
    #[arg(long, env = "MESH_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Milliseconds between deregistering (SIGTERM) and closing the
    /// listeners: time for the control plane's push to reach the peers, so
    /// no new call is sent to a closed port.
    #[arg(long, env = "MESH_DEREGISTER_DELAY_MS", default_value_t = 1000)]
    pub deregister_delay_ms: u64,
    /// Timeout of one TCP connect to an upstream, in milliseconds.
    #[arg(long, env = "MESH_CONNECT_TIMEOUT_MS", default_value_t = 1000)]
    pub connect_timeout_ms: u64,
    /// mTLS between mesh processes: `strict` (TLS with certificates on the
    /// inbound listener, upstream connections and the control-plane
    /// streams) or `off` (plaintext). The app's own hop and the gateway's
    /// ingress stay plaintext either way.
    #[arg(long, env = "MESH_MTLS", value_enum, default_value_t = MtlsMode::Strict)]
    pub mtls: MtlsMode,
    /// The SPIFFE trust domain of this mesh's identities.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// PEM file of the trust anchors (required with `--mtls strict`): what
    /// peers' and the control plane's certificates must chain to until the
    /// control plane pushes a newer bundle.
    #[arg(long, env = "MESH_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// File holding the join token that proves this proxy's service (or
    /// gateway) to the control plane's CA. Read again on every attempt, so
    /// a Secret updated in place is picked up.
    #[arg(long, env = "MESH_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<PathBuf>,
    /// Static mode (`--bootstrap`) with mTLS: this proxy's certificate
    /// chain (PEM, leaf first), since there is no CA to ask.
    #[arg(long, env = "MESH_IDENTITY_CERT_FILE", requires = "identity_key_file")]
    pub identity_cert_file: Option<PathBuf>,
    /// Static mode with mTLS: the certificate's private key (PKCS#8 PEM).
    #[arg(long, env = "MESH_IDENTITY_KEY_FILE", requires = "identity_cert_file")]
    pub identity_key_file: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Threads that run the proxy: 0 runs everything on the main thread
    /// (tokio's current-thread runtime: no cross-thread wake-ups, the
    /// cheapest per call while one core keeps up); N > 0 runs N workers,
    /// for a sidecar whose app needs more than one core of proxying.
    #[arg(long, env = "MESH_WORKER_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub worker_threads: u16,
    /// Bytes of request bodies kept for retries across every call of the
    /// process; a call whose body does not fit is forwarded unbuffered and
    /// not retried (counted as `replay-budget-exhausted`).
    #[arg(long, env = "MESH_REPLAY_BUDGET_BYTES", default_value_t = 64 << 20)]
    pub replay_budget_bytes: usize,
    /// Streams open at once on one endpoint's connection.
    #[arg(long, env = "MESH_UPSTREAM_MAX_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_max_streams: u32,
    /// Calls waiting for a stream on one endpoint's connection; beyond,
    /// calls fail at once with UNAVAILABLE (`upstream-queue-full`).
    #[arg(long, env = "MESH_UPSTREAM_MAX_WAITING", default_value_t = 1000)]
    pub upstream_max_waiting: u32,
    /// Limits of the gRPC listeners (outbound and inbound start from the
    /// mesh defaults, the gateway's ingress from the stricter edge ones).
    #[command(flatten)]
    pub limits: mesh::listen::LimitArgs,
}

/// Settings that are not acceptable together.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

impl Settings {
    /// Bounds on every upstream connection's streams.
    pub fn upstream_stream_limits(&self) -> crate::upstream::StreamLimits {
        crate::upstream::StreamLimits {
            max_streams: self.upstream_max_streams as usize,
            max_waiting: self.upstream_max_waiting as usize,
        }
    }

    /// The limits of the gRPC listener called `listener`: the edge defaults
    /// for the ingress, the mesh ones otherwise, with the flags applied.
    pub fn listener_limits(&self, listener: &str) -> mesh::listen::Limits {
        let base = if listener == "ingress" {
            mesh::listen::Limits::edge()
        } else {
            mesh::listen::Limits::mesh()
        };
        self.limits.apply(base)
    }

    /// Checks what clap cannot: combinations and ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.mode == Mode::Sidecar && self.ingress_tls_cert.is_some() {
            return Err(SettingsError(
                "--ingress-tls-cert/--ingress-tls-key are for --mode gateway (a sidecar has no ingress)".into(),
            ));
        }
        if self.mode == Mode::Sidecar && self.service.as_deref().unwrap_or("").is_empty() {
            return Err(SettingsError(
                "--service is required in sidecar mode (the mesh service of the local app)".into(),
            ));
        }
        if self.bootstrap.is_none() && self.control_plane.is_empty() {
            return Err(SettingsError(
                "give a table source: --bootstrap FILE or --control-plane URL[,URL...]".into(),
            ));
        }
        for uri in &self.control_plane {
            if uri
                .parse::<http::Uri>()
                .map_or(true, |u| u.authority().is_none())
            {
                return Err(SettingsError(format!(
                    "--control-plane {uri:?} is not a URL like http://127.0.0.1:15010"
                )));
            }
        }
        if self.weight == 0 || self.weight > mesh::model::MAX_ENDPOINT_WEIGHT {
            return Err(SettingsError(format!(
                "--weight must be between 1 and {}",
                mesh::model::MAX_ENDPOINT_WEIGHT
            )));
        }
        self.validate_identity()?;
        if self.connect_timeout_ms == 0 {
            return Err(SettingsError(
                "--connect-timeout-ms must be positive".into(),
            ));
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), SettingsError> {
        if self.mtls == MtlsMode::Off {
            return Ok(());
        }
        self.identity().map_err(|e| SettingsError(e.to_string()))?;
        if self.trust_bundle.is_none() {
            return Err(SettingsError(
                "--trust-bundle FILE is required with --mtls strict (or pass --mtls off explicitly)"
                    .into(),
            ));
        }
        let static_credential =
            self.identity_cert_file.is_some() && self.identity_key_file.is_some();
        if !self.control_plane.is_empty() {
            if self.identity_token_file.is_none() {
                return Err(SettingsError(
                    "--identity-token-file FILE is required with --mtls strict and a control plane"
                        .into(),
                ));
            }
            if static_credential {
                return Err(SettingsError(
                    "--identity-cert-file/--identity-key-file are for --bootstrap; with a control plane the certificate comes from its CA".into(),
                ));
            }
        } else if !static_credential {
            return Err(SettingsError(
                "--identity-cert-file and --identity-key-file are required with --mtls strict and --bootstrap".into(),
            ));
        }
        Ok(())
    }

    /// The SPIFFE ID this proxy proves: `/svc/<service>` for a sidecar,
    /// `/gateway/<name>` for a gateway.
    pub fn identity(&self) -> Result<SpiffeId, SpiffeIdError> {
        let workload = match self.mode {
            Mode::Sidecar => Workload::Service(self.service_name().to_owned()),
            Mode::Gateway => Workload::Gateway(self.service_name().to_owned()),
        };
        SpiffeId::new(&self.trust_domain, workload)
    }

    /// The name this proxy reports itself by in logs and metrics.
    pub fn service_name(&self) -> &str {
        match self.mode {
            Mode::Gateway => self.service.as_deref().unwrap_or("gateway"),
            Mode::Sidecar => self.service.as_deref().unwrap_or_default(),
        }
    }

    /// The instance id: the flag, `$HOSTNAME`, or `<service>-<pid>`.
    pub fn instance_id(&self) -> String {
        mesh::app::instance_id(self.instance.as_deref(), self.service_name())
    }

    /// Where other sidecars reach this one.
    pub fn advertised_addr(&self) -> SocketAddr {
        if let Some(addr) = self.advertise_addr {
            return addr;
        }
        let mut addr = self.inbound_addr;
        if addr.ip().is_unspecified() {
            let pod_ip = std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok());
            addr.set_ip(pod_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()));
        }
        addr
    }

    /// Where the admin port is reached from elsewhere (same host rule as
    /// [`Settings::advertised_addr`]).
    pub fn advertised_admin_addr(&self) -> SocketAddr {
        let mut addr = self.admin_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(self.advertised_addr().ip());
        }
        addr
    }

    /// The probe listener's address, and whether it was asked for (a
    /// failure to bind an address asked for is fatal).
    pub fn probe_addr(&self) -> (SocketAddr, bool) {
        match self.probe_addr {
            Some(addr) => (addr, true),
            None => (DEFAULT_PROBE_ADDR, false),
        }
    }

    /// Grace period for in-flight calls at shutdown.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// Time between deregistering and closing the listeners.
    pub fn deregister_delay(&self) -> Duration {
        Duration::from_millis(self.deregister_delay_ms)
    }

    /// Timeout of one upstream connect.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let settings =
            Settings::try_parse_from(std::iter::once("sidecar").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }

    const CP: &[&str] = &[
        "--service",
        "orders",
        "--control-plane",
        "http://127.0.0.1:15010",
    ];

    #[test]
    fn strict_is_the_default_and_needs_a_bundle_and_a_token() {
        let error = parse(CP).unwrap_err();
        assert!(error.contains("--trust-bundle"), "{error}");
        let error = parse(&[CP, &["--trust-bundle", "b.pem"]].concat()).unwrap_err();
        assert!(error.contains("--identity-token-file"), "{error}");
        let ok = parse(
            &[
                CP,
                &["--trust-bundle", "b.pem", "--identity-token-file", "t"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(ok.mtls, MtlsMode::Strict);
        assert_eq!(
            ok.identity().unwrap().to_string(),
            "spiffe://mesh.local/svc/orders"
        );
    }

    #[test]
    fn pushed_modes_are_strict_unless_permissive_and_never_off() {
        assert_eq!(MeshMtlsMode::from_pushed(""), Ok(MeshMtlsMode::Strict));
        assert_eq!(
            MeshMtlsMode::from_pushed("strict"),
            Ok(MeshMtlsMode::Strict)
        );
        assert_eq!(
            MeshMtlsMode::from_pushed("permissive"),
            Ok(MeshMtlsMode::Permissive)
        );
        assert!(MeshMtlsMode::from_pushed("off").is_err());
        assert!(MeshMtlsMode::from_pushed("Permissive").is_err());
    }

    #[test]
    fn admin_is_loopback_and_probes_are_open_by_default() {
        let ok = parse(&[CP, &["--mtls", "off"]].concat()).unwrap();
        assert_eq!(ok.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(ok.probe_addr(), ("0.0.0.0:15021".parse().unwrap(), false));
        let ok = parse(&[CP, &["--mtls", "off", "--probe-addr", "127.0.0.1:0"]].concat()).unwrap();
        assert_eq!(ok.probe_addr(), ("127.0.0.1:0".parse().unwrap(), true));
    }

    #[test]
    fn off_only_when_asked_and_then_needs_nothing() {
        let ok = parse(&[CP, &["--mtls", "off"]].concat()).unwrap();
        assert_eq!(ok.mtls, MtlsMode::Off);
    }

    #[test]
    fn static_mode_needs_a_certificate_and_key_instead_of_a_token() {
        let base = [
            "--service",
            "orders",
            "--bootstrap",
            "b.yaml",
            "--trust-bundle",
            "b.pem",
        ];
        let error = parse(&base).unwrap_err();
        assert!(error.contains("--identity-cert-file"), "{error}");
        assert!(parse(&[&base[..], &["--identity-cert-file", "c.pem"]].concat()).is_err());
        parse(
            &[
                &base[..],
                &["--identity-cert-file", "c", "--identity-key-file", "k"],
            ]
            .concat(),
        )
        .unwrap();
    }

    #[test]
    fn a_gateway_is_a_gateway_identity_and_names_must_be_labels() {
        let gateway = parse(&[
            "--mode",
            "gateway",
            "--control-plane",
            "http://cp:1",
            "--trust-bundle",
            "b",
            "--identity-token-file",
            "t",
            "--trust-domain",
            "prod.example",
        ])
        .unwrap();
        assert_eq!(
            gateway.identity().unwrap().to_string(),
            "spiffe://prod.example/gateway/gateway"
        );
        let error = parse(
            &[
                CP,
                &[
                    "--trust-bundle",
                    "b",
                    "--identity-token-file",
                    "t",
                    "--trust-domain",
                    "Bad Domain",
                ],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(error.contains("trust domain"), "{error}");
    }
}
