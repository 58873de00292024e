//! `meshctl dashboard` in a real headless Chromium (Debian's `chromium`),
//! beside a real secure mesh under load: the page loads with no script
//! error, the graph shows the gateway -> catalog edge once calls flow, and
//! a catalog instance whose app was SIGKILLed shows as ejected. The
//! screenshot is kept as a test artifact (`target/tmp/dashboard.png`).

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshctl::demo::{admin_get, InstanceSpec};
use support::TestMesh;

/// How long the mesh may take to show what the test waits for on a loaded
/// 2-core machine (a timeout, not an expected time).
const SETTLE: Duration = Duration::from_secs(90);

/// Kills the dashboard when the test ends, however it ends.
struct Dashboard(std::process::Child);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium(args: &[&str]) -> (String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1400",
            // Lets the page's fetch and timers run before the dump.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", home.path().display()))
        .args(args)
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_dashboard_shows_the_graph_and_an_ejected_instance_in_a_real_browser() {
    if !support::have_tool("chromium") {
        return;
    }
    let mut topology = support::secure_catalog();
    topology.services = vec![(
        "catalog".into(),
        vec![
            InstanceSpec::new("catalog-1"),
            InstanceSpec::new("catalog-2"),
        ],
    )];
    let mut mesh = TestMesh::start(&topology);
    let revision = mesh.meshctl_apply(
        "kind: Route\nmetadata:\n  name: catalog\nspec:\n  match:\n    service: shop.catalog.v1.CatalogService\n  destination: catalog\n  exposure: public\n  outlierDetection:\n    consecutiveFailures: 2\n    baseEjection: 60s\n    maxEjection: 120s\n    maxEjectionPercent: 50\n",
    );
    mesh.wait_for_version(revision);

    // The dashboard on a port of its own choosing: it prints where.
    let config = mesh.plan.identity.as_ref().map(|i| i.meshconfig());
    let mut dashboard = Dashboard(
        mesh.meshctl_command(
            config.as_deref(),
            &["dashboard", "--listen", "127.0.0.1:0", "--interval", "1s"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meshctl dashboard"),
    );
    let stderr = dashboard.0.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("meshctl dashboard said where it serves")
            .unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    let address: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();

    // Calls through the gateway all along (some fail once catalog-2's app
    // is gone: that is the point).
    let load = support::CatalogLoad::start(mesh.gateway_uri());
    mesh.kill("catalog-2");

    // The state the page draws: the edge and the ejection.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = admin_get(address, "/api/state").unwrap();
        assert_eq!(status, 200, "{body}");
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        let edge = state["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == "gateway" && e["to"] == "catalog");
        let ejected = state["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["instance"] == "catalog-2" && e["ejected"] == true);
        if edge && ejected {
            break;
        }
        assert!(Instant::now() < deadline, "no edge or no ejection: {body}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // A real browser: the DOM after the page's script ran, and a screenshot.
    let (dom, log) = chromium(&["--dump-dom", &url]);
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("rror")))
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:#?}"
    );
    assert!(!dom.contains("data-error"), "a script error: {dom}");
    assert!(dom.contains(r#"data-service="catalog""#), "{dom}");
    assert!(dom.contains(r#"data-service="gateway""#), "{dom}");
    assert!(
        dom.contains(r#"data-from="gateway" data-to="catalog""#),
        "{dom}"
    );
    assert!(
        dom.contains("catalog-2") && dom.contains(">ejected<"),
        "{dom}"
    );
    assert!(
        dom.contains(r#"class="node degraded has-ejected""#) || dom.contains("has-ejected"),
        "{dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display()), &url]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());

    // Read-only: nothing but GET.
    let (status, _) =
        meshctl::demo::admin_request(address, http::Method::POST, "/api/state").unwrap();
    assert_eq!(status, 405);
    // A page elsewhere whose name was rebound to 127.0.0.1 is refused.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(address).unwrap();
    raw.write_all(b"GET /api/state HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");

    drop(load);
}
