//! The demo shop as a plan of processes on one machine: which binaries run
//! with which flags, on which loopback ports, and the bootstrap table that
//! wires them. `meshctl up` runs this plan, and the end-to-end tests run the
//! same plan, so what the tests prove is what a newcomer runs.
//!
//! Planning is pure; starting the processes is the caller's job.
//!
//! # Layout
//!
//! - this file: the shop's topology and the plan built from it (processes,
//!   flags, ports, identity files, the bootstrap table).
//! - [`ports`]: free loopback ports for the plan.
//! - [`etcd`]: the plan's etcd, plaintext or TLS.
//! - [`admin_api`]: documents applied through the control plane.
//! - [`admin_http`]: the proxies' HTTP admin ports (readiness, drain).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use serde::Deserialize;

mod admin_api;
mod admin_http;
mod etcd;
mod ports;
mod syncz;

pub use admin_api::{admin_client, apply_documents, apply_routes};
pub use admin_http::{admin_call, admin_get, admin_request, AdminHttpError};
use etcd::etcd_tls_files;
pub use etcd::{etcd_process, etcd_tls_process};
pub use ports::PortAllocator;
pub use syncz::synced_revisions;

use mesh::model::{
    AuthorizationPolicy, Bootstrap, Endpoint, RequestAuthentication, Route, RouteMatch,
    RouteMetadata, RouteSpec,
};

/// The shop's mesh services and the gRPC service each serves.
pub const SHOP_SERVICES: [(&str, &str); 5] = [
    ("catalog", "shop.catalog.v1.CatalogService"),
    ("inventory", "shop.inventory.v1.InventoryService"),
    ("payments", "shop.payments.v1.PaymentsService"),
    ("orders", "shop.orders.v1.OrdersService"),
    ("users", "shop.users.v1.UsersService"),
];

/// The demo's admin account: the first to register this email gets the
/// `admin` role (may change the catalog, read any order, ask for
/// `x-mesh-debug`).
pub const DEMO_ADMIN_EMAIL: &str = "admin@shop.example";

/// The shop services outside clients may call through the gateway (their
/// routes are `exposure: public`); inventory and payments stay internal.
pub const PUBLIC_SHOP_SERVICES: [&str; 3] = ["catalog", "orders", "users"];

/// The reflection services a gateway routes to the service that answers
/// grpcurl's `list` and `describe` there.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// One instance of a shop service: the app and its sidecar.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Instance id, reported in `x-served-by`.
    pub id: String,
    /// Its `version` label (subset).
    pub version: String,
    /// Its weight for weighted round-robin.
    pub weight: u32,
    /// Extra flags for the app (e.g. `--failure-rate 1` for payments).
    pub app_args: Vec<String>,
    /// Extra flags for its sidecar (e.g. `--worker-threads 2`).
    pub sidecar_args: Vec<String>,
}

