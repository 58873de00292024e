//! The data-path benchmark: rounds of every topology, interleaved
//! (direct, mesh, mesh-mtls, envoy, envoy-mtls, nginx, direct, ...) because these machines
//! are noisy, each topology started fresh, measured, and stopped.
//!
//! In each run: idle RSS of the proxies; open-loop latency of every case;
//! closed-loop throughput of every case (with the proxies' CPU time); peak
//! RSS after all that load.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use meshctl::demo::PortAllocator;

use crate::client::Call;
use crate::load::{self, ClosedLoop, OpenLoop};
use crate::proc_stats;
use crate::process::Programs;
use crate::report::{self, Measurement};
use crate::topology::{self, Kind};

/// Flags of the data-path benchmark (`bench` without a subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct DatapathArgs {
    /// Rounds; each runs every topology once, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Topologies to run (envoy and nginx are skipped when not found).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [
            Kind::Direct,
            Kind::Mesh,
            Kind::MeshMtls,
            Kind::Envoy,
            Kind::EnvoyMtls,
            Kind::Nginx
        ]
    )]
    pub topologies: Vec<Kind>,
    /// Throughput: HTTP/2 connections from the client.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Throughput: concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Throughput: seconds measured per case.
    #[arg(long, default_value_t = 2.0)]
    pub throughput_seconds: f64,
    /// Latency: calls per second, evenly spaced.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Latency: seconds measured per case.
    #[arg(long, default_value_t = 3.0)]
    pub latency_seconds: f64,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_seconds: f64,
    /// Replies per server-streaming call.
    #[arg(long, default_value_t = 10)]
    pub stream_replies: u32,
    /// Directory with the `sidecar` and `control-plane` binaries (default:
    /// beside this executable, built first when run by `cargo run`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The Envoy binary (default: `envoy` on PATH).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on PATH).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Do not build the mesh's binaries first.
    #[arg(long)]
    pub no_build: bool,
}

impl DatapathArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!((1..=20).contains(&self.rounds), "--rounds: 1 to 20");
        ensure!(
            (1..=256).contains(&self.connections),
            "--connections: 1 to 256"
        );
        ensure!((1..=256).contains(&self.streams), "--streams: 1 to 256");
        for (flag, seconds) in [
            ("--throughput-seconds", self.throughput_seconds),
            ("--latency-seconds", self.latency_seconds),
        ] {
            ensure!((0.1..=600.0).contains(&seconds), "{flag}: 0.1 to 600");
        }
        ensure!(
            (0.0..=60.0).contains(&self.warmup_seconds),
            "--warmup-seconds: 0 to 60"
        );
        ensure!(
            (1.0..=100_000.0).contains(&self.rate),
            "--rate: 1 to 100000"
        );
        ensure!(
            (1..=crate::echo::MAX_STREAM_REPLIES).contains(&self.stream_replies),
            "--stream-replies: 1 to {}",
            crate::echo::MAX_STREAM_REPLIES
        );
        Ok(())
    }

    fn closed_loop(&self) -> ClosedLoop {
        ClosedLoop {
            connections: self.connections,
            streams: self.streams,
            warmup: Duration::from_secs_f64(self.warmup_seconds),
            duration: Duration::from_secs_f64(self.throughput_seconds),
        }
    }

    fn open_loop(&self) -> OpenLoop {
        OpenLoop {
            rate: self.rate,
            warmup: Duration::from_secs_f64(self.warmup_seconds),
            duration: Duration::from_secs_f64(self.latency_seconds),
            connections: self.connections,
        }
    }
}

/// One workload: a unary call with a payload, or a server stream.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name in the table.
    pub name: String,
    /// Payload bytes per message.
    pub payload: usize,
    /// Replies per call, for a server stream.
    pub replies: Option<u32>,
}

impl Case {
    fn call(&self, target: std::net::SocketAddr) -> anyhow::Result<Call> {
        match self.replies {
            None => Call::unary(target, self.payload),
            Some(count) => Call::stream(target, self.payload, count),
        }
    }
}

/// Unary 16 B (the headline), unary 1 KiB, and a server stream.
pub fn cases(stream_replies: u32) -> Vec<Case> {
    vec![
        Case {
            name: "unary 16 B".into(),
            payload: 16,
            replies: None,
        },
        Case {
            name: "unary 1 KiB".into(),
            payload: 1024,
            replies: None,
        },
        Case {
            name: format!("stream {stream_replies} x 16 B"),
            payload: 16,
            replies: Some(stream_replies),
        },
    ]
}

