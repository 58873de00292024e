//! Keeps the index in step with the store: read the prefix, watch from the
//! next revision, apply every batch, publish (a burst of batches together).
//! A broken watch (etcd restart, network) resumes from the last revision
//! seen; a compacted one starts over with a full read. Nothing is pushed
//! from a half-applied state.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::index::{Index, Published};
use crate::keys;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Follows the store until `stop`, publishing each new state; store
/// failures and restarts of the watch are counted in `metrics`.
pub async fn run<S: Store>(
    store: S,
    publish: watch::Sender<Arc<Published>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut failures: u32 = 0;
    let mut index: Option<Index> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let result = match index.as_mut() {
            None => match store.get_prefix(keys::ROOT).await {
                Ok(snapshot) => {
                    let fresh = Index::from_snapshot(&snapshot);
                    tracing::info!(revision = fresh.revision(), "store read");
                    publish_state(&fresh, &publish);
                    index = Some(fresh);
                    continue;
                }
                Err(error) => Err(error),
            },
            Some(current) => follow(&store, current, &publish, &stop).await,
        };
        match result {
            Ok(()) => return,
            Err(StoreError::Compacted {
                requested,
                compact_revision,
            }) => {
                tracing::warn!(
                    requested,
                    compact_revision,
                    "watch position compacted; reading the store again"
                );
                metrics.watch_resync("compacted");
                index = None;
                failures = 0;
                continue;
            }
            Err(error) => {
                failures += 1;
                metrics.store_error("watch");
                if index.is_some() {
                    metrics.watch_resync("broken");
                }
                tracing::warn!(%error, "store unavailable; retrying");
            }
        }
        let wait = mesh::backoff::jittered(
            mesh::backoff::exponential(
                Duration::from_millis(200),
                Duration::from_secs(3),
                failures,
            ),
            rand::random::<f64>(),
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The least time between two publishes. Each publish rebuilds the table
/// and wakes every stream, and a registration storm changes the table once
/// per sidecar: changes that arrive faster than this are applied at once
/// but published together. A change after a quiet spell is published at
/// once.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(25);

/// Watches from the index's revision, applying batches until the watch
/// breaks (an error) or `stop` (Ok).
async fn follow<S: Store>(
    store: &S,
    index: &mut Index,
    publish: &watch::Sender<Arc<Published>>,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut stream = store.watch(keys::ROOT, index.revision() + 1).await?;
    let mut last_publish: Option<Instant> = None;
    let mut unpublished = false;
    loop {
        let publish_at = last_publish.map_or_else(Instant::now, |at| at + PUBLISH_INTERVAL);
        tokio::select! {
            batch = stream.next() => match batch {
                Some(Ok(batch)) => {
                    // Keys that change no table (join tokens) wake no stream.
                    unpublished |= index.apply(&batch);
                }
                broken => {
                    if unpublished {
                        publish_state(index, publish);
                    }
                    return Err(match broken {
                        Some(Err(error)) => error,
                        _ => StoreError::Unavailable("watch stream ended".into()),
                    });
                }
            },
            () = tokio::time::sleep_until(publish_at), if unpublished => {
                publish_state(index, publish);
                last_publish = Some(Instant::now());
                unpublished = false;
            }
            () = stop.cancelled() => return Ok(()),
        }
    }
}

fn publish_state(index: &Index, publish: &watch::Sender<Arc<Published>>) {
    let next = index.publish();
    publish.send_if_modified(|current| {
        if !next.differs_from(current) {
            return false;
        }
        for problem in next
            .problems
            .iter()
            .filter(|p| !current.problems.contains(p))
        {
            tracing::warn!(problem = %problem, "bad data in the store");
        }
        *current = Arc::new(next);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Precondition, Revision};

    async fn put(store: &MemoryStore, name: &str) -> Revision {
        let key = format!("{}unknown/{name}", keys::ROOT);
        store
            .put(&key, b"x".to_vec(), Precondition::Any, None)
            .await
            .expect("put")
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_published_together_and_a_lone_change_at_once() {
        let store = MemoryStore::new();
        let (publish, mut published) = watch::channel(Arc::new(Published::default()));
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(run(store.clone(), publish, stop.clone(), Arc::default()));
        published.changed().await.expect("the store read");
        let first = put(&store, "a").await;
        published
            .wait_for(|p| p.revision == first)
            .await
            .expect("published");

        // Two changes right after a publish: published together, one
        // interval after the first.
        let since = Instant::now();
        put(&store, "b").await;
        let last = put(&store, "c").await;
        published.changed().await.expect("published");
        assert_eq!(published.borrow_and_update().revision, last);
        assert_eq!(since.elapsed(), PUBLISH_INTERVAL);

        // After a quiet spell, a change goes out without waiting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let since = Instant::now();
        let lone = put(&store, "d").await;
        published.changed().await.expect("published");
        assert_eq!(published.borrow_and_update().revision, lone);
        assert_eq!(since.elapsed(), Duration::ZERO);

        stop.cancel();
        watcher.await.expect("the watcher stops");
    }
}
