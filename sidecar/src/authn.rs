//! Bearer tokens at the gateway's ingress (`kind: RequestAuthentication`):
//! a token (`authorization: Bearer <JWT>`) is verified against the key sets
//! the control plane pushed, locally, before the call is routed. A token
//! that does not verify (bad signature, unknown key, wrong issuer or
//! audience, expired) is refused UNAUTHENTICATED; a call without one goes
//! on anonymous, for authorization policies to decide. A verified token's
//! subject goes on as `x-mesh-auth-sub` and its chosen claims as
//! `x-mesh-auth-claims` (a JSON object), which the callee's sidecar
//! believes only from a gateway's certificate; the ingress removed any
//! such header the client sent before this runs.
//!
//! Verifying a signature costs tens of microseconds, so a verified token
//! is remembered (bounded, until it expires or the keys change): a client
//! that sends the same token on every call pays once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh::model::Bootstrap;

use crate::call::error::ProxyError;

/// The verified subject a gateway forwards.
pub const SUBJECT_HEADER: &str = "x-mesh-auth-sub";

/// Most verified tokens remembered at once.
const CACHE_CAPACITY: usize = 10_000;

/// Longest token accepted (a JWT with a few claims is under 1 KB).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// One issuer's accepted tokens and the keys that verify them.
struct Issuer {
    /// The request authentication it comes from.
    name: String,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    validation: Validation,
    forward_claims: Vec<String>,
    forward_token: bool,
    debug_claims: BTreeMap<String, String>,
}

/// What a verified token says, as forwarded.
#[derive(Debug, Clone)]
struct Verified {
    subject: HeaderValue,
    claims: HeaderValue,
    forward_token: bool,
    /// Its claims let it ask for the debug header.
    may_debug: bool,
    /// Unix seconds after which the token is no longer good.
    expires: u64,
}

/// The gateway's token verifier for one table.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    cache: Mutex<HashMap<Arc<str>, Verified>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// The verifier for `source`'s request authentications, or `None` when
    /// it has none. A key set that is missing or has a bad key leaves those
    /// keys out (their tokens are refused), reported in the returned
    /// problems: it never blocks the rest of the table.
    pub fn build(source: &Bootstrap) -> (Option<Self>, Vec<String>) {
        let mut problems = Vec::new();
        if source.request_authentications.is_empty() {
            return (None, problems);
        }
        let mut issuers = Vec::new();
        for authn in &source.request_authentications {
            let name = &authn.metadata.name;
            let spec = &authn.spec;
            let mut keys = HashMap::new();
            match source
                .jwks
                .get(name)
                .map(|json| serde_json::from_str::<JwkSet>(json))
            {
                None => problems.push(format!("request authentication {name}: no key set yet")),
                Some(Err(e)) => problems.push(format!("request authentication {name}: {e}")),
                Some(Ok(set)) => {
                    for jwk in &set.keys {
                        match decoding_key(jwk) {
                            Ok((kid, key)) => {
                                keys.insert(kid, key);
                            }
                            Err(why) => {
                                problems.push(format!("request authentication {name}: {why}"))
                            }
                        }
                    }
                }
            }
            let mut validation = Validation::new(Algorithm::ES256);
            validation.set_issuer(&[&spec.issuer]);
            validation.set_audience(&spec.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = spec.clock_skew().as_secs();
            validation.validate_nbf = true;
            issuers.push(Issuer {
                name: name.clone(),
                keys,
                validation,
                forward_claims: spec.forward_claims.clone(),
                forward_token: spec.forward_original_token,
                debug_claims: spec.debug_claims.clone(),
            });
        }
        (
            Some(Self {
                issuers,
                cache: Mutex::new(HashMap::new()),
            }),
            problems,
        )
    }

    /// Checks the call's bearer token, if it has one, and puts what it
    /// proves in `headers`; an error is the answer to send instead. `Some`
    /// subject for a verified token, with whether its claims let it ask for
    /// the debug header.
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<(HeaderValue, bool)>, ProxyError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ProxyError::unauthenticated("not a bearer token"))?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ProxyError::unauthenticated("token too large"));
        }
        let verified = match self.remembered(token) {
            Some(verified) => verified,
            None => {
                let verified = self.verify(token)?;
                self.remember(token, verified.clone());
                verified
            }
        };
        if !verified.forward_token {
            headers.remove(http::header::AUTHORIZATION);
        }
        headers.insert(
            HeaderName::from_static(SUBJECT_HEADER),
            verified.subject.clone(),
        );
        headers.insert(
            HeaderName::from_static(crate::authz::CLAIMS_HEADER),
            verified.claims,
        );
        Ok(Some((verified.subject, verified.may_debug)))
    }

    fn remembered(&self, token: &str) -> Option<Verified> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let verified = cache.get(token)?;
        (verified.expires > unix_now()).then(|| verified.clone())
    }

    fn remember(&self, token: &str, verified: Verified) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            // Expired entries first; if all are live, start over: a
            // cache miss costs one verification, never a wrong answer.
            let now = unix_now();
            cache.retain(|_, v| v.expires > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(Arc::from(token), verified);
    }

    fn verify(&self, token: &str) -> Result<Verified, ProxyError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ProxyError::unauthenticated(format!("malformed token: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| ProxyError::unauthenticated("the token names no key (kid)"))?;
        let mut last = None;
        for issuer in &self.issuers {
            let Some((key, algorithm)) = issuer.keys.get(&kid) else {
                continue;
            };
            let mut validation = issuer.validation.clone();
            validation.algorithms = vec![*algorithm];
            match jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(
                token,
                key,
                &validation,
            ) {
                Ok(data) => return forwarded(issuer, &data.claims),
                Err(e) => last = Some(format!("{}: {e}", issuer.name)),
            }
        }
        Err(ProxyError::unauthenticated(last.unwrap_or_else(|| {
            format!("no accepted issuer has key {kid:?}")
        })))
    }
}

