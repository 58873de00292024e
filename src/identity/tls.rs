//! TLS 1.3 between mesh processes, with SPIFFE identities.
//!
//! [`MeshTls`] is one process's TLS state: its trust bundle and its own
//! credential, both replaceable while it runs (a renewed certificate or a
//! rotated bundle applies to the next handshake; connections already open
//! keep theirs). Servers ask every client for a certificate that chains to
//! the bundle and learn the client's SPIFFE ID from it; clients check that
//! the server's certificate chains to the bundle *and* names exactly the
//! identity they meant to reach (rustls's own verifier checks DNS names,
//! which mean nothing here: an endpoint's address says nothing about who
//! answers there).

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::certificate::{CertificateError, CertificateInfo};
use super::spiffe::SpiffeId;

/// Why TLS state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate could not be read.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The trust bundle holds no usable anchor.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// The private key does not fit the certificate or cannot sign.
    #[error("private key: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The process-wide crypto provider: ring, TLS 1.3 only.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The anchors this process trusts, with the version the control plane
/// gave them (0 for a bundle read from a file).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    anchors: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    version: u64,
}

impl TrustBundle {
    /// A bundle of `anchors` (DER).
    pub fn new(anchors: Vec<CertificateDer<'static>>, version: u64) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for anchor in &anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| TlsError::Bundle(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Bundle("no trust anchor".into()));
        }
        Ok(Self {
            anchors,
            roots: Arc::new(roots),
            version,
        })
    }

    /// A bundle from PEM text (one or more anchors).
    pub fn from_pem(pem: &str, version: u64) -> Result<Self, TlsError> {
        Self::new(super::certificate::certificates_from_pem(pem)?, version)
    }

    /// The anchors, DER.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The control plane's version of this bundle.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True when both hold the same anchors.
    pub fn same_anchors(&self, other: &TrustBundle) -> bool {
        self.anchors == other.anchors
    }
}

/// A certificate chain, the key it certifies, and what the leaf says.
#[derive(Clone)]
pub struct Credential {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Credential")
            .field("id", &self.info.id.to_string())
            .field("not_after", &self.info.not_after)
            .finish()
    }
}

impl Credential {
    /// `chain` (leaf first) and the leaf's private key (PKCS#8 DER).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Key("empty certificate chain".into()))?;
        let info = CertificateInfo::parse(leaf)?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| TlsError::Key(e.to_string()))?;
        Ok(Self {
            key: Arc::new(key),
            info,
        })
    }

    /// A credential from PEM files' contents: the chain and a PKCS#8 key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = super::certificate::certificates_from_pem(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Key(format!("PEM: {e}")))?;
        Self::new(chain, key)
    }

    /// What the leaf says.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }
}

/// Whether a server requires clients to present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client proves an identity (mesh listeners).
    Required,
    /// Clients may come without one (the control plane: a sidecar asks for
    /// its first certificate before it has any).
    Optional,
}

/// One process's TLS state: trust bundle and own credential, both live.
pub struct MeshTls {
    trust_domain: String,
    bundle: ArcSwap<TrustBundle>,
    credential: Arc<CredentialSlot>,
    client_auth: ClientAuth,
    server: ArcSwapOption<ServerConfig>,
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("trust_domain", &self.trust_domain)
            .field("bundle_version", &self.bundle.load().version)
            .field("credential", &self.credential.current())
            .finish()
    }
}

impl MeshTls {
    /// TLS state for `trust_domain` trusting `bundle`; no credential yet.
    pub fn new(
        trust_domain: &str,
        bundle: TrustBundle,
        client_auth: ClientAuth,
    ) -> Result<Self, TlsError> {
        let tls = Self {
            trust_domain: trust_domain.to_owned(),
            bundle: ArcSwap::from_pointee(bundle),
            credential: Arc::new(CredentialSlot::default()),
            client_auth,
            server: ArcSwapOption::empty(),
        };
        tls.rebuild_server()?;
        Ok(tls)
    }

