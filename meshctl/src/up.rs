//! `meshctl up`: start the demo shop (apps, their sidecars, a gateway) on
//! loopback, wait until every proxy is ready, say how to use it, and stop
//! everything cleanly on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::demo::{
    admin_call, apply_documents, ControlPlaneSpec, Plan, PortAllocator, ProcessSpec, Role, Topology,
};
use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Options of `meshctl up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the gateway listens for grpcurl and other clients.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: SocketAddr,
    /// Directory holding the mesh binaries (sidecar, catalog, ...); defaults
    /// to meshctl's own directory.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Directory for the bootstrap table and the processes' logs; defaults to
    /// a new directory under the system temp dir.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// The first control-plane replica's port (the second takes the next):
    /// where meshctl's other commands look by default.
    #[arg(long, default_value_t = 15010)]
    pub control_plane_port: u16,
    /// Seconds to wait for every proxy to be ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// OTLP/gRPC collector every process of the mesh sends its traces to,
    /// e.g. a local Jaeger's `http://127.0.0.1:4317`. Without it (and
    /// without `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing is traced.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Run without mTLS and identities: every hop plaintext, anyone on the
    /// machine can register as any service or change routes.
    #[arg(long)]
    pub insecure: bool,
}

struct Running {
    spec: ProcessSpec,
    child: Child,
    exited: bool,
}

/// Runs the demo mesh until `shutdown` fires or a process dies.
pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let bin_dir = match args.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("cannot find meshctl's own path")?
            .parent()
            .context("meshctl has no parent directory")?
            .to_owned(),
    };
    let run_dir = match args.run_dir.clone() {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("meshctl-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(run_dir.join("logs"))
        .with_context(|| format!("cannot create {}", run_dir.display()))?;

    let bootstrap_path = run_dir.join("bootstrap.yaml");
    let etcd_found = on_path("etcd");
    if !etcd_found {
        eprintln!(
            "meshctl: no etcd binary on PATH: running one control-plane replica on an in-memory store \
             (install etcd, e.g. Debian's etcd-server, for two replicas sharing etcd)"
        );
    }
    let mut topology = Topology::shop(args.gateway);
    topology.control_plane = Some(ControlPlaneSpec {
        replicas: 2,
        etcd: etcd_found,
        first_port: Some(args.control_plane_port),
        ..ControlPlaneSpec::default()
    });
    topology.otlp_endpoint = args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty());
    topology.insecure = args.insecure;
    let plan = {
        // The allocator holds its probe ports until dropped: drop it before
        // the processes need them.
        let mut ports = PortAllocator::new(std::process::id());
        topology.plan(&mut || ports.next_port(), &bootstrap_path)
    };
    for spec in plan.processes.iter().filter(|p| p.role != Role::Etcd) {
        let path = bin_dir.join(&spec.program);
        if !path.is_file() {
            bail!(
                "{} not found: build the mesh first (cargo build --workspace), or pass --bin-dir",
                path.display()
            );
        }
    }
    std::fs::write(&bootstrap_path, serde_yaml_ng::to_string(&plan.bootstrap)?)
        .with_context(|| format!("cannot write {}", bootstrap_path.display()))?;

    if let Some(identity) = &plan.identity {
        for step in identity.before_start() {
            meshctl(&step, identity).await?;
        }
        user_config(identity);
    }
    let mut running = Vec::new();
    let started = start_all(&plan, &bin_dir, &run_dir, &mut running, &args, &shutdown).await;
    if let Err(error) = started {
        stop_all(&mut running).await;
        return Err(error);
    }
    print_welcome(&plan, &run_dir, topology.otlp_endpoint.as_deref());

    // A process that dies (a drill's SIGKILL, a crash) is reported and the
    // rest keeps running, as a mesh does; Ctrl-C stops everything.
    while running.iter().any(|r| !r.exited) {
        tokio::select! {
            () = shutdown.cancelled() => break,
            (name, status) = first_exit(&mut running) => {
                eprintln!(
                    "meshctl: {name} exited ({status}); the rest keeps running (log: {})",
                    run_dir.join("logs").join(format!("{name}.log")).display()
                );
            }
        }
    }
    eprintln!("meshctl: stopping the mesh");
    stop_all(&mut running).await;
    eprintln!(
        "meshctl: stopped; logs are in {}",
        run_dir.join("logs").display()
    );
    Ok(())
}

