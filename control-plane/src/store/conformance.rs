//! The behaviour every [`Store`] shares, written once as generic cases and
//! run against each implementation (`etcd.rs` against a real etcd,
//! `memory.rs` in process): what passes here on one store passes on the
//! other, so the control plane can be tested on either.
//!
//! Each case works under its own key prefix, so the cases share one store
//! and run concurrently; the lease cases (seconds of real time, because etcd
//! keeps real time) then overlap instead of adding up.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    KeyValue, Precondition, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

/// What the suite needs beyond [`Store`]: a way to discard history, which
/// each backend does its own way.
pub(crate) trait Compactable: Store {
    /// Discards history before `revision`.
    fn compact_history(&self, revision: Revision) -> impl Future<Output = ()> + Send;
}

/// A case that takes longer has hung (a watch that never delivers).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one watch batch that is due.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The registration lease of the design, short enough for tests.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// Generous bound for a 2 s lease to end: etcd checks expiry every 500 ms
/// and revokes through raft.
const EXPIRY_BOUND: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(50);

/// Runs every case against `store`, all at once except compaction (which
/// is store-wide), and reports every failing case by name.
pub(crate) async fn run_all<S: Compactable>(store: S) {
    let started = Instant::now();
    let s = || store.clone();
    let mut failures = finish(vec![
        case("put_get_and_prefix", put_get_and_prefix(s(), "/cf/put/")),
        case("create_only_once", create_only_once(s(), "/cf/create/")),
        case(
            "stale_revision",
            stale_revision_conflicts(s(), "/cf/stale/"),
        ),
        case("delete", delete_not_found_and_cas(s(), "/cf/delete/")),
        case(
            "concurrent_cas",
            concurrent_cas_has_one_winner(s(), "/cf/race/"),
        ),
        case(
            "lease_expiry",
            lease_expiry_deletes_and_notifies(s(), "/cf/expiry/"),
        ),
        case("keep_alive", keep_alive_outlives_ttl(s(), "/cf/alive/")),
        case("revoke", revoke_deletes_at_once(s(), "/cf/revoke/")),
        case("watch_replay", watch_replays_in_order(s(), "/cf/watch/")),
    ])
    .await;
    // Compaction drops every prefix's history: only once the rest is done.
    failures.extend(
        finish(vec![case(
            "watch_compacted",
            watch_from_compacted_revision(s(), "/cf/compact/"),
        )])
        .await,
    );
    assert!(
        failures.is_empty(),
        "conformance cases failed:\n{}",
        failures.join("\n")
    );
    eprintln!("store conformance passed in {:?}", started.elapsed());
}

fn case<F>(name: &'static str, body: F) -> (&'static str, JoinHandle<()>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(async move {
        tokio::time::timeout(CASE_TIMEOUT, body)
            .await
            .unwrap_or_else(|_| panic!("timed out after {CASE_TIMEOUT:?}"));
    });
    (name, task)
}

async fn finish(cases: Vec<(&'static str, JoinHandle<()>)>) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, task) in cases {
        if let Err(error) = task.await {
            let message = match error.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned()),
                Err(error) => error.to_string(),
            };
            failures.push(format!("- {name}: {message}"));
        }
    }
    failures
}

async fn put_get_and_prefix<S: Store>(store: S, p: &'static str) {
    let key = |k: &str| format!("{p}{k}");
    assert_eq!(store.get(&key("a")).await.expect("get"), None);
    let put = |k: String, v: &'static str| {
        let store = store.clone();
        async move {
            store
                .put(&k, v.into(), Precondition::Any, None)
                .await
                .expect("put")
        }
    };
    let rb = put(key("b"), "b1").await;
    let ra = put(key("a"), "a1").await;
    let rc = put(key("c/x"), "c1").await;
    let ra2 = put(key("a"), "a2").await;
    assert!(rb < ra && ra < rc && rc < ra2, "{rb} {ra} {rc} {ra2}");
    // Shares the prefix's text but not its slash: not under the prefix.
    put(format!("{}x", p.trim_end_matches('/')), "out").await;

    assert_eq!(
        store.get(&key("a")).await.expect("get"),
        Some(KeyValue {
            key: key("a"),
            value: b"a2".to_vec(),
            mod_revision: ra2,
        })
    );
    let snapshot = store.get_prefix(p).await.expect("get_prefix");
    assert!(snapshot.revision >= ra2, "{snapshot:?}");
    let seen: Vec<(String, Vec<u8>, Revision)> = snapshot
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        vec![
            (key("a"), b"a2".to_vec(), ra2),
            (key("b"), b"b1".to_vec(), rb),
            (key("c/x"), b"c1".to_vec(), rc),
        ]
    );
}

