//! Publishes this replica's status (connected sidecars, what they acked)
//! to the store, under a lease of its own, so `meshctl status` asked of any
//! replica shows every replica; a replica that dies drops out within the TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::index::Published;
use crate::keys;
use crate::metrics::Metrics;
use crate::registration::ReplicaStatus;
use crate::sessions::Sessions;
use crate::store::{LeaseId, Precondition, Store};

/// How often the status is refreshed at most.
const INTERVAL: Duration = Duration::from_millis(500);

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
    let mut since_keepalive = Duration::ZERO;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => break,
        }
        since_keepalive += INTERVAL;
        let status = ReplicaStatus {
            id: identity.id.clone(),
            address: identity.address.clone(),
            revision: published.borrow().revision,
            sidecars: sessions.list(),
        };
        let current_lease = match lease {
            Some(l) if since_keepalive < ttl / 3 => l,
            Some(l) => match store.keep_alive(l).await {
                Ok(()) => {
                    since_keepalive = Duration::ZERO;
                    l
                }
                Err(error) => {
                    metrics.store_error("keep_alive");
                    tracing::debug!(%error, "replica lease lost; granting a new one");
                    lease = None;
                    written = None;
                    continue;
                }
            },
            None => match store.grant_lease(ttl).await {
                Ok(l) => {
                    since_keepalive = Duration::ZERO;
                    lease = Some(l);
                    l
                }
                Err(error) => {
                    metrics.store_error("grant_lease");
                    tracing::debug!(%error, "cannot grant the replica lease");
                    continue;
                }
            },
        };
        if written.as_ref() == Some(&status) {
            continue;
        }
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
    if let Some(lease) = lease {
        let _ = store.revoke(lease).await;
    }
}
