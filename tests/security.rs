//! Zero trust, attacked for real: a mesh with mTLS on every hop (real
//! certificates from its own CA, real etcd, real processes), and clients
//! that try what an attacker on the network would.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use mesh::identity::{csr, ClientAuth, MeshTls, SpiffeId, TrustBundle, Workload};
use mesh::proto::mesh::v1::identity_client::IdentityClient;
use mesh::proto::mesh::v1::{CertifyRequest, Node};
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::{block_on, TestMesh};

const DOMAIN: &str = mesh::identity::DEFAULT_TRUST_DOMAIN;

fn secure_mesh() -> TestMesh {
    TestMesh::start(&support::secure_services(&["catalog", "payments"]))
}

/// The test's TLS as a process that has the bundle and nothing else.
fn anonymous(mesh: &TestMesh) -> std::sync::Arc<MeshTls> {
    let identity = mesh.plan.identity.as_ref().expect("a secure mesh");
    let pem = std::fs::read_to_string(identity.bundle()).unwrap();
    std::sync::Arc::new(
        MeshTls::new(
            DOMAIN,
            TrustBundle::from_pem(&pem, 0).unwrap(),
            ClientAuth::Required,
        )
        .unwrap(),
    )
}

fn control_plane_id() -> SpiffeId {
    SpiffeId::new(DOMAIN, Workload::ControlPlane).unwrap()
}

/// Trades `token` for a certificate the way a proxy does; the TLS state
/// then presents it.
async fn certify(
    uri: String,
    tls: std::sync::Arc<MeshTls>,
    token: String,
) -> Result<(), tonic::Status> {
    let channel = mesh::identity::transport::channel(
        &uri,
        tls.clone(),
        control_plane_id(),
        Duration::from_secs(5),
    )
    .await
    .expect("TLS to the control plane");
    let request = csr::generate().unwrap();
    let response = IdentityClient::new(channel)
        .certify(CertifyRequest {
            token,
            csr_der: request.csr_der,
        })
        .await?
        .into_inner();
    let chain = response.chain_der.into_iter().map(Into::into).collect();
    tls.set_credential(mesh::identity::Credential::new(chain, request.key).unwrap());
    Ok(())
}

fn cp(mesh: &TestMesh) -> String {
    mesh.plan.control_planes[0].clone()
}

fn token(mesh: &TestMesh, args: &[&str]) -> String {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    let (ok, stdout, stderr) = mesh.meshctl(&full, None);
    assert!(ok, "meshctl token create: {stderr}");
    stdout.trim().to_owned()
}

#[test]
fn plaintext_is_refused_by_sidecars_and_the_control_plane() {
    let mesh = secure_mesh();
    // A plaintext gRPC call to payments' inbound port: no TLS, no answer.
    let inbound = mesh.serving("payments-1-sidecar");
    let refused = block_on(async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{inbound}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await;
        match channel {
            Err(_) => true,
            Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_err(),
        }
    });
    assert!(
        refused,
        "a plaintext client was served by a sidecar's inbound port"
    );
    // meshctl without TLS cannot reach the control plane either.
    let (ok, _, stderr) = mesh.meshctl(&["--insecure", "get", "routes"], None);
    assert!(!ok, "a plaintext meshctl got routes");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // The same through TLS with the operator certificate works.
    let (ok, stdout, stderr) = mesh.meshctl(&["get", "routes"], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("payments"), "{stdout}");
}

