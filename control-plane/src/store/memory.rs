//! [`MemoryStore`]: etcd's semantics inside one process, for `meshctl up`
//! without an etcd binary and for tests. Nothing survives the process.
//!
//! One `std::sync::Mutex` guards all state. Every critical section is short
//! and synchronous (no `.await` inside), so a blocking mutex is cheaper than
//! an async one and cannot deadlock across a suspension point (the reasoning
//! of mini-redis's `db.rs`). Publishing a change to watchers happens under
//! the same lock as the change itself, so a watcher that subscribes and
//! copies history under the lock sees every revision exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    ttl_seconds, KeyValue, LeaseId, Precondition, Revision, Snapshot, Store, StoreError,
    WatchBatch, WatchEvent, WatchStream,
};

/// Events of history kept for watches that start in the past, like etcd's
/// history before compaction. Bounded so memory stays flat; a watcher
/// further behind gets [`StoreError::Compacted`] and re-reads a snapshot.
const HISTORY_EVENTS: usize = 10_000;

/// Batches buffered per live watcher. A watcher that falls further behind
/// catches up from history (or gets `Compacted`), so this only trades memory
/// for fewer catch-ups.
const LIVE_BATCHES: usize = 1_024;

/// An in-memory store with etcd's semantics: one global revision starting at
/// 1, compare-and-swap on mod revisions, leases whose expiry deletes their
/// keys (a background sweeper makes that happen on time even when nobody
/// calls), and watches that replay bounded history. Clones share the state.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Every committed batch, to live watchers. Sent under the state lock.
    changes: broadcast::Sender<Arc<WatchBatch>>,
    /// Wakes the sweeper when a lease with an earlier deadline appears. Its
    /// own `Arc` so the sweeper can wait on it without keeping the store alive.
    sweeper_wake: Arc<Notify>,
}

struct State {
    revision: Revision,
    keys: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: i64,
    /// Every batch with `revision >= compact_revision`, oldest first.
    history: VecDeque<Arc<WatchBatch>>,
    history_events: usize,
    history_limit: usize,
    /// Watches from below this revision get `Compacted`.
    compact_revision: Revision,
    sweeper: Option<JoinHandle<()>>,
}