    /// The trust domain identities must be in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The bundle in use.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    /// Trusts `bundle` from the next handshake on.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<(), TlsError> {
        self.bundle.store(Arc::new(bundle));
        self.rebuild_server()
    }

    /// Presents `credential` from the next handshake on.
    pub fn set_credential(&self, credential: Credential) {
        self.credential.set(credential);
    }

    /// The credential presented now, if any.
    pub fn credential(&self) -> Option<Credential> {
        self.credential.current()
    }

    fn rebuild_server(&self) -> Result<(), TlsError> {
        let bundle = self.bundle.load();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider());
        let verifier = match self.client_auth {
            ClientAuth::Required => verifier.build(),
            ClientAuth::Optional => verifier.allow_unauthenticated().build(),
        }
        .map_err(|e| TlsError::Bundle(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.credential.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.server.store(Some(Arc::new(config)));
        Ok(())
    }

    /// The server configuration for the next handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server
            .load_full()
            .expect("built in new() and replaced, never cleared")
    }

    /// A client configuration that accepts only a server proving `peer`,
    /// presenting this process's credential when it has one.
    pub fn client_config(&self, peer: SpiffeId) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(PeerVerifier {
            roots: self.bundle.load().roots.clone(),
            expected: peer,
            provider: provider(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.credential.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // The expected identity is checked against the certificate; SNI
        // would only tell on-path observers whom we call.
        config.enable_sni = false;
        Ok(Arc::new(config))
    }

    /// The SPIFFE ID a verified peer chain proves, if it is in this trust
    /// domain. `None` for no chain.
    pub fn peer_identity(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Result<Option<SpiffeId>, CertificateError> {
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Ok(None);
        };
        let info = CertificateInfo::parse(leaf)?;
        if info.id.trust_domain() != self.trust_domain {
            return Err(CertificateError::Malformed(format!(
                "{} is outside trust domain {}",
                info.id, self.trust_domain
            )));
        }
        Ok(Some(info.id))
    }
}

/// The credential a process presents, swapped whole on renewal.
#[derive(Default)]
struct CredentialSlot {
    current: ArcSwapOption<Credential>,
}

impl fmt::Debug for CredentialSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current().fmt(f)
    }
}

impl CredentialSlot {
    fn set(&self, credential: Credential) {
        self.current.store(Some(Arc::new(credential)));
    }

    fn current(&self) -> Option<Credential> {
        self.current.load_full().map(|c| (*c).clone())
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CredentialSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for CredentialSlot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// Accepts a server whose chain ends at a bundle anchor and whose leaf
/// names exactly the expected SPIFFE ID.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let info = CertificateInfo::parse(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if info.id != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    PeerIdentityMismatch {
                        expected: self.expected.clone(),
                        found: info.id,
                    },
                ))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server proved another identity than the one the caller meant to
/// reach: not a transient failure, the endpoint is someone else. Carried
/// inside rustls's error, so callers can tell it from other failures
/// ([`super::transport::HandshakeError::is_identity_mismatch`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("peer identity mismatch: the peer is {found}, expected {expected}")]
pub struct PeerIdentityMismatch {
    /// Whom the caller meant to reach.
    pub expected: SpiffeId,
    /// Whom the certificate names.
    pub found: SpiffeId,
}

/// TLS for a listener that external clients reach (the gateway's
/// ingress): server-authenticated only, with a certificate of the
/// operator's choosing (a DNS name, from any CA), TLS 1.3, ALPN h2.
pub fn edge_server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain = super::certificate::certificates_from_pem(chain_pem)?;
    if chain.is_empty() {
        return Err(TlsError::Key(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(format!("PEM: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server name for the handshake: the verifier ignores it and SNI is off.
pub fn handshake_name() -> ServerName<'static> {
    ServerName::try_from("mesh.invalid").expect("a valid DNS name")
}