async fn start_all(
    plan: &Plan,
    bin_dir: &Path,
    run_dir: &Path,
    running: &mut Vec<Running>,
    args: &UpArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for spec in &plan.processes {
        let log_path = run_dir.join("logs").join(format!("{}.log", spec.name));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let program = match spec.role {
            Role::Etcd => PathBuf::from(&spec.program),
            _ => bin_dir.join(&spec.program),
        };
        let child = Command::new(program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.name))?;
        running.push(Running {
            spec: spec.clone(),
            child,
            exited: false,
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ready_timeout);
    let mut tokens_made = plan.identity.is_none();
    let waited: Vec<&ProcessSpec> = plan
        .processes
        .iter()
        .filter(|p| p.admin.is_some())
        .collect();
    let began = std::time::Instant::now();
    eprintln!(
        "meshctl up: started {} processes; waiting for {} to be ready",
        plan.processes.len(),
        waited.len()
    );
    for (i, spec) in waited.iter().enumerate() {
        // Proxies wait for their token files: make them once a replica
        // answers (tokens are made through it).
        if !tokens_made && matches!(spec.role, Role::Sidecar | Role::Gateway) {
            if let Some(identity) = &plan.identity {
                for step in identity.once_control_plane_ready() {
                    meshctl(&step, identity).await?;
                }
            }
            tokens_made = true;
        }
        wait_ready(spec, running, deadline, shutdown, run_dir).await?;
        eprintln!(
            "meshctl up: [{}/{}] {} ready ({:.1} s)",
            i + 1,
            waited.len(),
            spec.name,
            began.elapsed().as_secs_f64()
        );
    }
    if let Some(control_plane) = plan.control_planes.first() {
        eprintln!("meshctl up: applying the shop's routes and policies");
        let revision = apply_documents(control_plane, &plan.bootstrap, plan.identity.as_ref())
            .await
            .map_err(|s| {
                anyhow::anyhow!("applying the shop's routes and policies: {}", s.message())
            })?;
        eprintln!("meshctl up: waiting until every proxy is in step with them");
        wait_tables(plan, revision, deadline).await?;
        eprintln!(
            "meshctl up: every proxy in step ({:.1} s)",
            began.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The first line of a `~/.mesh/config` that `meshctl up` wrote: only such
/// a file is replaced, never one a person made.
const WRITTEN_BY_UP: &str = "# written by meshctl up: replaced by the next meshctl up";

/// Points `~/.mesh/config` at this mesh's admin operator, so meshctl works
/// without `MESHCONFIG` (as kind and minikube write kubeconfig).
fn user_config(identity: &crate::demo::IdentityLayout) {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let path = Path::new(&home).join(".mesh").join("config");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if !existing.starts_with(WRITTEN_BY_UP) {
            eprintln!(
                "meshctl: {} is yours, left alone: use MESHCONFIG (below)",
                path.display()
            );
            return;
        }
    }
    let written = std::fs::read_to_string(identity.meshconfig()).and_then(|config| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, format!("{WRITTEN_BY_UP}\n{config}"))
    });
    if let Err(error) = written {
        eprintln!("meshctl: cannot write {}: {error}", path.display());
    }
}

/// Runs this meshctl with `args` as the mesh's admin operator.
async fn meshctl(args: &[String], identity: &crate::demo::IdentityLayout) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find meshctl's own path")?;
    let out = Command::new(exe)
        .args(args)
        .env("MESHCONFIG", identity.meshconfig())
        .env_remove("MESHCTL_CONTROL_PLANE")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run meshctl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "meshctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until every proxy runs a table at least as new as `revision`.
async fn wait_tables(
    plan: &Plan,
    revision: i64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let replicas: Vec<_> = plan
        .processes
        .iter()
        .filter(|p| p.role == Role::ControlPlane)
        .filter_map(|p| p.admin)
        .collect();
    let proxies: Vec<_> = plan
        .processes
        .iter()
        .filter(|p| matches!(p.role, Role::Sidecar | Role::Gateway))
        .filter_map(|p| Some((p.name.as_str(), p.admin?.to_string())))
        .collect();
    loop {
        let synced = crate::demo::synced_revisions(&replicas).await;
        let behind: Vec<&str> = proxies
            .iter()
            .filter(|(_, admin)| synced.get(admin).is_none_or(|r| *r < revision))
            .map(|(name, _)| *name)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not in step with the routes in time: {}", behind.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

async fn wait_ready(
    spec: &ProcessSpec,
    running: &mut [Running],
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
    run_dir: &Path,
) -> anyhow::Result<()> {
    let Some(admin) = spec.admin else {
        return Ok(());
    };
    loop {
        for r in running.iter_mut() {
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); its log: {}",
                    r.spec.name,
                    run_dir
                        .join("logs")
                        .join(format!("{}.log", r.spec.name))
                        .display()
                );
            }
        }
        let path = spec.ready_path;
        let ready = admin_call(admin, http::Method::GET, path)
            .await
            .is_ok_and(|(status, _)| status == 200);
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} not ready in time (GET http://{admin}{})",
                spec.name,
                spec.ready_path
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => bail!("interrupted during start-up"),
        }
    }
}

/// Waits for the first of the running processes to exit and marks it.
async fn first_exit(running: &mut [Running]) -> (String, std::process::ExitStatus) {
    let waits = running.iter_mut().filter(|r| !r.exited).map(|r| {
        Box::pin(async move {
            let status = r.child.wait().await;
            r.exited = true;
            (r.spec.name.clone(), status)
        })
    });
    let ((name, status), _, _) = futures_util::future::select_all(waits).await;
    match status {
        Ok(status) => (name, status),
        Err(_) => (name, std::process::ExitStatus::default()),
    }
}