impl InstanceSpec {
    /// Instance `id`, version `v1`, weight 1, no extra flags.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            version: "v1".into(),
            weight: 1,
            app_args: Vec::new(),
            sidecar_args: Vec::new(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the version label.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Appends app flags.
    pub fn app_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.app_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends sidecar flags.
    pub fn sidecar_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.sidecar_args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// Which shop services run, with how many instances, and whether a gateway
/// fronts them.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Mesh service name and its instances.
    pub services: Vec<(String, Vec<InstanceSpec>)>,
    /// The gateway's ingress address; `None` for no gateway, port 0 for any
    /// free port.
    pub gateway: Option<SocketAddr>,
    /// Routes beyond the shop's defaults; one named like a default replaces
    /// it (others must not take the same path).
    pub extra_routes: Vec<Route>,
    /// Endpoints beyond the planned instances (e.g. deliberately dead ones).
    pub extra_endpoints: Vec<Endpoint>,
    /// A control plane instead of a static bootstrap file.
    pub control_plane: Option<ControlPlaneSpec>,
    /// An OTLP/gRPC collector (e.g. Jaeger's `http://127.0.0.1:4317`) every
    /// planned mesh process sends its traces to: each gets
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` (the mesh service
    /// for an app, `<service>-sidecar` for a sidecar, `gateway`,
    /// `control-plane`), `service.instance.id` (the process name) and a
    /// 100 ms batch delay, so a trace shows up while one still looks.
    pub otlp_endpoint: Option<String>,
    /// Run without mTLS and identities (`--insecure` / `--mtls off`): only
    /// when a test or a person asks for it. Static mode (no control plane,
    /// so no CA) always runs without.
    pub insecure: bool,
    /// Extra flags for the gateway (e.g. `--ingress-tls-cert`).
    pub gateway_args: Vec<String>,
    /// Make every default shop route public, inventory's and payments'
    /// too: for tests that drive internal services from outside, never for
    /// the demo.
    pub expose_internal: bool,
    /// Apply the shop's security documents ([`shop_security`]: logins
    /// through the users service, who may call what) through the control
    /// plane, as `meshctl up` does.
    pub shop_security: bool,
}

/// How the control plane of a topology runs.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    /// Number of replicas (one when there is no etcd).
    pub replicas: usize,
    /// Run a real etcd; without it, one replica on the in-memory store.
    pub etcd: bool,
    /// Registration TTL: how soon a dead sidecar is gone.
    pub lease_ttl_seconds: u64,
    /// Time a stopping sidecar keeps serving after deregistering.
    pub deregister_delay_ms: u64,
    /// Replica `i` (from 0) listens on this port + `i`; `None` for free ports.
    pub first_port: Option<u16>,
    /// Lifetime of the proxies' certificates (`24h`; tests use seconds).
    pub certificate_lifetime: String,
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            etcd: true,
            lease_ttl_seconds: 10,
            deregister_delay_ms: 1000,
            first_port: None,
            certificate_lifetime: "24h".into(),
        }
    }
}

/// What a planned process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A shop service binary.
    App,
    /// An etcd member.
    Etcd,
    /// A control-plane replica.
    ControlPlane,
    /// A sidecar beside an app.
    Sidecar,
    /// The gateway.
    Gateway,
}

/// One process to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Unique name, e.g. `inventory-2` or `inventory-2-sidecar`.
    pub name: String,
    /// Binary name (in the workspace's target directory).
    pub program: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// What the process is.
    pub role: Role,
    /// The mesh service it belongs to (`gateway` for the gateway).
    pub service: String,
    /// Its admin address (proxies, etcd), where [`ProcessSpec::ready_path`]
    /// answers 200 once it can take calls.
    pub admin: Option<SocketAddr>,
    /// The readiness path on `admin`.
    pub ready_path: &'static str,
    /// The address clients use: the app's port, the sidecar's inbound, the
    /// gateway's ingress.
    pub serving: SocketAddr,
    /// The sidecar's outbound listener (sidecars only).
    pub outbound: Option<SocketAddr>,
}

/// Processes and the bootstrap table that wires them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Start order: each app before its sidecar, the gateway last.
    pub processes: Vec<ProcessSpec>,
    /// The table every proxy is given (static mode); with a control plane,
    /// `routes` are to be applied through it and `endpoints` register.
    pub bootstrap: Bootstrap,
    /// gRPC URIs of the control-plane replicas (empty in static mode).
    pub control_planes: Vec<String>,
    /// Where the identity files live, when the mesh runs with mTLS.
    pub identity: Option<IdentityLayout>,
}

/// Where a planned mesh keeps its identity files: the CA's (`meshctl
/// identity init`), one join token per service and gateway (as Kubernetes
/// mounts one Secret per service), and the operator's credential and
/// meshctl config. The runner makes them with `meshctl`, in two steps:
/// [`IdentityLayout::before_start`] before any process starts, and
/// [`IdentityLayout::once_control_plane_ready`] once a replica answers
/// (tokens are made through it).
#[derive(Debug, Clone)]
pub struct IdentityLayout {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// The control-plane replicas (`host:port`).
    pub control_planes: Vec<String>,
    /// What join tokens prove: `--service NAME` or `--gateway NAME`.
    pub tokens: Vec<(&'static str, String)>,
    /// Whether the plan runs etcd, which then needs its TLS files
    /// ([`IdentityLayout::etcd_tls`]) before it starts.
    pub etcd: bool,
}

/// etcd's TLS files, as `meshctl identity issue-etcd --out DIR` names
/// them: etcd's server certificate and the control plane's client one.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The directory.
    pub dir: std::path::PathBuf,
}

impl EtcdTlsFiles {
    /// The trust anchors (etcd's `--trusted-ca-file`, the control plane's
    /// `--etcd-ca`).
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }

    /// etcd's certificate chain.
    pub fn server_cert(&self) -> std::path::PathBuf {
        self.dir.join("server.crt")
    }

    /// etcd's key.
    pub fn server_key(&self) -> std::path::PathBuf {
        self.dir.join("server.key")
    }

    /// The control plane's client certificate chain.
    pub fn client_cert(&self) -> std::path::PathBuf {
        self.dir.join("client.crt")
    }

    /// The control plane's client key.
    pub fn client_key(&self) -> std::path::PathBuf {
        self.dir.join("client.key")
    }

    /// The control plane's flags to reach etcd over TLS.
    fn control_plane_args(&self) -> Vec<String> {
        vec![
            "--etcd-ca".into(),
            self.ca().display().to_string(),
            "--etcd-cert".into(),
            self.client_cert().display().to_string(),
            "--etcd-key".into(),
            self.client_key().display().to_string(),
        ]
    }
}

impl IdentityLayout {
    /// The CA's files.
    pub fn ca_dir(&self) -> std::path::PathBuf {
        self.dir.join("ca")
    }

