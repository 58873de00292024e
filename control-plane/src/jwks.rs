//! Key sets for request authentication: each replica fetches the JWKS of
//! every `RequestAuthentication` (calling its mesh method over mTLS as the
//! control plane, or reading its file), keeps only the public members of
//! each key, and stores the set under `/mesh/jwks/<name>` when it changed,
//! so the watch pushes it to every gateway with the table. Gateways then
//! verify tokens locally: the issuer is asked once per refresh, not once
//! per request.
//!
//! A failed fetch keeps the stored set (tokens keep verifying with the keys
//! known) and is tried again within 5 s; a set that holds private key
//! material is refused, so no private key ever reaches the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mesh::identity::{MeshTls, SpiffeId, Workload};
use mesh::model::{Bootstrap, RequestAuthentication};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::index::Published;
use crate::metrics::Metrics;
use crate::store::{Precondition, Store};

/// How long one fetch (connect and call) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a failed fetch is tried again (or the refresh, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Most keys a set may hold.
const MAX_KEYS: usize = 32;

/// Why a key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The document is not a JWKS the gateways can use.
    #[error("not a usable JWKS: {0}")]
    Invalid(String),
    /// The set carries private key material.
    #[error("key {kid:?} carries private key material ({member}): refused, never stored")]
    PrivateKey {
        /// The key's id.
        kid: String,
        /// The private member found.
        member: &'static str,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No route or no endpoint serves the method.
    #[error("{0}")]
    NoEndpoint(String),
    /// Every endpoint tried failed.
    #[error("calling {method}: {detail}")]
    Call {
        /// The method.
        method: String,
        /// What the last attempt said.
        detail: String,
    },
}

/// Members of a JWK that hold private key material (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Members kept: what verifying a signature needs.
const PUBLIC_MEMBERS: [&str; 7] = ["kty", "crv", "x", "y", "kid", "alg", "use"];

/// The set as stored: every key checked (EC P-256 or OKP Ed25519, with a
/// `kid`), only its public members, in a stable order so an unchanged set
/// is byte for byte the same and not written again.
pub fn normalize(json: &str) -> Result<String, JwksError> {
    let invalid = |why: &str| JwksError::Invalid(why.to_owned());
    let document: serde_json::Value =
        serde_json::from_str(json).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let keys = document
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| invalid("no \"keys\" array"))?;
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(JwksError::Invalid(format!(
            "{} keys: 1 to {MAX_KEYS} expected",
            keys.len()
        )));
    }
    let mut kept = Vec::with_capacity(keys.len());
    for key in keys {
        let object = key
            .as_object()
            .ok_or_else(|| invalid("a key is not an object"))?;
        let text = |member: &str| object.get(member).and_then(|v| v.as_str()).unwrap_or("");
        let kid = text("kid");
        if kid.is_empty() || kid.len() > 128 {
            return Err(invalid("every key needs a kid (1 to 128 characters)"));
        }
        if let Some(member) = PRIVATE_MEMBERS
            .into_iter()
            .find(|m| object.contains_key(*m))
        {
            return Err(JwksError::PrivateKey {
                kid: kid.to_owned(),
                member,
            });
        }
        match (text("kty"), text("crv")) {
            ("EC", "P-256") if !text("x").is_empty() && !text("y").is_empty() => {}
            ("OKP", "Ed25519") if !text("x").is_empty() => {}
            (kty, crv) => {
                return Err(JwksError::Invalid(format!(
                    "key {kid:?}: {kty} {crv} is not an ES256 (EC P-256) or EdDSA (OKP Ed25519) key"
                )))
            }
        }
        let public: serde_json::Map<String, serde_json::Value> = object
            .iter()
            .filter(|(name, _)| PUBLIC_MEMBERS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        kept.push(serde_json::Value::Object(public));
    }
    Ok(serde_json::json!({ "keys": kept }).to_string())
}