#[test]
fn a_catalog_credential_cannot_register_as_payments() {
    let mesh = secure_mesh();
    let catalog_token = token(&mesh, &["--service", "catalog"]);
    let uri = mesh.plan.control_planes[0].clone();
    let tls = anonymous(&mesh);
    let status = block_on({
        let tls = tls.clone();
        let uri = uri.clone();
        async move {
            certify(uri.clone(), tls.clone(), catalog_token)
                .await
                .expect("a valid catalog token gets a certificate");
            let channel = mesh::identity::transport::channel(
                &uri,
                tls,
                control_plane_id(),
                Duration::from_secs(5),
            )
            .await
            .expect("mTLS to the control plane");
            let rogue = Node {
                address: "127.0.0.1:1".into(),
                weight: 1000,
                ..support::sim::node("payments", "payments-rogue")
            };
            let hello = support::sim::hello(rogue, &[], Vec::new());
            match support::sim::SimProxy::open(channel, hello, false).await {
                Err(status) => status,
                Ok(_) => panic!("a rogue payments registered"),
            }
        }
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("svc/catalog"),
        "{}",
        status.message()
    );
    // Nothing was registered, and the refusal was counted.
    let (ok, stdout, _) = mesh.meshctl(&["get", "endpoints", "-o", "json"], None);
    assert!(ok);
    assert!(!stdout.contains("payments-rogue"), "{stdout}");
    let refused = mesh.counter(
        "control-plane-1",
        "mesh_cp_refused_registrations_total",
        &[],
    );
    assert!(refused >= 1.0, "refusals counted: {refused}");
}

#[test]
fn revoked_expired_and_forged_tokens_get_no_certificate() {
    let mesh = secure_mesh();
    let tls = anonymous(&mesh);
    // Revoked.
    let revoked = token(&mesh, &["--service", "payments"]);
    let id = revoked.split_once('.').unwrap().0.to_owned();
    let (ok, _, stderr) = mesh.meshctl(&["token", "revoke", &id], None);
    assert!(ok, "{stderr}");
    let status = block_on(certify(cp(&mesh), tls.clone(), revoked.clone())).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    // Forged: a known id with another secret.
    let forged = format!("{id}.{}", "0".repeat(64));
    let status = block_on(certify(cp(&mesh), tls.clone(), forged)).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // Expired: a one-second token, tried until its second is over.
    let short = token(&mesh, &["--service", "payments", "--ttl", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match block_on(certify(cp(&mesh), tls.clone(), short.clone())) {
            Err(status) if status.message().contains("expired") => break,
            _ => assert!(Instant::now() < deadline, "the token never expired"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // And `token list` shows the revoked one as such, never a secret.
    let (ok, stdout, _) = mesh.meshctl(&["token", "list"], None);
    assert!(ok);
    assert!(stdout.contains("REVOKED"), "{stdout}");
    assert!(
        !stdout.contains(revoked.split_once('.').unwrap().1),
        "{stdout}"
    );
}

#[test]
fn a_viewer_cannot_apply_an_admin_can_and_the_audit_names_the_operator() {
    let mesh = secure_mesh();
    let identity = mesh.plan.identity.clone().unwrap();
    let viewer_config = mesh.issue_operator("vera", "viewer");
    let route = "kind: Route\nmetadata:\n  name: payments\nspec:\n  match:\n    service: shop.payments.v1.PaymentsService\n  destination: payments\n  timeout: 3s\n";
    let run_as = |config: &std::path::Path, args: &[&str], stdin: Option<&str>| {
        let (ok, _, stderr) = mesh.meshctl_as(Some(config), args, stdin);
        (ok, stderr)
    };
    let (ok, stderr) = run_as(&viewer_config, &["apply", "-f", "-"], Some(route));
    assert!(!ok, "a viewer applied a route");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    let (ok, stderr) = run_as(&viewer_config, &["get", "routes"], None);
    assert!(ok, "a viewer may read: {stderr}");
    let (ok, stderr) = run_as(&identity.meshconfig(), &["apply", "-f", "-"], Some(route));
    assert!(ok, "the admin could not apply: {stderr}");
    let log = mesh.log("control-plane-1");
    assert!(
        log.lines().any(|l| l.contains("mesh changed")
            && l.contains("admin")
            && l.contains("apply-route")),
        "no audit line naming the operator:\n{log}"
    );
}

#[test]
fn an_impostor_at_a_registered_address_gets_no_call() {
    // Someone on the network answers at catalog-2's registered address (as
    // an on-path attacker would): catalog-2's sidecar advertises a port the
    // impostor holds, with a real mesh credential, for payments.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = support::port_allocator()();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("the impostor's port");
    let mesh = TestMesh::start(&Topology {
        services: vec![(
            "catalog".into(),
            vec![
                InstanceSpec::new("catalog-1"),
                InstanceSpec::new("catalog-2")
                    .sidecar_args(["--advertise-addr".to_owned(), format!("127.0.0.1:{port}")]),
            ],
        )],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        ..Topology::default()
    });
    let payments_token = token(&mesh, &["--service", "payments"]);
    let tls = anonymous(&mesh);
    block_on(certify(cp(&mesh), tls.clone(), payments_token)).expect("payments certificate");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    runtime.spawn({
        let served = served.clone();
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    if mesh::identity::transport::accept(&tls, tcp).await.is_ok() {
                        // A completed handshake: a caller would now send calls.
                        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        }
    });
    let uri = mesh.gateway_uri();
    let calls = 30;
    let results: Vec<Result<String, tonic::Status>> = block_on(async move {
        use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
        use mesh::proto::shop::catalog::v1::ListProductsRequest;
        let channel = support::channel(uri).await;
        let mut client = CatalogServiceClient::new(channel);
        let mut results = Vec::new();
        for _ in 0..calls {
            let result = client
                .list_products(ListProductsRequest {
                    page_size: 1,
                    page_token: String::new(),
                })
                .await
                .map(|r| {
                    r.metadata()
                        .get("x-served-by")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                });
            results.push(result);
        }
        results
    });
    for result in &results {
        assert!(
            matches!(result.as_deref(), Ok("catalog-1")),
            "every call goes to the real catalog: {results:?}"
        );
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the impostor completed a handshake"
    );
    // The gateway did try the address, and refused who answered.
    let refused = mesh.counter(
        "gateway",
        "mesh_tls_handshake_failures_total",
        &[("reason", "peer-identity-mismatch")],
    );
    assert!(refused >= 1.0, "no identity mismatch counted: {refused}");
    drop(runtime);
}

#[test]
fn the_ingress_terminates_tls_with_the_operators_certificate() {
    let Some(grpcurl) = support::grpcurl() else {
        return;
    };
    // A certificate for the gateway's DNS name, from outside the mesh (as
    // from a public CA): external clients check it, the mesh never sees it.
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("ingress.crt");
    let key = dir.path().join("ingress.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mesh = TestMesh::start(&Topology {
        services: vec![("catalog".into(), vec![InstanceSpec::new("catalog-1")])],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            ..ControlPlaneSpec::default()
        }),
        gateway_args: vec![
            "--ingress-tls-cert".into(),
            cert.display().to_string(),
            "--ingress-tls-key".into(),
            key.display().to_string(),
        ],
        ..Topology::default()
    });
    let gateway = mesh.plan.gateway().unwrap().to_string();
    let cacert = cert.display().to_string();
    let tls = ["-cacert", &cacert, "-servername", "localhost"];
    let (ok, out, err) = support::run_grpcurl(&grpcurl, &[&tls[..], &[&gateway, "list"]].concat());
    assert!(ok, "grpcurl over TLS: {err}");
    assert!(out.contains("shop.catalog.v1.CatalogService"), "{out}");
    let (ok, out, err) = support::run_grpcurl(
        &grpcurl,
        &[
            &tls[..],
            &[
                "-d",
                r#"{"sku":"sku-espresso-beans"}"#,
                &gateway,
                "shop.catalog.v1.CatalogService/GetProduct",
            ],
        ]
        .concat(),
    );
    assert!(ok, "GetProduct over TLS: {out}\n{err}");
    assert!(out.contains("sku-espresso-beans"), "{out}");
    // The TLS ingress does not answer plaintext.
    let (ok, _, _) = support::run_grpcurl(&grpcurl, &["-plaintext", &gateway, "list"]);
    assert!(!ok, "a TLS ingress answered plaintext");
}
