//! The order book: every order, its event history, and who is waiting on
//! it. Bookkeeping only: the saga decides, the book records and wakes
//! watchers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use mesh::proto::shop::orders::v1::{Order, OrderEvent, OrderItem, OrderStatus};
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::request::OrderRequest;

/// Most orders remembered. Past this the oldest *finished* orders are
/// forgotten (with their `request_id`); orders still running are kept, so
/// the overshoot is bounded by the sagas in flight.
pub const MAX_ORDERS: usize = 100_000;

/// Whether `status` ends an order's life.
pub fn is_final(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Confirmed | OrderStatus::Cancelled)
}

/// What [`OrderBook::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// A new order, PENDING: the caller runs its saga.
    New(String),
    /// The `request_id` was seen before: this is its order.
    Existing(String),
}

/// Where an order stands, for a caller that wants its outcome.
#[derive(Debug)]
pub enum Outcome {
    /// Still running; the receiver wakes on each new event.
    Running(watch::Receiver<usize>),
    /// Finished: the order, or the status its `PlaceOrder` failed with.
    Done(Result<Order, Status>),
}

/// The `request_id` was used before for a different order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestReused(pub String);

impl From<RequestReused> for Status {
    fn from(RequestReused(id): RequestReused) -> Self {
        Status::failed_precondition(format!(
            "request_id {id} was already used for a different order"
        ))
    }
}

#[derive(Debug)]
struct Record {
    order: Order,
    request: OrderRequest,
    events: Vec<OrderEvent>,
    /// The code and message `PlaceOrder` failed with, once cancelled.
    failure: Option<(Code, String)>,
    /// How many events there are: watchers wait for it to change.
    changed: watch::Sender<usize>,
}

impl Record {
    fn status(&self) -> OrderStatus {
        OrderStatus::try_from(self.order.status).unwrap_or(OrderStatus::Unspecified)
    }

    fn push(&mut self, status: OrderStatus, detail: String) {
        self.order.status = status.into();
        self.events.push(OrderEvent {
            order_id: self.order.order_id.clone(),
            status: status.into(),
            detail,
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
        });
        self.changed.send_replace(self.events.len());
    }

