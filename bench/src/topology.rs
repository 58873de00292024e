//! The four ways the benchmark's client reaches the echo servers, each
//! started fresh on loopback ports and checked end to end (calls succeed;
//! proxied topologies reach both servers) before anything is measured.
//!
//! ```text
//! direct: client ──► echo-1
//! mesh:   client ──► client-1 sidecar (outbound) ──3:1──► echo-1 sidecar ──► echo-1
//!                                                   └───► echo-2 sidecar ──► echo-2
//!         (tables pushed by a control-plane replica on etcd)
//! envoy:  the same with Envoy as the three sidecars (bench/envoy)
//! nginx:  the same with nginx as the three sidecars (bench/nginx)
//! ```
//!
//! `mesh-mtls` and `envoy-mtls` are the same two with mutual TLS between
//! the proxies (TLS 1.3, ALPN h2), certificates from one mesh CA: the
//! sidecars certify themselves with join tokens through the control
//! plane, as `meshctl up` runs them; the Envoys are given certificates
//! for the same SPIFFE identities by `meshctl identity issue`, as Istio
//! configures its sidecars. The client's own hop to its proxy stays
//! plaintext on loopback in both.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mesh::model::Route;
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, PortAllocator, Role, Topology};

use crate::client::{self, Call};
use crate::echo;
use crate::process::{ProcessGroup, Programs};
use crate::proxy_config::{self, Template};

/// How long a started topology may take to route calls end to end.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

/// A topology under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// Client to server, no proxy: the physical limit.
    Direct,
    /// The mesh's sidecars, tables from the control plane on etcd.
    Mesh,
    /// The mesh with identities: mTLS between sidecars (and to the
    /// control plane and etcd), certificates from the control plane's CA.
    MeshMtls,
    /// Envoy as the sidecars.
    Envoy,
    /// Envoy as the sidecars with mTLS between them (TLS 1.3, ALPN h2),
    /// certificates from the same kind of mesh CA.
    EnvoyMtls,
    /// nginx as the sidecars.
    Nginx,
}

impl Kind {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Mesh => "mesh",
            Self::MeshMtls => "mesh-mtls",
            Self::Envoy => "envoy",
            Self::EnvoyMtls => "envoy-mtls",
            Self::Nginx => "nginx",
        }
    }

    /// Whether it runs Envoy (found on PATH or not).
    pub fn is_envoy(self) -> bool {
        matches!(self, Self::Envoy | Self::EnvoyMtls)
    }
}

/// A started topology; its processes stop when it is dropped.
pub struct Running {
    /// Where the client sends its calls.
    pub target: SocketAddr,
    /// The proxy processes (name, pid): what CPU and memory are measured of.
    pub proxies: Vec<(String, u32)>,
    processes: ProcessGroup,
}

impl Running {
    /// Fails if a process of the topology has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.processes.check_alive()
    }
}

/// Starts `kind` and waits until it serves calls end to end.
pub async fn start(
    kind: Kind,
    programs: &Programs,
    ports: &mut PortAllocator,
    mesh_route: MeshRoute,
) -> anyhow::Result<Running> {
    let mut running = match kind {
        Kind::Direct => start_direct(programs, ports)?,
        Kind::Mesh => start_mesh(programs, ports, mesh_route, false).await?,
        Kind::MeshMtls => start_mesh(programs, ports, mesh_route, true).await?,
        Kind::Envoy => start_envoy(programs, ports, false).await?,
        Kind::EnvoyMtls => start_envoy(programs, ports, true).await?,
        Kind::Nginx => start_nginx(programs, ports).await?,
    };
    let both = kind != Kind::Direct;
    wait_serving(&mut running, both)
        .await
        .with_context(|| format!("{} topology", kind.name()))?;
    Ok(running)
}