/// Keeps every request authentication's stored key set current, until
/// `stop`.
pub async fn run<S: Store>(
    store: S,
    mut published: watch::Receiver<Arc<Published>>,
    tls: Option<Arc<MeshTls>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // When each document is next due, and the document it was for (a
    // changed document is fetched at once).
    let mut due: HashMap<String, (Instant, RequestAuthentication)> = HashMap::new();
    loop {
        let current = published.borrow_and_update().clone();
        let table = &current.table;
        for authn in &table.request_authentications {
            let name = &authn.metadata.name;
            let now = Instant::now();
            if due
                .get(name)
                .is_some_and(|(at, doc)| doc == authn && *at > now)
            {
                continue;
            }
            let wait = match tokio::time::timeout(FETCH_TIMEOUT, fetch(authn, table, tls.as_ref()))
                .await
                .unwrap_or_else(|_| {
                    Err(JwksError::Call {
                        method: authn.spec.jwks.method.clone().unwrap_or_default(),
                        detail: format!("no answer within {FETCH_TIMEOUT:?}"),
                    })
                }) {
                Ok(keys) if table.jwks.get(name) == Some(&keys) => {
                    metrics.jwks_fetch("unchanged");
                    authn.spec.jwks.refresh()
                }
                Ok(keys) => {
                    let key = crate::keys::jwks(name);
                    match store
                        .put(&key, keys.into_bytes(), Precondition::Any, None)
                        .await
                    {
                        Ok(revision) => {
                            tracing::info!(authentication = %name, revision, "key set changed; stored");
                            metrics.jwks_fetch("changed");
                            authn.spec.jwks.refresh()
                        }
                        Err(error) => {
                            tracing::warn!(authentication = %name, %error, "cannot store the key set");
                            metrics.store_error("put-jwks");
                            RETRY_AFTER_FAILURE
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(authentication = %name, %error, "key set fetch failed; the stored set stays");
                    metrics.jwks_fetch("failed");
                    RETRY_AFTER_FAILURE.min(authn.spec.jwks.refresh())
                }
            };
            due.insert(name.clone(), (Instant::now() + wait, authn.clone()));
        }
        due.retain(|name, _| {
            table
                .request_authentications
                .iter()
                .any(|a| &a.metadata.name == name)
        });
        let next = due
            .values()
            .map(|(at, _)| *at)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            changed = published.changed() => if changed.is_err() { return },
        }
    }
}

/// The key set of `authn`, normalized.
async fn fetch(
    authn: &RequestAuthentication,
    table: &Bootstrap,
    tls: Option<&Arc<MeshTls>>,
) -> Result<String, JwksError> {
    let source = &authn.spec.jwks;
    if let Some(path) = &source.file {
        let file = path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(file))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| JwksError::File {
                path: path.clone(),
                source,
            })?;
        return normalize(&text);
    }
    let (service, method) = source
        .service_and_method()
        .ok_or_else(|| JwksError::NoEndpoint("no jwks.method or jwks.file".into()))?;
    let destination = table
        .route_for(service, method)
        .map(|r| r.spec.destination.clone())
        .ok_or_else(|| JwksError::NoEndpoint(format!("no route takes {service}/{method}")))?;
    let endpoints: Vec<&str> = table
        .endpoints
        .iter()
        .filter(|e| e.service == destination)
        .map(|e| e.address.as_str())
        .collect();
    if endpoints.is_empty() {
        return Err(JwksError::NoEndpoint(format!(
            "service {destination} has no endpoints"
        )));
    }
    let path = format!("/{service}/{method}");
    let mut last = String::new();
    for address in endpoints {
        match call(address, &destination, &path, tls).await {
            Ok(json) => return normalize(&json),
            Err(detail) => last = format!("{address}: {detail}"),
        }
    }
    Err(JwksError::Call {
        method: path,
        detail: last,
    })
}

/// The empty request of a key set method.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// What a key set method answers: the JWKS JSON in field 1 (the users
/// service's `GetJwksResponse` and any message shaped like it).
#[derive(Clone, PartialEq, prost::Message)]
struct KeySetResponse {
    #[prost(string, tag = "1")]
    jwks_json: String,
}

/// Calls `path` at one endpoint of `service`, as the control plane.
async fn call(
    address: &str,
    service: &str,
    path: &str,
    tls: Option<&Arc<MeshTls>>,
) -> Result<String, String> {
    let uri = format!("http://{address}");
    let channel = match tls {
        Some(tls) => {
            let peer = SpiffeId::new(tls.trust_domain(), Workload::Service(service.to_owned()))
                .map_err(|e| e.to_string())?;
            mesh::identity::transport::channel(&uri, tls.clone(), peer, FETCH_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?
        }
        None => tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .connect_timeout(FETCH_TIMEOUT)
            .connect()
            .await
            .map_err(|e| e.to_string())?,
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::try_from(path).map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<Empty, KeySetResponse>::default();
    let response = grpc
        .unary(tonic::Request::new(Empty {}), path, codec)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(response.into_inner().jwks_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","x":"eHg","y":"eXk","kid":"k1","alg":"ES256","use":"sig","extra":1}"#;

    #[test]
    fn a_set_is_kept_with_its_public_members_in_a_stable_order() {
        let json = format!(r#"{{"keys":[{EC}]}}"#);
        let normalized = normalize(&json).expect("valid");
        assert_eq!(
            normalized,
            r#"{"keys":[{"alg":"ES256","crv":"P-256","kid":"k1","kty":"EC","use":"sig","x":"eHg","y":"eXk"}]}"#
        );
        assert_eq!(normalize(&normalized).expect("again"), normalized);
    }

    #[test]
    fn private_keys_and_unusable_sets_are_refused() {
        let private = EC.replace(r#""extra":1"#, r#""d":"c2VjcmV0""#);
        let error = normalize(&format!(r#"{{"keys":[{private}]}}"#)).expect_err("private");
        assert!(
            matches!(error, JwksError::PrivateKey { member: "d", .. }),
            "{error}"
        );
        for bad in [
            "[]",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB","kid":"r"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#,
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
