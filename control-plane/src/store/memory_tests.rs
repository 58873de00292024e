use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::MemoryStore;
use crate::store::conformance::{self, Compactable};
use crate::store::{Precondition, Revision, Store, StoreError, WatchEvent, WatchStream};

impl Compactable for MemoryStore {
    async fn compact_history(&self, revision: Revision) {
        self.compact(revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    conformance::run_all(MemoryStore::new()).await;
}

async fn put(store: &MemoryStore, key: &str, lease: Option<super::LeaseId>) -> Revision {
    store
        .put(key, b"v".to_vec(), Precondition::Any, lease)
        .await
        .expect("put")
}

async fn next(watch: &mut WatchStream) -> Option<Result<super::WatchBatch, StoreError>> {
    tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("watch answers")
}

#[tokio::test(start_paused = true)]
async fn sweeper_ends_leases_on_time_with_no_calls() {
    let store = MemoryStore::new();
    let lease = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    put(&store, "/l/a", Some(lease)).await;
    put(&store, "/l/b", Some(lease)).await;
    let mut watch = store.watch("/l/", 0).await.expect("watch");
    let started = Instant::now();

    // Nothing but the sweeper runs until the deletes arrive.
    let batch = next(&mut watch).await.expect("batch").expect("no error");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_010),
        "{waited:?}"
    );
    let keys: Vec<&str> = batch.events.iter().map(WatchEvent::key).collect();
    assert_eq!(keys, ["/l/a", "/l/b"]);
    assert!(batch
        .events
        .iter()
        .all(|event| matches!(event, WatchEvent::Delete { .. })));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_moves_the_deadline() {
    let store = MemoryStore::new();
    let lease = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    put(&store, "/k/a", Some(lease)).await;
    let mut watch = store.watch("/k/", 0).await.expect("watch");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.keep_alive(lease).await.expect("keep alive");
    }
    let last_refresh = Instant::now();
    next(&mut watch).await.expect("batch").expect("no error");
    assert_eq!(last_refresh.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn sweeper_restarts_for_leases_granted_after_it_stopped() {
    let store = MemoryStore::new();
    let first = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    store.revoke(first).await.expect("revoke");
    // Let the sweeper see there is nothing left and stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(store.inner.lock().sweeper.is_none());

    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    put(&store, "/r/a", Some(lease)).await;
    let mut watch = store.watch("/r/", 0).await.expect("watch");
    let batch = next(&mut watch).await.expect("batch").expect("no error");
    assert!(matches!(batch.events[..], [WatchEvent::Delete { .. }]));
}

#[tokio::test]
async fn slow_watcher_catches_up_from_history() {
    let store = MemoryStore::with_limits(1_000, 4);
    let mut watch = store.watch("/s/", 0).await.expect("watch");
    let mut written = Vec::new();
    for i in 0..100 {
        written.push(put(&store, &format!("/s/{i:03}"), None).await);
    }
    for expected in written {
        let batch = next(&mut watch).await.expect("batch").expect("no error");
        assert_eq!(batch.revision, expected);
    }
}

#[tokio::test]
async fn slow_watcher_beyond_history_must_resync() {
    let store = MemoryStore::with_limits(10, 4);
    let from = store.get_prefix("/s/").await.expect("snapshot").revision + 1;
    let mut watch = store.watch("/s/", from).await.expect("watch");
    for i in 0..50 {
        put(&store, &format!("/s/{i:03}"), None).await;
    }
    let error = next(&mut watch).await.expect("an item").expect_err("lost");
    assert!(
        matches!(error, StoreError::Compacted { requested, compact_revision }
            if requested == from && compact_revision > from),
        "{error:?}"
    );
    assert!(next(&mut watch).await.is_none(), "the stream ends after it");
}

#[tokio::test]
async fn history_bound_compacts_oldest_revisions() {
    let store = MemoryStore::with_limits(10, 1_024);
    let mut written = Vec::new();
    for i in 0..30 {
        written.push(put(&store, &format!("/h/{i:03}"), None).await);
    }
    let oldest_kept = written[20];
    let error = match store.watch("/h/", oldest_kept - 1).await {
        Err(error) => error,
        Ok(_) => panic!("history beyond the bound was kept"),
    };
    assert!(
        matches!(error, StoreError::Compacted { compact_revision, .. } if compact_revision == oldest_kept),
        "{error:?}"
    );
    let mut watch = store.watch("/h/", oldest_kept).await.expect("watch");
    let batch = next(&mut watch).await.expect("batch").expect("no error");
    assert_eq!(batch.revision, oldest_kept);
}

#[tokio::test]
async fn watch_ends_when_the_store_is_dropped() {
    let store = MemoryStore::new();
    let mut watch = store.watch("/d/", 0).await.expect("watch");
    drop(store);
    assert!(next(&mut watch).await.is_none());
}

#[tokio::test]
async fn revisions_start_like_etcd() {
    let store = MemoryStore::new();
    assert_eq!(store.get_prefix("").await.expect("snapshot").revision, 1);
    assert_eq!(put(&store, "/a", None).await, 2);
    // A lease with no keys ends without a write.
    let lease = store
        .grant_lease(Duration::from_secs(5))
        .await
        .expect("grant");
    store.revoke(lease).await.expect("revoke");
    assert_eq!(store.get_prefix("").await.expect("snapshot").revision, 2);
}
