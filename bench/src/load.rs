//! The load generator, measuring from the client side.
//!
//! - [`closed_loop`]: maximum throughput. `connections` x `streams` workers
//!   each send a call as soon as their last one ends; calls that end inside
//!   the measured window (after a warm-up) are counted, and the proxies'
//!   CPU time is sampled at the window's edges.
//! - [`open_loop`]: latency at a fixed offered rate. Call `i` is due at
//!   `t0 + i / rate`, evenly spaced (not in bursts), whatever happened to
//!   the calls before it, and its latency is measured from when it was
//!   due, not from when it was sent: a stalled system is charged for
//!   every call it delayed (no coordinated omission).
//!
//! Every loop is bounded by a count as well as by time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{self, Call, CallError, Connection, CALL_TIMEOUT};

/// Calls one closed-loop worker makes at most.
const MAX_CALLS_PER_WORKER: u64 = 10_000_000;

/// Calls one open-loop run makes at most.
const MAX_OPEN_LOOP_CALLS: u64 = 1_000_000;

/// The shape of a throughput run.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    /// HTTP/2 connections.
    pub connections: usize,
    /// Concurrent streams (workers) per connection.
    pub streams: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// What a throughput run measured.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Calls that succeeded inside the window.
    pub completed: u64,
    /// Of those, calls served by the primary instance.
    pub primary: u64,
    /// Calls that failed, warm-up included.
    pub errors: u64,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
    /// The window's actual length.
    pub window: Duration,
    /// CPU time of the proxy processes inside the window.
    pub proxy_cpu: Duration,
}

impl Throughput {
    /// Successful calls per second.
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Proxy CPU milliseconds per 1,000 successful calls.
    pub fn cpu_ms_per_1000(&self) -> f64 {
        self.proxy_cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }
}

#[derive(Default)]
struct Tally {
    measuring: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
    primary: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn failed(&self, error: &CallError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }
}

/// Runs `call` at maximum throughput against `addr`; `cpu` samples the
/// proxies' CPU time at the window's edges.
pub async fn closed_loop(
    addr: SocketAddr,
    call: &Call,
    shape: ClosedLoop,
    cpu: &dyn Fn() -> Duration,
) -> anyhow::Result<Throughput> {
    let tally = Arc::new(Tally::default());
    let call = Arc::new(call.clone());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shape.connections.max(1) {
        let connection = client::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        for _ in 0..shape.streams.max(1) {
            workers.spawn(worker(
                addr,
                connection.clone(),
                call.clone(),
                tally.clone(),
            ));
        }
    }
    tokio::time::sleep(shape.warmup).await;
    let cpu_before = cpu();
    tally.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(shape.duration).await;
    tally.measuring.store(false, Ordering::Relaxed);
    let window = started.elapsed();
    let proxy_cpu = cpu().saturating_sub(cpu_before);
    tally.stop.store(true, Ordering::Relaxed);
    // Every call in flight ends within its own timeout.
    let drained = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        workers.abort_all();
    }
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Throughput {
        completed: tally.completed.load(Ordering::Relaxed),
        primary: tally.primary.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        first_error,
        window,
        proxy_cpu,
    })
}

