//! Control-plane fan-out: N simulated sidecars on one control-plane replica
//! backed by a real etcd. Each is a discovery stream of its own connection
//! that says Hello (registering a unique endpoint, as a sidecar does),
//! ACKs every snapshot and notes when it arrived. Once the registrations
//! have settled, one route changes; the figure is the time from the change
//! until each subscriber holds a snapshot of at least the new revision, and
//! the replica's RSS growth per connected subscriber.
//!
//! A simulated sidecar decodes only a snapshot's version (a message of its
//! own with field 1 alone: protobuf skips the rest), so the benchmark's own
//! process stays light beside the control plane it measures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use mesh::model::Route;
use mesh::proto::mesh::v1::sidecar_message::Message as SidecarPayload;
use mesh::proto::mesh::v1::{Ack, Hello, Node, SidecarMessage};
use meshctl::demo::{ControlPlaneSpec, PortAllocator, Role, Topology};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::load::quantile;
use crate::proc_stats;
use crate::process::{ProcessGroup, Programs};

/// How long all subscribers may take to connect and get a first table: at
/// least this, and [`CONNECT_TIME_PER_SUBSCRIBER`] each (every registration
/// is a table change pushed to everyone connected: the storm grows with
/// the square of the fleet).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(180);
/// See [`CONNECT_TIMEOUT`].
const CONNECT_TIME_PER_SUBSCRIBER: Duration = Duration::from_millis(60);
/// How long registrations may take to stop causing pushes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time without any push that counts as settled.
const QUIET: Duration = Duration::from_secs(1);
/// How long the measured route change may take to reach everyone.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Snapshot arrivals a subscriber remembers (the latest).
const ARRIVALS_KEPT: usize = 64;
/// How long etcd's request counters are watched with the fleet connected
/// and nothing changing.
const AT_REST: Duration = Duration::from_secs(10);
/// Longer than the replica's interval between writes of version changes.
const STATUS_FLUSHED: Duration = Duration::from_secs(7);

/// Flags of `bench cp-scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct CpScaleArgs {
    /// Simulated sidecars per run, comma-separated; each count is a fresh
    /// etcd and control-plane replica.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    subscribers: Vec<usize>,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Directory with the `control-plane` binary (default: beside this
    /// executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not build the mesh's binaries first.
    #[arg(long)]
    no_build: bool,
}

/// A version-only view of `mesh.v1.TableSnapshot`.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotVersion {
    #[prost(uint64, tag = "1")]
    version: u64,
}

/// What one simulated sidecar saw.
#[derive(Default)]
struct Arrivals {
    /// (when, version) of the latest snapshots, oldest first.
    snapshots: Mutex<Vec<(Instant, u64)>>,
}

impl Arrivals {
    fn record(&self, version: u64) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if snapshots.len() == ARRIVALS_KEPT {
            snapshots.remove(0);
        }
        snapshots.push((Instant::now(), version));
    }

    fn any(&self) -> bool {
        !self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// When the first snapshot of at least `version` arrived.
    fn reached(&self, version: u64) -> Option<Instant> {
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, v)| *v >= version)
            .map(|(at, _)| *at)
    }
}

/// The figures of one subscriber count.
struct ScaleResult {
    subscribers: usize,
    connected_by_cp: Option<u64>,
    connect_time: Duration,
    latencies: Vec<Duration>,
    missed: usize,
    failed_streams: usize,
    idle_rss_kib: u64,
    connected_rss_kib: u64,
    /// etcd gRPC messages received per second at rest, and how many of
    /// them were lease keep-alives.
    etcd_at_rest: Option<(f64, f64)>,
}

/// Runs the fan-out benchmark for every subscriber count and prints a table.
pub async fn run(args: CpScaleArgs) -> anyhow::Result<()> {
    ensure!(
        !args.subscribers.is_empty(),
        "--subscribers: at least one count"
    );
    ensure!(
        args.subscribers.iter().all(|n| (1..=20_000).contains(n)),
        "--subscribers: 1 to 20000 each"
    );
    ensure!(
        (1..=1024).contains(&args.connect_concurrency),
        "--connect-concurrency: 1 to 1024"
    );
    if !args.no_build && args.bin_dir.is_none() {
        crate::datapath::build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), None, None)?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut seed = std::process::id();
    for &n in &args.subscribers {
        seed = seed.wrapping_add(1);
        eprintln!("cp-scale: {n} subscribers");
        // One count failing (a timeout at the largest) keeps the others'
        // figures: each is printed as it comes, and the table at the end.
        match measure(
            n,
            args.connect_concurrency,
            &programs,
            &mut PortAllocator::new(seed),
        )
        .await
        {
            Ok(result) => {
                eprintln!("{}", render(std::slice::from_ref(&result)));
                results.push(result);
            }
            Err(error) => {
                eprintln!("cp-scale: {n} subscribers failed: {error:#}");
                failures.push(n);
            }
        }
    }
    println!("{}", render(&results));
    ensure!(
        failures.is_empty(),
        "no figures for {failures:?} subscribers (see above)"
    );
    Ok(())
}