/// The echo service as every mesh topology runs it: echo-1 (weight 3, v1)
/// and echo-2 (weight 1, v2).
fn echo_pair() -> (String, Vec<InstanceSpec>) {
    (
        echo::SERVICE.into(),
        vec![
            InstanceSpec::new("echo-1").weight(3),
            InstanceSpec::new("echo-2").weight(1).version("v2"),
        ],
    )
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `bench echo-server` with the standard app flags.
fn spawn_echo(
    processes: &mut ProcessGroup,
    programs: &Programs,
    instance: &str,
    port: u16,
) -> anyhow::Result<u32> {
    let args = [
        "echo-server",
        "--port",
        &port.to_string(),
        "--instance-id",
        instance,
    ]
    .map(str::to_owned);
    processes.spawn(instance, &programs.bench, &args, &log_env())
}

/// Every mesh process logs at the level production runs at, unless
/// `BENCH_MESH_LOG` says otherwise (e.g. `info,h2=trace` to see frames;
/// `BENCH_KEEP_LOGS=<dir>` keeps the logs).
fn log_env() -> Vec<(String, String)> {
    let level = std::env::var("BENCH_MESH_LOG").unwrap_or_else(|_| "info".into());
    vec![("RUST_LOG".into(), level)]
}

fn start_direct(programs: &Programs, ports: &mut PortAllocator) -> anyhow::Result<Running> {
    let mut processes = ProcessGroup::new()?;
    let port = ports.next_port();
    spawn_echo(&mut processes, programs, "echo-1", port)?;
    Ok(Running {
        target: loopback(port),
        proxies: Vec::new(),
        processes,
    })
}

/// The mesh route's policies: the default mirrors the peers'
/// configurations; the others sweep one policy at a time (`bench tail
/// --mesh-route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MeshRoute {
    /// Retries (2 attempts, on unavailable), outlier detection, a 15 s
    /// timeout: what the peers' configurations mirror.
    #[default]
    Retries,
    /// No policy at all.
    Plain,
    /// Only the 15 s timeout (a caller's shorter `grpc-timeout` wins).
    Deadline,
    /// The default route plus fault injection at 0 % (abort and delay).
    Fault0,
    /// The default route plus a header rule (`x-canary: true` to v2) the
    /// calls do not match.
    Headers,
    /// The default route split 90/10 between subsets v1 (echo-1) and v2
    /// (echo-2).
    Split,
}

/// The mesh's route for the echo service (see [`MeshRoute`]); the 3:1
/// weights are the instances' own (`--weight`).
pub fn echo_route(variant: MeshRoute) -> anyhow::Result<Route> {
    let mut spec = serde_json::json!({
        "match": { "service": echo::GRPC_SERVICE },
        "destination": echo::SERVICE,
        "exposure": "public",
    });
    if variant != MeshRoute::Plain {
        spec["timeout"] = "15s".into();
    }
    if !matches!(variant, MeshRoute::Plain | MeshRoute::Deadline) {
        spec["retries"] = serde_json::json!({ "attempts": 2, "retryOn": ["unavailable"] });
        spec["outlierDetection"] = serde_json::json!({
            "consecutiveFailures": 5,
            "failureCodes": ["unavailable"],
            "baseEjection": "5s",
            "maxEjection": "60s",
            "maxEjectionPercent": 50
        });
    }
    match variant {
        MeshRoute::Fault0 => {
            spec["fault"] = serde_json::json!({
                "abort": { "percent": 0.0, "code": "unavailable" },
                "delay": { "percent": 0.0, "duration": "200ms" }
            });
        }
        MeshRoute::Headers => {
            spec["rules"] = serde_json::json!([{
                "headers": [{ "name": "x-canary", "exact": "true" }],
                "split": [{ "subset": "v2", "weight": 1 }]
            }]);
            spec["externalHeaders"] = serde_json::json!(["x-canary"]);
        }
        MeshRoute::Split => {
            spec["split"] = serde_json::json!([
                { "subset": "v1", "weight": 90 },
                { "subset": "v2", "weight": 10 }
            ]);
        }
        MeshRoute::Retries | MeshRoute::Plain | MeshRoute::Deadline => {}
    }
    let route: Route = serde_json::from_value(serde_json::json!({
        "kind": "Route",
        "metadata": { "name": "echo" },
        "spec": spec,
    }))
    .context("the echo route")?;
    route.validate().context("the echo route")?;
    Ok(route)
}

