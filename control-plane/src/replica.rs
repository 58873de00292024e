//! Publishes this replica's status to the store under a lease of its own,
//! so `meshctl status` asked of any replica shows every replica; a replica
//! that dies drops out within the TTL.
//!
//! The replica's own value is small and fixed in size; each connected
//! sidecar is a key of its own, written only when what it reports changes
//! (see [`crate::sessions`]). Both live outside the watched prefix, so
//! these writes wake no replica's watcher.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::index::Published;
use crate::keys;
use crate::metrics::Metrics;
use crate::registration::ReplicaStatus;
use crate::sessions::{SessionChange, Sessions};
use crate::store::{LeaseId, Precondition, Store, StoreError};

/// How often the status is refreshed at most.
const INTERVAL: Duration = Duration::from_millis(500);

/// Sidecar status writes in flight at once.
const CONCURRENT_WRITES: usize = 32;

/// A sidecar's key is rewritten for a new pushed or acked version at most
/// this often (anything else it reports, at once): every table change is
/// acked by every sidecar, and a registration storm is many changes.
const VERSIONS_INTERVAL: Duration = Duration::from_secs(5);

/// Who this replica is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Replica id.
    pub id: String,
    /// Where it serves.
    pub address: String,
}

/// Runs until `stop`, then deletes the status (by revoking its lease).
pub async fn run<S: Store>(
    store: S,
    identity: Identity,
    ttl: Duration,
    sessions: Arc<Sessions>,
    published: watch::Receiver<Arc<Published>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut lease: Option<LeaseId> = None;
    let mut written: Option<ReplicaStatus> = None;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Real time, not ticks: a tick that writes many sidecars takes longer
    // than its interval, and the lease must not lapse meanwhile.
    let mut kept_alive = tokio::time::Instant::now();
    let mut versions_written = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => break,
        }
        let current_lease = match lease {
            Some(l) if kept_alive.elapsed() < ttl / 3 => l,
            Some(l) => match store.keep_alive(l).await {
                Ok(()) => {
                    kept_alive = tokio::time::Instant::now();
                    l
                }
                Err(error) => {
                    metrics.store_error("keep_alive");
                    tracing::debug!(%error, "replica lease lost; granting a new one");
                    lease = None;
                    continue;
                }
            },
            None => match store.grant_lease(ttl).await {
                Ok(l) => {
                    kept_alive = tokio::time::Instant::now();
                    lease = Some(l);
                    // Whatever was written went with the old lease.
                    written = None;
                    sessions.mark_changed(None);
                    l
                }
                Err(error) => {
                    metrics.store_error("grant_lease");
                    tracing::debug!(%error, "cannot grant the replica lease");
                    continue;
                }
            },
        };
        let status = ReplicaStatus {
            id: identity.id.clone(),
            address: identity.address.clone(),
            revision: published.borrow().revision,
            connected_sidecars: sessions.len(),
        };
        if written.as_ref() != Some(&status) {
            let value = serde_json::to_vec(&status).unwrap_or_default();
            match store
                .put(
                    &keys::replica(&identity.id),
                    value,
                    Precondition::Any,
                    Some(current_lease),
                )
                .await
            {
                Ok(_) => written = Some(status),
                Err(error) => {
                    metrics.store_error("put");
                    tracing::debug!(%error, "cannot write the replica status");
                }
            }
        }
        let with_versions = versions_written.elapsed() >= VERSIONS_INTERVAL;
        if with_versions {
            versions_written = tokio::time::Instant::now();
        }
        write_sidecars(
            &store,
            &identity.id,
            current_lease,
            &sessions,
            with_versions,
            &metrics,
        )
        .await;
    }
    if let Some(lease) = lease {
        let _ = store.revoke(lease).await;
    }
}

/// Writes the sidecars whose status changed (`with_versions`: also those
/// whose only change is a version), deletes those that left; what fails is
/// written on a later tick.
async fn write_sidecars<S: Store>(
    store: &S,
    replica: &str,
    lease: LeaseId,
    sessions: &Sessions,
    with_versions: bool,
    metrics: &Metrics,
) {
    let changes = sessions.take_changes(with_versions);
    if changes.is_empty() {
        return;
    }
    let failed: Vec<u64> = futures_util::stream::iter(changes)
        .map(|change| async move {
            let (id, result) = match change {
                SessionChange::Now(id, status) => {
                    let value = serde_json::to_vec(&status).unwrap_or_default();
                    let key = keys::sidecar_status(replica, id);
                    (
                        id,
                        store
                            .put(&key, value, Precondition::Any, Some(lease))
                            .await
                            .map(drop),
                    )
                }
                SessionChange::Closed(id) => {
                    let key = keys::sidecar_status(replica, id);
                    match store.delete(&key, Precondition::Any).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => (id, Ok(())),
                        Err(error) => (id, Err(error)),
                    }
                }
            };
            result.err().map(|error| (id, error))
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .filter_map(|failure| async move { failure })
        .map(|(id, error)| {
            metrics.store_error("put");
            tracing::debug!(%error, session = id, "cannot write a sidecar's status");
            id
        })
        .collect()
        .await;
    if !failed.is_empty() {
        sessions.mark_changed(Some(&failed));
    }
}
