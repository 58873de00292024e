//! The sidecars connected to this replica and what each has acked: the
//! replica-local half of `meshctl status`.
//!
//! Which sessions changed since the status was last written is tracked
//! here, so the writer ([`crate::replica`]) touches only those keys: a
//! route change acked by 10,000 sidecars is 10,000 small writes once, not a
//! rewrite of every sidecar on every tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::registration::SidecarStatus;

/// Connected sidecars, by session id.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<u64, SidecarStatus>,
    /// Opened, updated or closed since the last [`Sessions::take_changes`].
    changed: BTreeSet<u64>,
    /// Changed only in their pushed or acked version since they were last
    /// taken: written less often.
    versions_changed: BTreeSet<u64>,
}

/// What became of a session since the changes were last taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Opened or updated: its status now.
    Now(u64, SidecarStatus),
    /// Closed.
    Closed(u64),
}

impl Sessions {
    /// Records a new stream; returns its id.
    pub fn open(&self, status: SidecarStatus) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.map.insert(id, status);
        state.changed.insert(id);
        id
    }

    /// Updates a stream's status.
    pub fn update(&self, id: u64, change: impl FnOnce(&mut SidecarStatus)) {
        let mut state = self.lock();
        if let Some(status) = state.map.get_mut(&id) {
            let before = SidecarStatus {
                synced_revision: status.synced_revision,
                ..status.clone()
            };
            change(status);
            // The synced revision is live only: never a reason to write.
            let stored = SidecarStatus {
                synced_revision: before.synced_revision,
                ..status.clone()
            };
            let versions_only = SidecarStatus {
                pushed_version: before.pushed_version,
                acked_version: before.acked_version,
                ..stored.clone()
            } == before;
            if stored != before {
                if versions_only {
                    state.versions_changed.insert(id);
                } else {
                    state.changed.insert(id);
                }
            }
        }
    }

    /// Forgets a closed stream.
    pub fn close(&self, id: u64) {
        let mut state = self.lock();
        state.map.remove(&id);
        state.versions_changed.remove(&id);
        state.changed.insert(id);
    }

    /// Every open stream's status now (the replica's `/syncz`).
    pub fn all(&self) -> Vec<SidecarStatus> {
        self.lock().map.values().cloned().collect()
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sessions changed since they were last taken, and clears the
    /// record; those whose only change is a version only `with_versions`.
    pub fn take_changes(&self, with_versions: bool) -> Vec<SessionChange> {
        let mut state = self.lock();
        let mut changed = std::mem::take(&mut state.changed);
        if with_versions {
            changed.append(&mut state.versions_changed);
        } else {
            let taken = &changed;
            state.versions_changed.retain(|id| !taken.contains(id));
        }
        changed
            .into_iter()
            .map(|id| match state.map.get(&id) {
                Some(status) => SessionChange::Now(id, status.clone()),
                None => SessionChange::Closed(id),
            })
            .collect()
    }

    /// Marks sessions as changed again (their write failed, or everything
    /// must be written again under a new lease: `None`).
    pub fn mark_changed(&self, ids: Option<&[u64]>) {
        let mut state = self.lock();
        match ids {
            Some(ids) => state.changed.extend(ids.iter().copied()),
            None => {
                let all: Vec<u64> = state.map.keys().copied().collect();
                state.changed.extend(all);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(instance: &str) -> SidecarStatus {
        SidecarStatus {
            service: "inventory".into(),
            instance: instance.into(),
            ..SidecarStatus::default()
        }
    }

    #[test]
    fn only_what_changed_is_taken_once() {
        let sessions = Sessions::default();
        let a = sessions.open(status("a"));
        let b = sessions.open(status("b"));
        assert_eq!(sessions.take_changes(false).len(), 2);
        assert!(sessions.take_changes(true).is_empty());
        sessions.update(a, |s| s.acked_version = 7);
        sessions.update(b, |_| {}); // no change: nothing to write
        assert!(
            sessions.take_changes(false).is_empty(),
            "a version alone waits"
        );
        let changes = sessions.take_changes(true);
        assert_eq!(changes.len(), 1);
        assert!(
            matches!(&changes[0], SessionChange::Now(id, s) if *id == a && s.acked_version == 7)
        );
        sessions.update(a, |s| s.nack_reason = "bad".into());
        assert_eq!(sessions.take_changes(false).len(), 1, "a NACK at once");
        sessions.update(b, |s| s.acked_version = 8);
        sessions.close(b);
        assert_eq!(sessions.take_changes(false), vec![SessionChange::Closed(b)]);
        assert!(
            sessions.take_changes(true).is_empty(),
            "closed: no version left to write"
        );
        sessions.mark_changed(None);
        assert_eq!(sessions.take_changes(false).len(), 1, "only open sessions");
        assert_eq!(sessions.len(), 1);
    }
}