async fn start_mesh(
    programs: &Programs,
    ports: &mut PortAllocator,
    mesh_route: MeshRoute,
    mtls: bool,
) -> anyhow::Result<Running> {
    let topology = Topology {
        services: vec![
            echo_pair(),
            // The client's sidecar; its app (an idle echo server) only
            // answers the health checks that make the sidecar ready.
            ("client".into(), vec![InstanceSpec::new("client-1")]),
        ],
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        extra_routes: vec![echo_route(mesh_route)?],
        // `mesh`: no identities (`--insecure`), the plaintext figures;
        // `mesh-mtls`: the secure plan `meshctl up` runs by default.
        insecure: !mtls,
        ..Topology::default()
    };
    launch_mesh(programs, ports, &topology).await
}

/// The mesh for `bench balance`: four echo instances of equal weight, the
/// last answering `slow` late, behind the client's sidecar, whose static
/// table routes the echo service with `load_balancer` (no retries, no
/// outlier detection: the balancer alone). echo-1 is fast, so the
/// readiness check (which waits for echo-1) passes whatever the balancer.
pub async fn start_balance(
    programs: &Programs,
    ports: &mut PortAllocator,
    load_balancer: &str,
    slow: Duration,
) -> anyhow::Result<Running> {
    let mut route = echo_route(MeshRoute::Plain)?;
    route.spec.load_balancer = Some(load_balancer.to_owned());
    route.validate().context("the echo route")?;
    let mut echoes: Vec<InstanceSpec> = (1..=3)
        .map(|i| InstanceSpec::new(format!("echo-{i}")))
        .collect();
    echoes.push(
        InstanceSpec::new("echo-4")
            .app_args(["--delay-ms".to_owned(), slow.as_millis().to_string()]),
    );
    let topology = Topology {
        services: vec![
            (echo::SERVICE.into(), echoes),
            ("client".into(), vec![InstanceSpec::new("client-1")]),
        ],
        extra_routes: vec![route],
        insecure: true,
        ..Topology::default()
    };
    let mut running = launch_mesh(programs, ports, &topology).await?;
    wait_serving(&mut running, false)
        .await
        .context("balance topology")?;
    Ok(running)
}

/// The proxy facing strangers in `bench abuse`: the mesh's gateway (its
/// ingress with the edge defaults) or Envoy with its edge best-practice
/// configuration (`bench/envoy/edge.yaml`), each in front of two
/// server-side proxies (the mesh's inbound sidecars, Envoys) and the two
/// echo servers, weighted 3:1. The attacked process is named in
/// [`Running::proxies`] by [`EDGE_PROXY`].
pub async fn start_edge(
    kind: Kind,
    programs: &Programs,
    ports: &mut PortAllocator,
) -> anyhow::Result<Running> {
    let mut running = match kind {
        Kind::Mesh => {
            let topology = Topology {
                services: vec![echo_pair()],
                gateway: Some(loopback(0)),
                extra_routes: vec![echo_route(MeshRoute::default())?],
                // Static mode: no control plane, hence no identities.
                insecure: true,
                ..Topology::default()
            };
            let mut running = launch_mesh(programs, ports, &topology).await?;
            rename_proxy(&mut running, "gateway");
            running
        }
        Kind::Envoy => {
            let envoy = programs.envoy.as_deref().context("envoy was not found")?;
            let mut running = start_peer(
                programs,
                ports,
                envoy,
                "envoy",
                [proxy_config::ENVOY_INBOUND, proxy_config::ENVOY_EDGE],
                ("yaml", envoy_command),
                false,
            )
            .await?;
            rename_proxy(&mut running, "envoy-out");
            running
        }
        other => bail!("bench abuse runs mesh and envoy, not {}", other.name()),
    };
    wait_serving(&mut running, true)
        .await
        .with_context(|| format!("{} edge topology", kind.name()))?;
    Ok(running)
}

/// The mesh for `bench security`: the gateway in front of the two echo
/// sidecars (3:1), tables and certificates from one control-plane replica
/// on etcd. With identities, because authorization is only enforced on
/// callers that proved one; calls go in at the gateway's ingress, where
/// JWTs are verified.
pub struct SecureMesh {
    /// The gateway and both echo sidecars, all measured.
    pub running: Running,
    /// The control plane's gRPC URI, to apply and delete documents.
    pub control_plane: String,
    /// The identity files (the operator's credential for the admin API).
    pub identity: meshctl::demo::IdentityLayout,
    /// Every proxy's admin address (name, address): where `/config` says
    /// which table it runs.
    pub admins: Vec<(String, SocketAddr)>,
}

