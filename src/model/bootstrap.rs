//! The static bootstrap file: endpoints and routes for a sidecar that runs
//! without a control plane (and the seed of the demo mesh).
//!
//! ```yaml
//! endpoints:
//!   - { service: inventory, instance: inventory-1, address: "127.0.0.1:7101", version: v1, weight: 3 }
//! routes:
//!   - kind: Route
//!     metadata: { name: inventory }
//!     spec:
//!       match: { service: shop.inventory.v1.InventoryService }
//!       destination: inventory
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{
    AuthorizationPolicy, DefaultAuthorization, Endpoint, RequestAuthentication, Route,
    ValidationError,
};

/// Everything a sidecar needs to route without a control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Every endpoint of every mesh service the sidecar may call.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Routes from gRPC paths to mesh services.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Who may call what; each service's inbound sidecars enforce theirs.
    #[serde(
        default,
        rename = "authorizationPolicies",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// The answer for services no ALLOW policy names.
    #[serde(default, rename = "defaultAuthorization")]
    pub default_authorization: DefaultAuthorization,
    /// Which bearer tokens gateways accept from outside callers.
    #[serde(
        default,
        rename = "requestAuthentications",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_authentications: Vec<RequestAuthentication>,
    /// The verification keys of each request authentication, by its name:
    /// a JWKS JSON document (public keys only), as the control plane
    /// fetched it. One that is missing or bad fails only its own tokens.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jwks: BTreeMap<String, String>,
}

/// Why a bootstrap file was refused. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape (unknown field, wrong type).
    #[error("{path}: {source}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: serde_yaml_ng::Error,
    },
    /// A value is well formed but not acceptable.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Path of the field in the document, e.g. `routes[2].spec.split[0].weight`.
        field: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Bootstrap {
    /// Reads, parses and validates a bootstrap file.
    pub fn load(path: &Path) -> Result<Self, BootstrapError> {
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates bootstrap YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, BootstrapError> {
        let bootstrap: Bootstrap =
            serde_yaml_ng::from_str(text).map_err(|source| BootstrapError::Syntax {
                path: origin.to_owned(),
                source,
            })?;
        bootstrap.validate().map_err(|e| BootstrapError::Invalid {
            path: origin.to_owned(),
            field: e.field,
            reason: e.reason,
        })?;
        Ok(bootstrap)
    }

    /// The route that takes a call of `service`/`method`: its method route
    /// before its service's route, as the proxies route.
    pub fn route_for(&self, service: &str, method: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|route| {
                let matches = &route.spec.matches;
                matches.service == service && matches.method.as_deref().is_none_or(|m| m == method)
            })
            .max_by_key(|route| route.spec.matches.method.is_some())
    }

    /// True if an outside client may call `service`/`method` through a
    /// gateway: the route that takes the call is `exposure: public`.
    pub fn is_public(&self, service: &str, method: &str) -> bool {
        self.route_for(service, method)
            .is_some_and(|route| route.spec.exposure() == super::Exposure::Public)
    }

    /// Checks every endpoint and route, and the rules that span them:
    /// unique instance ids per service, unique route names, one route per
    /// gRPC path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (i, ep) in self.endpoints.iter().enumerate() {
            ep.validate()
                .map_err(|e| e.within(&format!("endpoints[{i}]")))?;
            if self.endpoints[..i]
                .iter()
                .any(|o| o.service == ep.service && o.instance == ep.instance)
            {
                return Err(ValidationError::new(
                    format!("endpoints[{i}].instance"),
                    format!(
                        "{:?} is listed twice for service {:?}",
                        ep.instance, ep.service
                    ),
                ));
            }
        }
        for (i, policy) in self.authorization_policies.iter().enumerate() {
            policy
                .validate()
                .map_err(|e| e.within(&format!("authorizationPolicies[{i}]")))?;
            if self.authorization_policies[..i]
                .iter()
                .any(|o| o.metadata.name == policy.metadata.name)
            {
                return Err(ValidationError::new(
                    format!("authorizationPolicies[{i}].metadata.name"),
                    format!("{:?} is listed twice", policy.metadata.name),
                ));
            }
        }
        for (i, authn) in self.request_authentications.iter().enumerate() {
            authn
                .validate()
                .map_err(|e| e.within(&format!("requestAuthentications[{i}]")))?;
            if self.request_authentications[..i]
                .iter()
                .any(|o| o.metadata.name == authn.metadata.name)
            {
                return Err(ValidationError::new(
                    format!("requestAuthentications[{i}].metadata.name"),
                    format!("{:?} is listed twice", authn.metadata.name),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            route
                .validate()
                .map_err(|e| e.within(&format!("routes[{i}]")))?;
            if let Some(other) = self.routes[..i].iter().find(|o| o.path() == route.path()) {
                return Err(ValidationError::new(
                    format!("routes[{i}].spec.match"),
                    format!(
                        "{} is already routed by route {:?}",
                        route.path(),
                        other.metadata.name
                    ),
                ));
            }
            if self.routes[..i]
                .iter()
                .any(|o| o.metadata.name == route.metadata.name)
            {
                return Err(ValidationError::new(
                    format!("routes[{i}].metadata.name"),
                    format!("{:?} is used by another route", route.metadata.name),
                ));
            }
        }
        Ok(())
    }
}
