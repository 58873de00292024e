//! etcd behind TLS with client-certificate auth, for real: a secure mesh
//! runs etcd with `--client-cert-auth` and the certificates of `meshctl
//! identity issue-etcd`, and the control plane reaches it with its client
//! certificate. Plaintext and certificate-less clients are refused; the
//! mesh works (routes applied, sidecars registered) and survives etcd
//! being SIGKILLed and restarted.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::identity::certificate::certificates_from_pem;
use meshctl::demo::admin_get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use support::{block_on, have_tool, TestMesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn secure_mesh() -> TestMesh {
    TestMesh::start(&support::secure_services(&["catalog", "payments"]))
}

fn etcd_client_addr(mesh: &TestMesh) -> SocketAddr {
    mesh.plan.process("etcd").expect("etcd in the plan").serving
}

/// A TLS client that trusts the mesh's anchors and presents `client`
/// (chain PEM, key PEM) if given: `GET /health` on etcd's client port.
/// `Ok(status)` when an HTTP answer came back, `Err` when the connection
/// was refused at any point (handshake, alert, close).
async fn https_health(
    addr: SocketAddr,
    ca_pem: String,
    client: Option<(String, String)>,
) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates_from_pem(&ca_pem).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                certificates_from_pem(&chain).map_err(|e| e.to_string())?,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let exchange = async {
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("after the handshake: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))
}

/// A plaintext gRPC call to etcd's KV service (what an etcd client with an
/// `http://` endpoint sends): `Ok(grpc-status)` if etcd answered one.
async fn plaintext_grpc(addr: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(connection);
    // An empty RangeRequest: a valid protobuf message.
    let request = http::Request::post(format!("http://{addr}/etcdserverpb.KV/Range"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let trailers = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .trailers()
        .cloned();
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    Ok(status.to_owned())
}

#[test]
fn etcd_refuses_plaintext_and_certificateless_clients_while_the_mesh_works() {
    if !have_tool("etcd") {
        return;
    }
    // Starting it proves the control plane works over TLS: routes were
    // applied through it (stored in etcd) and every proxy registered and
    // got the table.
    let mesh = secure_mesh();
    let etcd = etcd_client_addr(&mesh);
    let tls = mesh.plan.identity.as_ref().expect("secure").etcd_tls();
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).expect("etcd TLS file");
    let ca = read(tls.ca());
    let client = (read(tls.client_cert()), read(tls.client_key()));

    // Plaintext HTTP and plaintext gRPC: refused.
    match admin_get(etcd, "/health") {
        Ok((200, body)) => panic!("plaintext /health served: {body}"),
        Ok((status, _)) => eprintln!("plaintext /health: HTTP {status}"),
        Err(e) => eprintln!("plaintext /health: {e}"),
    }
    let grpc = block_on(plaintext_grpc(etcd));
    assert!(
        !matches!(&grpc, Ok(status) if status == "0"),
        "a plaintext gRPC Range succeeded: {grpc:?}"
    );
    eprintln!("plaintext gRPC: {grpc:?}");

    // TLS that trusts etcd but has no client certificate: refused.
    let anonymous = block_on(https_health(etcd, ca.clone(), None));
    assert!(
        anonymous.is_err(),
        "a client without a certificate got an answer: {anonymous:?}"
    );
    eprintln!("TLS without a client certificate: {anonymous:?}");

    // A certificate from another CA: refused.
    let stranger = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let foreign = block_on(https_health(etcd, ca.clone(), Some(stranger)));
    assert!(
        foreign.is_err(),
        "a certificate from another CA got an answer: {foreign:?}"
    );

    // The control plane's certificate: let in (the refusals above are
    // etcd's doing, not a broken test client).
    assert_eq!(block_on(https_health(etcd, ca, Some(client))), Ok(200));

    // And a control plane told https:// without a client certificate
    // refuses to start, saying what it needs.
    let out = std::process::Command::new(support::bin_dir().join("control-plane"))
        .args(["--insecure", "--listen", "127.0.0.1:0", "--admin-addr"])
        .arg("127.0.0.1:0")
        .arg("--etcd")
        .arg(format!("https://{etcd}"))
        .env_remove("MESH_CP_ETCD_CA")
        .env_remove("MESH_CP_ETCD_CERT")
        .env_remove("MESH_CP_ETCD_KEY")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run control-plane");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without etcd credentials");
    assert!(
        stderr.contains("--etcd-cert") && stderr.contains("issue-etcd"),
        "{stderr}"
    );
}

#[test]
fn control_plane_reconnects_over_tls_after_etcd_is_killed() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = secure_mesh();
    mesh.kill("etcd");
    mesh.restart("etcd");
    let uri = mesh.plan.control_planes[0].clone();
    let identity = mesh.plan.identity.clone();
    let mut routes = mesh.plan.bootstrap.routes.clone();
    routes.push(meshctl::demo::route(
        "after-restart",
        "shop.catalog.v1.AfterRestart",
        "catalog",
    ));
    // The replica reconnects by itself; until it has, writes fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    let revision = loop {
        let (uri, routes, identity) = (uri.clone(), routes.clone(), identity.clone());
        match block_on(async move {
            meshctl::demo::apply_routes(&uri, &routes, identity.as_ref()).await
        }) {
            Ok(revision) => break revision,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "never applied after the restart: {status:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    mesh.wait_for_version(revision);
    let log = mesh.log("control-plane-1");
    assert!(
        !log.contains("certificate required") && !log.contains("UnknownIssuer"),
        "TLS trouble after the restart:\n{log}"
    );
}
