//! State a route accumulates while it serves (retry budgets, concurrency
//! counters, round-robin positions), carried from one table to the next
//! like the connection slots of [`crate::table::UpstreamPool`].
//!
//! Tables are rebuilt on every push, and a push comes with every endpoint
//! change: if each table brought fresh budgets, an endpoint flapping during
//! a retry storm would refill the budget with every push and switch the
//! storm protection off exactly when it is needed. So each piece of state
//! is keyed by its route's name and by the configuration it was made for
//! ([`Piece`]): a new table takes the piece of the same key from the last
//! one, a changed configuration makes a different key and fresh state, and
//! pieces no route asked for (the route is gone, or its policy changed)
//! are forgotten when the new table is in.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a piece of route state is, and the configuration it depends on:
/// the same key in two tables means the same state may go on serving.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Piece {
    /// The retry budget, for its `minPerSecond` and ratio (as bits: an
    /// `f64` has no `Eq`).
    RetryBudget {
        /// Retries always allowed per second.
        min_per_second: u32,
        /// The ratio's `f64::to_bits`.
        ratio_bits: u64,
    },
    /// The cap on calls in flight, for its maximum.
    MaxRequests(usize),
    /// The rate limiters, for their limits.
    RateLimit(mesh::model::RateLimit),
    /// The cap on calls waiting for a connection, for its maximum.
    MaxPendingConnects(usize),
    /// Outlier detection's compiled policy (the breakers themselves live on
    /// the endpoints' slots).
    Outlier(crate::outlier::OutlierPolicy),
    /// The round-robin over a split's subsets: for which rule (`None`: the
    /// route's default split) and the split's `(subset, weight)`s.
    SubsetSplit {
        /// The rule's index.
        rule: Option<usize>,
        /// The subsets and weights.
        split: Vec<(String, u32)>,
    },
    /// The round-robin over a subset's endpoints: for which rule and
    /// subset, and its members `(service, address, weight)` in order.
    EndpointRotation {
        /// The rule's index (`None`: the default split).
        rule: Option<usize>,
        /// The subset (`None`: every endpoint of the service).
        subset: Option<String>,
        /// The members.
        members: Vec<(String, String, u32)>,
    },
}

type Pieces = HashMap<(String, Piece), Arc<dyn Any + Send + Sync>>;

/// Every route's state, shared by successive tables.
#[derive(Debug, Default)]
pub struct RouteStates {
    pieces: Mutex<Pieces>,
}

impl RouteStates {
    /// Starts building the state of a new table. Only one build runs at a
    /// time (the builder holds the lock); the pieces it hands out replace
    /// the current ones when it is [`finished`](StateBuilder::finish), and
    /// a build dropped unfinished (an invalid table) changes nothing.
    pub fn rebuild(&self) -> StateBuilder<'_> {
        StateBuilder {
            current: Some(self.pieces.lock().unwrap_or_else(|e| e.into_inner())),
            next: HashMap::new(),
        }
    }

    /// How many pieces are kept (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pieces.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The state of one table being built: pieces taken over from the current
/// table or made fresh.
pub struct StateBuilder<'a> {
    current: Option<MutexGuard<'a, Pieces>>,
    next: Pieces,
}

impl std::fmt::Debug for StateBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBuilder")
            .field("pieces", &self.next.len())
            .finish_non_exhaustive()
    }
}

impl StateBuilder<'static> {
    /// A builder that carries nothing over: every piece is fresh.
    #[cfg(test)]
    pub fn fresh() -> Self {
        Self {
            current: None,
            next: HashMap::new(),
        }
    }
}

impl StateBuilder<'_> {
    /// `route`'s `piece`: the current table's if it has it, else `make()`.
    pub fn get<T: Any + Send + Sync>(
        &mut self,
        route: &str,
        piece: Piece,
        make: impl FnOnce() -> Arc<T>,
    ) -> Arc<T> {
        let key = (route.to_owned(), piece);
        let kept = self
            .next
            .get(&key)
            .or_else(|| self.current.as_ref().and_then(|c| c.get(&key)))
            .and_then(|any| any.clone().downcast::<T>().ok());
        let state = kept.unwrap_or_else(make);
        self.next.insert(key, state.clone());
        state
    }

    /// Makes the pieces handed out the current ones; the others are
    /// forgotten (in-flight calls holding them finish with them).
    pub fn finish(mut self) {
        if let Some(current) = self.current.as_mut() {
            **current = std::mem::take(&mut self.next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_state_changed_key_fresh_unused_forgotten() {
        let states = RouteStates::default();
        let mut b = states.rebuild();
        let a = b.get("r", Piece::MaxRequests(1), || Arc::new(1u32));
        let gone = b.get("gone", Piece::MaxRequests(1), || Arc::new(2u32));
        b.finish();
        assert_eq!(states.len(), 2);

        let mut b = states.rebuild();
        let again = b.get("r", Piece::MaxRequests(1), || Arc::new(9u32));
        let changed = b.get("r", Piece::MaxRequests(2), || Arc::new(3u32));
        b.finish();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(*changed, 3);
        assert_eq!(
            states.len(),
            2,
            "route `gone` and the old cap are forgotten"
        );
        drop(gone);

        // An unfinished build (an invalid table) changes nothing.
        let mut b = states.rebuild();
        b.get("other", Piece::MaxRequests(1), || Arc::new(4u32));
        drop(b);
        let mut b = states.rebuild();
        let kept = b.get("r", Piece::MaxRequests(1), || Arc::new(9u32));
        assert!(Arc::ptr_eq(&a, &kept));
    }
}