    /// The trust anchors.
    pub fn bundle(&self) -> std::path::PathBuf {
        self.ca_dir().join("bundle.crt")
    }

    /// The join token file of a service or gateway.
    pub fn token(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("tokens").join(format!("{name}.token"))
    }

    /// The admin operator's meshctl config.
    pub fn meshconfig(&self) -> std::path::PathBuf {
        self.dir.join("operator").join("admin.meshconfig")
    }

    /// etcd's TLS files (made before start when the plan runs etcd).
    pub fn etcd_tls(&self) -> EtcdTlsFiles {
        etcd_tls_files(&self.dir)
    }

    /// meshctl argument lists to run before anything starts: the CA, an
    /// admin operator and, when the plan runs etcd, etcd's TLS files.
    pub fn before_start(&self) -> Vec<Vec<String>> {
        let ca = self.ca_dir().display().to_string();
        let mut steps = vec![
            vec![
                "identity".into(),
                "init".into(),
                "--out".into(),
                ca.clone(),
                "--trust-domain".into(),
                self.trust_domain.clone(),
            ],
            vec![
                "identity".into(),
                "issue-operator".into(),
                "admin".into(),
                "--role".into(),
                "admin".into(),
                "--ca-dir".into(),
                ca.clone(),
                "--trust-domain".into(),
                self.trust_domain.clone(),
                "--out".into(),
                self.dir.join("operator").display().to_string(),
                "--control-planes".into(),
                self.control_planes.join(","),
            ],
        ];
        if self.etcd {
            steps.push(vec![
                "identity".into(),
                "issue-etcd".into(),
                "--ca-dir".into(),
                ca,
                "--trust-domain".into(),
                self.trust_domain.clone(),
                "--out".into(),
                self.etcd_tls().dir.display().to_string(),
            ]);
        }
        steps
    }

