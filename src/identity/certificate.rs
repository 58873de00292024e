//! What the mesh reads from a certificate: its SPIFFE ID (the one URI SAN)
//! and its validity. Parsed with x509-parser; never trusted before rustls
//! has verified the chain it came in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate does not name a mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Not DER X.509.
    #[error("not an X.509 certificate: {0}")]
    Malformed(String),
    /// SPIFFE X.509-SVID 2: exactly one URI SAN.
    #[error("the certificate has {0} URI SANs; an identity certificate has exactly one")]
    UriSans(usize),
    /// The URI SAN is not a mesh SPIFFE ID.
    #[error(transparent)]
    Identity(#[from] SpiffeIdError),
}

/// The facts of one certificate the mesh acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The subject's organizations: operator roles travel here (as
    /// Kubernetes groups do in client certificates).
    pub organizations: Vec<String>,
}

impl CertificateInfo {
    /// Reads `der`.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertificateError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertificateError::Malformed(e.to_string()))?;
        let uris: Vec<&str> = match cert
            .subject_alternative_name()
            .map_err(|e| CertificateError::Malformed(e.to_string()))?
        {
            Some(san) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let [uri] = uris.as_slice() else {
            return Err(CertificateError::UriSans(uris.len()));
        };
        let id = SpiffeId::parse(uri)?;
        let organizations = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        let validity = cert.validity();
        Ok(Self {
            id,
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            organizations,
        })
    }

    /// Time left until it expires (zero once it has).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// Its whole lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    }
}

/// Parses every certificate in a PEM text (a chain or a bundle), in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::Malformed(format!("PEM: {e}")))
}

/// Certificates as PEM text.
pub fn certificates_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

/// One PEM block (RFC 7468), with Unix line endings.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}
