//! The stock table and the reservations held against it. Pure bookkeeping
//! (no I/O), so every rule is a plain unit test.
//!
//! Invariants: `available` and `reserved` never go below zero nor above
//! [`MAX_STOCK`]; a reservation moves units from `available` to `reserved`
//! for every line or for none.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Most units of one SKU: far beyond any warehouse, and low enough that no
/// sum of stock levels overflows an `i64`.
pub const MAX_STOCK: i64 = 1_000_000_000_000;
/// Most SKUs tracked: `AdjustStock` creates unknown SKUs, so the table is
/// bounded.
pub const MAX_SKUS: usize = 100_000;
/// Most reservations remembered. Past this the oldest are forgotten: their
/// units stay counted as reserved (sold), but they can no longer be
/// released, and their `request_id` no longer deduplicates.
pub const MAX_RESERVATIONS: usize = 100_000;

/// Stock of one SKU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockLevel {
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held by reservations.
    pub reserved: i64,
}

/// One line of a reservation: units of a SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The SKU.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: i64,
}

/// A reservation as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Our id for it.
    pub id: String,
    /// The caller's id that made the request idempotent.
    pub request_id: String,
    /// What it holds.
    pub lines: Vec<Line>,
    /// Whether its units went back to availability.
    pub released: bool,
}

/// Why an inventory operation was refused. Nothing changed when one is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryError {
    /// No such SKU.
    UnknownSku(String),
    /// A reserve line asks for more than is available.
    InsufficientStock {
        /// The short SKU.
        sku: String,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// The `request_id` was used before for different lines.
    RequestReused(String),
    /// No such reservation.
    UnknownReservation(String),
    /// An adjustment would take stock below zero or above [`MAX_STOCK`].
    OutOfBounds {
        /// The SKU.
        sku: String,
        /// Units available before.
        available: i64,
        /// The rejected change.
        delta: i64,
    },
    /// Adding another SKU would pass [`MAX_SKUS`].
    TooManySkus,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSku(sku) => write!(f, "unknown sku {sku}"),
            Self::InsufficientStock {
                sku,
                requested,
                available,
            } => write!(
                f,
                "insufficient stock for {sku}: requested {requested}, available {available}"
            ),
            Self::RequestReused(id) => {
                write!(f, "request_id {id} was already used for different lines")
            }
            Self::UnknownReservation(id) => write!(f, "reservation {id} not found"),
            Self::OutOfBounds {
                sku,
                available,
                delta,
            } => write!(
                f,
                "adjusting {sku} by {delta} would leave {} available (must stay within 0..={MAX_STOCK})",
                i128::from(*available) + i128::from(*delta)
            ),
            Self::TooManySkus => write!(f, "inventory tracks at most {MAX_SKUS} skus"),
        }
    }
}

/// Whether two reservations hold the same units, in whatever line order.
fn same_lines(a: &[Line], b: &[Line]) -> bool {
    fn sorted(lines: &[Line]) -> Vec<(&str, i64)> {
        let mut lines: Vec<(&str, i64)> =
            lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
        lines.sort_unstable();
        lines
    }
    sorted(a) == sorted(b)
}

#[derive(Debug, Default)]
struct State {
    stock: HashMap<String, StockLevel>,
    reservations: HashMap<String, Reservation>,
    /// `request_id` -> reservation id, for idempotent reserve.
    by_request: HashMap<String, String>,
    /// Reservation ids, oldest first, for forgetting past the cap.
    age: VecDeque<String>,
}

/// Stock and reservations, shared by every request.
///
/// One std `Mutex` over the whole state: a reserve must check and move
/// several SKUs atomically, the critical sections are short and never
/// `.await`.
#[derive(Debug, Default)]
pub struct Inventory {
    state: Mutex<State>,
}

