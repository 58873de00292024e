//! Keeps the index in step with the store: read the prefix, watch from the
//! next revision, apply every batch, publish. A broken watch (etcd restart,
//! network) resumes from the last revision seen; a compacted one starts
//! over with a full read. Nothing is pushed from a half-applied state.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
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
        let wait =
            Duration::from_millis(100 * 2u64.pow(failures.min(5))).min(Duration::from_secs(3));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Watches from the index's revision, applying batches until the watch
/// breaks (an error) or `stop` (Ok).
async fn follow<S: Store>(
    store: &S,
    index: &mut Index,
    publish: &watch::Sender<Arc<Published>>,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut stream = store.watch(keys::ROOT, index.revision() + 1).await?;
    loop {
        let batch = tokio::select! {
            batch = stream.next() => batch,
            () = stop.cancelled() => return Ok(()),
        };
        match batch {
            Some(Ok(batch)) => {
                index.apply(&batch);
                publish_state(index, publish);
            }
            Some(Err(error)) => return Err(error),
            None => return Err(StoreError::Unavailable("watch stream ended".into())),
        }
    }
}

fn publish_state(index: &Index, publish: &watch::Sender<Arc<Published>>) {
    let next = index.publish();
    publish.send_if_modified(|current| {
        if current.table_json == next.table_json
            && current.descriptor_sets == next.descriptor_sets
            && current.problems == next.problems
        {
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
