//! A cap on calls in flight that fails fast instead of queueing: beyond the
//! cap a call is refused at once (UNAVAILABLE), so an overloaded upstream
//! sheds load rather than building a queue that only adds latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts calls in flight against a maximum.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max: usize,
    in_flight: AtomicUsize,
}

/// Holds one place under a [`ConcurrencyLimit`] until dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
}

impl ConcurrencyLimit {
    /// A limit of `max` calls at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// A place if one is free; never waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            limit: self.clone(),
        })
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
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
