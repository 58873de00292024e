//! The mesh's certificate authority: an issuer certificate and key (signed
//! by a trust anchor whose key stays offline), loaded from files at start.
//! It signs short-lived certificates for the identity a caller has proved
//! (a join token), with the caller's public key from its CSR: any names in
//! the CSR are ignored.
//!
//! `meshctl identity init` makes a fresh anchor and issuer with [`init`];
//! the control plane loads the issuer and signs. A crate of its own so
//! meshctl has the CA without the control plane's store and server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mesh::identity::certificate::{certificates_from_pem, pem_block};
use mesh::identity::{SpiffeId, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};

/// Certificates are back-dated this much (a tenth of a short lifetime at
/// most): peers' clocks differ a little.
const BACKDATE: Duration = Duration::from_secs(60);

/// File names in an identity directory.
pub mod files {
    /// The trust anchors every mesh process trusts (public).
    pub const BUNDLE: &str = "bundle.crt";
    /// The anchor's certificate.
    pub const ANCHOR_CERT: &str = "anchor.crt";
    /// The anchor's key: keep it offline; only a rotation needs it.
    pub const ANCHOR_KEY: &str = "anchor.key";
    /// The issuer's certificate (signed by the anchor).
    pub const ISSUER_CERT: &str = "issuer.crt";
    /// The issuer's key: the control plane's secret.
    pub const ISSUER_KEY: &str = "issuer.key";
}

/// Why the authority could not load or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// Which file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The issuer's files are not a usable CA.
    #[error("issuer: {0}")]
    Issuer(String),
    /// The certificate request does not parse or its signature is wrong.
    #[error("certificate request: {0}")]
    Csr(String),
    /// rcgen could not make the certificate.
    #[error("signing: {0}")]
    Sign(String),
}

/// The issuer, ready to sign, and where it was read from. The signer is
/// swapped whole when the files change ([`Authority::reload_if_changed`]):
/// an anchor rotation replaces the issuer (a Kubernetes Secret update
/// rewrites the mounted files) without restarting the control plane, and a
/// certificate is always signed by one consistent certificate and key.
pub struct Authority {
    /// Swapped whole; read for a moment per certificate (not a hot path,
    /// so a lock rather than another dependency).
    signer: RwLock<Arc<Signer>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    trust_domain: String,
    lifetime: Duration,
}

/// One issuer certificate and its key, as read together.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_not_after: SystemTime,
    fingerprint: String,
    /// The files' modification times it was read at.
    stamp: FileStamp,
}

