//! A proxy's own key and its certificate request. The key is made in memory
//! and never leaves the process; only the CSR (public key and a proof of
//! possession) goes to the control plane, which ignores any names in it and
//! certifies the identity the caller's credential proves.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why no CSR could be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate request: {0}")]
pub struct CsrError(String);

/// A fresh ECDSA P-256 key and a CSR for it.
pub struct KeyAndCsr {
    /// The private key, PKCS#8 DER: keep it, never send it.
    pub key: PrivateKeyDer<'static>,
    /// The CSR, DER.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Generates a key pair and a CSR signed with it.
pub fn generate() -> Result<KeyAndCsr, CsrError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CsrError(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| CsrError(e.to_string()))?;
    Ok(KeyAndCsr {
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        csr_der: csr.der().to_vec(),
    })
}
