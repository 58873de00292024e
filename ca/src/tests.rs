//! The authority with real keys, and real TLS handshakes between the
//! credentials it signs.

use std::sync::Arc;
use std::time::Duration;

use mesh::identity::transport::{accept, connect, HandshakeError};
use mesh::identity::{csr, ClientAuth, Credential, MeshTls, SpiffeId, TrustBundle};

use super::*;

const DOMAIN: &str = "mesh.test";

struct Ca {
    _dir: tempfile::TempDir,
    authority: Authority,
    bundle: TrustBundle,
}

fn ca(domain: &str, lifetime: Duration) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    init(dir.path(), domain, 365 * day, 30 * day).unwrap();
    let authority = Authority::load(
        &dir.path().join(files::ISSUER_CERT),
        &dir.path().join(files::ISSUER_KEY),
        domain,
        lifetime,
    )
    .unwrap();
    let bundle = load_bundle(&dir.path().join(files::BUNDLE), 1).unwrap();
    Ca {
        _dir: dir,
        authority,
        bundle,
    }
}

fn service(name: &str) -> SpiffeId {
    SpiffeId::service(DOMAIN, name).unwrap()
}

/// A process's TLS state holding a certificate for `id` from `ca`, its key
/// made here and certified through a CSR, as a proxy does it.
fn tls_for(ca: &Ca, id: &SpiffeId, auth: ClientAuth) -> Arc<MeshTls> {
    let request = csr::generate().unwrap();
    let chain = ca.authority.certify(id, &request.csr_der, &[]).unwrap();
    let tls = MeshTls::new(id.trust_domain(), ca.bundle.clone(), auth).unwrap();
    tls.set_credential(Credential::new(chain, request.key).unwrap());
    Arc::new(tls)
}

/// One handshake: a server with `server`'s TLS, a client with `client`'s
/// expecting `expected`. Returns what each side concluded.
async fn handshake(
    server: Arc<MeshTls>,
    client: Arc<MeshTls>,
    expected: SpiffeId,
) -> (
    Result<Option<SpiffeId>, HandshakeError>,
    Result<(), HandshakeError>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(&server, tcp).await.map(|(_, peer)| peer.0)
    });
    let client_side = async {
        // TLS 1.3: the client finishes before the server has checked its
        // certificate; a read shows whether the server kept the connection.
        let mut stream = connect(&client, &addr, expected).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream.write_all(b"x").await;
        let mut byte = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
        Ok(())
    };
    let client_result = client_side.await;
    (server_side.await.unwrap(), client_result)
}

#[tokio::test]
async fn signs_the_proved_identity_and_ignores_csr_names() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    // A CSR that asks for payments' identity...
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://mesh.test/svc/payments".try_into().unwrap(),
    )];
    let request = params.serialize_request(&key).unwrap();
    // ...from a caller whose token proves catalog gets catalog.
    let chain = ca
        .authority
        .certify(&service("catalog"), request.der(), &[])
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and issuer");
    let info = mesh::identity::CertificateInfo::parse(&chain[0]).unwrap();
    assert_eq!(info.id, service("catalog"));
    let lifetime = info.lifetime();
    assert!(
        lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3600 + 120),
        "{lifetime:?}"
    );
}

#[test]
fn refuses_a_request_whose_signature_does_not_verify() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let mut csr = csr::generate().unwrap().csr_der;
    let last = csr.len() - 1;
    csr[last] ^= 0x55;
    let error = ca
        .authority
        .certify(&service("catalog"), &csr, &[])
        .unwrap_err();
    assert!(matches!(error, CaError::Csr(_)), "{error}");
    assert!(ca
        .authority
        .certify(&service("catalog"), b"junk", &[])
        .is_err());
}

#[test]
fn init_will_not_replace_a_ca_and_keeps_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    init(dir.path(), DOMAIN, day, day).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [files::ANCHOR_KEY, files::ISSUER_KEY] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key} is readable by others");
        }
    }
    let error = init(dir.path(), DOMAIN, day, day).unwrap_err();
    assert!(error.to_string().contains("refusing"), "{error}");
    assert!(init(&dir.path().join("x"), "Not A Domain", day, day).is_err());
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let payments = tls_for(&ca, &service("payments"), ClientAuth::Required);
    let orders = tls_for(&ca, &service("orders"), ClientAuth::Required);
    let (server, client) = handshake(payments, orders, service("payments")).await;
    client.unwrap();
    assert_eq!(server.unwrap(), Some(service("orders")));
}

#[tokio::test]
async fn a_server_proving_another_identity_is_refused() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    // A catalog sidecar answering where the table says payments is.
    let rogue = tls_for(&ca, &service("catalog"), ClientAuth::Required);
    let orders = tls_for(&ca, &service("orders"), ClientAuth::Required);
    let (_, client) = handshake(rogue, orders, service("payments")).await;
    let error = client.unwrap_err();
    assert_eq!(error.reason(), "peer-identity-mismatch", "{error}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_where_one_is_required() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let payments = tls_for(&ca, &service("payments"), ClientAuth::Required);
    let anonymous =
        Arc::new(MeshTls::new(DOMAIN, ca.bundle.clone(), ClientAuth::Required).unwrap());
    let (server, _) = handshake(payments, anonymous, service("payments")).await;
    assert!(server.is_err(), "{server:?}");
}