async fn create_only_once<S: Store>(store: S, p: &'static str) {
    let key = format!("{p}x");
    let created = store
        .put(&key, b"first".to_vec(), Precondition::Absent, None)
        .await
        .expect("first create");
    let error = store
        .put(&key, b"second".to_vec(), Precondition::Absent, None)
        .await
        .expect_err("second create must lose");
    assert!(
        matches!(&error, StoreError::Conflict { key: k, expected: Precondition::Absent, actual: Some(a) }
            if *k == key && *a == created),
        "{error:?}"
    );
    let stored = store.get(&key).await.expect("get").expect("present");
    assert_eq!(stored.value, b"first");
}

async fn stale_revision_conflicts<S: Store>(store: S, p: &'static str) {
    let key = format!("{p}x");
    let missing = format!("{p}missing");
    let r1 = store
        .put(&key, b"1".to_vec(), Precondition::Any, None)
        .await
        .expect("put");
    let r2 = store
        .put(&key, b"2".to_vec(), Precondition::Revision(r1), None)
        .await
        .expect("CAS on the current revision");
    assert!(r2 > r1);
    let error = store
        .put(&key, b"3".to_vec(), Precondition::Revision(r1), None)
        .await
        .expect_err("CAS on a stale revision");
    assert!(
        matches!(error, StoreError::Conflict { expected: Precondition::Revision(e), actual: Some(a), .. }
            if e == r1 && a == r2),
        "{error:?}"
    );
    for expected in [r1, 0] {
        let error = store
            .put(
                &missing,
                b"x".to_vec(),
                Precondition::Revision(expected),
                None,
            )
            .await
            .expect_err("CAS on an absent key");
        assert!(
            matches!(error, StoreError::Conflict { actual: None, .. }),
            "{error:?}"
        );
    }
    let stored = store.get(&key).await.expect("get").expect("present");
    assert_eq!((stored.value, stored.mod_revision), (b"2".to_vec(), r2));
    assert_eq!(store.get(&missing).await.expect("get"), None);
}

async fn delete_not_found_and_cas<S: Store>(store: S, p: &'static str) {
    let key = format!("{p}x");
    for precondition in [Precondition::Any, Precondition::Revision(1)] {
        let error = store
            .delete(&key, precondition)
            .await
            .expect_err("delete of an absent key");
        assert!(
            matches!(&error, StoreError::NotFound { key: k } if *k == key),
            "{error:?}"
        );
    }
    let r1 = store
        .put(&key, b"1".to_vec(), Precondition::Any, None)
        .await
        .expect("put");
    let r2 = store
        .put(&key, b"2".to_vec(), Precondition::Any, None)
        .await
        .expect("put");
    for stale in [Precondition::Revision(r1), Precondition::Absent] {
        let error = store
            .delete(&key, stale)
            .await
            .expect_err("delete on a failed precondition");
        assert!(
            matches!(error, StoreError::Conflict { expected, actual: Some(a), .. }
                if expected == stale && a == r2),
            "{error:?}"
        );
    }
    let deleted = store
        .delete(&key, Precondition::Revision(r2))
        .await
        .expect("delete on the current revision");
    assert!(deleted > r2);
    assert_eq!(store.get(&key).await.expect("get"), None);
    let error = store
        .delete(&key, Precondition::Any)
        .await
        .expect_err("already deleted");
    assert!(matches!(error, StoreError::NotFound { .. }), "{error:?}");
    let recreated = store
        .put(&key, b"3".to_vec(), Precondition::Absent, None)
        .await
        .expect("create after delete");
    assert!(recreated > deleted);
}

