//! The printed result: what was run where, one markdown table of medians
//! over the rounds with the mesh's ratio to each peer, and the peers'
//! configuration.

use std::fmt::Write as _;
use std::time::Duration;

use crate::datapath::{Case, DatapathArgs};
use crate::load::{Latencies, Throughput};
use crate::process::Programs;
use crate::proxy_config;
use crate::topology::{self, Kind};

/// What one run of one topology measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The topology.
    pub kind: Kind,
    /// Per case, in the order of [`crate::datapath::cases`].
    pub throughput: Vec<Throughput>,
    /// Per case.
    pub latency: Vec<Latencies>,
    /// Per proxy, before any load.
    pub idle_rss_kib: Vec<u64>,
    /// Per proxy, the peak (VmHWM) after all the load.
    pub peak_rss_kib: Vec<u64>,
}

/// The lines that say how and where the figures were measured.
#[derive(Debug, Clone)]
pub struct Setup {
    lines: Vec<String>,
    rate: f64,
}

impl Setup {
    /// Describes the machine, the date, the load and the peers.
    pub fn describe(
        args: &DatapathArgs,
        programs: &Programs,
        kinds: &[Kind],
        skipped: &[String],
        (other_load, steal): (f64, f64),
    ) -> Self {
        let mut lines = vec![
            format!("date: {}", command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
            format!(
                "machine: {} CPUs ({}), {}; everything on loopback, load generator included",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                cpu_model(),
                command_output("uname", &["-sr"]),
            ),
            format!(
                "max throughput: closed loop, {} HTTP/2 connections x {} streams, {} s per case after {} s of warm-up",
                args.connections, args.streams, args.throughput_seconds, args.warmup_seconds
            ),
            format!(
                "latency: open loop, {} calls/s evenly spaced over {} connections for {} s after {} s of warm-up, \
                 measured from each call's scheduled send time",
                args.rate, args.connections, args.latency_seconds, args.warmup_seconds
            ),
            format!(
                "medians of {} rounds; topologies interleaved ({} ...), each started fresh",
                args.rounds,
                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" ")
            ),
            "proxies: 3 per proxied topology (client side, one per echo server; weights 3:1); \
             CPU and RSS are of those processes only"
                .to_owned(),
        ];
        if kinds.contains(&Kind::Mesh) {
            lines.push(
                "mesh: sidecar (release build), tables pushed by 1 control-plane replica on etcd"
                    .into(),
            );
        }
        if kinds.contains(&Kind::MeshMtls) {
            lines.push(
                "mesh-mtls: the same, secure as `meshctl up` runs it: sidecars certified with join \
                 tokens by the control plane's CA (ECDSA P-256), mTLS between them (TLS 1.3, ALPN \
                 h2, rustls), to the control plane and to etcd"
                    .into(),
            );
        }
        if kinds.contains(&Kind::EnvoyMtls) {
            lines.push(
                "envoy-mtls: the same Envoys with mTLS between them as Istio configures its \
                 sidecars (TLS 1.3, ALPN h2, client certificate required, the server's SPIFFE \
                 ID checked), certificates from a mesh CA (`meshctl identity issue`)"
                    .into(),
            );
        }
        if let Some(envoy) = programs
            .envoy
            .as_deref()
            .filter(|_| kinds.iter().any(|k| k.is_envoy()))
        {
            lines.push(format!(
                "envoy: {} (--concurrency 1)",
                envoy_version(&command_output(
                    &envoy.display().to_string(),
                    &["--version"]
                ))
            ));
        }
        if let Some(nginx) = programs
            .nginx
            .as_deref()
            .filter(|_| kinds.contains(&Kind::Nginx))
        {
            lines.push(format!(
                "nginx: {} (worker_processes 1)",
                command_output(&nginx.display().to_string(), &["-v"])
                    .trim_start_matches("nginx version: ")
            ));
        }
        lines.push(format!(
            "while it ran, other processes used {other_load:.0} % of the machine's CPU and the \
             hypervisor took {steal:.0} % (steal): figures are only as quiet as the machine"
        ));
        for note in skipped {
            lines.push(format!("skipped {note}"));
        }
        Self {
            lines,
            rate: args.rate,
        }
    }
}

