//! `bench`: the mesh's benchmark. It puts the mesh's data path beside a
//! direct connection, an Envoy pair and an nginx pair on loopback, and
//! measures the control plane at scale (scoped delta pushes of a route and
//! an endpoint change, and the registration storm after a replica dies).
//!
//! ```sh
//! cargo run --release -p bench --                       # data path, every topology found
//! cargo run --release -p bench -- cp-scale --subscribers 100,1000
//! cargo run --release -p bench -- tail                  # p50..max at 2,000 calls/s
//! cargo run --release -p bench -- balance               # one slow instance of four, per loadBalancer
//! cargo run --release -p bench -- abuse --seconds 10    # the edge proxy under each attack, beside Envoy
//! cargo run --release -p bench -- security              # authorization and JWT cost per call
//! ```
//!
//! # Layout
//!
//! - [`echo`]: the workload, `bench.v1.EchoService` (unary and
//!   server-streaming), served by `bench echo-server` with health and
//!   reflection like any mesh app.
//! - [`process`]: the processes of one measurement: spawned with their logs
//!   in a temporary directory, polled for readiness, killed when dropped.
//! - [`topology`]: direct, mesh, envoy and nginx, each started fresh on
//!   loopback ports and proven to route 3:1 before it is measured.
//! - [`proxy_config`]: the Envoy and nginx configuration files
//!   (`bench/envoy`, `bench/nginx`), filled in with ports.
//! - [`client`]: gRPC calls made by hand over hyper's HTTP/2 client (no
//!   protobuf decoding on the measured path), checked by length and status.
//! - [`load`]: closed-loop maximum throughput and open-loop latency at evenly
//!   spaced send times.
//! - [`proc_stats`]: CPU time and RSS of the proxy processes, from `/proc`.
//! - [`datapath`]: the rounds (topologies interleaved) and their cases.
//! - [`report`]: medians, ratios, and the printed table.
//! - [`tail`]: tail latency at a fixed rate (p50 to max) through the
//!   route with retries and outlier detection, 1 to 16 connections.
//! - [`balance`]: one instance of four slowed to 200 ms, p50 to p99.9
//!   through the route with each `loadBalancer`.
//! - [`cp_scale`]: N simulated sidecars with realistic scopes on a control
//!   plane on etcd; time and bytes for a route change and an endpoint
//!   change to reach the sidecars in scope, the replica's memory per
//!   subscriber, etcd's load at rest; with `--storm`, two replicas and the
//!   reconnection storm after SIGKILL of one.
//! - [`abuse`]: the proxy facing strangers (the mesh's gateway, Envoy at
//!   the edge) under one attack at a time, good clients beside it.
//! - [`security`]: the proxies' CPU per call with 10 authorization
//!   policies (50 rules) and a JWT check at the gateway, beside none.

mod abuse;
mod balance;
mod client;
mod cp_scale;
mod datapath;
mod echo;
mod load;
mod proc_stats;
mod process;
mod proxy_config;
mod report;
mod security;
mod tail;
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Set on SIGINT or SIGTERM: loops that run on threads of their own (the
/// open-loop dispatcher) check it, so the process stops promptly.
pub static STOPPING: AtomicBool = AtomicBool::new(false);

/// True once the benchmark has been asked to stop.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "The mesh's benchmark: data path beside Envoy and nginx, control-plane fan-out",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    datapath: datapath::DatapathArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve `bench.v1.EchoService` (with health and reflection): the
    /// benchmark's server process.
    EchoServer(echo::EchoServerArgs),
    /// Connect N simulated sidecars to a control-plane replica on etcd;
    /// time a route change and an endpoint change to the sidecars in
    /// scope, with bytes per sidecar, replica memory and etcd load at rest;
    /// with --storm, two replicas and the storm after SIGKILL of one.
    CpScale(cp_scale::CpScaleArgs),
    /// Tail latency (p50 to max) at 2,000 calls/s through the route with
    /// retries and outlier detection, beside the peers.
    Tail(tail::TailArgs),
    /// One echo instance of four answering 200 ms late: p50 to p99.9
    /// through the route with each load balancer in turn.
    Balance(balance::BalanceArgs),
    /// The proxy facing strangers (the mesh's gateway, Envoy at the edge)
    /// under idle connections, rapid reset, a CONTINUATION flood and
    /// random method names, with good clients calling beside the attack.
    Abuse(abuse::AbuseArgs),
    /// The proxies' CPU per call through the gateway with 10 authorization
    /// policies (50 rules) and a JWT check, interleaved with none; and one
    /// uncached ES256 verification and one policy evaluation in-process.
    Security(security::SecurityArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::EchoServer(args)) => echo::run(args).await,
            Some(Command::CpScale(args)) => until_signal(cp_scale::run(args)).await,
            Some(Command::Tail(args)) => until_signal(tail::run(args)).await,
            Some(Command::Balance(args)) => until_signal(balance::run(args)).await,
            Some(Command::Abuse(args)) => until_signal(abuse::run(args)).await,
            Some(Command::Security(args)) => until_signal(security::run(args)).await,
            None => until_signal(datapath::run(cli.datapath)).await,
        }
    });
    // Blocking readiness probes end within their own timeouts; never wait
    // longer than that for them.
    runtime.shutdown_timeout(Duration::from_secs(3));
    if stopping() {
        eprintln!("interrupted: every process the benchmark started was stopped");
        std::process::exit(130);
    }
    result
}

/// Runs `work` until it ends or SIGINT/SIGTERM arrives. On a signal the
/// work is dropped, and with it every process it started (see
/// [`process::ProcessGroup`]).
async fn until_signal(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let signal = mesh::shutdown::on_signal().context("signal handlers")?;
    tokio::select! {
        result = work => result,
        () = signal.cancelled() => {
            STOPPING.store(true, Ordering::Relaxed);
            Ok(())
        }
    }
}