/// SIGTERM in reverse start order (gateway first, apps last), so nothing
/// sends calls to a process that is already gone; SIGKILL what has not
/// exited after its grace period.
async fn stop_all(running: &mut [Running]) {
    for r in running.iter().rev() {
        if let Some(pid) = r.child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for r in running.iter_mut().rev() {
        if tokio::time::timeout(Duration::from_secs(15), r.child.wait())
            .await
            .is_err()
        {
            eprintln!("meshctl: {} did not stop in time; killing it", r.spec.name);
            let _ = r.child.kill().await;
        }
    }
}

fn print_welcome(plan: &Plan, run_dir: &Path, otlp_endpoint: Option<&str>) {
    let gateway = plan.gateway().map(|g| g.to_string()).unwrap_or_default();
    println!("mesh is up. Every call goes client -> gateway -> sidecar -> app, and app -> sidecar -> sidecar -> app.\n");
    println!(
        "  {:<22} {:<10} {:<22} {:<22}",
        "process", "role", "serves", "admin"
    );
    for p in &plan.processes {
        let role = match p.role {
            Role::App => "app",
            Role::Etcd => "etcd",
            Role::ControlPlane => "control",
            Role::Sidecar => "sidecar",
            Role::Gateway => "gateway",
        };
        let admin = p.admin.map(|a| format!("http://{a}")).unwrap_or_default();
        println!(
            "  {:<22} {:<10} {:<22} {:<22}",
            p.name, role, p.serving, admin
        );
    }
    match &plan.identity {
        Some(identity) => println!(
            "\nEvery hop between mesh processes is mutual TLS (trust domain {}); meshctl is the admin operator with:\n  export MESHCONFIG={}",
            identity.trust_domain,
            identity.meshconfig().display()
        ),
        None => println!("\nmTLS is OFF (--insecure): meshctl needs --insecure too."),
    }
    println!("\nTry:");
    println!("  meshctl get routes");
    println!("  meshctl get endpoints");
    println!("  meshctl status");
    println!("  meshctl stat            # success, calls/s, latency per service");
    println!("  meshctl top             # the busiest methods, live (q quits)");
    println!("  meshctl dashboard       # the service graph: http://127.0.0.1:9990/");
    println!("  meshctl describe route catalog");
    println!("  grpcurl -plaintext {gateway} list");
    println!("  grpcurl -plaintext {gateway} describe shop.orders.v1.OrdersService");
    if plan.identity.is_some() {
        // Logins: orders places the order for the token's subject.
        println!(
            "  grpcurl -plaintext -d '{{\"email\":\"ann@example.com\",\"password\":\"correct horse battery\"}}' {gateway} shop.users.v1.UsersService/Register"
        );
        println!(
            "  TOKEN=$(grpcurl -plaintext -d '{{\"email\":\"ann@example.com\",\"password\":\"correct horse battery\"}}' {gateway} shop.users.v1.UsersService/Login | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"accessToken\"])')"
        );
        println!(
            "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"request_id\":\"r1\",\"lines\":[{{\"sku\":\"sku-espresso-beans\",\"quantity\":2}}]}}' {gateway} shop.orders.v1.OrdersService/PlaceOrder"
        );
        println!("  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"order_id\":\"<orderId from above>\"}}' {gateway} shop.orders.v1.OrdersService/WatchOrder");
        println!(
            "  ({} is an admin once registered: its token may change the catalog and ask for x-mesh-debug: 1)",
            crate::demo::DEMO_ADMIN_EMAIL
        );
    } else {
        // No identities, so no logins: the customer is the body's.
        println!(
            "  grpcurl -plaintext -d '{{\"request_id\":\"r1\",\"customer_id\":\"alice\",\"lines\":[{{\"sku\":\"sku-espresso-beans\",\"quantity\":2}}]}}' {gateway} shop.orders.v1.OrdersService/PlaceOrder"
        );
        println!("  grpcurl -plaintext -d '{{\"order_id\":\"<orderId from above>\"}}' {gateway} shop.orders.v1.OrdersService/WatchOrder");
    }
    println!("  grpcurl -plaintext -v -d '{{\"sku\":\"sku-espresso-beans\"}}' {gateway} shop.catalog.v1.CatalogService/GetProduct   # x-served-by alternates");
    match otlp_endpoint {
        Some(endpoint) => println!(
            "\nTraces go to {endpoint}; in Jaeger (http://localhost:16686) pick service `orders`, operation `shop.orders.v1.OrdersService/PlaceOrder`."
        ),
        None => println!("\nNo traces: pass --otlp-endpoint http://127.0.0.1:4317 with a Jaeger running to see them."),
    }
    println!(
        "\nLogs: {}   Table: {}",
        run_dir.join("logs").display(),
        run_dir.join("bootstrap.yaml").display()
    );
    println!("Ctrl-C stops everything.");
}
