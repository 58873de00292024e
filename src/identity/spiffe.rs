//! SPIFFE IDs: the names mesh identities go by. Every certificate the mesh
//! issues carries exactly one, as its only URI SAN (SPIFFE X.509-SVID,
//! section 2), and every check of a peer compares these and nothing else:
//! not DNS names, not IP addresses, not common names.

use std::fmt;

use crate::model::is_dns_label;

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id:?} is not a mesh SPIFFE ID: {reason}")]
pub struct SpiffeIdError {
    id: String,
    reason: &'static str,
}

/// What kind of party an identity names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// Every sidecar of one mesh service (`/svc/<service>`).
    Service(String),
    /// A gateway (`/gateway/<name>`).
    Gateway(String),
    /// Any control-plane replica (`/control-plane`).
    ControlPlane,
    /// A person or tool using meshctl (`/operator/<name>`).
    Operator(String),
}

/// `spiffe://<trust-domain>/<path>`, where the path says the [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    workload: Workload,
    /// The URI form, made once: policies match on it per call.
    uri: String,
}

impl SpiffeId {
    /// An identity in `trust_domain`; checks both parts.
    pub fn new(trust_domain: &str, workload: Workload) -> Result<Self, SpiffeIdError> {
        let uri = format!("spiffe://{trust_domain}/{}", workload_path(&workload));
        let id = Self {
            trust_domain: trust_domain.to_owned(),
            workload,
            uri,
        };
        id.check()?;
        Ok(id)
    }

    /// The sidecars of `service`.
    pub fn service(trust_domain: &str, service: &str) -> Result<Self, SpiffeIdError> {
        Self::new(trust_domain, Workload::Service(service.to_owned()))
    }

    /// Parses `spiffe://domain/svc/name` and the other paths of [`Workload`].
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        let error = |reason| SpiffeIdError {
            id: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| error("it does not start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| error("it has no path"))?;
        let segments: Vec<&str> = path.split('/').collect();
        let workload = match segments.as_slice() {
            ["svc", name] => Workload::Service((*name).to_owned()),
            ["gateway", name] => Workload::Gateway((*name).to_owned()),
            ["control-plane"] => Workload::ControlPlane,
            ["operator", name] => Workload::Operator((*name).to_owned()),
            _ => return Err(error(
                "the path is not /svc/<name>, /gateway/<name>, /control-plane or /operator/<name>",
            )),
        };
        Self::new(trust_domain, workload).map_err(|e| SpiffeIdError {
            id: uri.to_owned(),
            reason: e.reason,
        })
    }

    fn check(&self) -> Result<(), SpiffeIdError> {
        let error = |reason| SpiffeIdError {
            id: self.to_string(),
            reason,
        };
        if !is_trust_domain(&self.trust_domain) {
            return Err(error(
                "the trust domain must be 1-255 lowercase letters, digits, '.', '-' or '_'",
            ));
        }
        match &self.workload {
            Workload::Service(name) | Workload::Gateway(name) | Workload::Operator(name)
                if !is_dns_label(name) =>
            {
                Err(error(
                    "the name must be a DNS label (lowercase letters, digits, '-')",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The trust domain: which anchors vouch for this identity.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Who it is.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The mesh service, for a service identity.
    pub fn service_name(&self) -> Option<&str> {
        match &self.workload {
            Workload::Service(name) => Some(name),
            _ => None,
        }
    }
}

/// The path of a workload's SPIFFE ID.
fn workload_path(workload: &Workload) -> String {
    match workload {
        Workload::Service(name) => format!("svc/{name}"),
        Workload::Gateway(name) => format!("gateway/{name}"),
        Workload::ControlPlane => "control-plane".to_owned(),
        Workload::Operator(name) => format!("operator/{name}"),
    }
}

impl SpiffeId {
    /// The URI (`spiffe://<trust-domain>/<path>`), without formatting it.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// SPIFFE ID spec, section 2.1: lowercase letters, digits, dots, dashes and
/// underscores only.
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_workload() {
        for uri in [
            "spiffe://mesh.local/svc/payments",
            "spiffe://mesh.local/gateway/edge",
            "spiffe://mesh.local/control-plane",
            "spiffe://prod_1.example/operator/alice",
        ] {
            assert_eq!(SpiffeId::parse(uri).unwrap().to_string(), uri);
        }
        let id = SpiffeId::parse("spiffe://mesh.local/svc/payments").unwrap();
        assert_eq!(id.service_name(), Some("payments"));
        assert_eq!(id.trust_domain(), "mesh.local");
    }

    #[test]
    fn refuses_what_is_not_a_mesh_identity() {
        for uri in [
            "https://mesh.local/svc/payments",
            "spiffe://mesh.local",
            "spiffe://mesh.local/svc",
            "spiffe://mesh.local/svc/pay/ments",
            "spiffe://mesh.local/svc/Payments",
            "spiffe://Mesh.Local/svc/payments",
            "spiffe:///svc/payments",
            "spiffe://mesh.local/admin/alice",
            "spiffe://mesh.local/svc/payments/",
        ] {
            assert!(SpiffeId::parse(uri).is_err(), "{uri} was accepted");
        }
    }
}
