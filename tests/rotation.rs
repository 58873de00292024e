//! Trust-anchor rotation and `meshctl check` on a real mTLS mesh (its own
//! CA, etcd, two control-plane replicas, real processes): the anchor is
//! replaced under steady load through the gateway with no failed call and
//! no process restarted, and `meshctl check` tells a healthy mesh from one
//! whose certificates are about to expire.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh::identity::certificate::certificates_from_pem;
use mesh::identity::{ClientAuth, MeshTls, SpiffeId, TrustBundle};
use mesh::proto::mesh::v1::mesh_admin_client::MeshAdminClient;
use mesh::proto::mesh::v1::{GetTrustBundleRequest, StatusRequest, StatusResponse};
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::{block_on, TestMesh};

const DOMAIN: &str = mesh::identity::DEFAULT_TRUST_DOMAIN;

fn shop(certificate_lifetime: &str) -> TestMesh {
    TestMesh::start(&Topology {
        services: vec![(
            "catalog".into(),
            vec![
                InstanceSpec::new("catalog-1"),
                InstanceSpec::new("catalog-2"),
            ],
        )],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 2,
            certificate_lifetime: certificate_lifetime.into(),
            ..ControlPlaneSpec::default()
        }),
        ..Topology::default()
    })
}

/// The admin API as the mesh's admin operator (whose certificate the
/// rotation re-issued).
fn admin_call<T: Send + 'static>(
    mesh: &TestMesh,
    call: impl FnOnce(
            MeshAdminClient<tonic::transport::Channel>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let tls = mesh.plan.identity.as_ref().unwrap().operator_tls().unwrap();
    let uri = mesh.plan.control_planes[0].clone();
    block_on(async move {
        let channel = mesh::identity::transport::channel(
            &uri,
            tls,
            SpiffeId::new(DOMAIN, mesh::identity::Workload::ControlPlane).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .expect("mTLS to the control plane");
        call(MeshAdminClient::new(channel)).await
    })
}

fn status(mesh: &TestMesh) -> StatusResponse {
    admin_call(mesh, |mut client| {
        Box::pin(async move { client.status(StatusRequest {}).await.unwrap().into_inner() })
    })
}

/// Waits until every proxy of the plan shows in the control plane's
/// status with a certificate (replicas publish it every 500 ms).
fn wait_for_every_proxy(mesh: &TestMesh) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(mesh);
        let reported = status
            .sidecars
            .iter()
            .filter(|s| s.certificate_not_after_unix > 0)
            .count();
        if reported == mesh.proxies().len() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every proxy reported its certificate: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TLS that trusts `anchor_pem` alone and presents nothing.
fn trusting(anchor_pem: &str) -> Arc<MeshTls> {
    Arc::new(
        MeshTls::new(
            DOMAIN,
            TrustBundle::from_pem(anchor_pem, 0).unwrap(),
            ClientAuth::Required,
        )
        .unwrap(),
    )
}

/// True when the server at `addr` proves `id` with a chain `tls` trusts.
fn proves(tls: &Arc<MeshTls>, addr: std::net::SocketAddr, id: SpiffeId) -> bool {
    let tls = tls.clone();
    block_on(async move {
        mesh::identity::transport::connect(&tls, &addr.to_string(), id)
            .await
            .is_ok()
    })
}

/// SHA-256 of the first certificate's DER, hex: how the mesh names an issuer.
fn fingerprint(pem: &str) -> String {
    let der = certificates_from_pem(pem).unwrap().remove(0);
    ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_anchor_rotates_under_load_with_no_failed_call_and_no_restart() {
    let mut mesh = shop("24h");
    wait_for_every_proxy(&mesh);
    let identity = mesh.plan.identity.clone().unwrap();
    let ca_dir = identity.ca_dir();
    let old_anchor = std::fs::read_to_string(ca_dir.join("anchor.crt")).unwrap();
    let new_dir = mesh.dir().join("new-ca");
    let (ok, _, stderr) = mesh.meshctl(
        &["identity", "init", "--out", &new_dir.display().to_string()],
        None,
    );
    assert!(ok, "meshctl identity init: {stderr}");
    let new_anchor = std::fs::read_to_string(new_dir.join("anchor.crt")).unwrap();
    let new_issuer = fingerprint(&std::fs::read_to_string(new_dir.join("issuer.crt")).unwrap());
    let before = mesh.pids();
    assert!(
        before.len() >= 7,
        "etcd, 2 replicas, 2 apps, 2 sidecars, gateway: {before:?}"
    );

    // Steady load through the gateway, on a thread of its own, bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        let uri = mesh.gateway_uri();
        std::thread::spawn(move || {
            block_on(async move {
                use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
                use mesh::proto::shop::catalog::v1::GetProductRequest;
                let channel = support::channel(uri).await;
                let sku = support::first_product(&channel).await.sku;
                let mut client = CatalogServiceClient::new(channel);
                let mut errors = Vec::new();
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request = GetProductRequest { sku: sku.clone() };
                    match client.get_product(request).await {
                        Ok(_) => {}
                        Err(status) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            if errors.len() < 5 {
                                errors.push(status);
                            }
                        }
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                errors
            })
        })
    };

    let (ok, stdout, stderr) = mesh.meshctl(
        &[
            "identity",
            "rotate",
            "--new-ca-dir",
            &new_dir.display().to_string(),
            "--ca-dir",
            &ca_dir.display().to_string(),
            "--timeout",
            "120s",
        ],
        None,
    );
    eprintln!("{stdout}");
    assert!(ok, "meshctl identity rotate failed: {stderr}\n{stdout}");
    for phase in ["phase 1/3", "phase 2/3", "phase 3/3", "rotation complete"] {
        assert!(stdout.contains(phase), "{phase} missing:\n{stdout}");
    }
    // Run again: every phase finds its work done.
    let (ok, again, stderr) = mesh.meshctl(
        &[
            "identity",
            "rotate",
            "--new-ca-dir",
            &new_dir.display().to_string(),
            "--ca-dir",
            &ca_dir.display().to_string(),
            "--timeout",
            "60s",
        ],
        None,
    );
    assert!(ok, "a second rotate failed: {stderr}\n{again}");
    assert!(!again.contains("stored the bundle"), "{again}");
    // Some more calls after the last phase, then stop the load.
    let after_rotation = calls.load(Ordering::Relaxed);
    while calls.load(Ordering::Relaxed) < after_rotation + 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let (calls, failures) = (
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    assert!(calls > 100, "only {calls} calls were made");
    assert_eq!(
        failures, 0,
        "{failures} of {calls} calls failed: {errors:?}"
    );

    // Nothing was restarted.
    assert_eq!(mesh.pids(), before, "a process was restarted");

    // The store holds the new anchor only; every proxy runs that bundle
    // and holds a certificate from the new issuer.
    let stored = admin_call(&mesh, |mut client| {
        Box::pin(async move {
            client
                .get_trust_bundle(GetTrustBundleRequest {})
                .await
                .unwrap()
                .into_inner()
        })
    });
    assert_eq!(
        certificates_from_pem(&stored.pem).unwrap(),
        certificates_from_pem(&new_anchor).unwrap(),
        "the stored bundle is the new anchor alone"
    );
    let status = status(&mesh);
    assert_eq!(status.sidecars.len(), mesh.proxies().len(), "{status:?}");
    assert_eq!(status.issuer_fingerprint, new_issuer);
    for sidecar in &status.sidecars {
        assert_eq!(
            sidecar.certificate_issuer_fingerprint, new_issuer,
            "{sidecar:?}"
        );
        assert_eq!(
            sidecar.trust_bundle_version, stored.revision as u64,
            "{sidecar:?}"
        );
    }
    // Proved over TLS: each sidecar's serving chain verifies under the new
    // anchor and no longer under the old one; each proxy trusts one anchor.
    let (new_only, old_only) = (trusting(&new_anchor), trusting(&old_anchor));
    for instance in ["catalog-1", "catalog-2"] {
        let inbound = mesh.serving(&format!("{instance}-sidecar"));
        let catalog = SpiffeId::service(DOMAIN, "catalog").unwrap();
        assert!(proves(&new_only, inbound, catalog.clone()), "{instance}");
        assert!(!proves(&old_only, inbound, catalog), "{instance}");
    }
    for proxy in mesh.proxies() {
        let admin = mesh.plan.process(&proxy).unwrap().admin.unwrap();
        let (code, body) = meshctl::demo::admin_get(admin, "/identity").unwrap();
        assert_eq!(code, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["trust_anchors"], 1, "{proxy}: {view}");
    }
    // The files left behind name the new CA: the bundle and the issuer.
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("bundle.crt")).unwrap(),
        new_anchor
    );
    // And the healthy mesh passes meshctl check.
    let (ok, stdout, stderr) = mesh.meshctl(&["check", "--expiry-threshold", "1h"], None);
    assert!(
        ok,
        "meshctl check failed on a healthy mesh: {stderr}\n{stdout}"
    );
    assert!(stdout.lines().all(|l| l.starts_with("ok")), "{stdout}");
    let log = mesh.log("control-plane-1");
    assert!(
        log.lines()
            .any(|l| l.contains("mesh changed") && l.contains("set-trust-bundle")),
        "no audit line for the bundle:\n{log}"
    );
}

#[test]
fn check_fails_on_a_certificate_near_expiry() {
    let mesh = shop("20s");
    wait_for_every_proxy(&mesh);
    let (ok, stdout, stderr) = mesh.meshctl(&["check", "--expiry-threshold", "1h"], None);
    assert!(
        !ok,
        "meshctl check passed with 20 s certificates:\n{stdout}"
    );
    let expiring: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains("its certificate"))
        .collect();
    assert_eq!(expiring.len(), mesh.proxies().len(), "{stdout}");
    assert!(stderr.contains("problem"), "{stderr}");
    // With a threshold below the lifetime, the same mesh passes.
    let (ok, stdout, stderr) = mesh.meshctl(&["check", "--expiry-threshold", "1s"], None);
    assert!(ok, "{stderr}\n{stdout}");
}
