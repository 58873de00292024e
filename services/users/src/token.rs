//! Access tokens: the claims a token carries and how one is signed.
//!
//! A token is a JWT (RFC 7519) signed ES256 with the ring's current key,
//! its `kid` in the header. The claims are the registered ones a verifier
//! checks (`iss`, `aud`, `sub`, `exp`, `iat`) plus `role`, which
//! authorization rules at the gateway may require (e.g. `role: admin`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::signing_key::SigningKey;

/// What a user may do in the shop; carried as the `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everyone who registers.
    Customer,
    /// Accounts registered with an `--admin-email`.
    Admin,
}

impl Role {
    /// The claim's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: this service's `--issuer`.
    pub iss: String,
    /// Audience: who the token is for (`--audience`).
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// The user's role.
    pub role: Role,
}

/// A signed token and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Its `exp`, unix seconds.
    pub expires_at: u64,
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing a token: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

/// Who tokens are from and for, and how long they live. Fixed at start-up.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim.
    pub audience: String,
    /// From `iat` to `exp`: short, since a token cannot be revoked.
    pub lifetime: Duration,
}

impl TokenPolicy {
    /// A token for `subject` with `role`, issued at `now` (unix seconds),
    /// signed with `key`.
    pub fn issue(
        &self,
        key: &SigningKey,
        subject: &str,
        role: Role,
        now: u64,
    ) -> Result<IssuedToken, SignError> {
        let expires_at = now.saturating_add(self.lifetime.as_secs());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            exp: expires_at,
            iat: now,
            role,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())?;
        Ok(IssuedToken { token, expires_at })
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is
/// before 1970, which only a broken host has).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_ring::KeyRing;
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};
    use ring::rand::SystemRandom;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "https://users.test".into(),
            audience: "shop".into(),
            lifetime: Duration::from_secs(900),
        }
    }

    /// What a gateway does: find the token's kid in the JWKS and check the
    /// signature, issuer, audience and expiry.
    fn verify(token: &str, jwks: &JwkSet) -> Result<Claims, ErrorKind> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.into_kind())?;
        let kid = header.kid.ok_or(ErrorKind::InvalidToken)?;
        let jwk = jwks.find(&kid).ok_or(ErrorKind::InvalidKeyFormat)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.into_kind())?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&["https://users.test"]);
        validation.set_audience(&["shop"]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.into_kind())
    }

    #[test]
    fn a_token_carries_the_claims_and_the_kid() {
        let ring = KeyRing::generate(&SystemRandom::new()).expect("ring");
        let now = unix_now();
        let issued = policy()
            .issue(ring.current(), "usr_1", Role::Admin, now)
            .expect("sign");
        assert_eq!(issued.expires_at, now + 900);
        let header = jsonwebtoken::decode_header(&issued.token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(ring.current().kid()));
        let claims = verify(&issued.token, &ring.jwks(now)).expect("valid");
        assert_eq!(
            claims,
            Claims {
                iss: "https://users.test".into(),
                aud: "shop".into(),
                sub: "usr_1".into(),
                exp: now + 900,
                iat: now,
                role: Role::Admin,
            }
        );
        // The role travels as the lowercase word rules match on.
        let payload = issued.token.split('.').nth(1).expect("payload");
        let json =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .expect("base64url");
        assert!(String::from_utf8_lossy(&json).contains(r#""role":"admin""#));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let ring = KeyRing::generate(&SystemRandom::new()).expect("ring");
        // Issued an hour ago for 15 minutes: past even the 60 s leeway.
        let issued_at = unix_now() - 3_600;
        let issued = policy()
            .issue(ring.current(), "usr_1", Role::Customer, issued_at)
            .expect("sign");
        assert_eq!(
            verify(&issued.token, &ring.jwks(unix_now())),
            Err(ErrorKind::ExpiredSignature)
        );
    }

    #[test]
    fn wrong_audience_or_tampered_claims_are_refused() {
        let ring = KeyRing::generate(&SystemRandom::new()).expect("ring");
        let now = unix_now();
        let other = TokenPolicy {
            audience: "not-the-shop".into(),
            ..policy()
        };
        let issued = other
            .issue(ring.current(), "usr_1", Role::Customer, now)
            .expect("sign");
        assert_eq!(
            verify(&issued.token, &ring.jwks(now)),
            Err(ErrorKind::InvalidAudience)
        );

        // Swap in another payload under the original signature.
        let good = policy()
            .issue(ring.current(), "usr_1", Role::Customer, now)
            .expect("sign");
        let admin = policy()
            .issue(ring.current(), "usr_1", Role::Admin, now)
            .expect("sign");
        let parts: Vec<&str> = good.token.split('.').collect();
        let admin_payload = admin.token.split('.').nth(1).expect("payload");
        let forged = format!("{}.{}.{}", parts[0], admin_payload, parts[2]);
        assert_eq!(
            verify(&forged, &ring.jwks(now)),
            Err(ErrorKind::InvalidSignature)
        );
    }

    #[test]
    fn tokens_of_the_previous_key_verify_until_it_is_rotated_out() {
        let rng = SystemRandom::new();
        let lifetime = policy().lifetime;
        let now = unix_now();
        let first = KeyRing::generate(&rng).expect("ring");
        let old = policy()
            .issue(first.current(), "usr_1", Role::Customer, now)
            .expect("sign");

        // One rotation: the previous key is still in the set.
        let second = first
            .rotated(now, lifetime + crate::key_ring::DEFAULT_CLOCK_SKEW, &rng)
            .expect("rotate");
        let jwks = second.jwks(now);
        assert!(jwks.find(first.current().kid()).is_some());
        assert!(jwks.find(second.current().kid()).is_some());
        assert!(verify(&old.token, &jwks).is_ok());
        let new = policy()
            .issue(second.current(), "usr_1", Role::Customer, now)
            .expect("sign");
        assert!(verify(&new.token, &jwks).is_ok());

        // Two rotations: the first key is gone, and so is trust in what it
        // signed, although the token itself has not expired.
        let third = second
            .rotated(now, lifetime + crate::key_ring::DEFAULT_CLOCK_SKEW, &rng)
            .expect("rotate");
        let jwks = third.jwks(now);
        assert!(jwks.find(first.current().kid()).is_none());
        assert!(verify(&old.token, &jwks).is_err());
        assert!(verify(&new.token, &jwks).is_ok());
    }

    #[test]
    fn a_token_signed_with_a_key_outside_the_set_is_refused() {
        let rng = SystemRandom::new();
        let ring = KeyRing::generate(&rng).expect("ring");
        let stranger = crate::signing_key::SigningKey::generate(&rng).expect("key");
        let now = unix_now();
        let issued = policy()
            .issue(&stranger, "usr_1", Role::Admin, now)
            .expect("sign");
        assert!(verify(&issued.token, &ring.jwks(now)).is_err());

        // Even under a kid that is in the set.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(ring.current().kid().to_owned());
        let claims = Claims {
            iss: "https://users.test".into(),
            aud: "shop".into(),
            sub: "usr_1".into(),
            exp: now + 60,
            iat: now,
            role: Role::Admin,
        };
        let forged = jsonwebtoken::encode(&header, &claims, stranger.encoding_key()).expect("sign");
        assert_eq!(
            verify(&forged, &ring.jwks(now)),
            Err(ErrorKind::InvalidSignature)
        );
    }
}