/// stdout (or, for `nginx -v`, stderr) of a command, trimmed; `?` if it
/// could not run.
fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `1.40.0` out of `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn envoy_version(text: &str) -> String {
    text.split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .map_or_else(|| text.to_owned(), |v| format!("Envoy {v}"))
}

/// The median; `None` for no values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// One figure of a table.
#[derive(Debug, Clone)]
pub struct Cell {
    /// What ratios are computed from.
    value: f64,
    text: String,
}

impl Cell {
    /// `value` shown as `text`.
    pub fn new(value: f64, text: String) -> Self {
        Self { value, text }
    }
}

/// One line of a table.
pub struct Row {
    label: String,
    /// One per topology column.
    cells: Vec<Option<Cell>>,
    /// Whether the mesh's ratio to a peer means something here.
    ratio: bool,
}

impl Row {
    /// A line with one cell per topology column; `ratio` if the mesh's
    /// ratio to each peer means something here.
    pub fn new(label: String, cells: Vec<Option<Cell>>, ratio: bool) -> Self {
        Self {
            label,
            cells,
            ratio,
        }
    }
}

/// One table of medians, the mesh's ratios and notes.
pub fn render(
    setup: &Setup,
    cases: &[Case],
    kinds: &[Kind],
    measurements: &[Measurement],
) -> String {
    let runs = |kind: Kind| -> Vec<&Measurement> {
        measurements.iter().filter(|m| m.kind == kind).collect()
    };
    let per_kind = |f: &dyn Fn(Kind, &[&Measurement]) -> Option<Cell>| -> Vec<Option<Cell>> {
        kinds.iter().map(|&k| f(k, &runs(k))).collect()
    };
    let proxied = |kind: Kind| kind != Kind::Direct;
    let mut rows = Vec::new();

    for (i, case) in cases.iter().enumerate() {
        rows.push(Row {
            ratio: true,
            label: format!("max calls/s, {}", case.name),
            cells: per_kind(&|_, runs| {
                let v = median(
                    runs.iter()
                        .filter_map(|m| m.throughput.get(i))
                        .map(Throughput::per_second)
                        .collect(),
                )?;
                Some(Cell::new(v, thousands(v)))
            }),
        });
    }
    for (i, case) in cases.iter().enumerate() {
        rows.push(Row {
            ratio: true,
            label: format!("proxy CPU ms per 1,000 calls at max, {}", case.name),
            cells: per_kind(&|kind, runs| {
                if !proxied(kind) {
                    return None;
                }
                let v = median(
                    runs.iter()
                        .filter_map(|m| m.throughput.get(i))
                        .map(Throughput::cpu_ms_per_1000)
                        .collect(),
                )?;
                Some(Cell::new(v, format!("{v:.0}")))
            }),
        });
    }
    let quantile_ms = |runs: &[&Measurement], i: usize, q: f64| -> Option<f64> {
        median(
            runs.iter()
                .filter_map(|m| m.latency.get(i))
                .map(|l| ms(l.quantile(q)))
                .collect(),
        )
    };
    for (i, case) in cases.iter().enumerate() {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            rows.push(Row {
                ratio: true,
                label: format!(
                    "latency ms at {} calls/s, {}, {name}",
                    setup.rate, case.name
                ),
                cells: per_kind(&|_, runs| {
                    let v = quantile_ms(runs, i, q)?;
                    Some(Cell::new(v, format!("{v:.3}")))
                }),
            });
        }
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let direct = quantile_ms(&runs(Kind::Direct), i, q);
            rows.push(Row {
                ratio: true,
                label: format!("latency added over direct, {}, {name}", case.name),
                cells: per_kind(&|kind, runs| {
                    if !proxied(kind) {
                        return None;
                    }
                    let v = quantile_ms(runs, i, q)? - direct?;
                    Some(Cell::new(v, format!("{v:+.3}")))
                }),
            });
        }
    }
    rows.push(Row {
        ratio: false,
        label: "the generator's own send lag, p50 / p99 ms (included in the latencies)".into(),
        cells: per_kind(&|_, runs| {
            let lag = |q: f64| {
                median(
                    runs.iter()
                        .flat_map(|m| &m.latency)
                        .map(|l| ms(crate::load::quantile(&l.dispatch_lag, q)))
                        .collect(),
                )
            };
            let (p50, p99) = (lag(0.5)?, lag(0.99)?);
            Some(Cell::new(p99, format!("{p50:.3} / {p99:.3}")))
        }),
    });
    let rss = |pick: fn(&Measurement) -> &Vec<u64>| {
        per_kind(&|kind, runs| {
            if !proxied(kind) {
                return None;
            }
            // Per proxy, the median over rounds; shown as the range over proxies.
            let proxies = runs.iter().map(|m| pick(m).len()).max()?;
            let per_proxy: Vec<f64> = (0..proxies)
                .filter_map(|p| {
                    median(
                        runs.iter()
                            .filter_map(|m| pick(m).get(p))
                            .map(|&kib| kib as f64 / 1024.0)
                            .collect(),
                    )
                })
                .collect();
            let low = per_proxy.iter().copied().reduce(f64::min)?;
            let high = per_proxy.iter().copied().reduce(f64::max)?;
            let text = if (high - low).abs() < 0.05 {
                format!("{high:.1}")
            } else {
                format!("{low:.1}–{high:.1}")
            };
            Some(Cell::new(high, text))
        })
    };
    rows.push(Row {
        ratio: true,
        label: "RSS per proxy, idle, MiB".into(),
        cells: rss(|m| &m.idle_rss_kib),
    });
    rows.push(Row {
        ratio: true,
        label: "RSS per proxy, peak after load (VmHWM), MiB".into(),
        cells: rss(|m| &m.peak_rss_kib),
    });
    rows.push(Row {
        ratio: false,
        label: format!(
            "share of calls served by echo-1 at max, {} (3:1 = 75 %)",
            cases.first().map_or("", |c| c.name.as_str())
        ),
        cells: per_kind(&|_, runs| {
            let (primary, completed) = runs
                .iter()
                .filter_map(|m| m.throughput.first())
                .fold((0, 0), |(p, c), t| (p + t.primary, c + t.completed));
            let v = 100.0 * primary as f64 / (completed as f64).max(1.0);
            Some(Cell::new(v, format!("{v:.1} %")))
        }),
    });
    rows.push(Row {
        ratio: false,
        label: "failed calls, all runs".into(),
        cells: per_kind(&|_, runs| {
            let errors: u64 = runs
                .iter()
                .map(|m| {
                    m.throughput.iter().map(|t| t.errors).sum::<u64>()
                        + m.latency.iter().map(|l| l.errors).sum::<u64>()
                })
                .sum();
            Some(Cell::new(errors as f64, errors.to_string()))
        }),
    });

    let mut out = String::from("## mesh data-path benchmark\n\n");
    for line in &setup.lines {
        let _ = writeln!(out, "- {line}");
    }
    out.push('\n');
    out.push_str(&table(kinds, &rows));
    out.push_str(
        "\nmesh/peer is the mesh's figure divided by the peer's: above 1 is better for calls/s, \
         below 1 is better for everything else. x-mtls/x is a proxy with mTLS against itself \
         without: what mTLS costs it.\n",
    );
    out.push_str(&mtls_cost(setup, cases, measurements));
    let first_errors: Vec<String> = measurements
        .iter()
        .flat_map(|m| {
            let errors = m.throughput.iter().filter_map(|t| t.first_error.clone());
            let more = m.latency.iter().filter_map(|l| l.first_error.clone());
            errors
                .chain(more)
                .map(move |e| format!("{}: {e}", m.kind.name()))
        })
        .collect();
    if let Some(first) = first_errors.first() {
        let _ = writeln!(out, "first failure: {first}");
    }
    out
}

/// The ratio columns, when both topologies ran: the mesh to each peer,
/// with mTLS too, and each proxy with mTLS to itself without (its cost).
const RATIOS: [(Kind, Kind); 5] = [
    (Kind::Mesh, Kind::Envoy),
    (Kind::Mesh, Kind::Nginx),
    (Kind::MeshMtls, Kind::EnvoyMtls),
    (Kind::MeshMtls, Kind::Mesh),
    (Kind::EnvoyMtls, Kind::Envoy),
];

/// A markdown table of `rows`, with the mesh's ratio to each peer.
pub fn table(kinds: &[Kind], rows: &[Row]) -> String {
    let column = |kind: Kind| kinds.iter().position(|&k| k == kind);
    // (numerator, denominator) columns, for the pairs that ran.
    let peers: Vec<(usize, usize)> = RATIOS
        .iter()
        .filter_map(|&(a, b)| Some((column(a)?, column(b)?)))
        .collect();
    let mut header: Vec<String> = vec![String::new()];
    header.extend(kinds.iter().map(|k| k.name().to_owned()));
    header.extend(
        peers
            .iter()
            .map(|&(a, b)| format!("{}/{}", kinds[a].name(), kinds[b].name())),
    );
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = vec![row.label.clone()];
        line.extend(row.cells.iter().map(|c| {
            c.as_ref()
                .map_or_else(|| "–".to_owned(), |c| c.text.clone())
        }));
        for &(mesh, peer) in &peers {
            if !row.ratio {
                line.push(String::new());
                continue;
            }
            let ratio = row.cells[mesh]
                .as_ref()
                .zip(row.cells[peer].as_ref())
                // A ratio of a negative difference (noise) means nothing.
                .filter(|(m, p)| m.value > 0.0 && p.value > 0.0)
                .map_or_else(
                    || "–".to_owned(),
                    |(m, p)| format!("{:.2}", m.value / p.value),
                );
            line.push(ratio);
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (text, &width))| {
                let pad = " ".repeat(width - text.chars().count());
                if c == 0 {
                    format!(" {text}{pad} ")
                } else {
                    format!(" {pad}{text} ")
                }
            })
            .collect();
        let _ = writeln!(out, "|{}|", cells.join("|"));
        if n == 0 {
            // Labels left-aligned, figures right-aligned.
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, &w)| {
                    if c == 0 {
                        "-".repeat(w + 2)
                    } else {
                        format!("{}:", "-".repeat(w + 1))
                    }
                })
                .collect();
            let _ = writeln!(out, "|{}|", rule.join("|"));
        }
    }
    out
}

/// The mesh's route and the peers' configuration files, as run.
pub fn configurations() -> anyhow::Result<String> {
    let mut out = String::from("\n## configuration\n\n");
    let route =
        serde_json::to_string_pretty(&topology::echo_route(topology::MeshRoute::default())?)?;
    let _ = writeln!(
        out,
        "### mesh: route applied through the control plane (echo-1 --weight 3, echo-2 --weight 1)\n\n```json\n{route}\n```\n"
    );
    for template in [
        proxy_config::ENVOY_OUTBOUND,
        proxy_config::ENVOY_INBOUND,
        proxy_config::ENVOY_OUTBOUND_MTLS,
        proxy_config::ENVOY_INBOUND_MTLS,
        proxy_config::NGINX_OUTBOUND,
        proxy_config::NGINX_INBOUND,
    ] {
        let _ = writeln!(out, "### {}\n\n```\n{}```\n", template.path, template.text);
    }
    Ok(out)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// What mTLS costs the mesh and Envoy, each against itself without it,
/// per case: calls/s lost, proxy CPU added per 1,000 calls, latency
/// added at the open-loop rate (p50); and the mesh's lead over Envoy
/// with and without mTLS. Empty unless all four topologies ran.
fn mtls_cost(setup: &Setup, cases: &[Case], measurements: &[Measurement]) -> String {
    let pick = |kind: Kind, f: &dyn Fn(&Measurement) -> Option<f64>| -> Option<f64> {
        median(
            measurements
                .iter()
                .filter(|m| m.kind == kind)
                .filter_map(f)
                .collect(),
        )
    };
    let kinds = [Kind::Mesh, Kind::MeshMtls, Kind::Envoy, Kind::EnvoyMtls];
    if kinds
        .iter()
        .any(|&k| !measurements.iter().any(|m| m.kind == k))
    {
        return String::new();
    }
    let mut out = String::from(
        "\nWhat mTLS costs each (with mTLS minus without; medians over rounds):\n\n\
         | case | figure | mesh | envoy | mesh/envoy |\n|---|---|---:|---:|---:|\n",
    );
    for (i, case) in cases.iter().enumerate() {
        let calls = |k: Kind| pick(k, &|m| m.throughput.get(i).map(Throughput::per_second));
        let cpu = |k: Kind| pick(k, &|m| m.throughput.get(i).map(Throughput::cpu_ms_per_1000));
        let p50 = |k: Kind| pick(k, &|m| m.latency.get(i).map(|l| ms(l.quantile(0.5))));
        let (Some(mesh), Some(mesh_tls), Some(envoy), Some(envoy_tls)) = (
            calls(Kind::Mesh),
            calls(Kind::MeshMtls),
            calls(Kind::Envoy),
            calls(Kind::EnvoyMtls),
        ) else {
            continue;
        };
        let lost = |plain: f64, tls: f64| 100.0 * (plain - tls) / plain;
        let (mesh_lost, envoy_lost) = (lost(mesh, mesh_tls), lost(envoy, envoy_tls));
        let ratio = |a: f64, b: f64| {
            if a > 0.0 && b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            out,
            "| {} | max calls/s lost | {mesh_lost:.1} % | {envoy_lost:.1} % | {} |",
            case.name,
            ratio(mesh_lost, envoy_lost)
        );
        if let (Some(a), Some(b), Some(c), Some(d)) = (
            cpu(Kind::Mesh),
            cpu(Kind::MeshMtls),
            cpu(Kind::Envoy),
            cpu(Kind::EnvoyMtls),
        ) {
            let _ = writeln!(
                out,
                "| {} | proxy CPU ms per 1,000 calls added | {:+.1} ({:+.0} %) | {:+.1} ({:+.0} %) | {} |",
                case.name,
                b - a,
                100.0 * (b - a) / a,
                d - c,
                100.0 * (d - c) / c,
                ratio(b - a, d - c)
            );
        }
        if let (Some(a), Some(b), Some(c), Some(d)) = (
            p50(Kind::Mesh),
            p50(Kind::MeshMtls),
            p50(Kind::Envoy),
            p50(Kind::EnvoyMtls),
        ) {
            let _ = writeln!(
                out,
                "| {} | p50 ms added at {} calls/s | {:+.3} | {:+.3} | {} |",
                case.name,
                setup.rate,
                b - a,
                d - c,
                ratio(b - a, d - c)
            );
        }
        let _ = writeln!(
            out,
            "| {} | mesh/envoy max calls/s: plaintext, mTLS | {:.2} | {:.2} | |",
            case.name,
            mesh / envoy,
            mesh_tls / envoy_tls
        );
    }
    out
}

/// `12345.6` as `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(55_123.7), "55,124");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn envoy_versions_are_shortened() {
        assert_eq!(
            envoy_version("envoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL"),
            "Envoy 1.40.0"
        );
        assert_eq!(envoy_version("odd"), "odd");
    }

    fn measurement(kind: Kind, per_second: u64, p50_us: u64) -> Measurement {
        Measurement {
            kind,
            throughput: vec![Throughput {
                completed: per_second,
                primary: per_second * 3 / 4,
                window: Duration::from_secs(1),
                proxy_cpu: Duration::from_millis(per_second / 10),
                ..Throughput::default()
            }],
            latency: vec![Latencies {
                sorted: vec![Duration::from_micros(p50_us)],
                ..Latencies::default()
            }],
            idle_rss_kib: vec![4096, 5120],
            peak_rss_kib: vec![8192, 8192],
        }
    }

    #[test]
    fn the_table_has_medians_and_ratios() {
        let cases = vec![Case {
            name: "unary 16 B".into(),
            payload: 16,
            replies: None,
        }];
        let kinds = [Kind::Direct, Kind::Mesh, Kind::Envoy];
        let measurements = vec![
            measurement(Kind::Direct, 10_000, 100),
            measurement(Kind::Mesh, 8_000, 300),
            measurement(Kind::Envoy, 2_000, 1_100),
            measurement(Kind::Mesh, 9_000, 300),
            measurement(Kind::Mesh, 1_000, 300),
        ];
        let setup = Setup {
            lines: vec!["date: today".into()],
            rate: 500.0,
        };
        let text = render(&setup, &cases, &kinds, &measurements);
        let row = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("| {label}")))
                .unwrap_or_else(|| panic!("no row {label} in\n{text}"))
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("max calls/s, unary 16 B"),
            [
                "max calls/s, unary 16 B",
                "10,000",
                "8,000",
                "2,000",
                "4.00"
            ]
        );
        // +0.2 ms for the mesh, +1.0 ms for Envoy.
        assert_eq!(row("latency added over direct, unary 16 B, p50")[4], "0.20");
        assert_eq!(row("RSS per proxy, idle")[2], "4.0–5.0");
        assert_eq!(row("share of calls")[2], "75.0 %");
        assert!(text.contains("| mesh/envoy |"), "{text}");
    }
}
