//! Who an outside caller is: `kind: RequestAuthentication` tells gateways
//! which bearer tokens (JWT) to accept, from which issuer, for which
//! audience, verified with which keys.
//!
//! ```yaml
//! kind: RequestAuthentication
//! metadata:
//!   name: shop-users
//! spec:
//!   issuer: https://users.shop.mesh.local    # the tokens' `iss`
//!   audiences: [shop]                        # `aud` must name one of these
//!   jwks:
//!     method: shop.users.v1.UsersService/GetJwks   # a mesh method, or
//!     # file: /etc/mesh/jwks/shop-users.json       # a file the control plane reads
//!     refresh: 60s
//!   forwardClaims: [role]                    # besides `sub`, sent on as verified
//!   debugClaims: { role: admin }             # who may ask for x-mesh-debug
//! ```
//!
//! The control plane fetches the key set (calling the method over mTLS as
//! itself, or reading the file), stores it (public keys only) and pushes it
//! with the table; gateways verify tokens locally, with no call per
//! request. A request with a token that does not verify is refused
//! UNAUTHENTICATED; one without a token goes on anonymous, for
//! authorization policies to allow or refuse. A verified token's subject
//! and chosen claims go on as `x-mesh-auth-sub` and `x-mesh-auth-claims`.

use serde::{Deserialize, Serialize};

use super::route::{parse_duration, RouteMetadata};
use super::validation::{is_dns_label, is_proto_ident, ValidationError};

/// The `kind` every request authentication document carries.
pub const REQUEST_AUTHENTICATION_KIND: &str = "RequestAuthentication";

/// How often a key set is fetched again when `refresh` is not given.
pub const DEFAULT_JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// How far a token's times may be off the gateway's clock when
/// `clockSkew` is not given.
pub const DEFAULT_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(30);

/// A request authentication document (kind, metadata, spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Always `RequestAuthentication`.
    pub kind: String,
    /// Its name: the key it is stored and deleted by.
    pub metadata: RouteMetadata,
    /// Which tokens, and how to check them.
    pub spec: RequestAuthenticationSpec,
}

/// The body of a request authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The tokens' `iss`, exactly.
    pub issuer: String,
    /// A token's `aud` must name at least one.
    pub audiences: Vec<String>,
    /// Where the verification keys come from.
    pub jwks: JwksSource,
    /// Claims forwarded (with `sub`) in `x-mesh-auth-claims`, for
    /// authorization rules (`gateway: { claims: ... }`) and apps.
    #[serde(
        default,
        rename = "forwardClaims",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub forward_claims: Vec<String>,
    /// How far `exp` and `nbf` may be off the gateway's clock (e.g. `30s`,
    /// the default).
    #[serde(default, rename = "clockSkew", skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// Pass the `authorization` header on to the service; by default the
    /// gateway removes it, so the token goes no further than needed.
    #[serde(
        default,
        rename = "forwardOriginalToken",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub forward_original_token: bool,
    /// Claims (all must be equal) that let a caller ask for the mesh's
    /// debug header (`x-mesh-debug: 1`); empty: no one may.
    #[serde(
        default,
        rename = "debugClaims",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub debug_claims: std::collections::BTreeMap<String, String>,
}

/// Where a key set comes from: exactly one of `method` or `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// A unary gRPC method of a mesh service (`package.Service/Method`),
    /// called with an empty request, whose response's field 1 is the JWKS
    /// JSON (RFC 7517), as `shop.users.v1.UsersService/GetJwks` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A JWKS JSON file on the control plane's file system (a mounted
    /// ConfigMap in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How often it is fetched again (e.g. `60s`, the default): at most
    /// the time before a published next key starts signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
}

