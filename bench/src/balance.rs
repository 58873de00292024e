//! The balancer benchmark (`bench balance`): four echo instances behind
//! the client's sidecar, one of them answering 200 ms late, and the same
//! open-loop load (evenly spaced send times, latency from each call's
//! intended send time) through the route with each `loadBalancer` in
//! turn, on a fresh mesh each. Round-robin sends the slow instance its
//! quarter of the calls whatever happens, so its p99 is the slow delay;
//! least-request and peak-EWMA should see the slow instance's calls pile
//! up (or its round trips grow) and send it far fewer.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh::model::LoadBalancer;
use meshctl::demo::PortAllocator;

use crate::client::Call;
use crate::load::{self, OpenLoop};
use crate::process::Programs;
use crate::tail::{loadavg, ms};
use crate::topology;

/// Flags of `bench balance`.
#[derive(Debug, Clone, clap::Args)]
pub struct BalanceArgs {
    /// The balancers measured, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = LoadBalancer::NAMES.map(|(name, _)| name.to_owned())
    )]
    pub balancers: Vec<String>,
    /// Calls per second, evenly spaced.
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Seconds measured per balancer.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of load before the measured window (not counted): lets the
    /// load-aware balancers learn which instance is slow.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_seconds: f64,
    /// How late the slow instance answers, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub slow_ms: u64,
    /// HTTP/2 connections from the client to its sidecar.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Directory with the `sidecar` binary (default: beside this
    /// executable, built first when run by `cargo run`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Do not build the mesh's binaries first.
    #[arg(long)]
    pub no_build: bool,
}

impl BalanceArgs {
    fn validate(&self) -> anyhow::Result<()> {
        for name in &self.balancers {
            ensure!(
                LoadBalancer::from_name(name).is_some(),
                "--balancers: {name:?} is not one of weighted-round-robin, least-request, peak-ewma"
            );
        }
        ensure!(
            (0.1..=600.0).contains(&self.seconds),
            "--seconds: 0.1 to 600"
        );
        ensure!(
            (0.0..=60.0).contains(&self.warmup_seconds),
            "--warmup-seconds: 0 to 60"
        );
        ensure!((1.0..=20_000.0).contains(&self.rate), "--rate: 1 to 20000");
        ensure!(
            (1..=crate::echo::MAX_DELAY_MS).contains(&self.slow_ms),
            "--slow-ms: 1 to {}",
            crate::echo::MAX_DELAY_MS
        );
        ensure!(
            (1..=64).contains(&self.connections),
            "--connections: 1 to 64"
        );
        Ok(())
    }
}

/// What one balancer's run measured.
struct BalanceRun {
    balancer: String,
    latencies: load::Latencies,
    /// Measured calls that took at least 90 % of the slow delay: those
    /// the slow instance answered (or that waited as long).
    slow_calls: usize,
}

/// Runs the balancer benchmark and prints its table.
pub async fn run(args: BalanceArgs) -> anyhow::Result<()> {
    args.validate()?;
    if !args.no_build && args.bin_dir.is_none() {
        crate::datapath::build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), None, None)?;
    let slow = Duration::from_millis(args.slow_ms);
    let loadavg_before = loadavg();
    let mut runs = Vec::new();
    let mut seed = std::process::id().wrapping_mul(13);
    for balancer in &args.balancers {
        seed = seed.wrapping_add(1);
        let mut ports = PortAllocator::new(seed);
        eprintln!("{balancer}: starting four echo instances (one {slow:?} late) and the sidecars");
        let mut running = topology::start_balance(&programs, &mut ports, balancer, slow)
            .await
            .with_context(|| format!("the {balancer} topology"))?;
        let call = Call::unary(running.target, 16)?;
        let shape = OpenLoop {
            rate: args.rate,
            warmup: Duration::from_secs_f64(args.warmup_seconds),
            duration: Duration::from_secs_f64(args.seconds),
            connections: args.connections,
        };
        let latencies = load::open_loop(running.target, &call, shape).await?;
        running.check_alive()?;
        let slow_calls = latencies
            .sorted
            .iter()
            .filter(|l| **l >= slow.mul_f64(0.9))
            .count();
        eprintln!(
            "  p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; {slow_calls} slow calls, {} errors",
            ms(latencies.quantile(0.5)),
            ms(latencies.quantile(0.99)),
            ms(latencies.quantile(0.999)),
            ms(latencies.quantile(1.0)),
            latencies.errors
        );
        runs.push(BalanceRun {
            balancer: balancer.clone(),
            latencies,
            slow_calls,
        });
    }
    let mut out = String::from("## mesh balancer benchmark\n\n");
    let _ = writeln!(
        out,
        "- four echo instances of equal weight, one answering {} ms late; open loop, {} calls/s \
         evenly spaced over {} connections, {} s measured after {} s of warm-up, latency from \
         each call's intended send time; a fresh mesh per balancer; route without retries or \
         outlier detection",
        args.slow_ms, args.rate, args.connections, args.seconds, args.warmup_seconds
    );
    let _ = writeln!(
        out,
        "- loadavg before / after: {loadavg_before} / {}\n",
        loadavg()
    );
    out.push_str(&render(&runs, slow));
    println!("{out}");
    Ok(())
}

fn render(runs: &[BalanceRun], slow: Duration) -> String {
    let mut out = format!(
        "| loadBalancer | calls | p50 ms | p99 ms | p99.9 ms | max ms | calls >= {:.0} ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        ms(slow.mul_f64(0.9))
    );
    for run in runs {
        let l = &run.latencies;
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} ({:.2} %) | {} |",
            run.balancer,
            l.sorted.len(),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.quantile(0.999)),
            ms(l.quantile(1.0)),
            run.slow_calls,
            100.0 * run.slow_calls as f64 / l.sorted.len().max(1) as f64,
            l.errors
        );
    }
    if let Some((balancer, error)) = runs
        .iter()
        .find_map(|r| r.latencies.first_error.clone().map(|e| (&r.balancer, e)))
    {
        let _ = writeln!(out, "\nfirst failure: {balancer}: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_balancer_is_measured_by_default_and_a_typo_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: BalanceArgs,
        }
        let args = Cli::parse_from(["bench"]).args;
        assert_eq!(
            args.balancers,
            ["weighted-round-robin", "least-request", "peak-ewma"]
        );
        assert!(args.validate().is_ok());
        let typo = Cli::parse_from(["bench", "--balancers", "fastest"]).args;
        assert!(typo.validate().is_err());
    }
}
