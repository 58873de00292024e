//! The hostile-traffic benchmark (`bench abuse`): the proxy that faces
//! strangers (the mesh's gateway with its edge defaults, Envoy with its
//! edge best practices: `bench/envoy/edge.yaml`) under one attack at a
//! time, with good clients calling through it at a modest open-loop rate
//! before (the baseline) and during the attack. The attacks are those of
//! the hostile-traffic suite (`tests/hostile.rs`), made by hand on raw
//! sockets, each bounded in count and in time (the attack window):
//!
//! - `idle`: N TCP connections that never send the HTTP/2 preface;
//! - `rapid-reset`: one connection sending HEADERS + RST_STREAM in batches
//!   (CVE-2023-44487);
//! - `continuation`: one connection sending a header block of many MiB in
//!   CONTINUATION frames that never ends it;
//! - `methods`: calls to distinct random method names on one connection
//!   (what grows metrics keyed by path).
//!
//! Per proxy and attack, on a fresh topology: how many connections the
//! attacker still holds when the window ends, the good clients' p50, p99
//! and p99.9 during the attack beside the baseline, their failed calls,
//! and the attacked proxy's RSS (before, peak) and CPU during the window,
//! from `/proc`.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use meshctl::demo::PortAllocator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Call;
use crate::load::{self, Latencies, OpenLoop};
use crate::proc_stats;
use crate::process::Programs;
use crate::tail::{loadavg, ms};
use crate::topology::{self, Kind, EDGE_PROXY};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload a peer must accept (RFC 9113 section 4.2).
const FRAME_PAYLOAD: usize = 16 << 10;

/// Calls of the `methods` attack in flight at once.
const METHODS_IN_FLIGHT: usize = 64;

/// An idle connection older than this at the window's end has outlived
/// the mesh's edge preface timeout (5 s) with a second to spare.
const IDLE_OLD: Duration = Duration::from_secs(6);

/// Connections one attack opens at most (the reconnecting attacks).
const MAX_ATTACK_CONNECTIONS: usize = 10_000;

/// Longest an attack's clean-up (closing its sockets, joining its tasks)
/// may take after the window.
const CLEANUP: Duration = Duration::from_secs(5);

/// An attack on the proxy facing strangers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// TCP connections that never send the HTTP/2 preface.
    Idle,
    /// HTTP/2 rapid reset: HEADERS then RST_STREAM, in batches, on one
    /// connection.
    RapidReset,
    /// A header block that never ends, in CONTINUATION frames.
    Continuation,
    /// Calls to distinct random method names.
    Methods,
}

impl Attack {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle connections",
            Self::RapidReset => "rapid reset",
            Self::Continuation => "CONTINUATION flood",
            Self::Methods => "random methods",
        }
    }
}

/// Flags of `bench abuse`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbuseArgs {
    /// Proxies attacked, in turn (envoy is skipped when not found).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Mesh, Kind::Envoy])]
    pub proxies: Vec<Kind>,
    /// Attacks, in turn, each on a fresh topology.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Attack::Idle, Attack::RapidReset, Attack::Continuation, Attack::Methods]
    )]
    pub attacks: Vec<Attack>,
    /// The attack window in seconds: each attack runs this long at most,
    /// and the good clients are measured over it.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of good load measured before the attack (the baseline).
    #[arg(long, default_value_t = 5.0)]
    pub baseline_seconds: f64,
    /// Good clients' calls per second (unary 16 B), evenly spaced.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Good clients' HTTP/2 connections, opened before the attack.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// `idle`: connections opened that never send a preface.
    #[arg(long, default_value_t = 5_000)]
    pub idle_connections: usize,
    /// `rapid-reset`: streams opened and reset at most.
    #[arg(long, default_value_t = 200_000)]
    pub reset_streams: u32,
    /// `continuation`: MiB of header block sent at most.
    #[arg(long, default_value_t = 64)]
    pub continuation_mib: usize,
    /// `methods`: calls to distinct method names at most.
    #[arg(long, default_value_t = 100_000)]
    pub methods: usize,
    /// Directory with the `sidecar` binary (default: beside this
    /// executable, built first when run by `cargo run`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The Envoy binary (default: `envoy` on PATH).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Do not build the mesh's binaries first.
    #[arg(long)]
    pub no_build: bool,
}

