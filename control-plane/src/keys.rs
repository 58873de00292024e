//! Where the mesh keeps its state in the store (etcd):
//!
//! - `/mesh/routes/<name>`: a validated route document (JSON).
//! - `/mesh/endpoints/<service>/<instance>`: a live registration (JSON),
//!   bound to the registration lease of the replica the sidecar's discovery
//!   stream is on (one lease per replica, not per sidecar), deleted when
//!   the stream ends.
//! - `/mesh/descriptors/<service>/<instance>`: that app's encoded
//!   `FileDescriptorSet`, checked when registered, on the same lease.
//! - `/mesh/trust/bundle`: the trust anchors (PEM; certificates only, never
//!   a key) every proxy is pushed; its mod revision is the bundle version.
//! - `/mesh/trust/renew-issuer`: the fingerprint (SHA-256, hex) of the
//!   issuer proxies should hold certificates from; one that holds another
//!   renews at once (set by `meshctl identity rotate`).
//! - `/mesh/tokens/<id>`: a join token's record (JSON): the identity it
//!   proves, its expiry, and a SHA-256 of its secret, never the secret.
//! - `/mesh/config/mtls`: the mesh-wide mTLS mode, `strict` or
//!   `permissive` (absent: strict), pushed to every proxy with the table.
//! - `/mesh/authz/<name>`: a validated authorization policy (JSON).
//! - `/mesh/config/default-authorization`: `all-authenticated` or `deny`
//!   (absent: all-authenticated), for services no ALLOW policy names.
//! - `/mesh/authn/<name>`: a validated request authentication (JSON).
//! - `/mesh/jwks/<name>`: the key set a replica fetched for request
//!   authentication `<name>` (JWKS JSON: public keys only).
//!
//! What replicas report about themselves for `meshctl status` lives apart,
//! under `/mesh-status/`, which no replica watches: a sidecar's ACK
//! written there wakes nobody.
//!
//! - `/mesh-status/replicas/<id>`: a replica's address, revision and
//!   number of sidecars (JSON), bound to the replica's status lease.
//! - `/mesh-status/sidecars/<replica>/<session>`: one connected sidecar
//!   (JSON), on the same lease: no value grows with the fleet.

/// Everything the mesh stores is under this prefix.
pub const ROOT: &str = "/mesh/";
/// Routes prefix.
pub const ROUTES: &str = "/mesh/routes/";
/// Endpoints prefix.
pub const ENDPOINTS: &str = "/mesh/endpoints/";
/// Descriptor sets prefix.
pub const DESCRIPTORS: &str = "/mesh/descriptors/";
/// Replica status prefix (outside [`ROOT`]: not watched).
pub const STATUS_REPLICAS: &str = "/mesh-status/replicas/";
/// Connected sidecars prefix (outside [`ROOT`]: not watched).
pub const STATUS_SIDECARS: &str = "/mesh-status/sidecars/";

/// The trust bundle.
pub const TRUST_BUNDLE: &str = "/mesh/trust/bundle";
/// The issuer proxies are asked to renew under.
pub const RENEW_ISSUER: &str = "/mesh/trust/renew-issuer";
/// Join tokens prefix.
pub const TOKENS: &str = "/mesh/tokens/";
/// The mesh-wide mTLS mode.
pub const MTLS_MODE: &str = "/mesh/config/mtls";
/// Authorization policies prefix.
pub const AUTHORIZATION_POLICIES: &str = "/mesh/authz/";
/// The mesh-wide default authorization.
pub const DEFAULT_AUTHORIZATION: &str = "/mesh/config/default-authorization";
/// Request authentications prefix.
pub const REQUEST_AUTHENTICATIONS: &str = "/mesh/authn/";
/// Fetched key sets prefix.
pub const JWKS: &str = "/mesh/jwks/";

/// The key of the key set fetched for request authentication `name`.
pub fn jwks(name: &str) -> String {
    format!("{JWKS}{name}")
}

/// The mesh-wide mTLS modes a store may hold: `off` is not one of them (a
/// plaintext mesh is each process's explicit flag, never a pushed switch
/// that one write could flip for everyone).
pub const MTLS_MODES: [&str; 2] = ["strict", "permissive"];

/// The mode a stored (or requested) value names, trimmed and lowercased;
/// an error names the values allowed.
pub fn mtls_mode(value: &str) -> Result<&'static str, String> {
    let wanted = value.trim().to_ascii_lowercase();
    MTLS_MODES
        .into_iter()
        .find(|mode| *mode == wanted)
        .ok_or_else(|| {
            format!(
                "mTLS mode {value:?}: must be strict or permissive (off is a process flag, --mtls off)"
            )
        })
}

/// The mesh-wide default authorizations a store may hold (the first is
/// the default when none is stored).
pub const DEFAULT_AUTHORIZATIONS: [&str; 2] = ["all-authenticated", "deny"];

/// The default a stored (or requested) value names; an error names the
/// values allowed.
pub fn default_authorization(value: &str) -> Result<&'static str, String> {
    let wanted = value.trim().to_ascii_lowercase();
    DEFAULT_AUTHORIZATIONS
        .into_iter()
        .find(|d| *d == wanted)
        .ok_or_else(|| {
            format!("default authorization {value:?}: must be all-authenticated or deny")
        })
}