struct Entry {
    value: Vec<u8>,
    mod_revision: Revision,
    lease: Option<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("MemoryStore")
            .field("revision", &state.revision)
            .field("keys", &state.keys.len())
            .field("leases", &state.leases.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store at revision 1, keeping the last 10,000 events of history.
    pub fn new() -> Self {
        Self::with_limits(HISTORY_EVENTS, LIVE_BATCHES)
    }

    /// A store with its own history bound and per-watcher buffer, so tests
    /// can reach compaction and slow-watcher paths with a few writes.
    pub fn with_limits(history_events: usize, live_batches: usize) -> Self {
        let (changes, _) = broadcast::channel(live_batches.max(1));
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    revision: 1,
                    keys: BTreeMap::new(),
                    leases: HashMap::new(),
                    next_lease: 1,
                    history: VecDeque::new(),
                    history_events: 0,
                    history_limit: history_events.max(1),
                    compact_revision: 1,
                    sweeper: None,
                }),
                changes,
                sweeper_wake: Arc::new(Notify::new()),
            }),
        }
    }

    /// Drops history before `revision` (clamped to the current revision), as
    /// etcd's compaction does: watches from older revisions get `Compacted`.
    pub fn compact(&self, revision: Revision) {
        let mut state = self.inner.lock();
        let revision = revision.min(state.revision);
        if revision <= state.compact_revision {
            return;
        }
        while state
            .history
            .front()
            .is_some_and(|batch| batch.revision < revision)
        {
            state.pop_history();
        }
        state.compact_revision = revision;
    }

    /// Starts the sweeper unless one is running in a live runtime. Called
    /// with the lock held, from inside a runtime (a store call).
    fn ensure_sweeper(&self, state: &mut State) {
        if state.sweeper.as_ref().is_some_and(|s| !s.is_finished()) {
            self.inner.sweeper_wake.notify_one();
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        let wake = self.inner.sweeper_wake.clone();
        state.sweeper = Some(tokio::spawn(sweep(inner, wake)));
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything
        // that could panic, so a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, with every lease past its deadline already ended: calls see
    /// expiry exactly on time, whatever the sweeper is doing.
    fn lock_current(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.expire_due(Instant::now(), &self.changes);
        state
    }
}

/// Ends leases as their deadlines pass, so their keys vanish (and watchers
/// hear of it) with no other call. Runs while leases exist, then exits; the
/// next grant starts it again. Holds the store only weakly.
async fn sweep(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let mut state = inner.lock_current();
            match state.leases.values().map(|lease| lease.deadline).min() {
                Some(deadline) => deadline,
                None => {
                    // Decided under the lock: a grant after this starts a new sweeper.
                    state.sweeper = None;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = wake.notified() => {}
        }
    }
}

impl State {
    /// Records one write: bumps the revision, keeps it in history and tells
    /// live watchers. `events` carry `self.revision + 1` already.
    fn commit(&mut self, events: Vec<WatchEvent>, changes: &broadcast::Sender<Arc<WatchBatch>>) {
        self.revision += 1;
        let batch = Arc::new(WatchBatch {
            revision: self.revision,
            events,
        });
        self.history_events += batch.events.len();
        self.history.push_back(batch.clone());
        while self.history_events > self.history_limit && self.history.len() > 1 {
            self.pop_history();
        }
        // No receivers is fine: nobody is watching.
        let _ = changes.send(batch);
    }

    fn pop_history(&mut self) {
        if let Some(batch) = self.history.pop_front() {
            self.history_events -= batch.events.len();
            self.compact_revision = batch.revision + 1;
        }
    }

    fn expire_due(&mut self, now: Instant, changes: &broadcast::Sender<Arc<WatchBatch>>) {
        let mut due: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, lease)| (lease.deadline, *id))
            .collect();
        // Oldest first, as they would have ended in time.
        due.sort_by_key(|(deadline, _)| *deadline);
        for (_, id) in due {
            self.end_lease(id, changes);
        }
    }

    /// Removes the lease and deletes its keys in one write, as etcd does.
    fn end_lease(&mut self, id: LeaseId, changes: &broadcast::Sender<Arc<WatchBatch>>) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        let revision = self.revision + 1;
        let events: Vec<WatchEvent> = lease
            .keys
            .into_iter()
            .filter(|key| self.keys.remove(key).is_some())
            .map(|key| WatchEvent::Delete {
                key,
                mod_revision: revision,
            })
            .collect();
        // A lease without keys changes nothing: no revision, like etcd.
        if !events.is_empty() {
            self.commit(events, changes);
        }
    }

    fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(lease) = lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
    }

    fn check(&self, key: &str, precondition: Precondition) -> Result<(), StoreError> {
        let actual = self.keys.get(key).map(|entry| entry.mod_revision);
        let holds = match precondition {
            Precondition::Any => true,
            Precondition::Absent => actual.is_none(),
            Precondition::Revision(expected) => actual == Some(expected),
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: precondition,
                actual,
            })
        }
    }

    /// History from `from` and a receiver for what follows, taken together
    /// under the lock so nothing falls between them.
    fn subscribe(
        &self,
        from: Revision,
        changes: &broadcast::Sender<Arc<WatchBatch>>,
    ) -> Result<Subscription, StoreError> {
        if from < self.compact_revision {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: self.compact_revision,
            });
        }
        let replay = self
            .history
            .iter()
            .filter(|batch| batch.revision >= from)
            .cloned()
            .collect();
        Ok(Subscription {
            replay,
            live: changes.subscribe(),
        })
    }
}

