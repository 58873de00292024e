//! The end-to-end harness: runs a [`Topology`] as real processes (apps,
//! sidecars, gateway) on free loopback ports, waits until every proxy says
//! it is ready, and kills everything when dropped. On a failing test it
//! prints the tail of every process's log.

#![allow(dead_code)]

pub mod otlp;
pub mod sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshctl::demo::{admin_get, Plan, Role, Topology};

/// How long a whole mesh may take to become ready on a loaded 2-core box.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running mesh; everything in it dies with it.
pub struct TestMesh {
    pub plan: Plan,
    processes: Vec<(String, Option<Child>)>,
    dir: tempfile::TempDir,
}

/// Where the workspace's binaries are: beside the test's own `deps/`
/// directory, in the same profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_owned()
}

/// Builds the workspace's binaries once per test process, in the profile
/// the tests were built with, so `cargo test` never runs stale binaries
/// (all but the benchmark's, which no test runs).
/// (cargo releases its build lock while tests run, so this nests safely.)
fn ensure_built() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--workspace", "--bins", "--exclude", "bench"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if bin_dir().file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --workspace --bins --exclude bench failed"
        );
    });
}

/// A workspace binary, built first if need be.
pub fn bin(program: &str) -> PathBuf {
    ensure_built();
    let path = bin_dir().join(program);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Free loopback ports, never the same twice within this test process
/// (one allocator for every test of the binary, outside the ephemeral range).
pub fn port_allocator() -> impl FnMut() -> u16 {
    static PORTS: std::sync::OnceLock<std::sync::Mutex<meshctl::demo::PortAllocator>> =
        std::sync::OnceLock::new();
    let ports = PORTS.get_or_init(|| {
        std::sync::Mutex::new(meshctl::demo::PortAllocator::new(std::process::id()))
    });
    move || ports.lock().unwrap_or_else(|e| e.into_inner()).next_port()
}

impl TestMesh {
    /// Starts `topology` and waits until every proxy is ready (its app
    /// answers health checks).
    pub fn start(topology: &Topology) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bootstrap = dir.path().join("bootstrap.yaml");
        let plan = {
            let mut ports = port_allocator();
            topology.plan(&mut ports, &bootstrap)
        };
        std::fs::write(
            &bootstrap,
            serde_yaml_ng::to_string(&plan.bootstrap).expect("bootstrap yaml"),
        )
        .expect("write bootstrap");
        let mut mesh = Self {
            plan,
            processes: Vec::new(),
            dir,
        };
        if let Some(identity) = mesh.plan.identity.clone() {
            for args in identity.before_start() {
                mesh.meshctl_ok(&args);
            }
        }
        for spec in mesh.plan.processes.clone() {
            let child = mesh.spawn(&spec);
            mesh.processes.push((spec.name.clone(), Some(child)));
        }
        mesh.wait_ready();
        if !mesh.plan.control_planes.is_empty() {
            let revision = mesh.apply_documents(&mesh.plan.bootstrap.clone());
            mesh.wait_for_version(revision);
        }
        mesh
    }

    /// Applies routes through the first control-plane replica; returns the
    /// highest revision written.
    pub fn apply_routes(&self, routes: &[mesh::model::Route]) -> i64 {
        let uri = self.plan.control_planes[0].clone();
        let routes = routes.to_vec();
        let identity = self.plan.identity.clone();
        block_on(async move { meshctl::demo::apply_routes(&uri, &routes, identity.as_ref()).await })
            .unwrap_or_else(|status| panic!("applying routes: {status:?}"))
    }

    /// Applies request authentications, policies and routes through the
    /// first control-plane replica; returns the highest revision written.
    pub fn apply_documents(&self, documents: &mesh::model::Bootstrap) -> i64 {
        let uri = self.plan.control_planes[0].clone();
        let documents = documents.clone();
        let identity = self.plan.identity.clone();
        block_on(async move {
            meshctl::demo::apply_documents(&uri, &documents, identity.as_ref()).await
        })
        .unwrap_or_else(|status| panic!("applying documents: {status:?}"))
    }

    /// Applies `yaml` (any documents meshctl takes) with `meshctl apply -f
    /// -`, as a person would; returns the revision it reports last.
    pub fn meshctl_apply(&self, yaml: &str) -> i64 {
        let (ok, out, err) = self.meshctl(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "meshctl apply failed:\n{yaml}\n{out}\n{err}");
        out.rsplit("(revision ")
            .next()
            .and_then(|rest| rest.split(')').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no revision in meshctl output: {out}"))
    }

    /// Waits until every running proxy runs a table of at least `revision`.
    pub fn wait_for_version(&self, revision: i64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for name in self.proxies() {
            if !self.is_running(&name) {
                continue;
            }
            loop {
                if self.synced_revision(&name).is_some_and(|v| v >= revision) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} never got in step with revision {revision}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The latest store revision proxy `name` is in step with, as the
    /// replica it is connected to says (`/syncz`): with scoped deltas a
    /// proxy is sent nothing for a change outside its scope, so its own
    /// table version does not tell.
    pub fn synced_revision(&self, proxy: &str) -> Option<i64> {
        let admin = self.spec(proxy).admin?.to_string();
        let replicas: Vec<_> = self
            .plan
            .processes
            .iter()
            .filter(|p| p.role == Role::ControlPlane && self.is_running(&p.name))
            .filter_map(|p| p.admin)
            .collect();
        block_on(async move { meshctl::demo::synced_revisions(&replicas).await })
            .get(&admin)
            .copied()
    }

    /// The version of the table a proxy runs (from `/config`).
    pub fn table_version(&self, proxy: &str) -> Option<i64> {
        let admin = self.spec(proxy).admin?;
        let (_, body) = admin_get(admin, "/config").ok()?;
        let config: serde_json::Value = serde_json::from_str(&body).ok()?;
        config["version"].as_str()?.parse().ok()
    }

    /// How many threads the running process `name` has (`/proc`).
    pub fn threads(&self, name: &str) -> usize {
        let pid = self
            .processes
            .iter()
            .find_map(|(n, child)| (n == name).then_some(child.as_ref()?.id()))
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads line")
    }

    /// The pid of every process of this mesh still running, by name: two
    /// readings that agree mean nothing was restarted in between.
    pub fn pids(&mut self) -> std::collections::BTreeMap<String, u32> {
        self.processes
            .iter_mut()
            .filter_map(|(name, child)| {
                let child = child.as_mut()?;
                matches!(child.try_wait(), Ok(None)).then(|| (name.clone(), child.id()))
            })
            .collect()
    }

    /// True while the process has not been killed.
    pub fn is_running(&self, name: &str) -> bool {
        self.processes
            .iter()
            .any(|(n, child)| n == name && child.is_some())
    }

    fn spawn(&self, spec: &meshctl::demo::ProcessSpec) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&spec.name))
            .expect("log file");
        let program = match spec.role {
            Role::Etcd => PathBuf::from(&spec.program),
            _ => bin(&spec.program),
        };
        Command::new(program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("MESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", spec.name))
    }

    /// Starts a killed process again, with the same flags, and waits until
    /// it is ready.
    pub fn restart(&mut self, name: &str) {
        let spec = self.spec(name).clone();
        let child = self.spawn(&spec);
        let slot = self
            .processes
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("a planned process");
        assert!(slot.1.is_none(), "{name} is still running");
        slot.1 = Some(child);
        self.await_ready(name, Instant::now() + READY_TIMEOUT);
    }

    /// Waits until a (running) proxy is ready again, e.g. after its app
    /// was restarted.
    pub fn restart_wait_ready(&mut self, name: &str) {
        assert!(self.spec(name).admin.is_some(), "{name} is not a proxy");
        self.await_ready(name, Instant::now() + READY_TIMEOUT);
    }

    /// Runs `meshctl` against this mesh's control plane; `(success, stdout,
    /// stderr)`.
    pub fn meshctl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let config = self.plan.identity.as_ref().map(|i| i.meshconfig());
        self.meshctl_as(config.as_deref(), args, stdin)
    }

    /// Runs `meshctl` with the operator config `config` (`None`: plaintext,
    /// for a mesh without identities); `(success, stdout, stderr)`.
    pub fn meshctl_as(
        &self,
        config: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        use std::io::Write;
        let mut child = self
            .meshctl_command(config, args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run meshctl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write meshctl stdin");
        }
        let out = child.wait_with_output().expect("meshctl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `meshctl args` against this mesh's control plane as the operator of
    /// `config` (`None`: plaintext), to spawn and watch while it runs.
    pub fn meshctl_command(&self, config: Option<&Path>, args: &[&str]) -> Command {
        let mut command = Command::new(bin("meshctl"));
        match config {
            Some(config) => command.env("MESHCONFIG", config),
            None => command.env("MESHCTL_INSECURE", "true"),
        };
        command
            .env_remove("MESHCTL_CONTROL_PLANE")
            .arg("--control-plane")
            .arg(self.plan.control_planes.join(","))
            .args(args);
        command
    }

    /// The proxy's `/config` as JSON.
    pub fn config(&self, proxy: &str) -> serde_json::Value {
        let admin = self.spec(proxy).admin.expect("a proxy");
        let (_, body) = admin_get(admin, "/config").expect("GET /config");
        serde_json::from_str(&body).expect("/config is JSON")
    }

    /// Where the test's files are (bootstrap, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs meshctl with `args`, failing the test if it fails.
    fn meshctl_ok(&self, args: &[String]) -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = self.meshctl(&args, None);
        assert!(ok, "meshctl {args:?} failed: {stderr}");
        stdout
    }

    /// Waits for every process in start order; the proxies' join tokens
    /// are made as soon as the control plane answers (the proxies read
    /// their token files until they appear).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let specs = self.plan.processes.clone();
        let mut tokens_made = self.plan.identity.is_none();
        for spec in specs {
            if !tokens_made && matches!(spec.role, Role::App | Role::Sidecar | Role::Gateway) {
                if let Some(identity) = self.plan.identity.clone() {
                    for args in identity.once_control_plane_ready() {
                        self.meshctl_ok(&args);
                    }
                }
                tokens_made = true;
            }
            self.await_ready(&spec.name, deadline);
        }
    }

    /// Polls the process's readiness endpoint (if it has one) until it
    /// answers 200, failing if anything died or `deadline` passes.
    fn await_ready(&mut self, name: &str, deadline: Instant) {
        let spec = self.spec(name);
        let Some(admin) = spec.admin else {
            return;
        };
        let path = spec.ready_path;
        loop {
            self.assert_all_alive();
            if matches!(admin_get(admin, path), Ok((200, _))) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} not ready in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_all_alive(&mut self) {
        for (name, child) in &mut self.processes {
            if let Some(child) = child {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited during start-up: {status}");
                }
            }
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The process's log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// `http://` URI of the gateway's ingress listener.
    pub fn gateway_uri(&self) -> String {
        format!(
            "http://{}",
            self.plan.gateway().expect("mesh has a gateway")
        )
    }

    /// `http://` URI of an instance's sidecar outbound listener (what its
    /// app calls).
    pub fn outbound_uri(&self, instance: &str) -> String {
        let sidecar = self.spec(&format!("{instance}-sidecar"));
        format!(
            "http://{}",
            sidecar.outbound.expect("sidecar has an outbound")
        )
    }

    /// The address of a process's serving port (app port, sidecar inbound,
    /// gateway ingress).
    pub fn serving(&self, name: &str) -> SocketAddr {
        self.spec(name).serving
    }

    /// A proxy's whole `/metrics` text.
    pub fn metrics_text(&self, proxy: &str) -> String {
        let admin = self.spec(proxy).admin.expect("a proxy");
        let (status, text) = admin_get(admin, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The value of a counter in a proxy's `/metrics` (0 if absent), found
    /// by metric name and every given label.
    pub fn counter(&self, proxy: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let admin = self.spec(proxy).admin.expect("a proxy");
        let (status, text) = admin_get(admin, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `within` for the
    /// process to exit; returns how long it took.
    pub fn terminate(&mut self, name: &str, within: Duration) -> Duration {
        let (_, child) = self
            .processes
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let mut child = child.take().expect("running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        loop {
            if child.try_wait().expect("wait").is_some() {
                return started.elapsed();
            }
            if started.elapsed() > within {
                let _ = child.kill();
                panic!("{name} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs a process: a crash, not a shutdown.
    pub fn kill(&mut self, name: &str) {
        let (_, child) = self
            .processes
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The planned process, to change its flags before a [`TestMesh::restart`].
    pub fn spec_mut(&mut self, name: &str) -> &mut meshctl::demo::ProcessSpec {
        self.plan
            .processes
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name} in the plan"))
    }

    fn spec(&self, name: &str) -> &meshctl::demo::ProcessSpec {
        self.plan
            .process(name)
            .unwrap_or_else(|| panic!("no process {name} in the plan"))
    }

    /// Names of the plan's proxies (sidecars and gateway).
    pub fn proxies(&self) -> Vec<String> {
        self.plan
            .processes
            .iter()
            .filter(|p| matches!(p.role, Role::Sidecar | Role::Gateway))
            .map(|p| p.name.clone())
            .collect()
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            if let Some(child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for (name, _) in &self.processes {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("----- {name} (last {} lines) -----", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A unary gRPC call made by hand over HTTP/2, with no client-side
/// deadline or retry of its own: what the proxy answers is what comes back.
/// Returns the response headers and, if any, the trailers.
pub async fn raw_unary(
    addr: SocketAddr,
    path: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (http::HeaderMap, Option<http::HeaderMap>) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    (parts.headers, collected.trailers().cloned())
}

/// A channel to a listener of the mesh (gateway, outbound, inbound).
pub async fn channel(uri: String) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(uri.clone())
        .expect("uri")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {uri}: {e}"))
}

/// The catalog's first product (in SKU order), read through `channel`.
pub async fn first_product(
    channel: &tonic::transport::Channel,
) -> mesh::proto::shop::catalog::v1::Product {
    use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
    use mesh::proto::shop::catalog::v1::ListProductsRequest;
    CatalogServiceClient::new(channel.clone())
        .list_products(ListProductsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("ListProducts")
        .into_inner()
        .products
        .pop()
        .expect("the catalog has products")
}

/// Runs a future to completion on a runtime of its own (the harness is
/// synchronous and may be called from inside a test's runtime).
pub fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("runtime thread")
}

/// True if `program` is on PATH. Under `CI=true` a missing tool fails the
/// test instead: CI must have every tool.
pub fn have_tool(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()));
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is not on PATH, and CI must have it"
        );
        eprintln!("skipping: {program} is not on PATH");
    }
    found
}

/// The grpcurl binary, or `None` to skip locally. Under `CI=true` a missing
/// grpcurl fails the test: CI must have every tool.
pub fn grpcurl() -> Option<PathBuf> {
    have_tool("grpcurl").then(|| PathBuf::from("grpcurl"))
}

/// Runs grpcurl with `args`; `(success, stdout, stderr)`.
pub fn run_grpcurl(grpcurl: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl)
        .args(["-max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One replica, one instance of each of `services` (`<service>-1`) and a
/// gateway, with identities: the smallest secure mesh a test needs.
pub fn secure_services(services: &[&str]) -> Topology {
    Topology {
        services: services
            .iter()
            .map(|s| {
                (
                    (*s).to_owned(),
                    vec![meshctl::demo::InstanceSpec::new(format!("{s}-1"))],
                )
            })
            .collect(),
        gateway: Some("127.0.0.1:0".parse().expect("address")),
        control_plane: Some(meshctl::demo::ControlPlaneSpec {
            replicas: 1,
            ..meshctl::demo::ControlPlaneSpec::default()
        }),
        ..Topology::default()
    }
}

/// [`secure_services`] with catalog alone: every hop of a call.
pub fn secure_catalog() -> Topology {
    secure_services(&["catalog"])
}

impl TestMesh {
    /// Makes an operator `name` with `role` (`admin` or `viewer`) from the
    /// mesh's CA, as a person would with meshctl; returns its meshctl
    /// config, for [`TestMesh::meshctl_as`].
    pub fn issue_operator(&self, name: &str, role: &str) -> PathBuf {
        let identity = self.plan.identity.clone().expect("a mesh with identities");
        let out = self.dir().join("operators");
        let (ok, _, stderr) = self.meshctl(
            &[
                "identity",
                "issue-operator",
                name,
                "--role",
                role,
                "--ca-dir",
                &identity.ca_dir().display().to_string(),
                "--out",
                &out.display().to_string(),
            ],
            None,
        );
        assert!(ok, "meshctl identity issue-operator: {stderr}");
        out.join(format!("{name}.meshconfig"))
    }
}

/// A channel to control-plane replica `uri` as the mesh's admin operator
/// (mTLS with the operator's certificate when the mesh runs with
/// identities); lazy, so call it inside a runtime.
pub fn admin_channel(
    uri: &str,
    identity: Option<&meshctl::demo::IdentityLayout>,
) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned()).expect("uri");
    match identity {
        None => endpoint.connect_lazy(),
        Some(identity) => {
            endpoint.connect_with_connector_lazy(mesh::identity::transport::Connector::new(
                identity.operator_tls().expect("the operator's credential"),
                mesh::identity::SpiffeId::new(
                    &identity.trust_domain,
                    mesh::identity::Workload::ControlPlane,
                )
                .expect("control-plane identity"),
            ))
        }
    }
}

impl TestMesh {
    /// TLS holding a fresh certificate for `service`, got as its sidecar
    /// gets one: a join token (made with meshctl) and a CSR traded at the
    /// control plane. For tests that call a sidecar's inbound port
    /// directly, as a peer of the mesh.
    pub fn workload_tls(&self, service: &str) -> std::sync::Arc<mesh::identity::MeshTls> {
        use mesh::identity::{
            csr, ClientAuth, Credential, MeshTls, SpiffeId, TrustBundle, Workload,
        };
        let identity = self.plan.identity.clone().expect("a mesh with identities");
        let (ok, token, stderr) = self.meshctl(&["token", "create", "--service", service], None);
        assert!(ok, "meshctl token create: {stderr}");
        let pem = std::fs::read_to_string(identity.bundle()).expect("bundle");
        let tls = std::sync::Arc::new(
            MeshTls::new(
                &identity.trust_domain,
                TrustBundle::from_pem(&pem, 0).expect("bundle"),
                ClientAuth::Required,
            )
            .expect("TLS"),
        );
        let uri = self.plan.control_planes[0].clone();
        let control_plane =
            SpiffeId::new(&identity.trust_domain, Workload::ControlPlane).expect("id");
        let credential = block_on({
            let tls = tls.clone();
            let token = token.trim().to_owned();
            async move {
                let channel = mesh::identity::transport::channel(
                    &uri,
                    tls,
                    control_plane,
                    Duration::from_secs(10),
                )
                .await
                .expect("TLS to the control plane");
                let request = csr::generate().expect("CSR");
                let response = mesh::proto::mesh::v1::identity_client::IdentityClient::new(channel)
                    .certify(mesh::proto::mesh::v1::CertifyRequest {
                        token,
                        csr_der: request.csr_der,
                    })
                    .await
                    .expect("Certify")
                    .into_inner();
                let chain = response.chain_der.into_iter().map(Into::into).collect();
                Credential::new(chain, request.key).expect("credential")
            }
        });
        tls.set_credential(credential);
        tls
    }
}

/// A channel to a sidecar's inbound `addr` over mTLS with `tls`, which must
/// find `service`'s identity there.
pub async fn mtls_channel(
    addr: SocketAddr,
    tls: std::sync::Arc<mesh::identity::MeshTls>,
    service: &str,
) -> tonic::transport::Channel {
    let peer = mesh::identity::SpiffeId::service(tls.trust_domain(), service).expect("id");
    mesh::identity::transport::channel(
        &format!("http://{addr}"),
        tls,
        peer,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("mTLS to {addr}: {e}"))
}

/// Calls to catalog's `ListProducts` through a gateway, one every 20 ms,
/// on a thread of their own until stopped (or 10,000 calls, or 3 minutes:
/// every load loop is bounded). Failures are not counted: tests that need
/// them count their own.
pub struct CatalogLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CatalogLoad {
    /// Starts calling catalog through the gateway at `gateway`.
    pub fn start(gateway: String) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                block_on(async move {
                    use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
                    use mesh::proto::shop::catalog::v1::ListProductsRequest;
                    let mut client = CatalogServiceClient::new(channel(gateway).await);
                    let started = Instant::now();
                    let mut calls = 0;
                    while !stop.load(Ordering::Relaxed)
                        && calls < 10_000
                        && started.elapsed() < Duration::from_secs(180)
                    {
                        let _ = client
                            .list_products(ListProductsRequest {
                                page_size: 1,
                                page_token: String::new(),
                            })
                            .await;
                        calls += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CatalogLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