/// The key of route `name`.
pub fn route(name: &str) -> String {
    format!("{ROUTES}{name}")
}

/// The key of an endpoint registration.
pub fn endpoint(service: &str, instance: &str) -> String {
    format!("{ENDPOINTS}{service}/{instance}")
}

/// The key of an app's descriptors.
pub fn descriptors(service: &str, instance: &str) -> String {
    format!("{DESCRIPTORS}{service}/{instance}")
}

/// The key of a replica's status.
pub fn replica(id: &str) -> String {
    format!("{STATUS_REPLICAS}{id}")
}

/// The key of a sidecar connected to replica `replica` on stream `session`.
pub fn sidecar_status(replica: &str, session: u64) -> String {
    format!("{STATUS_SIDECARS}{replica}/{session}")
}

/// The replica a [`sidecar_status`] key names.
pub fn sidecar_status_replica(key: &str) -> Option<&str> {
    key.strip_prefix(STATUS_SIDECARS)?
        .split_once('/')
        .map(|(replica, _)| replica)
}

/// The key of join token `id`.
pub fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}

/// What a key under [`ROOT`] names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A route, by name.
    Route(String),
    /// An endpoint registration: service, instance.
    Endpoint(String, String),
    /// An app's descriptors: service, instance.
    Descriptors(String, String),
    /// A join token's record, by id.
    Token(String),
    /// The trust bundle.
    TrustBundle,
    /// The issuer proxies are asked to renew under.
    RenewIssuer,
    /// The mesh-wide mTLS mode.
    MtlsMode,
    /// An authorization policy, by name.
    AuthorizationPolicy(String),
    /// The mesh-wide default authorization.
    DefaultAuthorization,
    /// A request authentication, by name.
    RequestAuthentication(String),
    /// The key set fetched for a request authentication, by its name.
    Jwks(String),
    /// Something else under the prefix (reported, ignored).
    Unknown(String),
}

/// Classifies a key.
pub fn parse(key: &str) -> Key {
    let pair = |rest: &str| {
        rest.split_once('/')
            .filter(|(s, i)| !s.is_empty() && !i.is_empty() && !i.contains('/'))
            .map(|(s, i)| (s.to_owned(), i.to_owned()))
    };
    if let Some(name) = key.strip_prefix(ROUTES).filter(|n| !n.is_empty()) {
        return Key::Route(name.to_owned());
    }
    if let Some((s, i)) = key.strip_prefix(ENDPOINTS).and_then(pair) {
        return Key::Endpoint(s, i);
    }
    if let Some((s, i)) = key.strip_prefix(DESCRIPTORS).and_then(pair) {
        return Key::Descriptors(s, i);
    }
    if key == TRUST_BUNDLE {
        return Key::TrustBundle;
    }
    if key == RENEW_ISSUER {
        return Key::RenewIssuer;
    }
    if key == MTLS_MODE {
        return Key::MtlsMode;
    }
    if key == DEFAULT_AUTHORIZATION {
        return Key::DefaultAuthorization;
    }
    if let Some(name) = key
        .strip_prefix(AUTHORIZATION_POLICIES)
        .filter(|n| !n.is_empty())
    {
        return Key::AuthorizationPolicy(name.to_owned());
    }
    if let Some(name) = key
        .strip_prefix(REQUEST_AUTHENTICATIONS)
        .filter(|n| !n.is_empty())
    {
        return Key::RequestAuthentication(name.to_owned());
    }
    if let Some(name) = key.strip_prefix(JWKS).filter(|n| !n.is_empty()) {
        return Key::Jwks(name.to_owned());
    }
    if let Some(id) = key.strip_prefix(TOKENS).filter(|n| !n.is_empty()) {
        return Key::Token(id.to_owned());
    }
    Key::Unknown(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse(&route("inv")), Key::Route("inv".into()));
        assert_eq!(
            parse(&endpoint("inventory", "inv-1")),
            Key::Endpoint("inventory".into(), "inv-1".into())
        );
        assert_eq!(
            parse(&descriptors("a", "b")),
            Key::Descriptors("a".into(), "b".into())
        );
        assert!(!replica("r1").starts_with(ROOT), "status is not watched");
        assert!(!sidecar_status("r1", 7).starts_with(ROOT));
        assert_eq!(sidecar_status_replica(&sidecar_status("r1", 7)), Some("r1"));
        assert_eq!(parse(&token("ab12")), Key::Token("ab12".into()));
        assert_eq!(parse(RENEW_ISSUER), Key::RenewIssuer);
        assert_eq!(parse(&jwks("users")), Key::Jwks("users".into()));
        assert_eq!(
            parse("/mesh/authn/users"),
            Key::RequestAuthentication("users".into())
        );
        assert!(matches!(parse("/mesh/endpoints/x"), Key::Unknown(_)));
        assert!(matches!(parse("/mesh/other"), Key::Unknown(_)));
    }

    #[test]
    fn mtls_modes_are_strict_or_permissive_never_off() {
        assert_eq!(parse(MTLS_MODE), Key::MtlsMode);
        assert_eq!(mtls_mode("strict"), Ok("strict"));
        assert_eq!(mtls_mode(" Permissive\n"), Ok("permissive"));
        assert!(mtls_mode("off").unwrap_err().contains("--mtls off"));
        assert!(mtls_mode("").is_err());
    }
}