/// Runs the data-path benchmark and prints its table.
pub async fn run(args: DatapathArgs) -> anyhow::Result<()> {
    args.validate()?;
    if !args.no_build && args.bin_dir.is_none() {
        build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), args.envoy.clone(), args.nginx.clone())?;
    let mut kinds = args.topologies.clone();
    kinds.sort();
    kinds.dedup();
    let mut skipped = Vec::new();
    kinds.retain(|kind| {
        let found = match kind {
            Kind::Envoy | Kind::EnvoyMtls => programs.envoy.is_some(),
            Kind::Nginx => programs.nginx.is_some(),
            Kind::Direct | Kind::Mesh | Kind::MeshMtls => true,
        };
        if !found {
            skipped.push(format!("{}: not found on PATH", kind.name()));
        }
        found
    });
    for note in &skipped {
        eprintln!("skipping {note}");
    }
    let cases = cases(args.stream_replies);
    let ticks = proc_stats::ticks_per_second();
    let machine_before = proc_stats::MachineSample::now();
    let mut measurements = Vec::new();
    let mut seed = std::process::id();
    for round in 1..=args.rounds {
        for &kind in &kinds {
            seed = seed.wrapping_add(1);
            let mut ports = PortAllocator::new(seed);
            eprintln!("round {round}/{}: {}", args.rounds, kind.name());
            let measurement = measure(kind, &programs, &mut ports, &args, &cases, ticks)
                .await
                .with_context(|| format!("round {round}, {}", kind.name()))?;
            measurements.push(measurement);
        }
    }
    let machine_load = proc_stats::MachineSample::now().since(&machine_before);
    let setup = report::Setup::describe(&args, &programs, &kinds, &skipped, machine_load);
    println!("{}", report::render(&setup, &cases, &kinds, &measurements));
    println!("{}", report::configurations()?);
    Ok(())
}

async fn measure(
    kind: Kind,
    programs: &Programs,
    ports: &mut PortAllocator,
    args: &DatapathArgs,
    cases: &[Case],
    ticks: u64,
) -> anyhow::Result<Measurement> {
    let mut running =
        topology::start(kind, programs, ports, topology::MeshRoute::default()).await?;
    let pids: Vec<u32> = running.proxies.iter().map(|(_, pid)| *pid).collect();
    // Let start-up work (first pushes, connection set-up) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_kib = pids.iter().map(|&p| proc_stats::rss_kib(p)).collect();
    let mut measurement = Measurement {
        kind,
        throughput: Vec::new(),
        latency: Vec::new(),
        idle_rss_kib,
        peak_rss_kib: Vec::new(),
    };
    for case in cases {
        let call = case.call(running.target)?;
        let latencies = load::open_loop(running.target, &call, args.open_loop()).await?;
        running.check_alive()?;
        eprintln!(
            "  {:<16} {} calls/s: p50 {:.3} ms, p99 {:.3} ms, {} errors \
             (the generator's own lag: p50 {:.3} ms, p99 {:.3} ms)",
            case.name,
            args.rate,
            ms(latencies.quantile(0.5)),
            ms(latencies.quantile(0.99)),
            latencies.errors,
            ms(load::quantile(&latencies.dispatch_lag, 0.5)),
            ms(load::quantile(&latencies.dispatch_lag, 0.99)),
        );
        measurement.latency.push(latencies);
    }
    let cpu = move || proc_stats::cpu_time(&pids, ticks);
    for case in cases {
        let call = case.call(running.target)?;
        let throughput = load::closed_loop(running.target, &call, args.closed_loop(), &cpu).await?;
        running.check_alive()?;
        eprintln!(
            "  {:<16} max {:.0} calls/s, proxy CPU {:.0} ms per 1,000, {} errors{}",
            case.name,
            throughput.per_second(),
            throughput.cpu_ms_per_1000(),
            throughput.errors,
            throughput
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        measurement.throughput.push(throughput);
    }
    measurement.peak_rss_kib = running
        .proxies
        .iter()
        .map(|&(_, pid)| proc_stats::peak_rss_kib(pid))
        .collect();
    Ok(measurement)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Under `cargo run`, builds the sidecar and the control plane in this
/// executable's profile first, so the benchmark never measures stale
/// binaries. (cargo has released its lock by the time `cargo run` runs us.)
pub async fn build_mesh_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("path of this executable")?;
    let release = exe
        .parent()
        .and_then(|dir| dir.file_name())
        .is_some_and(|name| name == "release");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace directory")?;
    let mut build = tokio::process::Command::new(cargo);
    build
        .args(["build", "-p", "sidecar", "-p", "control-plane"])
        .current_dir(workspace)
        .kill_on_drop(true);
    if release {
        build.arg("--release");
    }
    eprintln!(
        "building the sidecar and the control plane (cargo build{})",
        if release { " --release" } else { "" }
    );
    let status = build.status().await.context("run cargo build")?;
    ensure!(
        status.success(),
        "cargo build of the sidecar and the control plane failed"
    );
    if !release {
        eprintln!("warning: a debug build measures nothing useful; run with `cargo run --release -p bench`");
    }
    Ok(())
}
