//! The tail-latency benchmark (`bench tail`): open loop at a fixed rate
//! (2,000 calls/s by default) through the route users actually run (retries
//! and outlier detection on), latency from each call's intended send time,
//! p50 to max, with the topologies interleaved per round (direct, mesh,
//! envoy, nginx, direct, ...). Cases: one connection with 16 B, 1 KiB and
//! 16 KiB bodies, then 4 and 16 connections with 16 B.
//!
//! A stall that hits one call in a few hundred hides in p99 and shows in
//! p99.9 and max: so each case sends thousands of calls per round (10,000
//! at the defaults), and the table gives p99.9 and max of every round's
//! median, not a pooled figure one bad round could make.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use meshctl::demo::PortAllocator;

use crate::client::Call;
use crate::load::{self, Latencies, OpenLoop};
use crate::proc_stats;
use crate::process::Programs;
use crate::report::{self, Cell, Row};
use crate::topology::{self, Kind, MeshRoute};

/// Flags of `bench tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Rounds; each runs every topology once, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Topologies to run (envoy and nginx are skipped when not found).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Kind::Direct, Kind::Mesh, Kind::Envoy, Kind::Nginx]
    )]
    pub topologies: Vec<Kind>,
    /// Calls per second, evenly spaced.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds measured per case.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of load before each measured window (not counted).
    #[arg(long, default_value_t = 0.5)]
    pub warmup_seconds: f64,
    /// Request payloads (bytes) sent on one connection.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 1024, 16384])]
    pub payloads: Vec<usize>,
    /// Connection counts over which 16 B calls are also spread.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 16])]
    pub connections: Vec<usize>,
    /// Also a server stream of this many 16 B replies per call, on one
    /// connection (0: none).
    #[arg(long, default_value_t = 0)]
    pub stream_replies: u32,
    /// Send `grpc-timeout` with every call (e.g. `10S`): the deadline path.
    #[arg(long)]
    pub grpc_timeout: Option<String>,
    /// The mesh route's policies (the default mirrors the peers').
    #[arg(long, value_enum, default_value_t = MeshRoute::Retries)]
    pub mesh_route: MeshRoute,
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

impl TailArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!((1..=20).contains(&self.rounds), "--rounds: 1 to 20");
        ensure!(
            (0.1..=600.0).contains(&self.seconds),
            "--seconds: 0.1 to 600"
        );
        ensure!(
            (0.0..=60.0).contains(&self.warmup_seconds),
            "--warmup-seconds: 0 to 60"
        );
        ensure!(
            (1.0..=100_000.0).contains(&self.rate),
            "--rate: 1 to 100000"
        );
        ensure!(
            self.payloads.iter().all(|p| *p <= 1 << 20),
            "--payloads: at most 1 MiB each"
        );
        ensure!(
            self.connections.iter().all(|c| (1..=256).contains(c)),
            "--connections: 1 to 256 each"
        );
        ensure!(
            self.stream_replies <= crate::echo::MAX_STREAM_REPLIES,
            "--stream-replies: at most {}",
            crate::echo::MAX_STREAM_REPLIES
        );
        Ok(())
    }

    fn cases(&self) -> Vec<TailCase> {
        let mut cases: Vec<TailCase> = self
            .payloads
            .iter()
            .map(|&payload| TailCase {
                payload,
                connections: 1,
                replies: None,
            })
            .collect();
        cases.extend(
            self.connections
                .iter()
                .filter(|&&c| c != 1)
                .map(|&connections| TailCase {
                    payload: 16,
                    connections,
                    replies: None,
                }),
        );
        if self.stream_replies > 0 {
            cases.push(TailCase {
                payload: 16,
                connections: 1,
                replies: Some(self.stream_replies),
            });
        }
        cases
    }
}

/// One workload: calls of `payload` bytes over `connections`, unary or
/// a server stream of `replies`.
#[derive(Debug, Clone, Copy)]
struct TailCase {
    payload: usize,
    connections: usize,
    replies: Option<u32>,
}

impl TailCase {
    fn name(&self) -> String {
        let size = match self.payload {
            p if p >= 1024 && p % 1024 == 0 => format!("{} KiB", p / 1024),
            p => format!("{p} B"),
        };
        let connections = match self.connections {
            1 => "1 connection".to_owned(),
            c => format!("{c} connections"),
        };
        match self.replies {
            None => format!("unary {size}, {connections}"),
            Some(n) => format!("stream {n} x {size}, {connections}"),
        }
    }