impl Inventory {
    /// An inventory holding `stock` units per SKU (clamped to the bounds).
    pub fn new<'a>(stock: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        let stock = stock
            .into_iter()
            .take(MAX_SKUS)
            .map(|(sku, available)| {
                let level = StockLevel {
                    available: available.clamp(0, MAX_STOCK),
                    reserved: 0,
                };
                (sku.to_owned(), level)
            })
            .collect();
        Self {
            state: Mutex::new(State {
                stock,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation validates first and writes after, with no panicking
        // step in between, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stock of `sku`.
    pub fn stock(&self, sku: &str) -> Result<StockLevel, InventoryError> {
        self.lock()
            .stock
            .get(sku)
            .copied()
            .ok_or_else(|| InventoryError::UnknownSku(sku.to_owned()))
    }

    /// Reserves every line or none. A `request_id` seen before returns the
    /// reservation it made (even if since released) as long as the lines
    /// match. `lines` hold distinct SKUs with positive quantities.
    pub fn reserve(
        &self,
        request_id: &str,
        lines: Vec<Line>,
    ) -> Result<Reservation, InventoryError> {
        let mut state = self.lock();
        if let Some(existing) = state
            .by_request
            .get(request_id)
            .and_then(|id| state.reservations.get(id))
        {
            return if same_lines(&existing.lines, &lines) {
                Ok(existing.clone())
            } else {
                Err(InventoryError::RequestReused(request_id.to_owned()))
            };
        }
        // Check every line before touching any: all or nothing.
        for line in &lines {
            let level = state
                .stock
                .get(&line.sku)
                .ok_or_else(|| InventoryError::UnknownSku(line.sku.clone()))?;
            if level.available < line.quantity {
                return Err(InventoryError::InsufficientStock {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available: level.available,
                });
            }
        }
        for line in &lines {
            if let Some(level) = state.stock.get_mut(&line.sku) {
                level.available -= line.quantity;
                // available + reserved <= 2 * MAX_STOCK; no overflow.
                level.reserved += line.quantity;
            }
        }
        let id = loop {
            let id = format!("res-{:012x}", rand::random::<u64>() >> 16);
            if !state.reservations.contains_key(&id) {
                break id;
            }
        };
        let reservation = Reservation {
            id: id.clone(),
            request_id: request_id.to_owned(),
            lines,
            released: false,
        };
        state.reservations.insert(id.clone(), reservation.clone());
        state.by_request.insert(request_id.to_owned(), id.clone());
        state.age.push_back(id);
        while state.age.len() > MAX_RESERVATIONS {
            let Some(oldest) = state.age.pop_front() else {
                break;
            };
            if let Some(forgotten) = state.reservations.remove(&oldest) {
                state.by_request.remove(&forgotten.request_id);
            }
        }
        Ok(reservation)
    }

    /// Returns a reservation's units to availability. `Ok(false)` if it was
    /// already released: release is idempotent.
    pub fn release(&self, reservation_id: &str) -> Result<bool, InventoryError> {
        let mut state = self.lock();
        let State {
            stock,
            reservations,
            ..
        } = &mut *state;
        let reservation = reservations
            .get_mut(reservation_id)
            .ok_or_else(|| InventoryError::UnknownReservation(reservation_id.to_owned()))?;
        if reservation.released {
            return Ok(false);
        }
        for line in &reservation.lines {
            if let Some(level) = stock.get_mut(&line.sku) {
                level.reserved -= line.quantity;
                level.available += line.quantity;
            }
        }
        reservation.released = true;
        Ok(true)
    }

    /// Adds `delta` units (negative: removes) to the availability of `sku`,
    /// creating the SKU when stock for a new product arrives.
    pub fn adjust(&self, sku: &str, delta: i64) -> Result<StockLevel, InventoryError> {
        let mut state = self.lock();
        let current = state.stock.get(sku).copied();
        let available = current.unwrap_or_default().available;
        let after = available
            .checked_add(delta)
            .filter(|n| (0..=MAX_STOCK).contains(n))
            .ok_or_else(|| InventoryError::OutOfBounds {
                sku: sku.to_owned(),
                available,
                delta,
            })?;
        if current.is_none() && state.stock.len() >= MAX_SKUS {
            return Err(InventoryError::TooManySkus);
        }
        let level = state.stock.entry(sku.to_owned()).or_default();
        level.available = after;
        Ok(*level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }

    fn inventory() -> Inventory {
        Inventory::new([("a", 10), ("b", 3)])
    }

    fn level(inv: &Inventory, sku: &str) -> (i64, i64) {
        let s = inv.stock(sku).expect("known sku");
        (s.available, s.reserved)
    }

    #[test]
    fn reserve_moves_units_to_reserved() {
        let inv = inventory();
        let r = inv
            .reserve("req-1", vec![line("a", 4), line("b", 3)])
            .expect("enough stock");
        assert!(r.id.starts_with("res-") && r.id.len() == 16, "{}", r.id);
        assert_eq!(level(&inv, "a"), (6, 4));
        assert_eq!(level(&inv, "b"), (0, 3));
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let inv = inventory();
        let err = inv
            .reserve("req-1", vec![line("a", 4), line("b", 4)])
            .unwrap_err();
        assert_eq!(
            err,
            InventoryError::InsufficientStock {
                sku: "b".into(),
                requested: 4,
                available: 3
            }
        );
        assert_eq!(level(&inv, "a"), (10, 0));
        let err = inv
            .reserve("req-2", vec![line("a", 1), line("zz", 1)])
            .unwrap_err();
        assert_eq!(err, InventoryError::UnknownSku("zz".into()));
        assert_eq!(level(&inv, "a"), (10, 0));
    }

    #[test]
    fn a_failed_request_id_can_be_retried() {
        let inv = inventory();
        assert!(inv.reserve("req-1", vec![line("b", 5)]).is_err());
        inv.adjust("b", 2).expect("within bounds");
        assert!(inv.reserve("req-1", vec![line("b", 5)]).is_ok());
    }

    #[test]
    fn reserve_is_idempotent_by_request_id() {
        let inv = inventory();
        let first = inv
            .reserve("req-1", vec![line("a", 4)])
            .expect("enough stock");
        let again = inv
            .reserve("req-1", vec![line("a", 4)])
            .expect("same request");
        assert_eq!(first, again);
        assert_eq!(level(&inv, "a"), (6, 4));
        let two = inv
            .reserve("req-2", vec![line("a", 1), line("b", 1)])
            .expect("enough stock");
        let swapped = inv
            .reserve("req-2", vec![line("b", 1), line("a", 1)])
            .expect("same lines");
        assert_eq!(two.id, swapped.id);
        assert_eq!(
            inv.reserve("req-1", vec![line("a", 5)]).unwrap_err(),
            InventoryError::RequestReused("req-1".into())
        );
    }

    #[test]
    fn a_released_request_is_not_reserved_again() {
        let inv = inventory();
        let first = inv
            .reserve("req-1", vec![line("a", 4)])
            .expect("enough stock");
        assert_eq!(inv.release(&first.id), Ok(true));
        let again = inv
            .reserve("req-1", vec![line("a", 4)])
            .expect("same request");
        assert_eq!(again.id, first.id);
        assert!(again.released);
        assert_eq!(level(&inv, "a"), (10, 0));
    }

    #[test]
    fn release_is_idempotent() {
        let inv = inventory();
        let r = inv
            .reserve("req-1", vec![line("a", 4)])
            .expect("enough stock");
        assert_eq!(inv.release(&r.id), Ok(true));
        assert_eq!(inv.release(&r.id), Ok(false));
        assert_eq!(level(&inv, "a"), (10, 0));
        assert_eq!(
            inv.release("res-nope"),
            Err(InventoryError::UnknownReservation("res-nope".into()))
        );
    }

    #[test]
    fn adjust_never_goes_below_zero_nor_overflows() {
        let inv = inventory();
        assert_eq!(inv.adjust("a", -10).map(|s| s.available), Ok(0));
        assert!(matches!(
            inv.adjust("a", -1),
            Err(InventoryError::OutOfBounds { .. })
        ));
        assert!(matches!(
            inv.adjust("a", i64::MAX),
            Err(InventoryError::OutOfBounds { .. })
        ));
        assert!(matches!(
            inv.adjust("a", MAX_STOCK + 1),
            Err(InventoryError::OutOfBounds { .. })
        ));
        assert_eq!(level(&inv, "a"), (0, 0));
    }

    #[test]
    fn adjust_creates_new_skus() {
        let inv = inventory();
        assert_eq!(inv.adjust("new", 5).map(|s| s.available), Ok(5));
        assert!(matches!(
            inv.adjust("other", -1),
            Err(InventoryError::OutOfBounds { .. })
        ));
        assert_eq!(
            inv.stock("other"),
            Err(InventoryError::UnknownSku("other".into()))
        );
    }
}
