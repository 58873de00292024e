//! The sidecars connected to this replica and what each has acked: the
//! replica-local half of `meshctl status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::registration::SidecarStatus;

/// Connected sidecars, by session id.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    map: Mutex<BTreeMap<u64, SidecarStatus>>,
}

impl Sessions {
    /// Records a new stream; returns its id.
    pub fn open(&self, status: SidecarStatus) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, status);
        id
    }

    /// Updates a stream's status.
    pub fn update(&self, id: u64, change: impl FnOnce(&mut SidecarStatus)) {
        if let Some(status) = self.lock().get_mut(&id) {
            change(status);
        }
    }

    /// Forgets a closed stream.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Every connected sidecar.
    pub fn list(&self) -> Vec<SidecarStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SidecarStatus>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