/// What `claims` of a token verified for `issuer` forward.
fn forwarded(
    issuer: &Issuer,
    claims: &BTreeMap<String, serde_json::Value>,
) -> Result<Verified, ProxyError> {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let subject = claims.get("sub").map(text).unwrap_or_default();
    if subject.is_empty() || subject.len() > 256 {
        return Err(ProxyError::unauthenticated(
            "the token's sub is empty or too long",
        ));
    }
    let subject = HeaderValue::from_str(&subject)
        .map_err(|_| ProxyError::unauthenticated("the token's sub is not printable"))?;
    let mut forwarded = serde_json::Map::new();
    for name in ["sub", "iss"]
        .into_iter()
        .chain(issuer.forward_claims.iter().map(String::as_str))
    {
        if let Some(value) = claims.get(name) {
            forwarded.insert(name.to_owned(), serde_json::Value::String(text(value)));
        }
    }
    let claims_json = serde_json::Value::Object(forwarded).to_string();
    let claims_header = HeaderValue::from_str(&claims_json)
        .map_err(|_| ProxyError::unauthenticated("the token's claims are not printable"))?;
    let may_debug = !issuer.debug_claims.is_empty()
        && issuer
            .debug_claims
            .iter()
            .all(|(name, want)| claims.get(name).is_some_and(|v| &text(v) == want));
    let expires = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        .saturating_add(issuer.validation.leeway);
    Ok(Verified {
        subject,
        claims: claims_header,
        forward_token: issuer.forward_token,
        may_debug,
        expires,
    })
}

/// A JWK as a verification key: its id, the key and its algorithm (ES256
/// for EC P-256, EdDSA for Ed25519; nothing else is accepted).
fn decoding_key(jwk: &Jwk) -> Result<(String, (DecodingKey, Algorithm)), String> {
    let kid = jwk
        .common
        .key_id
        .clone()
        .ok_or_else(|| "a key without kid".to_owned())?;
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => {
            return Err(format!(
                "key {kid:?}: only ES256 and EdDSA keys are accepted"
            ))
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
    Ok((kid, (key, algorithm)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests;