impl RequestAuthentication {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.kind != REQUEST_AUTHENTICATION_KIND {
            return Err(ValidationError::new(
                "kind",
                format!(
                    "expected {REQUEST_AUTHENTICATION_KIND:?}, got {:?}",
                    self.kind
                ),
            ));
        }
        if !is_dns_label(&self.metadata.name) {
            return Err(ValidationError::new(
                "metadata.name",
                format!("{:?} is not a DNS label", self.metadata.name),
            ));
        }
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

impl RequestAuthenticationSpec {
    /// The clock skew allowed; the default when absent or invalid.
    pub fn clock_skew(&self) -> std::time::Duration {
        self.clock_skew
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(DEFAULT_CLOCK_SKEW)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.issuer.trim().is_empty() || self.issuer.len() > 512 {
            return Err(ValidationError::new(
                "issuer",
                "an issuer is 1 to 512 characters",
            ));
        }
        if self.audiences.is_empty() {
            return Err(ValidationError::new(
                "audiences",
                "at least one audience: a token for another audience must not pass",
            ));
        }
        for (i, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() || audience.len() > 512 {
                return Err(ValidationError::new(
                    format!("audiences[{i}]"),
                    "an audience is 1 to 512 characters",
                ));
            }
        }
        self.jwks.validate().map_err(|e| e.within("jwks"))?;
        for (i, claim) in self.forward_claims.iter().enumerate() {
            let valid = !claim.is_empty()
                && claim.len() <= 64
                && claim
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
            if !valid {
                return Err(ValidationError::new(
                    format!("forwardClaims[{i}]"),
                    format!("{claim:?} is not a claim name (letters, digits, _ - . :)"),
                ));
            }
        }
        for name in self.debug_claims.keys() {
            if name.is_empty() || name.len() > 64 {
                return Err(ValidationError::new(
                    "debugClaims",
                    format!("{name:?} is not a claim name"),
                ));
            }
        }
        if let Some(skew) = &self.clock_skew {
            let parsed =
                parse_duration(skew).map_err(|reason| ValidationError::new("clockSkew", reason))?;
            if parsed > std::time::Duration::from_secs(300) {
                return Err(ValidationError::new("clockSkew", "at most 5m"));
            }
        }
        Ok(())
    }
}

impl JwksSource {
    /// How often the key set is fetched again.
    pub fn refresh(&self) -> std::time::Duration {
        self.refresh
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(DEFAULT_JWKS_REFRESH)
    }

    /// The method's gRPC service and method names, if the source is one.
    pub fn service_and_method(&self) -> Option<(&str, &str)> {
        self.method.as_deref()?.split_once('/')
    }

    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.method, &self.file) {
            (Some(method), None) => {
                let valid = method.split_once('/').is_some_and(|(service, name)| {
                    !service.is_empty()
                        && service.split('.').all(is_proto_ident)
                        && is_proto_ident(name)
                });
                if !valid {
                    return Err(ValidationError::new(
                        "method",
                        format!("{method:?} is not package.Service/Method"),
                    ));
                }
            }
            (None, Some(file)) => {
                if !file.starts_with('/') {
                    return Err(ValidationError::new(
                        "file",
                        format!("{file:?}: an absolute path on the control plane"),
                    ));
                }
            }
            _ => {
                return Err(ValidationError::new(
                    "method",
                    "exactly one of `method` or `file` must be set",
                ))
            }
        }
        if let Some(refresh) = &self.refresh {
            let parsed = parse_duration(refresh)
                .map_err(|reason| ValidationError::new("refresh", reason))?;
            if parsed < std::time::Duration::from_secs(1) {
                return Err(ValidationError::new("refresh", "at least 1s"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "kind: RequestAuthentication\nmetadata: { name: shop-users }\nspec:\n  issuer: https://users.shop.mesh.local\n  audiences: [shop]\n  jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 10s }\n  forwardClaims: [role]\n";

    fn parse(yaml: &str) -> RequestAuthentication {
        serde_yaml_ng::from_str(yaml).expect("parses")
    }

    #[test]
    fn a_valid_document_passes_with_its_defaults() {
        let doc = parse(VALID);
        assert_eq!(doc.validate(), Ok(()));
        assert_eq!(doc.spec.jwks.refresh(), std::time::Duration::from_secs(10));
        assert_eq!(doc.spec.clock_skew(), DEFAULT_CLOCK_SKEW);
        assert_eq!(
            doc.spec.jwks.service_and_method(),
            Some(("shop.users.v1.UsersService", "GetJwks"))
        );
    }

    #[test]
    fn bad_documents_name_the_field() {
        let cases = [
            ("audiences: [shop]", "audiences: []", "spec.audiences"),
            (
                "jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 10s }",
                "jwks: { method: GetJwks }",
                "spec.jwks.method",
            ),
            (
                "jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 10s }",
                "jwks: { file: relative.json }",
                "spec.jwks.file",
            ),
            (
                "jwks: { method: shop.users.v1.UsersService/GetJwks, refresh: 10s }",
                "jwks: { method: a.B/C, file: /x.json }",
                "spec.jwks.method",
            ),
            ("refresh: 10s", "refresh: 10ms", "spec.jwks.refresh"),
            (
                "forwardClaims: [role]",
                "forwardClaims: ['a b']",
                "spec.forwardClaims[0]",
            ),
            (
                "issuer: https://users.shop.mesh.local",
                "issuer: ' '",
                "spec.issuer",
            ),
        ];
        for (from, to, field) in cases {
            let yaml = VALID.replace(from, to);
            assert_ne!(yaml, VALID, "{from}");
            let error = parse(&yaml).validate().expect_err(&yaml);
            assert_eq!(error.field, field, "{yaml}: {error}");
        }
    }
}
