//! One store lease per replica for the registrations of every sidecar it
//! serves, kept alive by the replica: the store's lease work is the same
//! for ten sidecars or ten thousand (etcd's own lease machinery falls
//! behind in the tens of thousands of leases, and a lease per sidecar was
//! a keep-alive every few seconds per sidecar).
//!
//! A sidecar's keys are deleted when its stream ends (see
//! [`crate::discovery`]); the lease is only for a replica that dies: its
//! sidecars' keys outlive it by at most the TTL, time enough for them to
//! register again with another replica (which moves the keys to that
//! replica's lease), so routing has no gap. For the same reason the lease
//! is not revoked when the replica stops: it expires.

use std::sync::Arc;
use std::time::Duration;

use mesh::backoff::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{LeaseId, Store, StoreError};

/// Keeps a lease alive until `stop`, publishing it in `current` (`None`
/// while there is none: the store is unreachable or lost it). A lost lease
/// is replaced by a new one, and sessions register again under it.
pub async fn run<S: Store>(
    store: S,
    ttl: Duration,
    current: watch::Sender<Option<LeaseId>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    // Retries come quicker than the TTL runs out: a few within one.
    let mut backoff = Backoff::new(Duration::from_millis(100), ttl / 6);
    loop {
        let lease = tokio::select! {
            granted = store.grant_lease(ttl) => granted,
            () = stop.cancelled() => return,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(error) => {
                metrics.store_error("grant_lease");
                tracing::warn!(%error, "cannot grant the registration lease; retrying");
                if !pause(backoff.next_wait(), &stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        tracing::info!(lease = lease.0, "registration lease granted");
        current.send_replace(Some(lease));
        let mut wait = ttl / 3;
        loop {
            if !pause(wait, &stop).await {
                return;
            }
            match store.keep_alive(lease).await {
                Ok(()) => {
                    backoff.reset();
                    wait = ttl / 3;
                }
                Err(StoreError::LeaseExpired { .. }) => {
                    metrics.store_error("keep_alive");
                    tracing::warn!(lease = lease.0, "registration lease expired; granting a new one and registering every sidecar again");
                    current.send_replace(None);
                    break;
                }
                Err(error) => {
                    metrics.store_error("keep_alive");
                    tracing::warn!(%error, "registration lease keep-alive failed; retrying");
                    wait = backoff.next_wait();
                }
            }
        }
    }
}

/// Sleeps `wait`; false if `stop` came first.
async fn pause(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn one_lease_kept_alive_and_replaced_when_lost() {
        let store = MemoryStore::new();
        let (tx, mut rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            Duration::from_secs(3),
            tx,
            stop.clone(),
            Arc::default(),
        ));
        let first = *rx.wait_for(Option::is_some).await.expect("a lease");
        // Kept alive well past its TTL.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(*rx.borrow(), first);
        store.revoke(first.expect("some")).await.expect("revoke");
        let second = *rx
            .wait_for(|l| l.is_some() && *l != first)
            .await
            .expect("a new lease");
        assert_ne!(second, first);
        stop.cancel();
        task.await.expect("stopped");
    }
}
