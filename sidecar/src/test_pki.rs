//! Test certificates: a throwaway anchor and leaf certificates for any
//! SPIFFE ID, made with rcgen like the control plane's CA makes them.

use std::time::Duration;

use mesh::identity::{Credential, SpiffeId, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A trust anchor that signs leaves directly.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    anchor: CertificateDer<'static>,
}

impl TestCa {
    /// A fresh anchor.
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            anchor: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A bundle of this anchor.
    pub fn bundle(&self, version: u64) -> TrustBundle {
        TrustBundle::new(vec![self.anchor.clone()], version).unwrap()
    }

    /// A credential for `id` valid from now for `lifetime`.
    pub fn credential(&self, id: &SpiffeId, lifetime: Duration) -> Credential {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + lifetime;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Credential::new(
            vec![cert.der().clone(), self.anchor.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap()
    }
}