impl AbuseArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.proxies
                .iter()
                .all(|k| matches!(k, Kind::Mesh | Kind::Envoy)),
            "--proxies: mesh and envoy"
        );
        ensure!((1.0..=60.0).contains(&self.seconds), "--seconds: 1 to 60");
        ensure!(
            (1.0..=60.0).contains(&self.baseline_seconds),
            "--baseline-seconds: 1 to 60"
        );
        ensure!((1.0..=20_000.0).contains(&self.rate), "--rate: 1 to 20000");
        ensure!(
            (1..=64).contains(&self.connections),
            "--connections: 1 to 64"
        );
        // The benchmark holds one descriptor per idle connection, the proxy
        // another: the defaults fit in the usual 20,000.
        ensure!(
            (1..=10_000).contains(&self.idle_connections),
            "--idle-connections: 1 to 10000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.reset_streams),
            "--reset-streams: 1 to 1000000"
        );
        ensure!(
            (1..=1024).contains(&self.continuation_mib),
            "--continuation-mib: 1 to 1024"
        );
        ensure!(
            (1..=1_000_000).contains(&self.methods),
            "--methods: 1 to 1000000"
        );
        Ok(())
    }
}

/// What an attack achieved by the end of its window.
#[derive(Debug, Clone, Default)]
struct AttackOutcome {
    /// The attacker's connections the proxy had not closed when the
    /// window ended.
    held: usize,
    /// What was sent and how the proxy answered, in words.
    detail: String,
}

/// One proxy's run of one attack.
struct AbuseRun {
    kind: Kind,
    attack: Attack,
    baseline: Latencies,
    during: Latencies,
    outcome: AttackOutcome,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    /// CPU of the attacked proxy over the attack window, in percent of one
    /// core.
    cpu_percent: f64,
}

/// Runs every attack on every proxy and prints the table.
pub async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    args.validate()?;
    if !args.no_build && args.bin_dir.is_none() {
        crate::datapath::build_mesh_binaries().await?;
    }
    let programs = Programs::find(args.bin_dir.clone(), args.envoy.clone(), None)?;
    let mut kinds = args.proxies.clone();
    kinds.dedup();
    kinds.retain(|kind| {
        let found = !kind.is_envoy() || programs.envoy.is_some();
        if !found {
            eprintln!("skipping {}: not found on PATH", kind.name());
        }
        found
    });
    let loadavg_before = loadavg();
    let machine_before = proc_stats::MachineSample::now();
    let mut runs = Vec::new();
    let mut seed = std::process::id().wrapping_mul(17);
    for &kind in &kinds {
        for &attack in &args.attacks {
            seed = seed.wrapping_add(1);
            let mut ports = PortAllocator::new(seed);
            eprintln!("{}: {}", kind.name(), attack.name());
            let run = measure(kind, attack, &programs, &mut ports, &args)
                .await
                .with_context(|| format!("{}, {}", kind.name(), attack.name()))?;
            runs.push(run);
        }
    }
    let (other, steal) = proc_stats::MachineSample::now().since(&machine_before);
    let mut out = String::from("## mesh under hostile traffic\n\n");
    let _ = writeln!(
        out,
        "- attacked: the proxy facing strangers, in front of two server-side proxies and two echo \
         servers (3:1): mesh = the gateway's ingress with its edge defaults (5,000 connections, \
         5 s preface timeout, 100 streams, 16 KiB headers, 64 KiB / 1 MiB windows); envoy = \
         {} (Envoy's edge best practices, no TLS on either), --concurrency 1",
        crate::proxy_config::ENVOY_EDGE.path
    );
    let _ = writeln!(
        out,
        "- good clients: open loop, unary 16 B, {} calls/s evenly spaced over {} connections \
         opened before the attack; baseline {} s, then {} s during the attack (latency from each \
         call's intended send time); a fresh topology per proxy and attack",
        args.rate, args.connections, args.baseline_seconds, args.seconds
    );
    let _ = writeln!(
        out,
        "- attacks (each at most the window): {} idle connections without a preface; rapid reset \
         up to {} streams (HEADERS + RST_STREAM in batches of 100); a {} MiB header block in \
         16 KiB CONTINUATION frames; up to {} calls to distinct method names, {} in flight",
        args.idle_connections,
        args.reset_streams,
        args.continuation_mib,
        args.methods,
        METHODS_IN_FLIGHT
    );
    let _ = writeln!(
        out,
        "- RSS and CPU are the attacked proxy's alone (VmRSS before the attack, VmHWM after it; \
         CPU over the window in % of one core); loadavg before / after: {loadavg_before} / {}; \
         other processes used {other:.0} % of the machine's CPU meanwhile, steal {steal:.0} %\n",
        loadavg()
    );
    out.push_str(&render(&runs));
    println!("{out}");
    Ok(())
}

