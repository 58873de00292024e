//! `meshctl top`: the busiest gRPC methods across the mesh right now, live
//! in the terminal (calls/s, success, p50 and p99), sortable, like `top`
//! for processes. Usable over SSH: it draws with ratatui on the terminal it
//! runs in, and leaves it as it found it on `q`, Esc or Ctrl-C.
//!
//! The figures are `meshctl stat`'s (the proxies' own metrics, read by
//! meshctl every interval and differenced), counted where each call is
//! answered: the serving service's sidecars (direction `inbound`), so a
//! call is counted once whoever made it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

use super::stat::{latency_ms, window, Snapshot, Totals};
use super::ControlPlaneArgs;

/// What the rows are ordered by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Calls per second, busiest first.
    #[default]
    Calls,
    /// Success rate, worst first.
    Success,
    /// Median latency, slowest first.
    P50,
    /// 99th percentile latency, slowest first.
    P99,
    /// Method name.
    Method,
}

impl SortBy {
    /// The next order (the `s` key).
    fn next(self) -> Self {
        match self {
            Self::Calls => Self::Success,
            Self::Success => Self::P50,
            Self::P50 => Self::P99,
            Self::P99 => Self::Method,
            Self::Method => Self::Calls,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Calls => "calls/s",
            Self::Success => "success",
            Self::P50 => "p50",
            Self::P99 => "p99",
            Self::Method => "method",
        }
    }
}

/// Options of `meshctl top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// How often the figures refresh; each covers the interval before it.
    #[arg(long, default_value = "2s", value_parser = mesh::identity::parse_lifetime)]
    pub interval: Duration,
    /// The order at start (`s` changes it, `r` reverses it).
    #[arg(long, value_enum, default_value_t)]
    pub sort: SortBy,
}

/// One method's figures over an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRow {
    /// `package.Service/Method` (or `other`: see the proxies' metrics).
    pub method: String,
    /// The mesh service that answered.
    pub service: String,
    /// Calls answered per second.
    pub calls_per_second: f64,
    /// Share with status OK; none without calls.
    pub success_rate: Option<f64>,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
}

/// Runs `meshctl top` until `q`, Esc or Ctrl-C.
pub async fn run(control_plane: &ControlPlaneArgs, args: TopArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "meshctl top draws on a terminal; for scripts use `meshctl stat -o json`"
    );
    anyhow::ensure!(
        args.interval >= Duration::from_millis(200),
        "--interval: at least 200ms"
    );
    let mut client = control_plane.connect().await?;
    let mut before = Snapshot::take(&mut client, false).await?;
    let mut view = View {
        sort: args.sort,
        reversed: false,
        rows: Vec::new(),
        proxies: before.proxies.len(),
        interval: args.interval,
        problem: None,
    };
    let keys = spawn_key_reader();
    let mut terminal = ratatui::init();
    let result = view
        .live(&mut terminal, keys, &mut client, &mut before)
        .await;
    ratatui::restore();
    result
}

/// What is on screen.
struct View {
    sort: SortBy,
    reversed: bool,
    rows: Vec<MethodRow>,
    proxies: usize,
    interval: Duration,
    /// Why the last refresh failed (the figures shown are older).
    problem: Option<String>,
}

