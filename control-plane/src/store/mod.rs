//! The control plane's storage: a small key-value API with etcd's semantics
//! (a global revision, compare-and-swap, leases, watches that resume from a
//! revision), so the rest of the control plane is written once and runs on
//! either backend.
//!
//! - [`EtcdStore`]: the real thing, over `etcd-client`. Replicas share it.
//! - [`MemoryStore`]: the same semantics in one process, for `meshctl up`
//!   when no `etcd` binary exists, and for fast tests.
//!
//! Both pass one conformance suite (`conformance.rs`), so code that works on
//! one works on the other.
//!
//! The contract every caller relies on: read a [`Snapshot`], then
//! [`Store::watch`] from `snapshot.revision + 1`; apply batches in order; on
//! [`StoreError::Compacted`], an error, or the end of the stream, read a new
//! snapshot and watch again. Nothing is ever skipped silently.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod etcd;
mod memory;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod etcd_server;

pub use etcd::{EtcdStore, EtcdTls};
pub use memory::MemoryStore;

/// A store revision, with etcd's meaning: a counter bumped once per write
/// (a lease ending with several keys is one write). Every key remembers the
/// revision of its last change (its mod revision), which is what
/// compare-and-swap compares.
pub type Revision = i64;

/// A lease: keys bound to it disappear when it ends, so a registration dies
/// with the process that kept the lease alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A stored key with its value and the revision of its last change (the
/// token to pass back in [`Precondition::Revision`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, prefix included.
    pub key: String,
    /// The value as stored; decoding is the caller's business.
    pub value: Vec<u8>,
    /// The revision of the write that last changed this key.
    pub mod_revision: Revision,
}

/// Every key under a prefix at one revision: the starting point of a
/// watch-driven cache (watch from `revision + 1`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The store revision at which the read happened.
    pub revision: Revision,
    /// The keys, sorted by key (byte order).
    pub items: Vec<KeyValue>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or overwritten; carries the new value.
    Put(KeyValue),
    /// A key was deleted, explicitly or because its lease ended.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(kv) => &kv.key,
            Self::Delete { key, .. } => key,
        }
    }

    /// The revision at which the event happened.
    pub fn mod_revision(&self) -> Revision {
        match self {
            Self::Put(kv) => kv.mod_revision,
            Self::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Changes delivered together, in revision order.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    /// Every change under the watched prefix up to and including this
    /// revision has been delivered: a watch resumed after a failure starts
    /// at `revision + 1`. It is the revision of the batch's last event.
    pub revision: Revision,
    /// The changes, oldest first, never empty.
    pub events: Vec<WatchEvent>,
}

/// The condition a write needs, for compare-and-swap: a writer that read a
/// key at some revision only overwrites it if nobody else wrote since, so
/// no update is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    Any,
    /// Only if the key does not exist (create).
    Absent,
    /// Only if the key exists with exactly this mod revision.
    Revision(Revision),
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any revision"),
            Self::Absent => f.write_str("no key"),
            Self::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// Why a store call failed. Only [`StoreError::Unavailable`] is worth
/// retrying as is; the others say something about the data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap lost: someone else wrote the key first.
    #[error("conflict on {key}: expected {expected}, found {}", describe_actual(*actual))]
    Conflict {
        /// The key written.
        key: String,
        /// What the writer expected.
        expected: Precondition,
        /// The key's mod revision when the write was refused; `None` if absent.
        actual: Option<Revision>,
    },
    /// A delete of a key that does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A watch asked for history the store no longer keeps; re-read a
    /// snapshot and watch from there.
    #[error(
        "revision {requested} has been compacted (the store keeps history from revision {compact_revision})"
    )]
    Compacted {
        /// The first revision the watch wanted.
        requested: Revision,
        /// The oldest revision the store can still replay.
        compact_revision: Revision,
    },
    /// The lease expired or was revoked; grant a new one and re-put its keys.
    #[error("lease {lease} has expired or was revoked")]
    LeaseExpired {
        /// The lease.
        lease: LeaseId,
    },
    /// The store could not be reached or did not answer in time (retryable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request itself (e.g. a value over etcd's size
    /// limit, a bad endpoint): retrying the same request fails the same way.
    #[error("store refused the request: {0}")]
    Rejected(String),
}

fn describe_actual(actual: Option<Revision>) -> String {
    match actual {
        Some(revision) => format!("revision {revision}"),
        None => "no key".to_owned(),
    }
}

impl StoreError {
    /// Whether the same call may succeed if retried later (the store was
    /// unreachable, or lost its leader).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A watch's output: batches in revision order. It ends (or yields
/// [`StoreError::Unavailable`] and ends) when the store goes away; it yields
/// [`StoreError::Compacted`] and ends when it cannot deliver every change.
pub type WatchStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// What the control plane needs from its storage. Cheap to clone: clones
/// share one connection (etcd) or one state (memory).
pub trait Store: Clone + Send + Sync + 'static {
    /// The key, if it exists.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;

    /// Every key starting with `prefix` (plain string prefix), at one revision.
    fn get_prefix(&self, prefix: &str)
        -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Returns the new mod revision. With a lease, the key is deleted when the lease ends.
    /// Without one, any lease the key had no longer applies to it.
    /// `Conflict` if the precondition does not hold, `LeaseExpired` if the
    /// lease has already ended.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        precondition: Precondition,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Returns the revision of the deletion.
    /// NotFound if absent (checked before the precondition).
    fn delete(
        &self,
        key: &str,
        precondition: Precondition,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// A new lease living `ttl` (rounded up to whole seconds, at least one,
    /// as etcd counts) unless kept alive. etcd may raise a short TTL to its
    /// own minimum.
    fn grant_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;

    /// One refresh; LeaseExpired if it already ended.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends the lease now, deleting its keys (idempotent).
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every change under `prefix` with revision >= `from`, in order, as batches; Compacted (as
    /// the first item or error) when `from` is older than the store keeps; the stream ends or
    /// yields Unavailable when the store goes away (callers re-get and re-watch).
    /// `from <= 0` means "changes after now".
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
}

/// Whole seconds of a lease TTL, rounded up, at least one: etcd's unit.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}
