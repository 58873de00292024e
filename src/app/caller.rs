//! Who is calling an app, as the mesh verified it: a gateway checks an
//! outside client's bearer token and forwards its subject and chosen
//! claims; the callee's sidecar passes them on only when they came from a
//! gateway's certificate (and removes them otherwise). An app behind a
//! sidecar can therefore take them as proven, and never needs the token.

use std::collections::BTreeMap;

use tonic::{Request, Status};

/// The verified subject (a token's `sub`) of an outside caller.
pub const AUTH_SUBJECT: &str = "x-mesh-auth-sub";

/// The verified claims of an outside caller: a JSON object of strings.
pub const AUTH_CLAIMS: &str = "x-mesh-auth-claims";

/// The verified subject of `request`, if it came with one; an error for a
/// value that is not a plausible id.
pub fn subject<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(AUTH_SUBJECT) else {
        return Ok(None);
    };
    let subject = value
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("{AUTH_SUBJECT}: not a user id")))?;
    super::validate::required_id(AUTH_SUBJECT, subject)
        .map_err(|s| Status::unauthenticated(s.message().to_owned()))?;
    Ok(Some(subject.to_owned()))
}

/// The verified subject of `request`, or UNAUTHENTICATED saying how to
/// get one.
pub fn required_subject<T>(request: &Request<T>) -> Result<String, Status> {
    subject(request)?.ok_or_else(|| {
        Status::unauthenticated(
            "no verified caller: call through the gateway with `authorization: Bearer <token>`",
        )
    })
}

/// The verified claims of `request` (empty without any).
pub fn claims<T>(request: &Request<T>) -> BTreeMap<String, String> {
    request
        .metadata()
        .get(AUTH_CLAIMS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}
