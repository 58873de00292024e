//! One ES256 signing key: a P-256 key pair made in memory with ring, its
//! public half as a JSON Web Key, and its key id.
//!
//! The private key never leaves the process and is never printed: it
//! exists only inside jsonwebtoken's `EncodingKey`, and [`SigningKey`]'s
//! `Debug` shows the key id alone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::EncodingKey;
use ring::rand::SecureRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// Length of an uncompressed P-256 point: `0x04 || x (32) || y (32)`
/// (SEC 1 §2.3.3).
const UNCOMPRESSED_POINT_LEN: usize = 65;

/// A key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// ring could not generate or parse the key pair.
    #[error("P-256 key generation failed")]
    Generate,
    /// The public key did not have the uncompressed point's shape.
    #[error("unexpected P-256 public key length {0}")]
    PublicKey(usize),
}

/// A P-256 key that signs access tokens (ES256, RFC 7518 §3.4).
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key pair from `rng`.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, KeyError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            .map_err(|_| KeyError::Generate)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
            .map_err(|_| KeyError::Generate)?;
        let point = pair.public_key().as_ref();
        if point.len() != UNCOMPRESSED_POINT_LEN || point[0] != 0x04 {
            return Err(KeyError::PublicKey(point.len()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = thumbprint(&x, &y);
        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                key_id: Some(kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x,
                y,
            }),
        };
        Ok(Self {
            kid,
            // jsonwebtoken's ES256 signing takes ring's PKCS#8 document as is.
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        })
    }

    /// The key id: the `kid` header of every token this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (what `GetJwks` publishes).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The private key, for signing.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The key's JWK thumbprint (RFC 7638): SHA-256 over the required members
/// in lexicographic order, base64url. A kid anyone can recompute from the
/// public key, and that changes exactly when the key does.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn keys_are_distinct_and_their_kid_is_the_thumbprint() {
        let rng = SystemRandom::new();
        let a = SigningKey::generate(&rng).expect("key");
        let b = SigningKey::generate(&rng).expect("key");
        assert_ne!(a.kid(), b.kid());
        // 32 bytes of SHA-256, base64url without padding.
        assert_eq!(a.kid().len(), 43);
        let AlgorithmParameters::EllipticCurve(ec) = &a.jwk().algorithm else {
            panic!("an EC key");
        };
        assert_eq!(thumbprint(&ec.x, &ec.y), a.kid());
        assert_eq!(a.jwk().common.key_id.as_deref(), Some(a.kid()));
    }

    #[test]
    fn debug_shows_the_kid_and_nothing_else() {
        let key = SigningKey::generate(&SystemRandom::new()).expect("key");
        let shown = format!("{key:?}");
        assert_eq!(shown, format!("SigningKey {{ kid: {:?}, .. }}", key.kid()));
    }

    /// RFC 7638 §3.1's example is RSA; this pins our canonical EC form
    /// (member order, no spaces) instead.
    #[test]
    fn thumbprint_input_is_canonical() {
        let expected = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            br#"{"crv":"P-256","kty":"EC","x":"AA","y":"BB"}"#,
        ));
        assert_eq!(thumbprint("AA", "BB"), expected);
    }
}