#[tokio::test]
async fn another_trust_domain_is_refused_both_ways() {
    let ours = ca(DOMAIN, Duration::from_secs(3600));
    let theirs = ca("other.test", Duration::from_secs(3600));
    let payments = tls_for(&ours, &service("payments"), ClientAuth::Required);
    let stranger = tls_for(
        &theirs,
        &SpiffeId::service("other.test", "orders").unwrap(),
        ClientAuth::Required,
    );
    let (server, _) = handshake(payments.clone(), stranger.clone(), service("payments")).await;
    assert!(server.is_err(), "a foreign client got in: {server:?}");
    // And a client of ours does not accept their server.
    let orders = tls_for(&ours, &service("orders"), ClientAuth::Required);
    let (_, client) = handshake(
        stranger,
        orders,
        SpiffeId::service("other.test", "orders").unwrap(),
    )
    .await;
    assert!(client.is_err());
}

#[tokio::test]
async fn a_new_credential_applies_to_the_next_handshake() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let server = tls_for(&ca, &service("payments"), ClientAuth::Required);
    let client = tls_for(&ca, &service("orders"), ClientAuth::Required);
    let before = server.credential().unwrap().info().not_after;
    let request = csr::generate().unwrap();
    let chain = ca
        .authority
        .certify(&service("payments"), &request.csr_der, &[])
        .unwrap();
    server.set_credential(Credential::new(chain.clone(), request.key).unwrap());
    assert_eq!(server.credential().unwrap().chain()[0], chain[0]);
    assert!(server.credential().unwrap().info().not_after >= before);
    let (accepted, connected) = handshake(server, client, service("payments")).await;
    connected.unwrap();
    assert_eq!(accepted.unwrap(), Some(service("orders")));
}

/// The leaf's issuer, as the chain it came in names it.
fn issuer_of(chain: &[CertificateDer<'static>]) -> String {
    fingerprint(chain[1].as_ref())
}

#[test]
fn a_replaced_issuer_signs_from_the_next_certificate_on() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let dir = ca._dir.path();
    let before = ca.authority.issuer_fingerprint();
    assert!(
        !ca.authority.reload_if_changed().unwrap(),
        "nothing changed"
    );
    // A new anchor and issuer elsewhere; its issuer files copied over.
    let other = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    init(other.path(), DOMAIN, day, day).unwrap();
    for name in [files::ISSUER_CERT, files::ISSUER_KEY] {
        std::fs::copy(other.path().join(name), dir.join(name)).unwrap();
    }
    assert!(ca.authority.reload_if_changed().unwrap());
    let after = ca.authority.issuer_fingerprint();
    assert_ne!(before, after);
    let new_issuer = std::fs::read_to_string(other.path().join(files::ISSUER_CERT)).unwrap();
    let new_issuer = certificates_from_pem(&new_issuer).unwrap().remove(0);
    assert_eq!(after, fingerprint(new_issuer.as_ref()));
    let request = csr::generate().unwrap();
    let chain = ca
        .authority
        .certify(&service("catalog"), &request.csr_der, &[])
        .unwrap();
    assert_eq!(issuer_of(&chain), after);
    // The new chain is trusted under the new anchor only.
    let new_bundle = load_bundle(&other.path().join(files::BUNDLE), 2).unwrap();
    let tls = MeshTls::new(DOMAIN, new_bundle, ClientAuth::Required).unwrap();
    tls.set_credential(Credential::new(chain, request.key).unwrap());
}

#[test]
fn a_half_written_issuer_is_not_used() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let dir = ca._dir.path();
    let before = ca.authority.issuer_fingerprint();
    let other = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    init(other.path(), DOMAIN, day, day).unwrap();
    // The certificate arrived, its key not yet.
    std::fs::copy(
        other.path().join(files::ISSUER_CERT),
        dir.join(files::ISSUER_CERT),
    )
    .unwrap();
    let error = ca.authority.reload_if_changed().unwrap_err();
    assert!(error.to_string().contains("does not certify"), "{error}");
    assert_eq!(ca.authority.issuer_fingerprint(), before);
    std::fs::copy(
        other.path().join(files::ISSUER_KEY),
        dir.join(files::ISSUER_KEY),
    )
    .unwrap();
    assert!(ca.authority.reload_if_changed().unwrap());
    assert_ne!(ca.authority.issuer_fingerprint(), before);
}

#[test]
fn bundles_are_ca_certificates_and_never_keys() {
    let ca = ca(DOMAIN, Duration::from_secs(3600));
    let dir = ca._dir.path();
    let anchor = std::fs::read_to_string(dir.join(files::ANCHOR_CERT)).unwrap();
    let issuer = std::fs::read_to_string(dir.join(files::ISSUER_CERT)).unwrap();
    let key = std::fs::read_to_string(dir.join(files::ANCHOR_KEY)).unwrap();
    assert_eq!(validate_bundle(&anchor).unwrap().len(), 1);
    assert_eq!(
        validate_bundle(&format!("{anchor}{issuer}")).unwrap().len(),
        2
    );
    let with_key = validate_bundle(&format!("{anchor}{key}")).unwrap_err();
    assert!(with_key.to_string().contains("private key"), "{with_key}");
    let (chain, _) = ca
        .authority
        .issue_with_new_key(&service("catalog"), &[], Duration::from_secs(60))
        .unwrap();
    let leaf = mesh::identity::certificate::certificates_to_pem(&chain[..1]);
    let no_ca = validate_bundle(&leaf).unwrap_err();
    assert!(no_ca.to_string().contains("no CA"), "{no_ca}");
    assert!(validate_bundle("").is_err());
    assert!(validate_bundle("hello").is_err());
    let other = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    assert!(validate_bundle(&format!("{anchor}{other}"))
        .unwrap_err()
        .to_string()
        .contains("X509 CRL"));
}
