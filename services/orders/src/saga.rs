//! The PlaceOrder saga: price every line, reserve the stock, charge the
//! customer, confirm; on failure, undo what was (or may have been) done and
//! cancel.
//!
//! A saga runs in its own task, detached from the caller's request: a caller
//! hanging up mid-saga drops only its wait for the answer, so the saga
//! still either confirms or compensates, and never leaves stock reserved or
//! money taken for an order nobody will see.
//!
//! Each step (price, reserve, charge, confirm) and each compensation
//! (refund, release) runs in a span of its own, `saga.<step>`, under the
//! saga's span (itself under the `PlaceOrder` server span), with the order
//! id and the step's outcome; a failed step marks its span as an error.
//! The calls a step makes are client spans under it.

use std::future::Future;
use std::sync::Arc;

use mesh::proto::shop::inventory::v1::ReservationLine;
use mesh::proto::shop::orders::v1::{Order, OrderStatus};
use mesh::proto::shop::payments::v1::ChargeRequest;
use tokio::task::JoinSet;
use tonic::Status;
use tracing::{Instrument, Span};

use crate::book::OrderBook;
use crate::compensation;
use crate::downstream::Downstream;
use crate::pricing::{self, Priced};
use crate::request::OrderRequest;
use crate::undo::{self, Effect, Step, StepFailure, Undo, Undone};

/// The span of one saga step, with the fields every step records.
macro_rules! step_span {
    ($name:literal, $order_id:expr $(, $($field:tt)*)?) => {
        tracing::info_span!(
            $name,
            order_id = %$order_id,
            outcome = tracing::field::Empty,
            code = tracing::field::Empty,
            $($($field)*)?
        )
    };
}

/// Runs one forward step in `span`, recording how it went.
async fn step<T>(span: &Span, work: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let result = work.instrument(span.clone()).await;
    match &result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(status) => {
            span.record("outcome", "failed");
            span.record("code", tracing::field::debug(status.code()));
            mesh::telemetry::mark_error(span, format!("{:?}: {}", status.code(), status.message()));
        }
    }
    result
}

/// Runs one compensation in `span`, recording what it achieved.
async fn undo_step(span: Span, work: impl Future<Output = Undone>) -> Undone {
    let undone = work.instrument(span.clone()).await;
    match &undone {
        Undone::Nothing => {
            span.record("outcome", "nothing to undo");
        }
        Undone::Done => {
            span.record("outcome", "undone");
        }
        Undone::Failed(reason) => {
            span.record("outcome", "failed");
            mesh::telemetry::mark_error(&span, reason.clone());
        }
    }
    undone
}

/// One order's saga.
#[derive(Debug)]
pub struct Saga {
    book: Arc<OrderBook>,
    downstream: Downstream,
    order_id: String,
    request: OrderRequest,
}

impl Saga {
    /// The saga of the PENDING order `order_id`, opened for `request`.
    pub fn new(
        book: Arc<OrderBook>,
        downstream: Downstream,
        order_id: String,
        request: OrderRequest,
    ) -> Self {
        Self {
            book,
            downstream,
            order_id,
            request,
        }
    }

    /// Runs the saga to a final status: the confirmed order, or the status
    /// of the step that failed (with what compensation did in its message).
    pub async fn run(self) -> Result<Order, Status> {
        let mut undo = Undo::default();
        match self.forward(&mut undo).await {
            Ok(()) => {
                // Only eviction removes orders, and it spares running ones.
                let order = self.book.get(&self.order_id).ok_or_else(|| {
                    Status::internal(format!("order {} vanished from the book", self.order_id))
                })?;
                tracing::info!(
                    order_id = %order.order_id,
                    total_minor = order.total_minor,
                    currency = %order.currency,
                    "order confirmed"
                );
                Ok(order)
            }
            Err(failure) => Err(self.compensate(failure, undo).await),
        }
    }