    fn outcome(&self) -> Outcome {
        match (self.status(), &self.failure) {
            (s, _) if !is_final(s) => Outcome::Running(self.changed.subscribe()),
            (_, Some((code, message))) => Outcome::Done(Err(Status::new(*code, message.clone()))),
            (_, None) => Outcome::Done(Ok(self.order.clone())),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    orders: HashMap<String, Record>,
    by_request: HashMap<String, String>,
    /// Order ids, oldest first, for forgetting past the cap.
    age: VecDeque<String>,
}

/// Every order, shared by the gRPC edge and the sagas.
///
/// A std `Mutex`: each operation is a few map operations and a
/// non-blocking `watch` send, never an `.await`.
#[derive(Debug, Default)]
pub struct OrderBook {
    state: Mutex<State>,
}

impl OrderBook {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a field update with nothing that can panic
        // halfway: a poisoned lock still guards consistent records.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a PENDING order for `request`, or finds the one its
    /// `request_id` opened before.
    pub fn begin(&self, request: &OrderRequest) -> Result<Begun, RequestReused> {
        let mut state = self.lock();
        if let Some(id) = state.by_request.get(&request.request_id) {
            return match state.orders.get(id) {
                Some(record) if record.request.same_order(request) => {
                    Ok(Begun::Existing(id.clone()))
                }
                _ => Err(RequestReused(request.request_id.clone())),
            };
        }
        let id = loop {
            let id = format!("ord-{:012x}", rand::random::<u64>() >> 16);
            if !state.orders.contains_key(&id) {
                break id;
            }
        };
        let order = Order {
            order_id: id.clone(),
            customer_id: request.customer_id.clone(),
            items: request
                .lines
                .iter()
                .map(|line| OrderItem {
                    sku: line.sku.clone(),
                    name: String::new(),
                    quantity: line.quantity,
                    unit_price_minor: 0,
                })
                .collect(),
            ..Order::default()
        };
        let mut record = Record {
            order,
            request: request.clone(),
            events: Vec::new(),
            failure: None,
            changed: watch::Sender::new(0),
        };
        let lines = request.lines.len();
        let plural = if lines == 1 { "" } else { "s" };
        record.push(
            OrderStatus::Pending,
            format!("order received: {lines} line{plural}"),
        );
        state.orders.insert(id.clone(), record);
        state
            .by_request
            .insert(request.request_id.clone(), id.clone());
        state.age.push_back(id.clone());
        state.forget_oldest();
        Ok(Begun::New(id))
    }

    /// The order as it stands.
    pub fn get(&self, order_id: &str) -> Option<Order> {
        self.lock().orders.get(order_id).map(|r| r.order.clone())
    }

    /// Changes the order without a status change (e.g. prices filled in).
    pub fn update(&self, order_id: &str, change: impl FnOnce(&mut Order)) {
        if let Some(record) = self.lock().orders.get_mut(order_id) {
            change(&mut record.order);
        }
    }

    /// Moves the order to `status`, recording an event, and returns it.
    /// A final order does not move again.
    pub fn advance(&self, order_id: &str, status: OrderStatus, detail: String) -> Option<Order> {
        let mut state = self.lock();
        let record = state.orders.get_mut(order_id)?;
        if !is_final(record.status()) {
            record.push(status, detail);
        }
        Some(record.order.clone())
    }

    /// Cancels the order: `message` becomes its failure reason, and the
    /// answer to every repeat of its `PlaceOrder` is `code` with `message`.
    pub fn cancel(&self, order_id: &str, code: Code, message: &str) {
        let mut state = self.lock();
        let Some(record) = state.orders.get_mut(order_id) else {
            return;
        };
        if is_final(record.status()) {
            return;
        }
        record.order.failure_reason = message.to_owned();
        record.failure = Some((code, message.to_owned()));
        record.push(OrderStatus::Cancelled, message.to_owned());
    }

    /// Where the order stands; `None` if unknown.
    pub fn outcome(&self, order_id: &str) -> Option<Outcome> {
        self.lock().orders.get(order_id).map(Record::outcome)
    }

    /// A receiver that wakes on each new event of the order; `None` if
    /// unknown. Take it before reading events so none slips past.
    pub fn subscribe(&self, order_id: &str) -> Option<watch::Receiver<usize>> {
        self.lock()
            .orders
            .get(order_id)
            .map(|r| r.changed.subscribe())
    }

    /// The order's events from index `from` on, and whether the order is
    /// final; `None` if unknown.
    pub fn events_since(&self, order_id: &str, from: usize) -> Option<(Vec<OrderEvent>, bool)> {
        let state = self.lock();
        let record = state.orders.get(order_id)?;
        let events = record.events.get(from..).unwrap_or_default().to_vec();
        Some((events, is_final(record.status())))
    }
}

impl State {
    fn forget_oldest(&mut self) {
        while self.age.len() > MAX_ORDERS {
            let finished = self
                .age
                .front()
                .and_then(|id| self.orders.get(id))
                .is_some_and(|r| is_final(r.status()));
            if !finished {
                break;
            }
            if let Some(id) = self.age.pop_front() {
                if let Some(record) = self.orders.remove(&id) {
                    self.by_request.remove(&record.request.request_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh::proto::shop::orders::v1::OrderLine;

    use super::*;

    fn request(request_id: &str, quantity: i32) -> OrderRequest {
        OrderRequest {
            request_id: request_id.into(),
            customer_id: "cus-1".into(),
            lines: vec![OrderLine {
                sku: "sku-a".into(),
                quantity,
            }],
        }
    }

    fn new_order(book: &OrderBook, request_id: &str) -> String {
        match book.begin(&request(request_id, 1)) {
            Ok(Begun::New(id)) => id,
            other => panic!("expected a new order, got {other:?}"),
        }
    }

    fn statuses(book: &OrderBook, id: &str) -> Vec<OrderStatus> {
        let (events, _) = book.events_since(id, 0).expect("known order");
        events
            .iter()
            .map(|e| OrderStatus::try_from(e.status).unwrap_or(OrderStatus::Unspecified))
            .collect()
    }

    #[test]
    fn begin_is_idempotent_by_request_id() {
        let book = OrderBook::default();
        let id = new_order(&book, "req-1");
        assert!(id.starts_with("ord-") && id.len() == 16, "{id}");
        assert_eq!(
            book.begin(&request("req-1", 1)),
            Ok(Begun::Existing(id.clone()))
        );
        assert_eq!(
            book.begin(&request("req-1", 2)),
            Err(RequestReused("req-1".into()))
        );
        assert_ne!(new_order(&book, "req-2"), id);
        assert_eq!(statuses(&book, &id), [OrderStatus::Pending]);
    }

    #[test]
    fn final_orders_do_not_move() {
        let book = OrderBook::default();
        let id = new_order(&book, "req-1");
        book.advance(&id, OrderStatus::Confirmed, "done".into());
        book.advance(&id, OrderStatus::Compensating, "late".into());
        book.cancel(&id, Code::Unavailable, "late");
        assert_eq!(
            statuses(&book, &id),
            [OrderStatus::Pending, OrderStatus::Confirmed]
        );
        match book.outcome(&id) {
            Some(Outcome::Done(Ok(order))) => assert_eq!(order.failure_reason, ""),
            other => panic!("expected a confirmed order, got {other:?}"),
        }
    }

    #[test]
    fn a_cancelled_order_repeats_its_failure() {
        let book = OrderBook::default();
        let id = new_order(&book, "req-1");
        book.advance(&id, OrderStatus::Compensating, "undoing".into());
        book.cancel(
            &id,
            Code::FailedPrecondition,
            "stock reservation failed: short",
        );
        match book.outcome(&id) {
            Some(Outcome::Done(Err(status))) => {
                assert_eq!(status.code(), Code::FailedPrecondition);
                assert_eq!(status.message(), "stock reservation failed: short");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        let order = book.get(&id).expect("known order");
        assert_eq!(order.status, i32::from(OrderStatus::Cancelled));
        assert_eq!(order.failure_reason, "stock reservation failed: short");
    }

    #[test]
    fn watchers_wake_on_events() {
        let book = OrderBook::default();
        let id = new_order(&book, "req-1");
        let mut rx = book.subscribe(&id).expect("known order");
        assert!(!rx.has_changed().unwrap_or(true));
        book.advance(&id, OrderStatus::Reserved, "reserved".into());
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), 2);
        let (later, last) = book.events_since(&id, 1).expect("known order");
        assert_eq!(later.len(), 1);
        assert!(!last);
        assert!(later[0].at.is_some());
        assert!(book
            .events_since(&id, 99)
            .is_some_and(|(e, _)| e.is_empty()));
    }

    #[test]
    fn unknown_orders_are_none() {
        let book = OrderBook::default();
        assert!(book.get("ord-nope").is_none());
        assert!(book.outcome("ord-nope").is_none());
        assert!(book.subscribe("ord-nope").is_none());
    }
}