/// The route the benchmark changes.
fn scale_route(timeout: &str) -> anyhow::Result<Route> {
    let mut route = meshctl::demo::route("scale", crate::echo::GRPC_SERVICE, "sim");
    route.spec.timeout = Some(timeout.to_owned());
    route.validate().context("the scale route")?;
    Ok(route)
}

async fn measure(
    n: usize,
    connect_concurrency: usize,
    programs: &Programs,
    ports: &mut PortAllocator,
) -> anyhow::Result<ScaleResult> {
    let mut processes = ProcessGroup::new()?;
    let topology = Topology {
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        // Measured without mTLS for now (the plaintext figures the
        // README compares); the mTLS comparison with Envoy is still to do.
        insecure: true,
        ..Topology::default()
    };
    let plan = topology.plan(
        &mut || ports.next_port(),
        &processes.dir().join("bootstrap.yaml"),
    );
    let mut control_plane = None;
    let mut etcd_admin = None;
    for spec in &plan.processes {
        let program = match spec.role {
            Role::Etcd => programs.etcd()?.to_owned(),
            _ => programs.mesh_binary(&spec.program)?,
        };
        let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
        let pid = processes.spawn(&spec.name, &program, &spec.args, &env)?;
        if let Some(admin) = spec.admin {
            processes
                .wait_ready(&spec.name, admin, spec.ready_path)
                .await?;
        }
        if spec.role == Role::ControlPlane {
            control_plane = Some((pid, spec.admin));
        }
        if spec.role == Role::Etcd {
            etcd_admin = spec.admin;
        }
    }
    let (cp_pid, cp_admin) = control_plane.context("the plan has no control plane")?;
    let uri = plan
        .control_planes
        .first()
        .context("no control-plane URI")?
        .clone();
    meshctl::demo::apply_routes(&uri, &[scale_route("1s")?], None)
        .await
        .context("applying the first route")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = proc_stats::rss_kib(cp_pid);

    let stop = CancellationToken::new();
    // Stop the subscribers whatever happens below.
    let _stop_guard = stop.clone().drop_guard();
    let base = Instant::now();
    let last_push_us = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(Semaphore::new(connect_concurrency));
    let arrivals: Vec<Arc<Arrivals>> = (0..n).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, log) in arrivals.iter().enumerate() {
        tasks.spawn(subscriber(Subscriber {
            uri: uri.clone(),
            index: i,
            log: log.clone(),
            connecting: connecting.clone(),
            stop: stop.clone(),
            base,
            last_push_us: last_push_us.clone(),
            failed: failed.clone(),
        }));
    }

    let connect_timeout = CONNECT_TIMEOUT.max(CONNECT_TIME_PER_SUBSCRIBER * n as u32);
    let started = Instant::now();
    loop {
        processes.check_alive()?;
        if arrivals.iter().all(|a| a.any()) {
            break;
        }
        if failed.load(Ordering::Relaxed) >= n {
            bail!("every subscriber failed");
        }
        if started.elapsed() > connect_timeout {
            let have = arrivals.iter().filter(|a| a.any()).count();
            bail!("only {have} of {n} subscribers had a table after {connect_timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = started.elapsed();
    // Registrations cause pushes to everyone: wait until they stop.
    loop {
        processes.check_alive()?;
        let last = Duration::from_micros(last_push_us.load(Ordering::Relaxed));
        if base.elapsed().saturating_sub(last) >= QUIET {
            break;
        }
        if started.elapsed() > connect_timeout + SETTLE_TIMEOUT {
            bail!("pushes did not settle within {SETTLE_TIMEOUT:?} of every subscriber connecting");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected_rss_kib = proc_stats::rss_kib(cp_pid);
    let etcd_at_rest = match etcd_admin {
        Some(admin) => etcd_requests_at_rest(admin).await,
        None => None,
    };
    let connected_by_cp = match cp_admin {
        Some(admin) => connected_sidecars(admin).await,
        None => None,
    };

    // The subscribers share the CPUs with the replica: what each side
    // spent on the change tells how much of the figure is the replica's.
    let bench_pid = std::process::id();
    let cpu_before = (
        proc_stats::cpu_ticks(cp_pid),
        proc_stats::cpu_ticks(bench_pid),
    );
    let changed = Instant::now();
    let revision = meshctl::demo::apply_routes(&uri, &[scale_route("2s")?], None)
        .await
        .context("changing the route")?;
    let revision = u64::try_from(revision).context("a negative revision")?;
    loop {
        if arrivals.iter().all(|a| a.reached(revision).is_some()) {
            break;
        }
        if changed.elapsed() > CONVERGE_TIMEOUT {
            break; // reported as missed
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|a| a.reached(revision))
        .map(|at| at.saturating_duration_since(changed))
        .collect();
    latencies.sort_unstable();
    let cpu_ms = |pid: u32, before: u64| {
        proc_stats::cpu_ticks(pid).saturating_sub(before) * 1000
            / proc_stats::ticks_per_second().max(1)
    };
    eprintln!(
        "cp-scale: {n} subscribers: first reached {:.1} ms after the change; CPU until all were reached: control plane {} ms, subscribers {} ms",
        latencies.first().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        cpu_ms(cp_pid, cpu_before.0),
        cpu_ms(bench_pid, cpu_before.1),
    );
    let missed = n - latencies.len();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(ScaleResult {
        subscribers: n,
        connected_by_cp,
        connect_time,
        latencies,
        missed,
        failed_streams: failed.load(Ordering::Relaxed),
        idle_rss_kib,
        connected_rss_kib,
        etcd_at_rest,
    })
}

/// etcd's gRPC messages received per second over [`AT_REST`], all and
/// lease keep-alives only (from its `/metrics`), once the replica has
/// written the last acks of the storm (it writes version changes every
/// 5 s): steady state, nothing changing.
async fn etcd_requests_at_rest(admin: SocketAddr) -> Option<(f64, f64)> {
    tokio::time::sleep(STATUS_FLUSHED).await;
    let before = etcd_messages(admin).await?;
    tokio::time::sleep(AT_REST).await;
    let after = etcd_messages(admin).await?;
    let rate = |a: f64, b: f64| (b - a).max(0.0) / AT_REST.as_secs_f64();
    Some((rate(before.0, after.0), rate(before.1, after.1)))
}

/// `grpc_server_msg_received_total` summed: all methods, and LeaseKeepAlive.
async fn etcd_messages(admin: SocketAddr) -> Option<(f64, f64)> {
    let (_, text) = meshctl::demo::admin_call(admin, http::Method::GET, "/metrics")
        .await
        .ok()?;
    Some(sum_received(&text))
}

/// The sums of `grpc_server_msg_received_total` in a Prometheus text.
fn sum_received(text: &str) -> (f64, f64) {
    let mut all = 0.0;
    let mut keep_alives = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        all += value;
        if rest.contains("grpc_method=\"LeaseKeepAlive\"") {
            keep_alives += value;
        }
    }
    (all, keep_alives)
}

/// `mesh_cp_connected_sidecars` from the replica's `/metrics`.
async fn connected_sidecars(admin: SocketAddr) -> Option<u64> {
    let (_, text) = meshctl::demo::admin_call(admin, http::Method::GET, "/metrics")
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("mesh_cp_connected_sidecars"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

struct Subscriber {
    uri: String,
    index: usize,
    log: Arc<Arrivals>,
    connecting: Arc<Semaphore>,
    stop: CancellationToken,
    base: Instant,
    last_push_us: Arc<AtomicU64>,
    failed: Arc<AtomicUsize>,
}

async fn subscriber(s: Subscriber) {
    let stop = s.stop.clone();
    let failed = s.failed.clone();
    tokio::select! {
        result = subscribe(s) => {
            if result.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        () = stop.cancelled() => {}
    }
}

async fn subscribe(s: Subscriber) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let node = Node {
        service: "sim".into(),
        instance: format!("sim-{}", s.index),
        // A valid address nobody calls: the route's destination has no app.
        address: format!("127.0.0.1:{}", 10_000 + s.index % 50_000),
        version: "v1".into(),
        weight: 1,
        ..Node::default()
    };
    tx.send(SidecarMessage {
        message: Some(SidecarPayload::Hello(Hello {
            node: Some(node),
            current_version: 0,
        })),
    })
    .await?;
    let mut snapshots = {
        // One connection per simulated sidecar, as real sidecars have;
        // connects are rationed so the listener's backlog is not flooded.
        let _permit = s.connecting.acquire().await?;
        let channel = tonic::transport::Endpoint::from_shared(s.uri.clone())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let codec = tonic_prost::ProstCodec::<SidecarMessage, SnapshotVersion>::default();
        grpc.streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static("/mesh.v1.Discovery/Subscribe"),
            codec,
        )
        .await?
        .into_inner()
    };
    // Bounded by the stop token (the caller's select) and by the stream.
    while let Some(snapshot) = snapshots.message().await? {
        s.log.record(snapshot.version);
        s.last_push_us
            .fetch_max(s.base.elapsed().as_micros() as u64, Ordering::Relaxed);
        let ack = SidecarMessage {
            message: Some(SidecarPayload::Ack(Ack {
                version: snapshot.version,
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    bail!("the control plane ended the stream")
}

fn render(results: &[ScaleResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("## control-plane fan-out: one route change\n\n");
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "- date: {date}; {} CPUs; 1 control-plane replica on a single-member etcd, simulated sidecars in this process, all on loopback\n\
         - each subscriber: its own HTTP/2 connection, a Hello registering a unique endpoint, an ACK per snapshot\n\
         - time from the route change (before the apply call) until each subscriber holds a snapshot of at least the new revision\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "| subscribers | connected (cp's count) | all connected in | reached all: p50 | p99 | max | missed | failed streams | cp RSS idle -> connected | per subscriber | etcd msgs/s at rest (keep-alives) |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let growth = r.connected_rss_kib.saturating_sub(r.idle_rss_kib);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} s | {} | {} | {} | {} | {} | {:.1} -> {:.1} MiB | {:.1} KiB | {} |",
            r.subscribers,
            r.connected_by_cp
                .map_or_else(|| "?".to_owned(), |c| c.to_string()),
            r.connect_time.as_secs_f64(),
            ms(quantile(&r.latencies, 0.5)),
            ms(quantile(&r.latencies, 0.99)),
            ms(r.latencies.last().copied().unwrap_or_default()),
            r.missed,
            r.failed_streams,
            r.idle_rss_kib as f64 / 1024.0,
            r.connected_rss_kib as f64 / 1024.0,
            growth as f64 / r.subscribers.max(1) as f64,
            r.etcd_at_rest.map_or_else(
                || "?".to_owned(),
                |(all, keep_alives)| format!("{all:.1} ({keep_alives:.1})")
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_view_reads_a_table_snapshot() {
        use prost::Message;
        let snapshot = mesh::proto::mesh::v1::TableSnapshot {
            version: 42,
            table_json: "{\"endpoints\":[]}".into(),
            ..Default::default()
        };
        let view = SnapshotVersion::decode(snapshot.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(view.version, 42);
    }

    #[test]
    fn arrivals_find_the_first_snapshot_of_a_version() {
        let arrivals = Arrivals::default();
        assert!(!arrivals.any());
        for version in [3, 5, 7] {
            arrivals.record(version);
        }
        let first = arrivals.reached(4).expect("reached");
        assert_eq!(Some(first), arrivals.reached(5));
        assert!(arrivals.reached(8).is_none());
        for version in 0..100 {
            arrivals.record(version);
        }
        assert_eq!(
            arrivals.snapshots.lock().expect("lock").len(),
            ARRIVALS_KEPT
        );
    }

    #[test]
    fn etcd_messages_are_summed_and_keep_alives_told_apart() {
        let text = "# HELP grpc_server_msg_received_total x\n\
            grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 30\n\
            grpc_server_msg_received_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 12\n\
            grpc_server_msg_sent_total{grpc_method=\"Put\"} 99\n";
        assert_eq!(sum_received(text), (42.0, 30.0));
    }

    #[test]
    fn the_scale_routes_differ_only_in_timeout() {
        let a = scale_route("1s").expect("route");
        let b = scale_route("2s").expect("route");
        assert_ne!(a, b);
        assert_eq!(a.metadata, b.metadata);
    }
}