    fn call(&self, target: std::net::SocketAddr) -> anyhow::Result<Call> {
        match self.replies {
            None => Call::unary(target, self.payload),
            Some(n) => Call::stream(target, self.payload, n),
        }
    }
}

/// One topology's run of every case.
struct TailRun {
    kind: Kind,
    latency: Vec<Latencies>,
    /// Per case, what [`lone_calls`] said.
    lone: Vec<String>,
}

/// Runs the tail-latency benchmark and prints its table.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    args.validate()?;
    if !args.no_build && args.bin_dir.is_none() {
        crate::datapath::build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), args.envoy.clone(), args.nginx.clone())?;
    let mut kinds = args.topologies.clone();
    kinds.sort();
    kinds.dedup();
    kinds.retain(|kind| {
        let found = match kind {
            Kind::Envoy | Kind::EnvoyMtls => programs.envoy.is_some(),
            Kind::Nginx => programs.nginx.is_some(),
            Kind::Direct | Kind::Mesh | Kind::MeshMtls => true,
        };
        if !found {
            eprintln!("skipping {}: not found on PATH", kind.name());
        }
        found
    });
    let cases = args.cases();
    let loadavg_before = loadavg();
    let machine_before = proc_stats::MachineSample::now();
    let mut runs = Vec::new();
    let mut seed = std::process::id().wrapping_mul(7);
    for round in 1..=args.rounds {
        for &kind in &kinds {
            seed = seed.wrapping_add(1);
            let mut ports = PortAllocator::new(seed);
            eprintln!("round {round}/{}: {}", args.rounds, kind.name());
            let run = measure(kind, &programs, &mut ports, &args, &cases)
                .await
                .with_context(|| format!("round {round}, {}", kind.name()))?;
            runs.push(run);
        }
    }
    let (other, steal) = proc_stats::MachineSample::now().since(&machine_before);
    let mut out = String::from("## mesh tail-latency benchmark\n\n");
    let _ = writeln!(
        out,
        "- open loop, {} calls/s evenly spaced, {} s per case after {} s of warm-up, \
         latency from each call's intended send time; medians of {} rounds, \
         topologies interleaved ({})",
        args.rate,
        args.seconds,
        args.warmup_seconds,
        args.rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        out,
        "- mesh route: {:?} (retries: 2 attempts on unavailable, outlier detection, a 15 s \
         timeout, as the peers are configured: bench/envoy, bench/nginx); weights 3:1; \
         grpc-timeout sent: {}",
        args.mesh_route,
        args.grpc_timeout.as_deref().unwrap_or("no")
    );
    let _ = writeln!(
        out,
        "- loadavg before / after: {loadavg_before} / {}; other processes used {other:.0} % \
         of the machine's CPU meanwhile, steal {steal:.0} %",
        loadavg()
    );
    out.push('\n');
    out.push_str(&render(&cases, &kinds, &runs));
    println!("{out}");
    Ok(())
}

async fn measure(
    kind: Kind,
    programs: &Programs,
    ports: &mut PortAllocator,
    args: &TailArgs,
    cases: &[TailCase],
) -> anyhow::Result<TailRun> {
    let mut running = topology::start(kind, programs, ports, args.mesh_route).await?;
    // Let start-up work (first pushes, connection set-up) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut run = TailRun {
        kind,
        latency: Vec::new(),
        lone: Vec::new(),
    };
    for case in cases {
        let mut call = case.call(running.target)?;
        if let Some(timeout) = &args.grpc_timeout {
            call = call.with_grpc_timeout(timeout)?;
        }
        let shape = OpenLoop {
            rate: args.rate,
            warmup: Duration::from_secs_f64(args.warmup_seconds),
            duration: Duration::from_secs_f64(args.seconds),
            connections: case.connections,
        };
        let latencies = load::open_loop(running.target, &call, shape).await?;
        running.check_alive()?;
        eprintln!(
            "  {:<30} p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, {} errors",
            case.name(),
            ms(latencies.quantile(0.5)),
            ms(latencies.quantile(0.99)),
            ms(latencies.quantile(0.999)),
            ms(latencies.quantile(1.0)),
            latencies.errors,
        );
        let lone = lone_calls(&latencies, args.rate);
        eprintln!("  {:<30} {lone}", "");
        run.lone.push(lone);
        run.latency.push(latencies);
    }
    Ok(run)
}