/// Starts [`SecureMesh`] with the route users run (retries, outlier
/// detection) and waits until it serves calls through both instances.
pub async fn start_security(
    programs: &Programs,
    ports: &mut PortAllocator,
) -> anyhow::Result<SecureMesh> {
    let topology = Topology {
        services: vec![echo_pair()],
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        gateway: Some(loopback(0)),
        extra_routes: vec![echo_route(MeshRoute::default())?],
        insecure: false,
        ..Topology::default()
    };
    let launched = launch_planned(programs, ports, &topology).await?;
    let mut running = launched.running;
    wait_serving(&mut running, true)
        .await
        .context("security topology")?;
    Ok(SecureMesh {
        running,
        control_plane: launched
            .control_plane
            .context("the security topology has no control plane")?,
        identity: launched
            .identity
            .context("the security topology has no identities")?,
        admins: launched.admins,
    })
}

/// Waits until the proxy `name` (admin port `admin`) serves a `/config`
/// that `ready` accepts, and returns it; `what` says what is awaited.
pub async fn wait_for_config(
    running: &mut Running,
    name: &str,
    admin: SocketAddr,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    poll_config(&mut running.processes, name, admin, what, ready).await
}

/// The table version a `/config` document names.
pub fn config_version(config: &serde_json::Value) -> Option<i64> {
    config["version"].as_str()?.parse().ok()
}

/// The name [`start_edge`] gives the proxy under attack.
pub const EDGE_PROXY: &str = "edge";

fn rename_proxy(running: &mut Running, name: &str) {
    for proxy in &mut running.proxies {
        if proxy.0 == name {
            proxy.0 = EDGE_PROXY.to_owned();
        }
    }
}

/// Envoy's command line for one configuration file.
fn envoy_command(config: &std::path::Path, _: &std::path::Path, _: &str) -> Vec<String> {
    [
        "--config-path",
        &config.display().to_string(),
        "--concurrency",
        "1",
        // Several Envoys on one host: no shared memory between them.
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// [`launch_planned`] for those that only call the mesh.
async fn launch_mesh(
    programs: &Programs,
    ports: &mut PortAllocator,
    topology: &Topology,
) -> anyhow::Result<Running> {
    Ok(launch_planned(programs, ports, topology).await?.running)
}

/// A launched plan, with what changing its documents later needs.
struct Launched {
    running: Running,
    control_plane: Option<String>,
    identity: Option<meshctl::demo::IdentityLayout>,
    admins: Vec<(String, SocketAddr)>,
}

/// Starts the processes of `topology`'s plan. With a control plane: the
/// store and the control plane first, then the apps and sidecars, then
/// the routes applied through the control plane, waiting for every
/// sidecar to run them. Without: the static table written where the
/// sidecars read it. Calls go to `client-1`'s sidecar.
async fn launch_planned(
    programs: &Programs,
    ports: &mut PortAllocator,
    topology: &Topology,
) -> anyhow::Result<Launched> {
    let mut processes = ProcessGroup::new()?;
    let bootstrap = processes.dir().join("bootstrap.yaml");
    let plan = topology.plan(&mut || ports.next_port(), &bootstrap);
    if topology.control_plane.is_none() {
        // JSON is YAML: the sidecars read it as their bootstrap.
        let text = serde_json::to_string(&plan.bootstrap).context("the static table")?;
        std::fs::write(&bootstrap, text).context("writing the static table")?;
    }
    // The CA, the admin operator and etcd's TLS files before anything
    // starts; join tokens once the control plane answers.
    if let Some(identity) = &plan.identity {
        for step in identity.before_start() {
            meshctl(programs, &step, &[]).await?;
        }
    }
    let mut tokens_made = plan.identity.is_none();
    for spec in &plan.processes {
        if !tokens_made && matches!(spec.role, Role::App | Role::Sidecar | Role::Gateway) {
            if let Some(identity) = &plan.identity {
                let env = [(
                    "MESHCONFIG".to_owned(),
                    identity.meshconfig().display().to_string(),
                )];
                for step in identity.once_control_plane_ready() {
                    let mut args =
                        vec!["--control-plane".to_owned(), plan.control_planes.join(",")];
                    args.extend(step);
                    meshctl(programs, &args, &env).await?;
                }
            }
            tokens_made = true;
        }
        let (program, mut args) = match spec.role {
            Role::Etcd => (programs.etcd()?.to_owned(), Vec::new()),
            // The planner names apps after their service; every app here is
            // the echo server.
            Role::App => (programs.bench.clone(), vec!["echo-server".to_owned()]),
            Role::ControlPlane | Role::Sidecar | Role::Gateway => {
                (programs.mesh_binary(&spec.program)?, Vec::new())
            }
        };
        args.extend(spec.args.iter().cloned());
        let mut env = spec.env.clone();
        if spec.role != Role::Etcd {
            env.extend(log_env());
        }
        processes.spawn(&spec.name, &program, &args, &env)?;
        // The store before the control plane, the control plane before the
        // sidecars: each would retry, but in order start-up is quicker.
        if matches!(spec.role, Role::Etcd | Role::ControlPlane) {
            if let Some(admin) = spec.admin {
                processes
                    .wait_ready(&spec.name, admin, spec.ready_path)
                    .await?;
            }
        }
    }
    // The gateway (when the plan has one) is a proxy like the sidecars:
    // waited for, and measured.
    let sidecars: Vec<_> = plan
        .processes
        .iter()
        .filter(|p| matches!(p.role, Role::Sidecar | Role::Gateway))
        .collect();
    for sidecar in &sidecars {
        if let Some(admin) = sidecar.admin {
            processes
                .wait_ready(&sidecar.name, admin, sidecar.ready_path)
                .await?;
        }
    }
    if let Some(control_plane) = plan.control_planes.first() {
        let revision = meshctl::demo::apply_routes(
            control_plane,
            &plan.bootstrap.routes,
            plan.identity.as_ref(),
        )
        .await
        .context("applying the echo route")?;
        for sidecar in &sidecars {
            let admin = sidecar.admin.context("a sidecar without an admin port")?;
            wait_for_table(&mut processes, &sidecar.name, admin, revision).await?;
        }
    }
    // Calls go in at the client's sidecar, or at the gateway when there is
    // no client (`bench abuse`).
    let target = match plan.process("client-1-sidecar") {
        Some(client) => client
            .outbound
            .context("the client sidecar has no outbound")?,
        None => plan
            .gateway()
            .context("the plan has neither a client sidecar nor a gateway")?,
    };
    let proxies = sidecars
        .iter()
        .filter_map(|s| Some((s.name.clone(), processes.pid(&s.name)?)))
        .collect();
    let admins = sidecars
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.admin?)))
        .collect();
    Ok(Launched {
        running: Running {
            target,
            proxies,
            processes,
        },
        control_plane: plan.control_planes.first().cloned(),
        identity: plan.identity.clone(),
        admins,
    })
}