/// What a watcher reads: history to replay, then live batches.
struct Subscription {
    replay: VecDeque<Arc<WatchBatch>>,
    live: broadcast::Receiver<Arc<WatchBatch>>,
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let state = self.inner.lock_current();
        Ok(state.keys.get(key).map(|entry| KeyValue {
            key: key.to_owned(),
            value: entry.value.clone(),
            mod_revision: entry.mod_revision,
        }))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let state = self.inner.lock_current();
        let items = state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| KeyValue {
                key: key.clone(),
                value: entry.value.clone(),
                mod_revision: entry.mod_revision,
            })
            .collect();
        Ok(Snapshot {
            revision: state.revision,
            items,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        precondition: Precondition,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let mut state = self.inner.lock_current();
        state.check(key, precondition)?;
        if let Some(id) = lease {
            let Some(lease) = state.leases.get_mut(&id) else {
                return Err(StoreError::LeaseExpired { lease: id });
            };
            lease.keys.insert(key.to_owned());
        }
        let revision = state.revision + 1;
        let previous = state.keys.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                mod_revision: revision,
                lease,
            },
        );
        if let Some(previous) = previous.filter(|p| p.lease != lease) {
            state.detach(key, previous.lease);
        }
        let event = WatchEvent::Put(KeyValue {
            key: key.to_owned(),
            value,
            mod_revision: revision,
        });
        state.commit(vec![event], &self.inner.changes);
        Ok(revision)
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Revision, StoreError> {
        let mut state = self.inner.lock_current();
        if !state.keys.contains_key(key) {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        state.check(key, precondition)?;
        let revision = state.revision + 1;
        if let Some(entry) = state.keys.remove(key) {
            state.detach(key, entry.lease);
        }
        let event = WatchEvent::Delete {
            key: key.to_owned(),
            mod_revision: revision,
        };
        state.commit(vec![event], &self.inner.changes);
        Ok(revision)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = Duration::from_secs(ttl_seconds(ttl).unsigned_abs());
        let mut state = self.inner.lock_current();
        let id = LeaseId(state.next_lease);
        state.next_lease += 1;
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        self.ensure_sweeper(&mut state);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.inner.lock_current();
        let Some(entry) = state.leases.get_mut(&lease) else {
            return Err(StoreError::LeaseExpired { lease });
        };
        // A later deadline never needs the sweeper woken: it wakes at the
        // old one, finds nothing due, and sleeps again.
        entry.deadline = Instant::now() + entry.ttl;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.inner.lock_current();
        state.end_lease(lease, &self.inner.changes);
        Ok(())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let (feed, from) = {
            let state = self.inner.lock_current();
            let from = if from <= 0 { state.revision + 1 } else { from };
            (state.subscribe(from, &self.inner.changes)?, from)
        };
        let watch = MemoryWatch {
            store: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            next: from,
            feed,
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            watch,
            |mut watch| async move { watch.next_batch().await.map(|item| (item, watch)) },
        )))
    }
}

/// One watcher's stream state.
struct MemoryWatch {
    /// Weak: the stream must end when the last store handle goes, which
    /// drops the broadcast sender and closes `live`.
    store: Weak<Inner>,
    prefix: String,
    /// The next revision owed to the caller.
    next: Revision,
    feed: Subscription,
    done: bool,
}

impl MemoryWatch {
    async fn next_batch(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        if self.done {
            return None;
        }
        loop {
            let batch = match self.feed.replay.pop_front() {
                Some(batch) => batch,
                None => match self.feed.live.recv().await {
                    Ok(batch) => batch,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Batches were dropped from our buffer: fetch them
                        // again from history, or tell the caller to re-sync.
                        let inner = self.store.upgrade()?;
                        let resumed = inner.lock().subscribe(self.next, &inner.changes);
                        match resumed {
                            Ok(feed) => {
                                self.feed = feed;
                                continue;
                            }
                            Err(error) => {
                                self.done = true;
                                return Some(Err(error));
                            }
                        }
                    }
                },
            };
            // A resubscription may hand back batches already delivered.
            if batch.revision < self.next {
                continue;
            }
            self.next = batch.revision + 1;
            let events: Vec<WatchEvent> = batch
                .events
                .iter()
                .filter(|event| event.key().starts_with(&self.prefix))
                .cloned()
                .collect();
            if !events.is_empty() {
                return Some(Ok(WatchBatch {
                    revision: batch.revision,
                    events,
                }));
            }
        }
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