async fn measure(
    kind: Kind,
    attack: Attack,
    programs: &Programs,
    ports: &mut PortAllocator,
    args: &AbuseArgs,
) -> anyhow::Result<AbuseRun> {
    let mut running = topology::start_edge(kind, programs, ports).await?;
    let pid = running
        .proxies
        .iter()
        .find(|(name, _)| name == EDGE_PROXY)
        .map(|(_, pid)| *pid)
        .context("the edge proxy's pid")?;
    let target = running.target;
    let call = Call::unary(target, 16)?;
    // Let start-up work (first connections upstream) settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let window = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_millis(500);
    let baseline = load::open_loop(
        target,
        &call,
        OpenLoop {
            rate: args.rate,
            warmup,
            duration: Duration::from_secs_f64(args.baseline_seconds),
            connections: args.connections,
        },
    )
    .await?;
    running.check_alive()?;

    let rss_before_kib = proc_stats::rss_kib(pid);
    // The good clients connect and warm up first; the attack starts once
    // their measured calls do and runs for the window they are measured
    // over.
    let during_shape = OpenLoop {
        rate: args.rate,
        warmup,
        duration: window,
        connections: args.connections,
    };
    let good_call = call.clone();
    let good = tokio::spawn(async move { load::open_loop(target, &good_call, during_shape).await });
    tokio::time::sleep(warmup).await;
    let ticks = proc_stats::ticks_per_second();
    let cpu_before = proc_stats::cpu_time(&[pid], ticks);
    let started = Instant::now();
    let outcome = match attack {
        Attack::Idle => idle(target, args.idle_connections, window).await?,
        Attack::RapidReset => rapid_reset(target, args.reset_streams, window).await?,
        Attack::Continuation => continuation(target, args.continuation_mib << 20, window).await?,
        Attack::Methods => methods(target, args.methods, window).await?,
    };
    let elapsed = started.elapsed();
    let cpu = proc_stats::cpu_time(&[pid], ticks).saturating_sub(cpu_before);
    let during = good.await.context("good clients' task")??;
    let rss_peak_kib = proc_stats::peak_rss_kib(pid);
    running.check_alive()?;
    let run = AbuseRun {
        kind,
        attack,
        baseline,
        during,
        outcome,
        rss_before_kib,
        rss_peak_kib,
        cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
    };
    eprintln!(
        "  held {}; {}; p99 {:.3} -> {:.3} ms, {} errors; RSS {:.1} -> {:.1} MiB, CPU {:.0} %",
        run.outcome.held,
        run.outcome.detail,
        ms(run.baseline.quantile(0.99)),
        ms(run.during.quantile(0.99)),
        run.during.errors,
        mib(run.rss_before_kib),
        mib(run.rss_peak_kib),
        run.cpu_percent
    );
    Ok(run)
}