    /// meshctl argument lists to run (with `MESHCONFIG` set to
    /// [`IdentityLayout::meshconfig`]) once a replica answers: a join token
    /// per service and gateway, into its file.
    pub fn once_control_plane_ready(&self) -> Vec<Vec<String>> {
        if let Some(parent) = self.token("x").parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        self.tokens
            .iter()
            .map(|(kind, name)| {
                vec![
                    "token".into(),
                    "create".into(),
                    format!("--{kind}"),
                    name.clone(),
                    "--out".into(),
                    self.token(name).display().to_string(),
                ]
            })
            .collect()
    }

    /// The admin operator's TLS, to call the admin API from code: what
    /// meshctl itself loads from the config `meshctl up` writes.
    pub fn operator_tls(&self) -> anyhow::Result<std::sync::Arc<mesh::identity::MeshTls>> {
        let operator = self.dir.join("operator");
        crate::cli::connect::MeshConfig {
            control_planes: Vec::new(),
            trust_domain: self.trust_domain.clone(),
            trust_bundle: self.bundle(),
            certificate: operator.join("admin.crt"),
            key: operator.join("admin.key"),
        }
        .tls()
    }
}

impl Plan {
    /// The process named `name`.
    pub fn process(&self, name: &str) -> Option<&ProcessSpec> {
        self.processes.iter().find(|p| p.name == name)
    }

    /// The gateway's ingress address, if the plan has a gateway.
    pub fn gateway(&self) -> Option<SocketAddr> {
        self.processes
            .iter()
            .find(|p| p.role == Role::Gateway)
            .map(|p| p.serving)
    }
}

impl Topology {
    /// The demo shop: one instance of each service (two of catalog, `v1` and
    /// `v2`, so balancing and splits are visible; catalog is read-mostly, while the demo's
    /// in-memory inventory, payments and users keep state per instance) and a
    /// gateway on `gateway`.
    pub fn shop(gateway: SocketAddr) -> Self {
        let one = |name: &str| {
            (
                name.to_owned(),
                vec![InstanceSpec::new(format!("{name}-1"))],
            )
        };
        Self {
            services: vec![
                (
                    "catalog".into(),
                    vec![
                        InstanceSpec::new("catalog-1"),
                        InstanceSpec::new("catalog-2").version("v2"),
                    ],
                ),
                one("inventory"),
                one("payments"),
                one("orders"),
                // One instance: accounts and signing keys live in its
                // memory, so a second would know other users and keys.
                // Whoever registers DEMO_ADMIN_EMAIL first is an admin.
                (
                    "users".into(),
                    vec![InstanceSpec::new("users-1").app_args(["--admin-email", DEMO_ADMIN_EMAIL])],
                ),
            ],
            gateway: Some(gateway),
            shop_security: true,
            ..Self::default()
        }
    }