/// Calls slower than 4 ms and 5x the median whose neighbours in send order
/// were fast: how many, and the spacing between them (a periodic stall of
/// single calls shows as a steady spacing).
fn lone_calls(latencies: &Latencies, rate: f64) -> String {
    let slow = (latencies.quantile(0.5) * 5).max(Duration::from_millis(4));
    let lone = load::lone_slow_calls(&latencies.in_order, slow);
    let mut gaps: Vec<usize> = lone.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    match gaps.get(gaps.len() / 2) {
        Some(&median) => format!(
            "{} lone calls over {:.1} ms (neighbours fast), median spacing {median} calls ({:.0} ms)",
            lone.len(),
            ms(slow),
            median as f64 * 1e3 / rate
        ),
        None => format!("{} lone calls over {:.1} ms", lone.len(), ms(slow)),
    }
}

const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

fn render(cases: &[TailCase], kinds: &[Kind], runs: &[TailRun]) -> String {
    let median_ms = |kind: Kind, i: usize, q: f64| -> Option<f64> {
        report::median(
            runs.iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| r.latency.get(i))
                .map(|l| ms(l.quantile(q)))
                .collect(),
        )
    };
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (name, q) in QUANTILES {
            rows.push(Row::new(
                format!("{}, {name} ms", case.name()),
                kinds
                    .iter()
                    .map(|&k| median_ms(k, i, q).map(|v| Cell::new(v, format!("{v:.3}"))))
                    .collect(),
                true,
            ));
        }
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            let direct = median_ms(Kind::Direct, i, q);
            rows.push(Row::new(
                format!("{}, added over direct, {name} ms", case.name()),
                kinds
                    .iter()
                    .map(|&k| {
                        if k == Kind::Direct {
                            return None;
                        }
                        let v = median_ms(k, i, q)? - direct?;
                        Some(Cell::new(v, format!("{v:+.3}")))
                    })
                    .collect(),
                true,
            ));
        }
    }
    rows.push(Row::new(
        "failed calls, all runs".into(),
        kinds
            .iter()
            .map(|&k| {
                let errors: u64 = runs
                    .iter()
                    .filter(|r| r.kind == k)
                    .flat_map(|r| &r.latency)
                    .map(|l| l.errors)
                    .sum();
                Some(Cell::new(errors as f64, errors.to_string()))
            })
            .collect(),
        false,
    ));
    let mut out = report::table(kinds, &rows);
    out.push_str(
        "\nmesh/peer is the mesh's figure divided by the peer's (below 1 is better); \
         each figure is the median over rounds of that round's quantile.\n",
    );
    out.push_str(
        "\nSlow calls alone (a call held back by itself, not a stall of everything), per round:\n",
    );
    for (i, case) in cases.iter().enumerate() {
        for &kind in kinds {
            let rounds: Vec<&str> = runs
                .iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| r.lone.get(i).map(String::as_str))
                .collect();
            let _ = writeln!(
                out,
                "- {}, {}: {}",
                case.name(),
                kind.name(),
                rounds.join("; ")
            );
        }
    }
    if let Some((kind, error)) = runs.iter().find_map(|r| {
        r.latency
            .iter()
            .find_map(|l| l.first_error.clone())
            .map(|e| (r.kind, e))
    }) {
        let _ = writeln!(out, "first failure: {}: {error}", kind.name());
    }
    out
}

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_one_connection_per_payload_then_more_connections() {
        let args = TailArgs {
            rounds: 1,
            topologies: vec![Kind::Mesh],
            rate: 2000.0,
            seconds: 1.0,
            warmup_seconds: 0.0,
            payloads: vec![16, 1024, 16384],
            connections: vec![1, 4, 16],
            stream_replies: 10,
            grpc_timeout: None,
            mesh_route: MeshRoute::Retries,
            bin_dir: None,
            envoy: None,
            nginx: None,
            no_build: true,
        };
        let names: Vec<String> = args.cases().iter().map(TailCase::name).collect();
        assert_eq!(
            names,
            [
                "unary 16 B, 1 connection",
                "unary 1 KiB, 1 connection",
                "unary 16 KiB, 1 connection",
                "unary 16 B, 4 connections",
                "unary 16 B, 16 connections",
                "stream 10 x 16 B, 1 connection",
            ]
        );
    }
}
