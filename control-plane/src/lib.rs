//! The mesh's control plane: one replica's store, index, pushes and
//! admin API. `meshctl` (its own crate) talks to it over gRPC only.
//!
//! # Layout
//!
//! - [`store`]: the state store trait, with etcd and in-memory
//!   implementations held to one conformance suite.
//! - [`access`]: who may call what (operator roles, proxy identities).
//! - [`identity`]: the `mesh.v1.Identity` service (certificates for tokens).
//! - [`tokens`]: join tokens, kept hashed in the store.
//! - [`keys`]: where each kind of state lives in the store.
//! - [`registration`]: the stored shapes of endpoints and replica status.
//! - [`registration_lease`]: the one lease a replica's registrations live on.
//! - [`jwks`]: fetches the key sets of request authentications.
//! - [`index`]: the pure, synchronous view of the store that pushes are
//!   built from; bad data is reported and skipped here.
//! - [`watcher`]: keeps the index in step with the store (get, then watch
//!   from the last revision, resync on compaction).
//! - [`discovery`]: the sidecar streams: registration under a lease, pushes,
//!   ACK/NACK.
//! - [`push`]: a push on the wire, encoded once per version and shared by
//!   every stream.
//! - [`sessions`]: the sidecars connected to this replica.
//! - [`admin`]: the MeshAdmin API behind meshctl (validated, compare-and-swap).
//! - [`replica`]: this replica's status, published for `meshctl status`.
//! - [`metrics`]: the replica's Prometheus metrics (`/metrics`).
//! - [`server`]: one replica, wired.

pub mod access;
pub mod admin;
pub mod discovery;
mod documents;
pub mod identity;
pub mod index;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod push;
pub mod registration;
pub mod registration_lease;
pub mod replica;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod watcher;