/// What tells that the issuer files changed: each file's modification
/// time and length (a Secret update swaps a symlink; both change).
type FileStamp = [(Option<SystemTime>, u64); 2];

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .field("issuer", &self.signer().fingerprint)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::File {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    let error = |source| CaError::File {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

impl Authority {
    /// Loads the issuer from `cert` and `key` (PEM) for `trust_domain`,
    /// signing certificates valid for `lifetime`.
    pub fn load(
        cert: &Path,
        key: &Path,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<Self, CaError> {
        let signer = Signer::load(cert, key)?;
        Ok(Self {
            signer: RwLock::new(Arc::new(signer)),
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            trust_domain: trust_domain.to_owned(),
            lifetime,
        })
    }

    /// Reads the issuer files again if they changed since they were last
    /// read, and signs with what they hold from then on. `Ok(true)` when
    /// the issuer was replaced. Files caught half-written (a certificate
    /// that does not match the key) are an error and the current issuer
    /// stays: the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, CaError> {
        let stamp = stamp(&self.cert_path, &self.key_path);
        let current = self.signer();
        if stamp == current.stamp {
            return Ok(false);
        }
        let signer = Signer::load(&self.cert_path, &self.key_path)?;
        if signer.issuer_der == current.issuer_der {
            // Touched, not changed: remember the new times only.
            let same = Signer { stamp, ..signer };
            self.replace(same);
            return Ok(false);
        }
        tracing::info!(
            old = %current.fingerprint,
            new = %signer.fingerprint,
            "issuer replaced: certificates are signed by the new issuer from now on"
        );
        self.replace(signer);
        Ok(true)
    }

    fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, signer: Signer) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signer);
    }

    /// SHA-256 (hex) of the issuer certificate signing now.
    pub fn issuer_fingerprint(&self) -> String {
        self.signer().fingerprint.clone()
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// How long issued certificates live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// When the issuer itself expires (`meshctl check` warns 30 days ahead).
    pub fn issuer_not_after(&self) -> SystemTime {
        self.signer().issuer_not_after
    }

    /// A certificate for `id` with the public key of `csr_der` (whose
    /// signature must verify: proof the caller holds the key). Returns the
    /// chain, leaf first. Nothing of the CSR but its key is used.
    pub fn certify(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
        organizations: &[&str],
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::Csr(e.to_string()))?;
        let params = leaf_params(id, organizations, self.lifetime)?;
        let signer = self.signer();
        let leaf = params
            .signed_by(&csr.public_key, &signer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(vec![leaf.der().clone(), signer.issuer_der.clone()])
    }

    /// A certificate and a fresh key for `id`, made here: for the control
    /// plane's own serving certificate (its key never leaves the process)
    /// and for operators made by `meshctl identity issue-operator`.
    pub fn issue_with_new_key(
        &self,
        id: &SpiffeId,
        organizations: &[&str],
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let signer = self.signer();
        let leaf = leaf_params(id, organizations, lifetime)?
            .signed_by(&key, &signer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((
            vec![leaf.der().clone(), signer.issuer_der.clone()],
            key.serialize_pem(),
        ))
    }
}

impl Signer {
    fn load(cert: &Path, key: &Path) -> Result<Self, CaError> {
        // Stamped before reading: a change during the read is seen next time.
        let stamp = stamp(cert, key);
        let cert_pem = read(cert)?;
        let key_pair =
            KeyPair::from_pem(&read(key)?).map_err(|e| CaError::Issuer(format!("key: {e}")))?;
        let issuer_der = certificates_from_pem(&cert_pem)
            .map_err(|e| CaError::Issuer(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Issuer(format!("{} holds no certificate", cert.display())))?;
        if public_key(&issuer_der)? != key_pair.public_key_raw() {
            return Err(CaError::Issuer(format!(
                "{} does not certify the key in {}",
                cert.display(),
                key.display()
            )));
        }
        let issuer_not_after = not_after(&issuer_der)?;
        let fingerprint = fingerprint(&issuer_der);
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key_pair)
            .map_err(|e| CaError::Issuer(e.to_string()))?;
        Ok(Self {
            issuer,
            issuer_der,
            issuer_not_after,
            fingerprint,
            stamp,
        })
    }
}

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    [cert, key].map(|path| match std::fs::metadata(path) {
        Ok(meta) => (meta.modified().ok(), meta.len()),
        Err(_) => (None, 0),
    })
}

/// The raw public key a certificate certifies (for P-256, the point).
fn public_key(der: &CertificateDer<'_>) -> Result<Vec<u8>, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| CaError::Issuer(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Why a text is not a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trust bundle: {0}")]
pub struct BundleError(String);

/// Checks a trust bundle before it is stored and pushed to every proxy:
/// PEM `CERTIFICATE` blocks only (a private key in it would be published
/// to the whole mesh, so anything key-like is refused outright), each one
/// X.509, at least one of them a CA. Returns the certificates, in order.
pub fn validate_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    if pem.contains("PRIVATE KEY") {
        return Err(BundleError(
            "it holds a private key; a bundle is public certificates only, and this key \
             should now be considered exposed"
                .into(),
        ));
    }
    for line in pem.lines() {
        if let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if label != "CERTIFICATE" {
                return Err(BundleError(format!(
                    "a {label} block; only CERTIFICATE blocks belong in a bundle"
                )));
            }
        }
    }
    let certificates = certificates_from_pem(pem).map_err(|e| BundleError(e.to_string()))?;
    if certificates.is_empty() {
        return Err(BundleError("no certificate".into()));
    }
    let mut authorities = 0;
    for (i, der) in certificates.iter().enumerate() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| BundleError(format!("certificate {}: {e}", i + 1)))?;
        if cert.is_ca() {
            authorities += 1;
        }
    }
    if authorities == 0 {
        return Err(BundleError(
            "no CA certificate: anchors are CA certificates (meshctl identity init)".into(),
        ));
    }
    TrustBundle::new(certificates.clone(), 0).map_err(|e| BundleError(e.to_string()))?;
    Ok(certificates)
}