/// Waits until a sidecar runs a table of at least `revision` (`/config`).
async fn wait_for_table(
    processes: &mut ProcessGroup,
    name: &str,
    admin: SocketAddr,
    revision: i64,
) -> anyhow::Result<()> {
    let what = format!("table version {revision}");
    poll_config(processes, name, admin, &what, |config| {
        config_version(config).is_some_and(|v| v >= revision)
    })
    .await
    .map(drop)
}

/// Polls a proxy's `/config` until `ready` accepts it (bounded by
/// [`SERVING_TIMEOUT`]); fails early if a process of the group exits.
async fn poll_config(
    processes: &mut ProcessGroup,
    name: &str,
    admin: SocketAddr,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        processes.check_alive()?;
        let config =
            tokio::task::spawn_blocking(move || meshctl::demo::admin_get(admin, "/config"))
                .await
                .context("config probe task")?;
        let config = config
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if let Some(config) = config.filter(|c| ready(c)) {
            return Ok(config);
        }
        if Instant::now() > deadline {
            bail!("{name} never ran {what} within {SERVING_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ports of a peer pair: two echo servers, two inbound proxies, one
/// outbound proxy, each proxy with a readiness port.
struct PeerPorts {
    apps: [u16; 2],
    inbound: [(u16, u16); 2],
    outbound: (u16, u16),
}

impl PeerPorts {
    fn new(ports: &mut PortAllocator) -> Self {
        let mut next = || ports.next_port();
        Self {
            apps: [next(), next()],
            inbound: [(next(), next()), (next(), next())],
            outbound: (next(), next()),
        }
    }

    /// Fills in an inbound template for server `i`.
    fn inbound_values(&self, i: usize, dir: &str, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("LISTEN_PORT", self.inbound[i].0.to_string()),
            ("ADMIN_PORT", self.inbound[i].1.to_string()),
            ("APP_PORT", self.apps[i].to_string()),
            ("DIR", dir.to_owned()),
            ("NAME", name.to_owned()),
        ]
    }

    /// Fills in the outbound template.
    fn outbound_values(&self, dir: &str, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("LISTEN_PORT", self.outbound.0.to_string()),
            ("ADMIN_PORT", self.outbound.1.to_string()),
            ("UPSTREAM_1_PORT", self.inbound[0].0.to_string()),
            ("UPSTREAM_2_PORT", self.inbound[1].0.to_string()),
            ("DIR", dir.to_owned()),
            ("NAME", name.to_owned()),
        ]
    }
}

/// How to start one peer proxy from its configuration file.
type PeerCommand = fn(config: &std::path::Path, dir: &std::path::Path, name: &str) -> Vec<String>;

/// Starts the echo servers and three proxies of `program`: `{prefix}-in-1`,
/// `{prefix}-in-2` and `{prefix}-out`.
async fn start_peer(
    programs: &Programs,
    ports: &mut PortAllocator,
    program: &std::path::Path,
    prefix: &str,
    [inbound, outbound]: [Template; 2],
    (extension, command): (&str, PeerCommand),
    mtls: bool,
) -> anyhow::Result<Running> {
    let mut processes = ProcessGroup::new()?;
    let ports = PeerPorts::new(ports);
    for (i, port) in ports.apps.iter().enumerate() {
        spawn_echo(&mut processes, programs, &format!("echo-{}", i + 1), *port)?;
    }
    let dir = processes.dir().to_owned();
    let dir_text = dir.display().to_string();
    let [mut inbound_tls, mut outbound_tls] = [Vec::new(), Vec::new()];
    if mtls {
        [inbound_tls, outbound_tls] = peer_identities(programs, &dir).await?;
    }
    let mut proxies = Vec::new();
    let mut started = Vec::new();
    for i in 0..2 {
        let name = format!("{prefix}-in-{}", i + 1);
        let mut values = ports.inbound_values(i, &dir_text, &name);
        values.extend(inbound_tls.iter().cloned());
        let text = inbound.render(&values)?;
        started.push((name, text, ports.inbound[i].1));
    }
    let name = format!("{prefix}-out");
    let mut values = ports.outbound_values(&dir_text, &name);
    values.extend(outbound_tls);
    let text = outbound.render(&values)?;
    started.push((name, text, ports.outbound.1));
    for (name, text, admin) in started {
        let config = dir.join(format!("{name}.{extension}"));
        std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
        let pid = processes.spawn(&name, program, &command(&config, &dir, &name), &[])?;
        processes
            .wait_ready(&name, loopback(admin), "/ready")
            .await?;
        proxies.push((name, pid));
    }
    Ok(Running {
        target: loopback(ports.outbound.0),
        proxies,
        processes,
    })
}

/// `meshctl` with `args` (and `env`); fails with its stderr.
async fn meshctl(
    programs: &Programs,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let program = programs.mesh_binary("meshctl")?;
    let output = tokio::process::Command::new(&program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("MESHCTL_CONTROL_PLANE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "meshctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A mesh CA in `dir/identity/ca` and certificates for the two SPIFFE
/// identities the mesh's sidecars have here (`svc/echo` on the servers'
/// side, `svc/client` on the client's), for the Envoys: the template
/// values of the inbound and the outbound proxies.
async fn peer_identities(
    programs: &Programs,
    dir: &std::path::Path,
) -> anyhow::Result<[Vec<(&'static str, String)>; 2]> {
    let trust_domain = mesh::identity::DEFAULT_TRUST_DOMAIN;
    let ca = dir.join("identity").join("ca");
    let certs = dir.join("identity").join("peers");
    let text = |p: &std::path::Path| p.display().to_string();
    meshctl(
        programs,
        &[
            "identity",
            "init",
            "--out",
            &text(&ca),
            "--trust-domain",
            trust_domain,
        ]
        .map(str::to_owned),
        &[],
    )
    .await?;
    let mut values = Vec::new();
    for service in [echo::SERVICE, "client"] {
        meshctl(
            programs,
            &[
                "identity",
                "issue",
                "--service",
                service,
                "--ca-dir",
                &text(&ca),
                "--trust-domain",
                trust_domain,
                "--out",
                &text(&certs),
            ]
            .map(str::to_owned),
            &[],
        )
        .await?;
        values.push(vec![
            ("CERT", text(&certs.join(format!("{service}.crt")))),
            ("KEY", text(&certs.join(format!("{service}.key")))),
            ("CA", text(&ca.join("bundle.crt"))),
            ("TRUST_DOMAIN", trust_domain.to_owned()),
        ]);
    }
    let echo_id = mesh::identity::SpiffeId::new(
        trust_domain,
        mesh::identity::Workload::Service(echo::SERVICE.into()),
    )
    .context("the echo service's SPIFFE ID")?;
    values[1].push(("PEER_ID", echo_id.to_string()));
    let outbound = values.pop().unwrap_or_default();
    let inbound = values.pop().unwrap_or_default();
    Ok([inbound, outbound])
}

async fn start_envoy(
    programs: &Programs,
    ports: &mut PortAllocator,
    mtls: bool,
) -> anyhow::Result<Running> {
    let envoy = programs.envoy.as_deref().context("envoy was not found")?;
    let templates = if mtls {
        [
            proxy_config::ENVOY_INBOUND_MTLS,
            proxy_config::ENVOY_OUTBOUND_MTLS,
        ]
    } else {
        [proxy_config::ENVOY_INBOUND, proxy_config::ENVOY_OUTBOUND]
    };
    start_peer(
        programs,
        ports,
        envoy,
        if mtls { "envoy-mtls" } else { "envoy" },
        templates,
        ("yaml", envoy_command),
        mtls,
    )
    .await
}

async fn start_nginx(programs: &Programs, ports: &mut PortAllocator) -> anyhow::Result<Running> {
    let nginx = programs.nginx.as_deref().context("nginx was not found")?;
    start_peer(
        programs,
        ports,
        nginx,
        "nginx",
        [proxy_config::NGINX_INBOUND, proxy_config::NGINX_OUTBOUND],
        ("conf", |config, dir, name| {
            [
                "-p".to_owned(),
                dir.display().to_string(),
                "-c".to_owned(),
                config.display().to_string(),
                // The error log before the configuration is read (not the
                // system's /var/log/nginx).
                "-e".to_owned(),
                dir.join(format!("{name}-error.log")).display().to_string(),
            ]
            .to_vec()
        }),
        false,
    )
    .await
}

/// Sends calls until they succeed and, if `both`, until both echo servers
/// have answered: the topology routes end to end with its weights.
async fn wait_serving(running: &mut Running, both: bool) -> anyhow::Result<()> {
    let call = Call::unary(running.target, 16)?;
    let deadline = Instant::now() + SERVING_TIMEOUT;
    let mut last_error = String::from("no call made");
    let (mut primary, mut other) = (false, false);
    // Bounded by count as well as by time.
    for _ in 0..100_000 {
        running.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "no successful calls to {} through every server within {SERVING_TIMEOUT:?} \
                 (echo-1 answered: {primary}, echo-2 answered: {other}); last error: {last_error}",
                running.target
            );
        }
        match client::connect(running.target).await {
            Ok(mut connection) => {
                for _ in 0..8 {
                    match client::send_bounded(&call, &mut connection).await {
                        Ok(true) => primary = true,
                        Ok(false) => other = true,
                        Err(error) => {
                            last_error = error.to_string();
                            break;
                        }
                    }
                }
                if primary && (other || !both) {
                    return Ok(());
                }
            }
            Err(error) => last_error = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} never served every server", running.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_route_is_valid_and_resilient() {
        let route = echo_route(MeshRoute::default()).expect("route");
        assert_eq!(route.spec.destination, echo::SERVICE);
        assert_eq!(route.spec.retries.as_ref().map(|r| r.attempts), Some(2));
        assert!(route.spec.outlier_detection.is_some());
    }

    #[test]
    fn every_swept_route_is_valid() {
        use clap::ValueEnum;
        for variant in MeshRoute::value_variants() {
            echo_route(*variant).unwrap_or_else(|e| panic!("{variant:?}: {e:#}"));
        }
    }
}