async fn concurrent_cas_has_one_winner<S: Store>(store: S, p: &'static str) {
    const WRITERS: u8 = 8;
    let key = format!("{p}x");
    let base = store
        .put(&key, b"base".to_vec(), Precondition::Any, None)
        .await
        .expect("put");
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                store
                    .put(&key, vec![i], Precondition::Revision(base), None)
                    .await
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = Vec::new();
    for writer in writers {
        match writer.await.expect("writer task") {
            Ok(revision) => wins.push(revision),
            Err(StoreError::Conflict { actual, .. }) => conflicts.push(actual),
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
    assert_eq!(wins.len(), 1, "exactly one writer wins: {wins:?}");
    let won = wins[0];
    assert!(
        conflicts.iter().all(|actual| *actual == Some(won)),
        "losers see the winner's revision {won}: {conflicts:?}"
    );
    let stored = store.get(&key).await.expect("get").expect("present");
    assert_eq!(stored.mod_revision, won);
}

async fn lease_expiry_deletes_and_notifies<S: Store>(store: S, p: &'static str) {
    let leased = format!("{p}leased");
    let plain = format!("{p}plain");
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant");
    store
        .put(&leased, b"1".to_vec(), Precondition::Any, Some(lease))
        .await
        .expect("put with lease");
    let last = store
        .put(&plain, b"1".to_vec(), Precondition::Any, None)
        .await
        .expect("put");
    let mut watch = store.watch(p, last + 1).await.expect("watch");

    // No keep-alives from here on.
    let started = Instant::now();
    while store.get(&leased).await.expect("get").is_some() {
        assert!(
            started.elapsed() < EXPIRY_BOUND,
            "leased key still present after {EXPIRY_BOUND:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let gone_after = started.elapsed();
    assert!(
        gone_after >= Duration::from_secs(1),
        "a {LEASE_TTL:?} lease ended after only {gone_after:?}"
    );

    let batch = next_batch(&mut watch).await;
    assert_eq!(
        batch.events,
        vec![WatchEvent::Delete {
            key: leased.clone(),
            mod_revision: batch.revision,
        }]
    );
    assert!(batch.revision > last);
    assert!(store.get(&plain).await.expect("get").is_some());

    let error = store.keep_alive(lease).await.expect_err("lease ended");
    assert!(
        matches!(error, StoreError::LeaseExpired { lease: l } if l == lease),
        "{error:?}"
    );
    let error = store
        .put(&leased, b"2".to_vec(), Precondition::Any, Some(lease))
        .await
        .expect_err("put on an ended lease");
    assert!(
        matches!(error, StoreError::LeaseExpired { .. }),
        "{error:?}"
    );
    store.revoke(lease).await.expect("revoking an ended lease");
}

async fn keep_alive_outlives_ttl<S: Store>(store: S, p: &'static str) {
    let key = format!("{p}x");
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant");
    store
        .put(&key, b"1".to_vec(), Precondition::Any, Some(lease))
        .await
        .expect("put with lease");
    let until = Instant::now() + LEASE_TTL * 7 / 4;
    while Instant::now() < until {
        store.keep_alive(lease).await.expect("keep alive");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        store.get(&key).await.expect("get").is_some(),
        "kept-alive key vanished"
    );
    store.revoke(lease).await.expect("revoke");
    assert_eq!(store.get(&key).await.expect("get"), None);
}

async fn revoke_deletes_at_once<S: Store>(store: S, p: &'static str) {
    let key = |k: &str| format!("{p}{k}");
    // Long enough that only the revoke can end them.
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let other = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let put = |k: String, lease| {
        let store = store.clone();
        async move {
            store
                .put(&k, b"v".to_vec(), Precondition::Any, lease)
                .await
                .expect("put")
        }
    };
    put(key("b"), Some(lease)).await;
    put(key("a"), Some(lease)).await;
    // Re-put without a lease, or under another one: no longer this lease's.
    put(key("unleased"), Some(lease)).await;
    put(key("unleased"), None).await;
    put(key("moved"), Some(lease)).await;
    let last = put(key("moved"), Some(other)).await;

    let mut watch = store.watch(p, last + 1).await.expect("watch");
    store.revoke(lease).await.expect("revoke");
    assert_eq!(store.get(&key("a")).await.expect("get"), None);
    assert_eq!(store.get(&key("b")).await.expect("get"), None);
    assert!(store.get(&key("unleased")).await.expect("get").is_some());
    assert!(store.get(&key("moved")).await.expect("get").is_some());

    // One write deletes all of the lease's keys, in key order.
    let batch = next_batch(&mut watch).await;
    let revision = batch.revision;
    assert_eq!(
        batch.events,
        ["a", "b"].map(|k| WatchEvent::Delete {
            key: key(k),
            mod_revision: revision,
        })
    );

    store.revoke(lease).await.expect("revoke is idempotent");
    let error = store.keep_alive(lease).await.expect_err("revoked");
    assert!(
        matches!(error, StoreError::LeaseExpired { .. }),
        "{error:?}"
    );
    store.revoke(other).await.expect("revoke");
    assert_eq!(store.get(&key("moved")).await.expect("get"), None);
}

async fn watch_replays_in_order<S: Store>(store: S, p: &'static str) {
    let key = |k: &str| format!("{p}{k}");
    let put = |k: String, v: &'static str| {
        let store = store.clone();
        async move {
            store
                .put(&k, v.into(), Precondition::Any, None)
                .await
                .expect("put")
        }
    };
    let put_event = |k: &str, v: &str, mod_revision| {
        WatchEvent::Put(KeyValue {
            key: key(k),
            value: v.into(),
            mod_revision,
        })
    };
    let r1 = put(key("a"), "a1").await;
    let r2 = put(key("b"), "b1").await;
    let r3 = store
        .delete(&key("a"), Precondition::Any)
        .await
        .expect("delete");
    put(format!("{}-elsewhere/a", p.trim_end_matches('/')), "x").await;
    let r4 = put(key("b"), "b2").await;
    let past = vec![
        put_event("a", "a1", r1),
        put_event("b", "b1", r2),
        WatchEvent::Delete {
            key: key("a"),
            mod_revision: r3,
        },
        put_event("b", "b2", r4),
    ];

    let mut from_start = store.watch(p, r1).await.expect("watch");
    let mut from_middle = store.watch(p, r3).await.expect("watch");
    let mut from_now = store.watch(p, 0).await.expect("watch");
    assert_eq!(next_events(&mut from_start, 4).await, past);
    assert_eq!(next_events(&mut from_middle, 2).await, past[2..]);

    // Live changes follow the replay on the same stream.
    let r5 = put(key("c"), "c1").await;
    let live = vec![put_event("c", "c1", r5)];
    assert_eq!(next_events(&mut from_start, 1).await, live);
    assert_eq!(next_events(&mut from_middle, 1).await, live);
    assert_eq!(next_events(&mut from_now, 1).await, live);
}

async fn watch_from_compacted_revision<S: Compactable>(store: S, p: &'static str) {
    let key = format!("{p}x");
    let mut revisions = Vec::new();
    for value in ["1", "2", "3"] {
        let revision = store
            .put(&key, value.into(), Precondition::Any, None)
            .await
            .expect("put");
        revisions.push(revision);
    }
    let (r1, r3) = (revisions[0], revisions[2]);
    store.compact_history(r3).await;

    let error = match store.watch(p, r1).await {
        Err(error) => error,
        Ok(mut watch) => match tokio::time::timeout(WATCH_TIMEOUT, watch.next()).await {
            Ok(Some(Err(error))) => error,
            other => panic!("expected Compacted, got {other:?}"),
        },
    };
    assert!(
        matches!(error, StoreError::Compacted { requested, compact_revision }
            if requested == r1 && compact_revision > r1 && compact_revision <= r3),
        "{error:?}"
    );

    // From the compaction revision on, history is still there.
    let mut watch = store.watch(p, r3).await.expect("watch");
    assert_eq!(
        next_events(&mut watch, 1).await,
        vec![WatchEvent::Put(KeyValue {
            key,
            value: b"3".to_vec(),
            mod_revision: r3,
        })]
    );
}

/// The next batch, checked for the invariants every batch keeps.
async fn next_batch(watch: &mut WatchStream) -> WatchBatch {
    let batch = tokio::time::timeout(WATCH_TIMEOUT, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no watch batch within {WATCH_TIMEOUT:?}"))
        .expect("watch stream ended")
        .expect("watch error");
    let revisions: Vec<Revision> = batch.events.iter().map(WatchEvent::mod_revision).collect();
    assert!(!revisions.is_empty(), "empty batch");
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{batch:?}");
    assert_eq!(revisions.last(), Some(&batch.revision), "{batch:?}");
    batch
}

/// Exactly `count` events, over as many batches as they come in.
async fn next_events(watch: &mut WatchStream, count: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        events.extend(next_batch(watch).await.events);
    }
    assert_eq!(events.len(), count, "more events than expected: {events:?}");
    events
}
