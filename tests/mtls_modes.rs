//! The mesh-wide mTLS mode on a real mesh (real certificates, etcd and
//! processes): strict by default, `meshctl mtls set permissive` opens the
//! sidecars' inbound ports to plaintext gRPC too (for migrating a running
//! mesh) without a restart while mTLS callers keep working, and
//! `meshctl mtls set strict` closes them again. Only admins may switch.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{block_on, TestMesh};

/// The mode catalog-1's sidecar says it runs, on its admin `/identity`.
fn identity_mode(mesh: &TestMesh) -> String {
    let admin = mesh
        .plan
        .process("catalog-1-sidecar")
        .unwrap()
        .admin
        .unwrap();
    let (status, body) = meshctl::demo::admin_get(admin, "/identity").expect("GET /identity");
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    view["mtls"].as_str().unwrap_or_default().to_owned()
}

fn secure_mesh() -> TestMesh {
    TestMesh::start(&support::secure_catalog())
}

/// A plaintext (h2c) gRPC call to catalog's inbound port: `Ok` with who
/// served it, or why it failed.
fn plaintext_call(mesh: &TestMesh) -> Result<String, String> {
    let inbound = mesh.serving("catalog-1-sidecar");
    block_on(async move {
        use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
        use mesh::proto::shop::catalog::v1::ListProductsRequest;
        let channel = tonic::transport::Channel::from_shared(format!("http://{inbound}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let response = CatalogServiceClient::new(channel)
            .list_products(ListProductsRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .map_err(|status| format!("{status:?}"))?;
        Ok(response
            .metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned())
    })
}

/// Calls through the gateway (mTLS from the gateway to catalog's sidecar).
fn through_the_gateway(mesh: &TestMesh, calls: usize) {
    let uri = mesh.gateway_uri();
    block_on(async move {
        let channel = support::channel(uri).await;
        for _ in 0..calls {
            support::first_product(&channel).await;
        }
    });
}

/// Runs `meshctl mtls set MODE` as the admin; returns the revision the
/// proxies apply it with.
fn set_mode(mesh: &TestMesh, mode: &str) -> i64 {
    let (ok, stdout, stderr) = mesh.meshctl(&["mtls", "set", mode], None);
    assert!(ok, "meshctl mtls set {mode}: {stderr}");
    stdout
        .split("(revision ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {stdout:?}"))
}

#[test]
fn permissive_serves_plaintext_beside_mtls_and_strict_refuses_it_again() {
    let mesh = secure_mesh();
    // Strict by default.
    let (ok, stdout, stderr) = mesh.meshctl(&["mtls", "get"], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("strict"), "{stdout}");
    let refused = plaintext_call(&mesh);
    assert!(refused.is_err(), "strict served plaintext: {refused:?}");
    through_the_gateway(&mesh, 3);

    // Permissive: applied live, with the table version it was stored at.
    let revision = set_mode(&mesh, "permissive");
    mesh.wait_for_version(revision);
    assert_eq!(
        plaintext_call(&mesh).as_deref(),
        Ok("catalog-1"),
        "permissive serves plaintext gRPC"
    );
    through_the_gateway(&mesh, 10);
    let plaintext = mesh.counter(
        "catalog-1-sidecar",
        "mesh_inbound_connections_total",
        &[("listener", "inbound"), ("tls", "false")],
    );
    assert!(
        plaintext >= 1.0,
        "plaintext connections counted: {plaintext}"
    );
    let tls = mesh.counter(
        "catalog-1-sidecar",
        "mesh_inbound_connections_total",
        &[("listener", "inbound"), ("tls", "true")],
    );
    assert!(tls >= 1.0, "the gateway still connects over mTLS: {tls}");
    let (ok, stdout, stderr) = mesh.meshctl(&["status"], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("mTLS mode: permissive"), "{stdout}");
    let (ok, stdout, _) = mesh.meshctl(&["mtls", "get"], None);
    assert!(ok && stdout.contains("permissive"), "{stdout}");
    assert_eq!(
        identity_mode(&mesh),
        "permissive",
        "the sidecar's /identity"
    );

    // Strict again: refused again, mTLS unaffected.
    let revision = set_mode(&mesh, "strict");
    mesh.wait_for_version(revision);
    let refused = plaintext_call(&mesh);
    assert!(
        refused.is_err(),
        "strict again served plaintext: {refused:?}"
    );
    assert_eq!(identity_mode(&mesh), "strict", "the sidecar's /identity");
    through_the_gateway(&mesh, 3);
    let log = mesh.log("control-plane-1");
    assert!(
        log.lines()
            .any(|l| l.contains("mesh changed") && l.contains("set-mtls-mode")),
        "no audit line for the mode:\n{log}"
    );
    // Off is not a mesh-wide mode.
    let (ok, _, stderr) = mesh.meshctl(&["mtls", "set", "off"], None);
    assert!(!ok, "meshctl mtls set off was accepted");
    assert!(stderr.contains("invalid value"), "{stderr}");
}

#[test]
fn a_viewer_cannot_set_the_mode() {
    let mesh = secure_mesh();
    let viewer = mesh.issue_operator("vera", "viewer");
    let as_viewer = |args: &[&str]| mesh.meshctl_as(Some(&viewer), args, None);
    let (ok, _, stderr) = as_viewer(&["mtls", "set", "permissive"]);
    assert!(!ok, "a viewer set the mTLS mode");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    let (ok, stdout, stderr) = as_viewer(&["mtls", "get"]);
    assert!(ok, "a viewer may read the mode: {stderr}");
    assert!(stdout.contains("strict"), "{stdout}");
    // Nothing changed: plaintext is still refused.
    assert!(plaintext_call(&mesh).is_err());
}