/// Opens up to `count` connections that never send a preface and holds
/// them until the window ends; counts those the proxy has not closed by
/// then. Blocking sockets on a thread of their own: a read on a
/// non-blocking socket says at once whether the peer closed it.
async fn idle(target: SocketAddr, count: usize, window: Duration) -> anyhow::Result<AttackOutcome> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + window;
        let mut held = Vec::with_capacity(count);
        let mut refused = 0usize;
        for _ in 0..count {
            if Instant::now() >= deadline || crate::stopping() {
                break;
            }
            match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(stream) => {
                    if stream.set_nonblocking(true).is_ok() {
                        held.push((Instant::now(), stream));
                    }
                }
                Err(_) => refused += 1,
            }
        }
        let opened = held.len();
        // Bounded by the window (checked every 50 ms).
        while Instant::now() < deadline && !crate::stopping() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ended = Instant::now();
        let (mut open, mut old_open) = (0usize, 0usize);
        for (connected, stream) in &mut held {
            if still_open(stream) {
                open += 1;
                old_open += usize::from(ended.duration_since(*connected) > IDLE_OLD);
            }
        }
        AttackOutcome {
            held: open,
            detail: format!(
                "{opened} of {count} connected ({refused} connects failed), {} closed by the proxy; \
                 of those connected over {} s before the end, {old_open} still open",
                opened - open,
                IDLE_OLD.as_secs()
            ),
        }
    })
    .await
    .context("idle connections thread")
}

/// Whether the peer has not closed a non-blocking socket: reads (and
/// drops, e.g. the server's SETTINGS) until it would block.
fn still_open(stream: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    // Bounded: a peer that keeps sending is open.
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Whether `reader`'s connection is still open: whatever the proxy sent
/// is read (and dropped) as it comes; the task ends when the proxy closes.
fn drain(mut reader: tokio::net::tcp::OwnedReadHalf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
}

/// Opens a connection and sends the preface and an empty SETTINGS frame.
async fn h2_raw(
    target: SocketAddr,
) -> anyhow::Result<(tokio::net::tcp::OwnedWriteHalf, tokio::task::JoinHandle<()>)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
        .await
        .context("connect timed out")?
        .context("connect")?;
    tcp.set_nodelay(true)?;
    let (reader, mut writer) = tcp.into_split();
    let draining = drain(reader);
    writer.write_all(PREFACE).await.context("preface")?;
    writer
        .write_all(&frame(0x4, 0, 0, &[]))
        .await
        .context("settings")?;
    Ok((writer, draining))
}

