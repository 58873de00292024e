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
//! - [`catalog`]: every resource proxies can be sent, typed and encoded
//!   once per change, and which of them one proxy's scope takes.
//! - [`delta`]: what one stream has sent, and the update that brings its
//!   proxy up to date (changed resources, tombstones, not-found).
//! - [`discovery`]: the proxy streams: registration under a lease, scoped
//!   delta updates, per-resource ACK/NACK, on-demand subscriptions.
//! - [`sessions`]: the sidecars connected to this replica.
//! - [`admin`]: the MeshAdmin API behind meshctl (validated, compare-and-swap).
//! - [`replica`]: this replica's status, published for `meshctl status`.
//! - [`metrics`]: the replica's Prometheus metrics (`/metrics`).
//! - [`server`]: one replica, wired.

pub mod access;
pub mod admin;
pub mod catalog;
pub mod delta;
pub mod discovery;
mod documents;
pub mod identity;
pub mod index;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod registration;
pub mod registration_lease;
pub mod replica;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod watcher;