async fn worker(addr: SocketAddr, mut connection: Connection, call: Arc<Call>, tally: Arc<Tally>) {
    for _ in 0..MAX_CALLS_PER_WORKER {
        if tally.stop.load(Ordering::Relaxed) {
            break;
        }
        match client::send_bounded(&call, &mut connection).await {
            Ok(primary) => {
                if tally.measuring.load(Ordering::Relaxed) {
                    tally.completed.fetch_add(1, Ordering::Relaxed);
                    if primary {
                        tally.primary.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(error) => {
                tally.failed(&error);
                if connection.is_closed() {
                    // The peer closed the connection (e.g. GOAWAY): this
                    // worker goes on with a connection of its own.
                    match client::connect(addr).await {
                        Ok(fresh) => connection = fresh,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }
    }
}

/// The shape of a latency run.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// Calls per second, evenly spaced.
    pub rate: f64,
    /// Calls before the measured ones (same rate, latencies dropped).
    pub warmup: Duration,
    /// How long the measured calls are sent for.
    pub duration: Duration,
    /// HTTP/2 connections the calls are spread over.
    pub connections: usize,
}

/// What a latency run measured.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Latencies of the measured, successful calls, from when each was due;
    /// sorted.
    pub sorted: Vec<Duration>,
    /// Of those, calls served by the primary instance.
    pub primary: u64,
    /// Calls that failed, warm-up included.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// How late calls were handed to the runtime after they were due (the
    /// generator's own lag, included in the latencies); sorted.
    pub dispatch_lag: Vec<Duration>,
    /// Every measured call's latency in send order (`None`: it failed):
    /// whether slow calls come alone or in bursts.
    pub in_order: Vec<Option<Duration>>,
}

impl Latencies {
    /// The `q` quantile (0 < q <= 1), nearest rank; zero if nothing was
    /// measured.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.sorted, q)
    }
}

/// The nearest-rank `q` quantile of sorted values.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `call` to `addr` at an evenly spaced, fixed rate.
pub async fn open_loop(
    addr: SocketAddr,
    call: &Call,
    shape: OpenLoop,
) -> anyhow::Result<Latencies> {
    anyhow::ensure!(shape.rate > 0.0, "the rate must be positive");
    let mut connections = Vec::new();
    for _ in 0..shape.connections.max(1) {
        connections.push(
            client::connect(addr)
                .await
                .with_context(|| format!("connect to {addr}"))?,
        );
    }
    let warmup_calls = (shape.warmup.as_secs_f64() * shape.rate).ceil() as u64;
    let total = (warmup_calls + (shape.duration.as_secs_f64() * shape.rate).ceil() as u64)
        .min(MAX_OPEN_LOOP_CALLS);
    let call = Arc::new(call.clone());
    let runtime = tokio::runtime::Handle::current();
    // The dispatcher is a thread of its own: the runtime's timer has a
    // granularity of 1 ms, a thread's sleep has tens of microseconds.
    let (calls, mut dispatch_lag) = tokio::task::spawn_blocking(move || {
        let start = Instant::now() + Duration::from_millis(20);
        let mut calls = Vec::with_capacity(total as usize);
        let mut lags = Vec::with_capacity(total as usize);
        for i in 0..total {
            if crate::stopping() {
                break;
            }
            let due = start + Duration::from_secs_f64(i as f64 / shape.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            lags.push(due.elapsed());
            let mut connection = connections[i as usize % connections.len()].clone();
            let call = call.clone();
            calls.push(runtime.spawn(async move {
                let outcome = client::send_bounded(&call, &mut connection).await;
                (outcome, due.elapsed())
            }));
        }
        (calls, lags)
    })
    .await
    .context("open-loop dispatcher")?;

    dispatch_lag.sort_unstable();
    let mut latencies = Latencies {
        dispatch_lag,
        ..Latencies::default()
    };
    for (i, call) in calls.into_iter().enumerate() {
        // Each call ends within its own timeout.
        let (outcome, latency) = call.await.context("call task")?;
        if i as u64 >= warmup_calls {
            latencies
                .in_order
                .push(outcome.as_ref().ok().map(|_| latency));
        }
        match outcome {
            Ok(primary) if i as u64 >= warmup_calls => {
                latencies.sorted.push(latency);
                latencies.primary += u64::from(primary);
            }
            Ok(_) => {}
            Err(error) => {
                latencies.errors += 1;
                latencies
                    .first_error
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
    latencies.sorted.sort_unstable();
    Ok(latencies)
}

/// Slow calls whose neighbours in send order were not slow: a call held
/// back on its own (a missed wake-up, a frame waiting for a timer), not a
/// stall of the whole process, which delays every call due meanwhile.
/// Returns their positions in send order.
pub fn lone_slow_calls(in_order: &[Option<Duration>], slow: Duration) -> Vec<usize> {
    let is_slow = |i: usize| in_order.get(i).copied().flatten().is_some_and(|l| l > slow);
    (0..in_order.len())
        .filter(|&i| is_slow(i) && !is_slow(i.wrapping_sub(1)) && !is_slow(i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_slow_calls_are_slow_between_fast_neighbours() {
        let ms = |v: u64| Some(Duration::from_millis(v));
        let calls = [
            ms(9),
            ms(1),
            ms(1),
            ms(9),
            ms(1),
            ms(9),
            ms(9),
            ms(1),
            None,
            ms(9),
        ];
        assert_eq!(lone_slow_calls(&calls, Duration::from_millis(5)), [0, 3, 9]);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        assert_eq!(quantile(&values, 0.5), Duration::from_micros(500));
        assert_eq!(quantile(&values, 0.99), Duration::from_micros(990));
        assert_eq!(quantile(&values, 0.999), Duration::from_micros(999));
        assert_eq!(quantile(&values, 1.0), Duration::from_micros(1000));
        assert_eq!(quantile(&values[..1], 0.5), Duration::from_micros(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn cpu_per_thousand_calls() {
        let run = Throughput {
            completed: 20_000,
            window: Duration::from_secs(2),
            proxy_cpu: Duration::from_millis(3_000),
            ..Throughput::default()
        };
        assert_eq!(run.per_second(), 10_000.0);
        assert_eq!(run.cpu_ms_per_1000(), 150.0);
    }
}
