//! The mesh's certificate authority: an issuer certificate and key (signed
//! by a trust anchor whose key stays offline), loaded from files at start.
//! It signs short-lived certificates for the identity a caller has proved
//! (a join token), with the caller's public key from its CSR: any names in
//! the CSR are ignored.
//!
//! `meshctl identity init` makes a fresh anchor and issuer with [`init`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh::identity::certificate::{certificates_from_pem, pem_block};
use mesh::identity::{SpiffeId, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};

/// Certificates are back-dated this much: peers' clocks differ a little.
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

/// The issuer, ready to sign.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_not_after: SystemTime,
    trust_domain: String,
    lifetime: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
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
        let cert_pem = read(cert)?;
        let key_pair =
            KeyPair::from_pem(&read(key)?).map_err(|e| CaError::Issuer(format!("key: {e}")))?;
        let issuer_der = certificates_from_pem(&cert_pem)
            .map_err(|e| CaError::Issuer(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Issuer(format!("{} holds no certificate", cert.display())))?;
        let issuer_not_after = not_after(&issuer_der)?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key_pair)
            .map_err(|e| CaError::Issuer(e.to_string()))?;
        Ok(Self {
            issuer,
            issuer_der,
            issuer_not_after,
            trust_domain: trust_domain.to_owned(),
            lifetime,
        })
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
        self.issuer_not_after
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
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(vec![leaf.der().clone(), self.issuer_der.clone()])
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
        let leaf = leaf_params(id, organizations, lifetime)?
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((
            vec![leaf.der().clone(), self.issuer_der.clone()],
            key.serialize_pem(),
        ))
    }
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
    params.not_before = now - BACKDATE;
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