/// SHA-256 of a certificate's DER, lowercase hex: how operators, proxies
/// and the rotation name a CA certificate.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn not_after(der: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| CaError::Issuer(e.to_string()))?;
    let unix = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // At most a tenth of the lifetime: renewal is timed from not_before,
    // and a 10 s certificate back-dated a minute would be due at once.
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
}

fn leaf_params(
    id: &SpiffeId,
    organizations: &[&str],
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e| CaError::Sign(format!("{id}: {e:?}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let mut name = DistinguishedName::new();
    for organization in organizations {
        name.push(DnType::OrganizationName, *organization);
    }
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, lifetime);
    Ok(params)
}

fn ca_params(common_name: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, lifetime);
    params
}

/// What [`init`] and [`new_issuer`] made.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Makes a trust anchor (valid `anchor_lifetime`) and an issuer under it
/// (valid `issuer_lifetime`) for `trust_domain` in `out`, which must not
/// hold them already. The keys are written mode 0600.
pub fn init(
    out: &Path,
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
) -> Result<InitReport, CaError> {
    if !mesh::identity::spiffe::is_trust_domain(trust_domain) {
        return Err(CaError::Issuer(format!(
            "{trust_domain:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')"
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| CaError::File {
        path: out.to_owned(),
        source,
    })?;
    for name in [files::ANCHOR_KEY, files::ISSUER_KEY] {
        let path = out.join(name);
        if path.exists() {
            return Err(CaError::Issuer(format!(
                "{} exists: refusing to replace a CA (remove it or pick another --out)",
                path.display()
            )));
        }
    }
    let anchor_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Sign(e.to_string()))?;
    let anchor_params = ca_params(
        &format!("{trust_domain} trust anchor"),
        anchor_lifetime,
        None,
    );
    let anchor_cert = anchor_params
        .self_signed(&anchor_key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let anchor = Issuer::new(anchor_params, anchor_key);
    let anchor_pem = pem_block("CERTIFICATE", anchor_cert.der());
    write(&out.join(files::ANCHOR_CERT), &anchor_pem, false)?;
    write(
        &out.join(files::ANCHOR_KEY),
        &anchor.key().serialize_pem(),
        true,
    )?;
    write(&out.join(files::BUNDLE), &anchor_pem, false)?;
    let mut report = new_issuer(out, &anchor, trust_domain, issuer_lifetime)?;
    report.files.splice(
        0..0,
        [files::ANCHOR_CERT, files::ANCHOR_KEY, files::BUNDLE].map(|f| out.join(f)),
    );
    Ok(report)
}

/// Makes an issuer signed by `anchor` in `out` (replacing one there).
pub fn new_issuer(
    out: &Path,
    anchor: &Issuer<'_, KeyPair>,
    trust_domain: &str,
    lifetime: Duration,
) -> Result<InitReport, CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Sign(e.to_string()))?;
    let cert = ca_params(&format!("{trust_domain} issuer"), lifetime, Some(0))
        .signed_by(&key, anchor)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    write(
        &out.join(files::ISSUER_CERT),
        &pem_block("CERTIFICATE", cert.der()),
        false,
    )?;
    write(&out.join(files::ISSUER_KEY), &key.serialize_pem(), true)?;
    Ok(InitReport {
        files: vec![out.join(files::ISSUER_CERT), out.join(files::ISSUER_KEY)],
    })
}

/// Reads a trust bundle file.
pub fn load_bundle(path: &Path, version: u64) -> Result<TrustBundle, CaError> {
    TrustBundle::from_pem(&read(path)?, version).map_err(|e| CaError::Issuer(e.to_string()))
}

/// Writes a certificate chain and its key as PEM files (the key 0600).
pub fn write_credential(
    chain: &[CertificateDer<'_>],
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), CaError> {
    write(
        cert_path,
        &mesh::identity::certificate::certificates_to_pem(chain),
        false,
    )?;
    write(key_path, key_pem, true)
}

#[cfg(test)]
mod tests;