    /// Lays the topology out on loopback ports taken from `next_port`. In
    /// static mode every proxy reads its table from `bootstrap_path`; with a
    /// control plane, etcd keeps its data beside it and the proxies register
    /// with the replicas.
    pub fn plan(&self, next_port: &mut dyn FnMut() -> u16, bootstrap_path: &Path) -> Plan {
        let loopback = |port: u16| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let mut processes = Vec::new();
        let mut control_planes = Vec::new();
        let identity_dir = bootstrap_path.with_file_name("identity");
        let secure = self.control_plane.is_some() && !self.insecure;
        let table_source: Vec<String> = match &self.control_plane {
            None => vec!["--bootstrap".into(), bootstrap_path.display().to_string()],
            Some(cp) => {
                let etcd = cp.etcd.then(|| {
                    let client = loopback(next_port());
                    let peer = loopback(next_port());
                    let data = bootstrap_path.with_file_name("etcd-data");
                    if secure {
                        let metrics = loopback(next_port());
                        let tls = etcd_tls_files(&identity_dir);
                        processes
                            .push(etcd_tls_process("etcd", client, peer, metrics, &data, &tls));
                    } else {
                        processes.push(etcd_process("etcd", client, peer, &data));
                    }
                    client
                });
                for i in 1..=cp.replicas.max(1) {
                    let listen = match cp.first_port {
                        Some(first) => loopback(first.saturating_add(i as u16 - 1)),
                        None => loopback(next_port()),
                    };
                    let admin = loopback(next_port());
                    let mut args = vec![
                        "--listen".to_owned(),
                        listen.to_string(),
                        "--admin-addr".into(),
                        admin.to_string(),
                        "--replica-id".into(),
                        format!("control-plane-{i}"),
                        "--lease-ttl-seconds".into(),
                        cp.lease_ttl_seconds.to_string(),
                    ];
                    match etcd {
                        Some(client) if secure => {
                            args.extend(["--etcd".into(), format!("https://{client}")]);
                            args.extend(etcd_tls_files(&identity_dir).control_plane_args());
                        }
                        Some(client) => args.extend(["--etcd".into(), format!("http://{client}")]),
                        None => args.extend(["--store".into(), "memory".into()]),
                    }
                    if self.insecure {
                        args.push("--insecure".into());
                    } else {
                        args.extend([
                            "--identity-dir".into(),
                            identity_dir.join("ca").display().to_string(),
                            "--certificate-lifetime".into(),
                            cp.certificate_lifetime.clone(),
                        ]);
                    }
                    processes.push(ProcessSpec {
                        name: format!("control-plane-{i}"),
                        program: "control-plane".into(),
                        args,
                        env: Vec::new(),
                        role: Role::ControlPlane,
                        service: "control-plane".into(),
                        admin: Some(admin),
                        ready_path: "/ready",
                        serving: listen,
                        outbound: None,
                    });
                    control_planes.push(format!("http://{listen}"));
                    if etcd.is_none() {
                        break; // an in-memory store cannot be shared
                    }
                }
                vec![
                    "--control-plane".into(),
                    control_planes.join(","),
                    "--deregister-delay-ms".into(),
                    cp.deregister_delay_ms.to_string(),
                ]
            }
        };
        let mut endpoints = Vec::new();
        for (service, instances) in &self.services {
            for instance in instances {
                let app = loopback(next_port());
                let outbound = loopback(next_port());
                let inbound = loopback(next_port());
                let admin = loopback(next_port());
                let mut app_args = vec![
                    "--port".to_owned(),
                    app.port().to_string(),
                    "--instance-id".into(),
                    instance.id.clone(),
                    "--version-label".into(),
                    instance.version.clone(),
                    "--outbound".into(),
                    format!("http://{outbound}"),
                ];
                // Without logins (no request authentication, or no
                // identities to prove the gateway forwarded them) orders
                // takes the customer from the request, as before logins.
                if service == "orders" && !self.logins(secure) {
                    app_args.extend(["--customer-from".to_owned(), "request".to_owned()]);
                }
                app_args.extend(instance.app_args.iter().cloned());
                processes.push(ProcessSpec {
                    name: instance.id.clone(),
                    program: service.clone(),
                    args: app_args,
                    env: Vec::new(),
                    role: Role::App,
                    service: service.clone(),
                    admin: None,
                    ready_path: "",
                    serving: app,
                    outbound: None,
                });
                let mut args: Vec<String> = [
                    "--service",
                    service,
                    "--instance",
                    &instance.id,
                    "--version-label",
                    &instance.version,
                    "--weight",
                    &instance.weight.to_string(),
                    "--app-addr",
                    &app.to_string(),
                    "--outbound-addr",
                    &outbound.to_string(),
                    "--inbound-addr",
                    &inbound.to_string(),
                    "--admin-addr",
                    &admin.to_string(),
                    "--probe-addr",
                    &loopback(next_port()).to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                args.extend(table_source.iter().cloned());
                // What the shop's services call, declared: their routes come
                // with the first update (anything else: on first use).
                if service == "orders" && self.control_plane.is_some() {
                    args.extend(["--calls".to_owned(), "inventory,payments".to_owned()]);
                }
                args.extend(identity_args(secure, &identity_dir, service));
                args.extend(instance.sidecar_args.iter().cloned());
                processes.push(ProcessSpec {
                    name: format!("{}-sidecar", instance.id),
                    program: "sidecar".into(),
                    args,
                    env: Vec::new(),
                    role: Role::Sidecar,
                    service: service.clone(),
                    admin: Some(admin),
                    ready_path: "/ready",
                    serving: inbound,
                    outbound: Some(outbound),
                });
                endpoints.push(Endpoint {
                    service: service.clone(),
                    instance: instance.id.clone(),
                    address: inbound.to_string(),
                    version: instance.version.clone(),
                    weight: instance.weight,
                });
            }
        }
        if let Some(ingress) = self.gateway {
            let ingress = if ingress.port() == 0 {
                SocketAddr::new(ingress.ip(), next_port())
            } else {
                ingress
            };
            let admin = loopback(next_port());
            let mut args: Vec<String> = [
                "--mode",
                "gateway",
                "--instance",
                "gateway",
                "--ingress-addr",
                &ingress.to_string(),
                "--admin-addr",
                &admin.to_string(),
                "--probe-addr",
                &loopback(next_port()).to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            args.extend(table_source.iter().cloned());
            args.extend(identity_args(secure, &identity_dir, "gateway"));
            args.extend(self.gateway_args.iter().cloned());
            processes.push(ProcessSpec {
                name: "gateway".into(),
                program: "sidecar".into(),
                args,
                env: Vec::new(),
                role: Role::Gateway,
                service: "gateway".into(),
                admin: Some(admin),
                ready_path: "/ready",
                serving: ingress,
                outbound: None,
            });
        }
        let mut routes = self.default_routes();
        // An extra route replaces the default of the same name.
        routes.retain(|r| {
            !self
                .extra_routes
                .iter()
                .any(|e| e.metadata.name == r.metadata.name)
        });
        routes.extend(self.extra_routes.iter().cloned());
        if self.control_plane.is_some() {
            // Endpoints register themselves; routes are applied through the
            // control plane once it runs.
            endpoints.clear();
        }
        endpoints.extend(self.extra_endpoints.iter().cloned());
        if let Some(endpoint) = &self.otlp_endpoint {
            for process in processes.iter_mut().filter(|p| p.role != Role::Etcd) {
                let env = otel_env(endpoint, process);
                process.env.extend(env);
            }
        }
        let identity = secure.then(|| {
            let mut tokens: Vec<(&'static str, String)> = self
                .services
                .iter()
                .map(|(service, _)| ("service", service.clone()))
                .collect();
            if self.gateway.is_some() {
                tokens.push(("gateway", "gateway".into()));
            }
            IdentityLayout {
                dir: identity_dir.clone(),
                trust_domain: mesh::identity::DEFAULT_TRUST_DOMAIN.into(),
                control_planes: control_planes
                    .iter()
                    .map(|uri| uri.trim_start_matches("http://").to_owned())
                    .collect(),
                tokens,
                etcd: self.control_plane.as_ref().is_some_and(|cp| cp.etcd),
            }
        });
        let (authorization_policies, request_authentications) =
            if self.shop_security && self.control_plane.is_some() {
                shop_security()
            } else {
                (Vec::new(), Vec::new())
            };
        Plan {
            processes,
            bootstrap: Bootstrap {
                endpoints,
                routes,
                authorization_policies,
                request_authentications,
                ..Bootstrap::default()
            },
            control_planes,
            identity,
        }
    }

    /// True when customers log in: the users service runs, the shop's
    /// request authentication is applied (through a control plane), and
    /// identities prove to orders that the gateway verified the subject.
    fn logins(&self, secure: bool) -> bool {
        secure
            && self.shop_security
            && self.control_plane.is_some()
            && self.services.iter().any(|(s, _)| s == "users")
    }

    /// A route per shop gRPC service to its mesh service. In static mode
    /// also the reflection services to `orders` (or the first service), so
    /// grpcurl works at the gateway; with a control plane the gateway serves
    /// mesh-wide reflection itself.
    fn default_routes(&self) -> Vec<Route> {
        let has = |name: &str| self.services.iter().any(|(s, _)| s == name);
        let mut routes: Vec<Route> = SHOP_SERVICES
            .iter()
            .filter(|(service, _)| has(service))
            .map(|(service, grpc)| {
                let mut route = route(service, grpc, service);
                if self.expose_internal || PUBLIC_SHOP_SERVICES.contains(service) {
                    route.spec.exposure = Some("public".into());
                }
                route
            })
            .collect();
        let reflection_target = if has("orders") {
            Some("orders")
        } else {
            self.services.first().map(|(s, _)| s.as_str())
        };
        if let Some(target) = reflection_target.filter(|_| self.control_plane.is_none()) {
            for (i, grpc) in REFLECTION_SERVICES.iter().enumerate() {
                let mut route = route(&format!("reflection-{i}"), grpc, target);
                route.spec.exposure = Some("public".into());
                routes.push(route);
            }
        }
        routes
    }
}

/// A proxy's identity flags: its trust bundle and its join token file
/// (one per service or gateway), or `--mtls off` when the mesh runs
/// without (asked for, or static mode: no CA to certify it).
fn identity_args(secure: bool, dir: &Path, name: &str) -> Vec<String> {
    if !secure {
        return vec!["--mtls".into(), "off".into()];
    }
    vec![
        "--trust-bundle".into(),
        dir.join("ca").join("bundle.crt").display().to_string(),
        "--identity-token-file".into(),
        dir.join("tokens")
            .join(format!("{name}.token"))
            .display()
            .to_string(),
    ]
}

/// The `OTEL_*` environment of a process that sends traces to `endpoint`.
fn otel_env(endpoint: &str, process: &ProcessSpec) -> Vec<(String, String)> {
    let service_name = match process.role {
        Role::Sidecar => format!("{}-sidecar", process.service),
        _ => process.service.clone(),
    };
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_SERVICE_NAME", service_name),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.instance.id={}", process.name),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec()
}

/// The shop's security documents (`k8s/base/security/shop.yaml`, which
/// the Kubernetes deployment applies too): the users service's tokens are
/// accepted at the gateway, and each service says who may call it.
pub fn shop_security() -> (Vec<AuthorizationPolicy>, Vec<RequestAuthentication>) {
    const SHOP_SECURITY: &str = include_str!("../../../k8s/base/security/shop.yaml");
    let mut policies = Vec::new();
    let mut authentications = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(SHOP_SECURITY) {
        let value = serde_yaml_ng::Value::deserialize(document).expect("shop.yaml is YAML");
        match value.get("kind").and_then(serde_yaml_ng::Value::as_str) {
            Some(mesh::model::AUTHORIZATION_POLICY_KIND) => {
                policies.push(serde_yaml_ng::from_value(value).expect("a valid policy"))
            }
            _ => authentications
                .push(serde_yaml_ng::from_value(value).expect("a valid request authentication")),
        }
    }
    (policies, authentications)
}

/// A route taking every method of `grpc_service` to `destination`.
pub fn route(name: &str, grpc_service: &str, destination: &str) -> Route {
    Route {
        kind: "Route".into(),
        metadata: RouteMetadata { name: name.into() },
        spec: RouteSpec {
            matches: RouteMatch {
                service: grpc_service.into(),
                method: None,
            },
            destination: destination.into(),
            rules: Vec::new(),
            split: Vec::new(),
            timeout: None,
            retries: None,
            outlier_detection: None,
            concurrency: None,
            fault: None,
            load_balancer: None,
            exposure: None,
            external_headers: Vec::new(),
            rate_limit: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secure_plan_runs_etcd_with_tls_and_client_certificates() {
        let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
        topology.control_plane = Some(ControlPlaneSpec::default());
        let mut port = 30_000;
        let mut next = || {
            port += 1;
            port
        };
        let plan = topology.plan(&mut next, Path::new("/tmp/mesh/bootstrap.yaml"));
        let etcd = plan.process("etcd").expect("etcd planned");
        let arg = |spec: &ProcessSpec, flag: &str| {
            let at = spec.args.iter().position(|a| a == flag)?;
            spec.args.get(at + 1).cloned()
        };
        assert!(etcd.args.iter().any(|a| a == "--client-cert-auth"));
        let client = arg(etcd, "--listen-client-urls").expect("client URL");
        assert_eq!(client, format!("https://{}", etcd.serving));
        assert_eq!(arg(etcd, "--advertise-client-urls"), Some(client.clone()));
        assert_eq!(
            arg(etcd, "--trusted-ca-file").as_deref(),
            Some("/tmp/mesh/identity/etcd/ca.crt")
        );
        // Readiness on the plaintext metrics listener, not the TLS port.
        let metrics = etcd.admin.expect("a readiness address");
        assert_ne!(metrics, etcd.serving);
        assert_eq!(
            arg(etcd, "--listen-metrics-urls"),
            Some(format!("http://{metrics}"))
        );
        let identity = plan.identity.as_ref().expect("secure");
        assert!(identity
            .before_start()
            .iter()
            .any(|step| step[1] == "issue-etcd"));
        for cp in plan
            .processes
            .iter()
            .filter(|p| p.role == Role::ControlPlane)
        {
            assert_eq!(arg(cp, "--etcd"), Some(client.clone()));
            assert_eq!(
                arg(cp, "--etcd-cert").as_deref(),
                Some("/tmp/mesh/identity/etcd/client.crt")
            );
            assert!(arg(cp, "--etcd-ca").is_some() && arg(cp, "--etcd-key").is_some());
        }

        topology.insecure = true;
        let plan = topology.plan(&mut next, Path::new("/tmp/mesh/bootstrap.yaml"));
        let etcd = plan.process("etcd").expect("etcd planned");
        assert!(!etcd.args.iter().any(|a| a == "--client-cert-auth"));
        assert_eq!(etcd.admin, Some(etcd.serving));
        let cp = plan.process("control-plane-1").expect("a replica");
        assert_eq!(arg(cp, "--etcd"), Some(format!("http://{}", etcd.serving)));
        assert_eq!(arg(cp, "--etcd-ca"), None);
    }

    #[test]
    fn otlp_endpoint_reaches_every_mesh_process() {
        let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
        topology.control_plane = Some(ControlPlaneSpec::default());
        topology.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        let mut port = 30_000;
        let plan = topology.plan(
            &mut || {
                port += 1;
                port
            },
            Path::new("/tmp/bootstrap.yaml"),
        );
        let env = |name: &str, key: &str| {
            let process = plan.process(name).expect("planned");
            process
                .env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        for (name, service) in [
            ("orders-1", "orders"),
            ("orders-1-sidecar", "orders-sidecar"),
            ("gateway", "gateway"),
            ("control-plane-1", "control-plane"),
        ] {
            assert_eq!(
                env(name, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
                Some("http://127.0.0.1:4317")
            );
            assert_eq!(env(name, "OTEL_SERVICE_NAME").as_deref(), Some(service));
            assert_eq!(
                env(name, "OTEL_RESOURCE_ATTRIBUTES"),
                Some(format!("service.instance.id={name}"))
            );
        }
        assert_eq!(env("etcd", "OTEL_SERVICE_NAME"), None);

        topology.otlp_endpoint = None;
        let plan = topology.plan(&mut || 0, Path::new("/tmp/bootstrap.yaml"));
        assert!(plan.processes.iter().all(|p| p.env.is_empty()));
    }
}
