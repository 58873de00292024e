//! Certificates that live seconds: renewed under load with no failed call,
//! and a mesh that keeps serving while every control-plane replica is
//! SIGKILLed, renewing again when one returns.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::{block_on, TestMesh};

/// Short enough that a test sees several renewals (at 70-75 %: every
/// 7-8 s), long enough that a loaded machine renews in time.
const LIFETIME: &str = "10s";

fn mesh() -> TestMesh {
    TestMesh::start(&Topology {
        services: vec![
            ("catalog".into(), vec![InstanceSpec::new("catalog-1")]),
            ("inventory".into(), vec![InstanceSpec::new("inventory-1")]),
        ],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 2,
            certificate_lifetime: LIFETIME.into(),
            ..ControlPlaneSpec::default()
        }),
        ..Topology::default()
    })
}

/// Calls through the gateway on a thread of its own until `stop` (or a
/// bound on calls), one at a time; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(uri: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            move || {
                block_on(async move {
                    use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
                    use mesh::proto::shop::catalog::v1::ListProductsRequest;
                    let mut client = CatalogServiceClient::new(support::channel(uri).await);
                    let mut errors = Vec::new();
                    // Bounded: at most 20,000 calls whatever happens.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let call = client.list_products(ListProductsRequest {
                            page_size: 1,
                            page_token: String::new(),
                        });
                        match tokio::time::timeout(Duration::from_secs(10), call).await {
                            Ok(Ok(_)) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Err(status)) => {
                                errors.push(format!("{status:?}"));
                            }
                            Err(_) => {
                                errors.push("no answer in 10 s".into());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    errors
                })
            }
        });
        Self {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.thread.take().unwrap().join().unwrap();
        (self.ok(), errors)
    }
}

fn renewals(mesh: &TestMesh, proxy: &str, result: &str) -> f64 {
    mesh.counter(proxy, "mesh_identity_renewals_total", &[("result", result)])
}

/// Waits (bounded) until `done` holds, polling.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn certificates_renew_under_load_with_no_failed_call() {
    let mesh = mesh();
    let proxies = mesh.proxies();
    let before: Vec<f64> = proxies.iter().map(|p| renewals(&mesh, p, "ok")).collect();
    let load = Load::start(mesh.gateway_uri());
    // Calls flow across two certificate lifetimes (every certificate
    // alive at the start expires meanwhile), and every proxy renews at
    // least twice.
    let started = Instant::now();
    wait_until("two lifetimes of calls", Duration::from_secs(60), || {
        started.elapsed() >= Duration::from_secs(20) && load.ok() >= 100
    });
    for (proxy, before) in proxies.iter().zip(&before) {
        wait_until(
            &format!("{proxy} renewed twice"),
            Duration::from_secs(60),
            || renewals(&mesh, proxy, "ok") >= before + 2.0,
        );
    }
    let (ok, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "failed calls during renewals: {errors:?}"
    );
    assert!(ok >= 100, "too little load to prove anything: {ok} calls");
}

#[test]
fn proxies_serve_through_a_control_plane_outage_and_renew_after_it() {
    let mut mesh = mesh();
    let load = Load::start(mesh.gateway_uri());
    wait_until("calls flow", Duration::from_secs(30), || load.ok() >= 20);
    for replica in ["control-plane-1", "control-plane-2"] {
        mesh.kill(replica);
    }
    // With no CA, renewals fail (and are counted) while calls go on.
    wait_until("a renewal failed", Duration::from_secs(30), || {
        renewals(&mesh, "gateway", "error") >= 1.0
    });
    let during = load.ok();
    wait_until(
        "calls flow during the outage",
        Duration::from_secs(30),
        || load.ok() >= during + 20,
    );
    let renewed = renewals(&mesh, "catalog-1-sidecar", "ok");
    mesh.restart("control-plane-1");
    wait_until("catalog-1 renews again", Duration::from_secs(60), || {
        renewals(&mesh, "catalog-1-sidecar", "ok") > renewed
    });
    let (_, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "failed calls during the outage: {errors:?}"
    );
}
