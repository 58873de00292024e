//! One instance of a mesh service that can take traffic.

use serde::{Deserialize, Serialize};

use super::validation::{is_dns_label, ValidationError};

/// A registered instance of a mesh service: where its sidecar's inbound
/// listener is, and how much traffic it should get relative to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The mesh service this instance belongs to (e.g. `inventory`).
    pub service: String,
    /// Unique id of the instance within its service (e.g. a pod name).
    pub instance: String,
    /// `host:port` of the instance's sidecar inbound listener.
    pub address: String,
    /// The `version` label: which subset the instance is in (e.g. `v1`).
    #[serde(default = "default_version")]
    pub version: String,
    /// Relative share of traffic within its subset for weighted round-robin.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_version() -> String {
    "v1".to_owned()
}

fn default_weight() -> u32 {
    1
}

/// The largest weight an endpoint may have: keeps the balancer's running
/// sums far from overflow and stops a typo from starving every peer.
pub const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

impl Endpoint {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !is_dns_label(&self.service) {
            return Err(ValidationError::new(
                "service",
                format!(
                    "{:?} is not a DNS label (lowercase letters, digits, '-')",
                    self.service
                ),
            ));
        }
        if self.instance.is_empty() || self.instance.len() > 253 || self.instance.contains('/') {
            return Err(ValidationError::new(
                "instance",
                "must be 1-253 characters without '/'",
            ));
        }
        if parse_host_port(&self.address).is_none() {
            return Err(ValidationError::new(
                "address",
                format!("{:?} is not host:port", self.address),
            ));
        }
        if !is_dns_label(&self.version) {
            return Err(ValidationError::new(
                "version",
                format!("{:?} is not a DNS label", self.version),
            ));
        }
        if self.weight == 0 || self.weight > MAX_ENDPOINT_WEIGHT {
            return Err(ValidationError::new(
                "weight",
                format!(
                    "must be between 1 and {MAX_ENDPOINT_WEIGHT}, got {}",
                    self.weight
                ),
            ));
        }
        Ok(())
    }
}

/// Splits `host:port` (IPv6 hosts in brackets); `None` if it is not that.
fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((host, port))
}
