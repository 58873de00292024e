//! What the control plane stores for a registered sidecar and for itself.

use mesh::model::Endpoint;
use serde::{Deserialize, Serialize};

/// A live endpoint: the routable part plus what its app serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Where and how much traffic it takes.
    pub endpoint: Endpoint,
    /// Fully qualified gRPC services its app serves.
    #[serde(default)]
    pub grpc_services: Vec<String>,
}

/// A sidecar connected to a replica, as `meshctl status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarStatus {
    /// Its mesh service (empty for a gateway).
    pub service: String,
    /// Its instance id.
    pub instance: String,
    /// Whether it is a gateway.
    pub gateway: bool,
    /// Last version pushed to it.
    pub pushed_version: u64,
    /// Last version it acknowledged.
    pub acked_version: u64,
    /// Why it refused its latest push, if it did.
    pub nack_reason: String,
    /// Its admin HTTP address.
    #[serde(default)]
    pub admin_address: String,
    /// The SPIFFE ID its certificate proves (empty with mTLS off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// When its certificate expires, as it reported (Unix seconds).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub certificate_not_after_unix: i64,
    /// The trust bundle version it reported.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub trust_bundle_version: u64,
    /// When its certificate became valid, as it reported (Unix seconds).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub certificate_not_before_unix: i64,
    /// SHA-256 (hex) of the issuer its certificate's chain names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_issuer_fingerprint: String,
    /// The latest store revision the proxy is in step with: the replica
    /// had nothing more to send it at that revision and it acknowledged
    /// all it was sent. Live only (the replica's `/syncz`), never stored:
    /// it moves with every change in the mesh, in scope or not.
    #[serde(skip)]
    pub synced_revision: u64,
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A replica's status, kept in the store so any replica can report on all.
/// Its sidecars are keys of their own (`keys::sidecar_status`): this value
/// stays the same size however many connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Replica id.
    pub id: String,
    /// Where it serves.
    pub address: String,
    /// The latest store revision it has seen.
    pub revision: i64,
    /// How many sidecars are connected to it.
    pub connected_sidecars: usize,
}
