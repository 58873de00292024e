//! A cap on calls in flight that fails fast instead of queueing: beyond the
//! cap a call is refused at once (UNAVAILABLE), so an overloaded upstream
//! sheds load rather than building a queue that only adds latency.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counts calls in flight against a maximum: a semaphore only ever tried,
/// never awaited.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max: usize,
    places: Arc<Semaphore>,
}

/// Holds one place under a [`ConcurrencyLimit`] until dropped.
#[derive(Debug)]
pub struct Permit {
    _place: OwnedSemaphorePermit,
}

impl ConcurrencyLimit {
    /// A limit of `max` calls at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            places: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        })
    }

    /// A place if one is free; never waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.places
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|place| Permit { _place: place })
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_cap_and_frees_on_drop() {
        let limit = ConcurrencyLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }
}