/// Streams opened and reset in batches of 100 on one connection, as fast
/// as the proxy takes them; when the proxy closes it, again on a new one;
/// until `max` streams or the window's end.
async fn rapid_reset(
    target: SocketAddr,
    max: u32,
    window: Duration,
) -> anyhow::Result<AttackOutcome> {
    let started = Instant::now();
    let block = request_headers(&target.to_string(), "/bench.v1.EchoService/Echo");
    let mut opened = 0u32;
    let mut per_connection = Vec::new();
    let mut held = 0;
    while opened < max
        && per_connection.len() < MAX_ATTACK_CONNECTIONS
        && started.elapsed() < window
        && !crate::stopping()
    {
        let Ok((mut writer, draining)) = h2_raw(target).await else {
            break;
        };
        let mut stream = 1u32;
        let mut on_this = 0u32;
        while opened < max && started.elapsed() < window && !draining.is_finished() {
            let mut batch = Vec::with_capacity(100 * (block.len() + 30));
            for _ in 0..100 {
                batch.extend(frame(0x1, 0x4, stream, &block)); // HEADERS, END_HEADERS
                batch.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
                stream += 2;
            }
            let left = window.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, writer.write_all(&batch)).await {
                Ok(Ok(())) => {
                    opened += 100;
                    on_this += 100;
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        per_connection.push(on_this);
        // Did the proxy close it? Give it until the window ends to say so.
        let left = window.saturating_sub(started.elapsed());
        let closed = until_closed(&draining, left).await;
        draining.abort();
        if !closed {
            held = 1;
            break;
        }
    }
    Ok(AttackOutcome {
        held,
        detail: format!(
            "{opened} streams sent on {} connections, {} closed by the proxy (median {} streams each)",
            per_connection.len(),
            per_connection.len() - held,
            median(&mut per_connection)
        ),
    })
}

/// Waits up to `left` for the proxy to close the connection `draining`
/// reads; true if it did.
async fn until_closed(draining: &tokio::task::JoinHandle<()>, left: Duration) -> bool {
    tokio::time::timeout(left, async {
        // Bounded by the timeout around it.
        while !draining.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

fn median(values: &mut [u32]) -> u32 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// One header block of `bytes` bytes (a HEADERS frame without END_HEADERS,
/// then CONTINUATION frames, none of which ends it) on one connection;
/// when the proxy closes it, again on a new one; until the window ends.
async fn continuation(
    target: SocketAddr,
    bytes: usize,
    window: Duration,
) -> anyhow::Result<AttackOutcome> {
    let started = Instant::now();
    let block = literal_header(b"x-bomb", &vec![b'a'; bytes]);
    let mut per_connection = Vec::new();
    let mut held = 0;
    while per_connection.len() < MAX_ATTACK_CONNECTIONS
        && started.elapsed() < window
        && !crate::stopping()
    {
        let Ok((mut writer, draining)) = h2_raw(target).await else {
            break;
        };
        let mut sent = 0usize;
        for (i, chunk) in block.chunks(FRAME_PAYLOAD).enumerate() {
            if started.elapsed() >= window || draining.is_finished() {
                break;
            }
            // HEADERS first, then CONTINUATION; no END_HEADERS on any.
            let kind = if i == 0 { 0x1 } else { 0x9 };
            let left = window.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, writer.write_all(&frame(kind, 0, 1, chunk))).await {
                Ok(Ok(())) => sent += chunk.len(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        per_connection.push(u32::try_from(sent >> 10).unwrap_or(u32::MAX));
        let left = window.saturating_sub(started.elapsed());
        let closed = until_closed(&draining, left).await;
        draining.abort();
        if !closed {
            held = 1;
            break;
        }
    }
    Ok(AttackOutcome {
        held,
        detail: format!(
            "{} connections, {} closed by the proxy, median {} KiB of header block written on each",
            per_connection.len(),
            per_connection.len() - held,
            median(&mut per_connection)
        ),
    })
}

/// Up to `max` calls to distinct method names (most to services nobody
/// routes, one in ten to a method the echo service does not have) on one
/// HTTP/2 connection, 64 in flight, until the window ends.
async fn methods(
    target: SocketAddr,
    max: usize,
    window: Duration,
) -> anyhow::Result<AttackOutcome> {
    let started = Instant::now();
    let mut connection = crate::client::connect(target)
        .await
        .context("the attacker's connection")?;
    let mut connections = 1usize;
    let mut calls = tokio::task::JoinSet::new();
    let (mut sent, mut answered, mut failed) = (0usize, 0usize, 0usize);
    let mut tally = |done: Result<bool, tokio::task::JoinError>| match done {
        Ok(true) => answered += 1,
        _ => failed += 1,
    };
    while sent < max && started.elapsed() < window && !crate::stopping() {
        if connection.is_closed() && connections < MAX_ATTACK_CONNECTIONS {
            // The proxy closed it: the attacker comes back.
            if let Ok(fresh) = crate::client::connect(target).await {
                connection = fresh;
                connections += 1;
            }
        }
        while calls.len() < METHODS_IN_FLIGHT && sent < max {
            let path = if sent % 10 == 0 {
                format!("/bench.v1.EchoService/Nope{sent}")
            } else {
                format!("/attack{sent}.Service{}/Method{sent}", sent % 7)
            };
            let mut sender = connection.clone();
            calls.spawn(async move {
                let request = http::Request::post(format!("http://{target}{path}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                        0, 0, 0, 0, 0,
                    ])));
                let Ok(request) = request else { return false };
                let answer = tokio::time::timeout(crate::client::CALL_TIMEOUT, async {
                    let response = sender.send_request(request).await.ok()?;
                    http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .ok()
                });
                matches!(answer.await, Ok(Some(_)))
            });
            sent += 1;
        }
        let left = window.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, calls.join_next()).await {
            Ok(Some(done)) => tally(done),
            Ok(None) | Err(_) => break,
        }
    }
    // Calls in flight at the window's end get a moment, then are dropped.
    let _ = tokio::time::timeout(CLEANUP, async {
        while let Some(done) = calls.join_next().await {
            tally(done);
        }
    })
    .await;
    calls.abort_all();
    let held = usize::from(!connection.is_closed());
    Ok(AttackOutcome {
        held,
        detail: format!(
            "{sent} calls to distinct methods in {:.1} s on {connections} connections, \
             {answered} answered, {failed} failed",
            started.elapsed().as_secs_f64()
        ),
    })
}

/// The HPACK block of a gRPC request's headers (no Huffman, no indexing).
fn request_headers(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
                                      // Literal without indexing, name from the static table (RFC 7541
                                      // appendix A: 4 is :path, 1 is :authority).
    block.extend(literal_indexed_name(0x04, path.as_bytes()));
    block.extend(literal_indexed_name(0x01, authority.as_bytes()));
    block.extend(literal_header(b"content-type", b"application/grpc"));
    block
}

fn literal_indexed_name(index: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![index];
    hpack_integer(&mut out, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// One HPACK "literal header field without indexing, new name" (RFC 7541
/// section 6.2.2).
fn literal_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    hpack_integer(&mut out, 7, name.len());
    out.extend_from_slice(name);
    hpack_integer(&mut out, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1), appended
/// to `out` (whose last byte, if the prefix is shorter than 8 bits, is
/// the one the prefix lives in: here a fresh byte for string lengths).
fn hpack_integer(out: &mut Vec<u8>, prefix_bits: u8, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(n as u8);
        return;
    }
    out.push(max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// An HTTP/2 frame (RFC 9113 section 4.1); `payload` is at most 16 KiB.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(FRAME_PAYLOAD) as u32;
    let mut out = Vec::with_capacity(9 + len as usize);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn render(runs: &[AbuseRun]) -> String {
    let quantiles = |l: &Latencies| {
        format!(
            "{:.3} / {:.3} / {:.3}",
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.quantile(0.999))
        )
    };
    let mut out = String::from(
        "| proxy | attack | attacker's connections held at the end | good p50 / p99 / p99.9 ms, baseline | \
         good p50 / p99 / p99.9 ms, during the attack | good calls failed (baseline, during) | \
         proxy RSS before -> peak MiB | proxy CPU during, % of a core | the attack |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {}, {} of {} | {:.1} -> {:.1} | {:.0} | {} |",
            run.kind.name(),
            run.attack.name(),
            run.outcome.held,
            quantiles(&run.baseline),
            quantiles(&run.during),
            run.baseline.errors,
            run.during.errors,
            run.during.sorted.len() as u64 + run.during.errors,
            mib(run.rss_before_kib),
            mib(run.rss_peak_kib),
            run.cpu_percent,
            run.outcome.detail
        );
    }
    for run in runs {
        if let Some(error) = run
            .during
            .first_error
            .as_ref()
            .or(run.baseline.first_error.as_ref())
        {
            let _ = writeln!(
                out,
                "\nfirst failure: {}, {}: {error}",
                run.kind.name(),
                run.attack.name()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_nine_byte_header() {
        let f = frame(0x3, 0, 5, &8u32.to_be_bytes());
        assert_eq!(f, [0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 8]);
    }

    #[test]
    fn hpack_lengths_use_continuation_bytes_past_the_prefix() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix is 31, 154, 10; with 7
        // bits it is 127, then 1210 in 7-bit groups.
        let mut out = Vec::new();
        hpack_integer(&mut out, 7, 1337);
        assert_eq!(out, [127, 186, 9]);
        let header = literal_header(b"x", b"y");
        assert_eq!(header, [0, 1, b'x', 1, b'y']);
    }

    #[test]
    fn default_flags_are_valid_and_bounded() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: AbuseArgs,
        }
        let args = Cli::parse_from(["bench"]).args;
        assert!(args.validate().is_ok());
        assert_eq!(args.attacks.len(), 4);
        let nginx = Cli::parse_from(["bench", "--proxies", "nginx"]).args;
        assert!(nginx.validate().is_err());
    }
}