    fn reservation_lines(&self) -> Vec<ReservationLine> {
        self.request
            .lines
            .iter()
            .map(|line| ReservationLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
            })
            .collect()
    }

    fn advance(&self, status: OrderStatus, detail: String) {
        tracing::debug!(order_id = %self.order_id, status = status.as_str_name(), %detail, "order advanced");
        self.book.advance(&self.order_id, status, detail);
    }

    /// The happy path; records in `undo` every effect to undo on failure.
    async fn forward(&self, undo: &mut Undo) -> Result<(), StepFailure> {
        let price_span = step_span!(
            "saga.price",
            self.order_id,
            lines = self.request.lines.len(),
            total_minor = tracing::field::Empty
        );
        let priced = step(&price_span, self.price())
            .await
            .map_err(|status| StepFailure {
                step: Step::Pricing,
                status,
            })?;
        price_span.record("total_minor", priced.total_minor);
        let Priced {
            items,
            total_minor,
            currency,
        } = priced;
        let charge_currency = currency.clone();
        self.book.update(&self.order_id, |order| {
            order.items = items;
            order.total_minor = total_minor;
            order.currency = currency;
        });

        let reserve_span = step_span!(
            "saga.reserve",
            self.order_id,
            reservation_id = tracing::field::Empty
        );
        let reservation = match step(
            &reserve_span,
            self.downstream
                .reserve(&self.order_id, self.reservation_lines()),
        )
        .await
        {
            Ok(reservation) => reservation,
            Err(status) => {
                undo.reservation = Effect::after_error(status.code());
                return Err(StepFailure {
                    step: Step::Reservation,
                    status,
                });
            }
        };
        let reservation_id = reservation.reservation_id;
        reserve_span.record("reservation_id", reservation_id.as_str());
        undo.reservation = Effect::Done(reservation_id.clone());
        self.book.update(&self.order_id, |order| {
            order.reservation_id = reservation_id.clone()
        });
        self.advance(
            OrderStatus::Reserved,
            format!("stock reserved ({reservation_id})"),
        );

        if total_minor > 0 {
            let charge = ChargeRequest {
                idempotency_key: self.order_id.clone(),
                customer_id: self.request.customer_id.clone(),
                reference: self.order_id.clone(),
                amount_minor: total_minor,
                currency: charge_currency.clone(),
            };
            let charge_span = step_span!(
                "saga.charge",
                self.order_id,
                amount_minor = total_minor,
                currency = %charge_currency,
                payment_id = tracing::field::Empty
            );
            let payment = match step(&charge_span, self.downstream.charge(charge)).await {
                Ok(payment) => payment,
                Err(status) => {
                    undo.charge = Effect::after_error(status.code());
                    return Err(StepFailure {
                        step: Step::Payment,
                        status,
                    });
                }
            };
            let payment_id = payment.payment_id;
            charge_span.record("payment_id", payment_id.as_str());
            undo.charge = Effect::Done(payment_id.clone());
            self.book.update(&self.order_id, |order| {
                order.payment_id = payment_id.clone()
            });
            self.advance(
                OrderStatus::Paid,
                format!("charged {total_minor} minor units of {charge_currency} ({payment_id})"),
            );
        } else {
            self.advance(
                OrderStatus::Paid,
                "nothing to charge: the order is free".into(),
            );
        }

        let confirm_span = step_span!("saga.confirm", self.order_id);
        confirm_span.in_scope(|| self.advance(OrderStatus::Confirmed, "order confirmed".into()));
        confirm_span.record("outcome", "ok");
        Ok(())
    }

    /// Gets every line's product from the catalog, concurrently (an order
    /// has at most `mesh::app::validate::MAX_LINES` lines), and prices the order.
    async fn price(&self) -> Result<Priced, Status> {
        let lines = &self.request.lines;
        let mut calls = JoinSet::new();
        for (i, line) in lines.iter().enumerate() {
            let downstream = self.downstream.clone();
            let sku = line.sku.clone();
            // In the step's span, so each call's client span is its child.
            calls.spawn(async move { (i, downstream.get_product(&sku).await) }.in_current_span());
        }
        let mut products = vec![None; lines.len()];
        while let Some(joined) = calls.join_next().await {
            let (i, product) =
                joined.map_err(|e| Status::internal(format!("catalog lookup task failed: {e}")))?;
            // The first failure decides; dropping `calls` aborts the rest.
            if let Some(slot) = products.get_mut(i) {
                *slot = Some(product?);
            }
        }
        let products: Vec<_> = products.into_iter().flatten().collect();
        Ok(pricing::price(lines, &products)?)
    }

    /// Undoes what `undo` lists, in reverse order of the steps, then cancels
    /// the order. Returns what `PlaceOrder` answers.
    async fn compensate(&self, failure: StepFailure, undo: Undo) -> Status {
        let order_id = &self.order_id;
        self.advance(OrderStatus::Compensating, format!("{failure}; undoing"));
        tracing::debug!(%order_id, ?undo, "compensating");
        let refund = undo_step(
            step_span!("saga.refund", order_id, charge = ?undo.charge),
            compensation::refund(&self.downstream, order_id, &undo.charge),
        )
        .await;
        let release = undo_step(
            step_span!("saga.release", order_id, reservation = ?undo.reservation),
            compensation::release(
                &self.downstream,
                order_id,
                &self.reservation_lines(),
                &undo.reservation,
            ),
        )
        .await;
        let message = undo::cancellation_message(order_id, &failure, &refund, &release);
        let code = failure.status.code();
        self.book.cancel(order_id, code, &message);
        if refund.failed() || release.failed() {
            tracing::error!(%order_id, reason = %message, "order cancelled but compensation failed: repair by hand");
        } else {
            tracing::info!(%order_id, ?code, reason = %message, "order cancelled");
        }
        Status::new(code, message)
    }
}