impl View {
    async fn live(
        &mut self,
        terminal: &mut DefaultTerminal,
        mut keys: mpsc::Receiver<KeyEvent>,
        client: &mut super::AdminClient,
        before: &mut Snapshot,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await;
        let mut taken = std::time::Instant::now();
        loop {
            terminal
                .draw(|frame| self.draw(frame))
                .context("drawing on the terminal")?;
            tokio::select! {
                _ = tick.tick() => match Snapshot::take(client, false).await {
                    Ok(after) => {
                        // Rates over the time that really passed.
                        let now = std::time::Instant::now();
                        self.rows = methods(before, &after, now - taken);
                        taken = now;
                        self.proxies = after.proxies.len();
                        self.problem = None;
                        *before = after;
                    }
                    Err(error) => self.problem = Some(format!("{error:#}")),
                },
                key = keys.recv() => match key {
                    None => return Ok(()),
                    Some(key) if quits(&key) => return Ok(()),
                    Some(key) => match key.code {
                        KeyCode::Char('s') | KeyCode::Tab => self.sort = self.sort.next(),
                        KeyCode::Char('r') => self.reversed = !self.reversed,
                        _ => {}
                    },
                },
                // Raw mode turns Ctrl-C into a key; a signal still ends it.
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

    fn draw(&self, frame: &mut Frame<'_>) {
        let [header, table] =
            Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(frame.area());
        let status = match &self.problem {
            Some(problem) => format!("refresh failed: {problem}"),
            None => format!(
                "{} proxies · every {:?} · sorted by {}{}",
                self.proxies,
                self.interval,
                self.sort.label(),
                if self.reversed { " (reversed)" } else { "" }
            ),
        };
        frame.render_widget(
            Paragraph::new(vec![
                Line::from("meshctl top: the busiest gRPC methods (s: sort, r: reverse, q: quit)"),
                Line::from(status),
            ]),
            header,
        );
        let mut rows = self.rows.clone();
        sort_rows(&mut rows, self.sort, self.reversed);
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let heading = Row::new([
            "METHOD", "SERVICE", "CALLS/S", "SUCCESS", "P50 MS", "P99 MS",
        ])
        .style(bold);
        let body = rows.iter().map(|row| {
            Row::new([
                Cell::from(row.method.clone()),
                Cell::from(row.service.clone()),
                Cell::from(format!("{:.1}", row.calls_per_second)),
                Cell::from(percent(row.success_rate)),
                Cell::from(millis(row.p50_ms)),
                Cell::from(millis(row.p99_ms)),
            ])
        });
        let widths = [
            Constraint::Min(30),
            Constraint::Length(14),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ];
        frame.render_widget(Table::new(body, widths).header(heading), table);
    }
}

fn quits(key: &KeyEvent) -> bool {
    matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
}

/// Reads key presses on a thread of its own (crossterm's reads block);
/// ends when the receiver is gone or the terminal cannot be read.
fn spawn_key_reader() -> mpsc::Receiver<KeyEvent> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => return,
            }
            match event::read() {
                Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                    if tx.blocking_send(key).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Per method, what the serving sidecars answered between `before` and
/// `after`, `interval` apart; busiest first.
fn methods(before: &Snapshot, after: &Snapshot, interval: Duration) -> Vec<MethodRow> {
    let mut totals: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for (_, sample, delta) in window(before, after) {
        if sample.label("direction") != "inbound" {
            continue;
        }
        let key = (
            sample.label("method").to_owned(),
            sample.label("service").to_owned(),
        );
        if key.0.is_empty() {
            continue;
        }
        totals.entry(key).or_default().add(sample, delta);
    }
    let seconds = interval.as_secs_f64().max(f64::EPSILON);
    let mut rows: Vec<MethodRow> = totals
        .into_iter()
        .filter(|(_, t)| t.calls > 0.0)
        .map(|((method, service), t)| MethodRow {
            method,
            service,
            calls_per_second: t.calls / seconds,
            success_rate: Some(t.ok / t.calls),
            p50_ms: latency_ms(&t, 0.5),
            p99_ms: latency_ms(&t, 0.99),
        })
        .collect();
    sort_rows(&mut rows, SortBy::Calls, false);
    rows
}

/// Orders `rows` by `by` (worst or busiest first), then by method.
fn sort_rows(rows: &mut [MethodRow], by: SortBy, reversed: bool) {
    let key = |row: &MethodRow| -> f64 {
        match by {
            SortBy::Calls => -row.calls_per_second,
            SortBy::Success => row.success_rate.unwrap_or(1.0),
            SortBy::P50 => -row.p50_ms.unwrap_or(0.0),
            SortBy::P99 => -row.p99_ms.unwrap_or(0.0),
            SortBy::Method => 0.0,
        }
    };
    rows.sort_by(|a, b| {
        key(a)
            .total_cmp(&key(b))
            .then_with(|| a.method.cmp(&b.method))
    });
    if reversed {
        rows.reverse();
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"))
}

#[cfg(test)]
mod tests {
    use super::super::stat::ProxyNumbers;
    use super::*;

    fn proxy(lines: &str) -> ProxyNumbers {
        ProxyNumbers {
            caller: "catalog".into(),
            samples: super::super::scrape::samples(lines, "mesh_"),
        }
    }

    fn snapshot(lines: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot
            .proxies
            .insert("catalog/catalog-1".into(), proxy(lines));
        snapshot
    }

    const LIST: &str = "method=\"shop.catalog.v1.CatalogService/ListProducts\"";
    const GET: &str = "method=\"shop.catalog.v1.CatalogService/GetProduct\"";

    fn metrics(list_ok: u32, list_failed: u32, get_ok: u32) -> String {
        let mut text = String::new();
        for (method, code, n) in [(LIST, 0, list_ok), (LIST, 5, list_failed), (GET, 0, get_ok)] {
            text.push_str(&format!(
                "mesh_responses_total{{direction=\"inbound\",service=\"catalog\",route=\"\",{method},code=\"{code}\"}} {n}\n"
            ));
        }
        for (method, n) in [(LIST, list_ok + list_failed), (GET, get_ok)] {
            for (le, share) in [("0.001", 0), ("0.005", n / 2), ("0.01", n), ("+Inf", n)] {
                text.push_str(&format!(
                    "mesh_request_duration_seconds_bucket{{direction=\"inbound\",service=\"catalog\",route=\"\",{method},le=\"{le}\"}} {share}\n"
                ));
            }
        }
        // The same calls seen by the caller's outbound: not counted again.
        text.push_str(&format!(
            "mesh_responses_total{{direction=\"outbound\",service=\"catalog\",route=\"catalog\",{LIST},code=\"0\"}} 999\n"
        ));
        text
    }

    #[test]
    fn methods_over_the_interval_busiest_first_counted_once() {
        let before = snapshot(&metrics(10, 0, 5));
        let after = snapshot(&metrics(50, 10, 15));
        let rows = methods(&before, &after, Duration::from_secs(2));
        assert_eq!(rows.len(), 2);
        let list = &rows[0];
        assert_eq!(list.method, "shop.catalog.v1.CatalogService/ListProducts");
        assert_eq!(list.service, "catalog");
        assert_eq!(list.calls_per_second, 25.0, "(40 OK + 10 failed) / 2 s");
        assert_eq!(list.success_rate, Some(0.8));
        let p50 = list.p50_ms.unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        assert_eq!(rows[1].calls_per_second, 5.0);
    }

    #[test]
    fn each_order_and_its_reverse() {
        let row = |method: &str, calls, success, p99| MethodRow {
            method: method.into(),
            service: "s".into(),
            calls_per_second: calls,
            success_rate: Some(success),
            p50_ms: Some(1.0),
            p99_ms: Some(p99),
        };
        let mut rows = vec![row("a", 1.0, 0.5, 9.0), row("b", 9.0, 1.0, 1.0)];
        sort_rows(&mut rows, SortBy::Calls, false);
        assert_eq!(rows[0].method, "b");
        sort_rows(&mut rows, SortBy::Success, false);
        assert_eq!(rows[0].method, "a", "worst first");
        sort_rows(&mut rows, SortBy::P99, false);
        assert_eq!(rows[0].method, "a", "slowest first");
        sort_rows(&mut rows, SortBy::Method, true);
        assert_eq!(rows[0].method, "b");
        assert_eq!(SortBy::Method.next(), SortBy::Calls);
    }
}
