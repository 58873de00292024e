//! The gRPC edge of orders: validates requests, starts sagas and waits for
//! their outcome, serves reads and watches from the order book.

use std::sync::Arc;
use std::time::Duration;

use mesh::proto::shop::orders::v1::{
    orders_service_server::OrdersService, GetOrderRequest, Order, PlaceOrderRequest,
    WatchOrderRequest,
};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::book::{Begun, OrderBook, Outcome};
use crate::customer::CustomerFrom;
use crate::downstream::Downstream;
use crate::event_stream::{self, EventStream};
use crate::request;
use crate::saga::Saga;

/// Response metadata naming the order a `PlaceOrder` opened, on failures
/// too: a cancelled order stays readable and watchable.
pub const ORDER_ID: &str = "x-order-id";
/// Most sagas running at once; past it `PlaceOrder` answers
/// RESOURCE_EXHAUSTED before opening an order.
pub const MAX_SAGAS: usize = 1_000;
/// Most `WatchOrder` streams open at once.
pub const MAX_WATCHERS: usize = 10_000;
/// Longest a repeated `PlaceOrder` waits for the first one's saga.
pub const MAX_REPEAT_WAIT: Duration = Duration::from_secs(120);

/// `shop.orders.v1.OrdersService`.
#[derive(Debug)]
pub struct Orders {
    book: Arc<OrderBook>,
    downstream: Downstream,
    /// Sagas run here, so shutdown can wait for them to finish.
    sagas: TaskTracker,
    saga_slots: Arc<Semaphore>,
    watch_slots: Arc<Semaphore>,
    /// Ends watches at shutdown so the server can drain.
    shutdown: CancellationToken,
    /// Whose orders a call may place and read.
    customers: CustomerFrom,
}

impl Orders {
    /// Orders placed through `downstream`, sagas spawned on `sagas`, each
    /// call's customer taken from `customers`.
    pub fn new(
        downstream: Downstream,
        sagas: TaskTracker,
        shutdown: CancellationToken,
        customers: CustomerFrom,
    ) -> Self {
        Self {
            customers,
            book: Arc::default(),
            downstream,
            sagas,
            saga_slots: Arc::new(Semaphore::new(MAX_SAGAS)),
            watch_slots: Arc::new(Semaphore::new(MAX_WATCHERS)),
            shutdown,
        }
    }

    /// Waits for the outcome of an order whose saga another call started.
    async fn outcome(&self, order_id: &str) -> Result<Order, Status> {
        let give_up = tokio::time::sleep(MAX_REPEAT_WAIT);
        tokio::pin!(give_up);
        loop {
            let mut changes = match self.book.outcome(order_id) {
                Some(Outcome::Done(result)) => return result,
                Some(Outcome::Running(changes)) => changes,
                None => return Err(Status::not_found(format!("order {order_id} not found"))),
            };
            tokio::select! {
                // An error means the order left the book: the next lookup says so.
                _ = changes.changed() => {}
                () = &mut give_up => {
                    return Err(Status::deadline_exceeded(format!(
                        "order {order_id} is still being placed; GetOrder or WatchOrder it"
                    )));
                }
            }
        }
    }
}

/// Adds `x-order-id` to the answer, success or failure.
fn with_order_id(order_id: &str, result: Result<Order, Status>) -> Result<Response<Order>, Status> {
    let value = MetadataValue::try_from(order_id).ok();
    match result {
        Ok(order) => {
            let mut response = Response::new(order);
            if let Some(value) = value {
                response.metadata_mut().insert(ORDER_ID, value);
            }
            Ok(response)
        }
        Err(mut status) => {
            if let Some(value) = value {
                status.metadata_mut().insert(ORDER_ID, value);
            }
            Err(status)
        }
    }
}

use mesh::app::validate::required_id as check_order_id;

#[tonic::async_trait]
impl OrdersService for Orders {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let customer = self
            .customers
            .customer(&request, &request.get_ref().customer_id)?;
        let mut body = request.into_inner();
        body.customer_id = customer;
        let request = request::place_order(body)?;
        tracing::debug!(request_id = %request.request_id, customer_id = %request.customer_id, lines = request.lines.len(), "place order");
        let slot = Arc::clone(&self.saga_slots)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{MAX_SAGAS} orders are being placed; retry later"
                ))
            })?;
        let order_id = match self.book.begin(&request)? {
            Begun::New(order_id) => order_id,
            Begun::Existing(order_id) => {
                drop(slot);
                tracing::debug!(%order_id, request_id = %request.request_id, "repeated request; answering with its order");
                return with_order_id(&order_id, self.outcome(&order_id).await);
            }
        };
        // The saga runs in its own task: if this call is dropped (the
        // client hung up, its deadline passed) the saga still finishes or
        // compensates. This call only waits for the answer.
        let (answer, result) = oneshot::channel();
        let saga = Saga::new(
            Arc::clone(&self.book),
            self.downstream.clone(),
            order_id.clone(),
            request,
        );
        let span = tracing::info_span!("saga", %order_id);
        self.sagas.spawn(
            async move {
                let _slot = slot;
                // Nobody may be waiting any more: the order book has the outcome.
                let _ = answer.send(saga.run().await);
            }
            .instrument(span),
        );
        let result = result.await.unwrap_or_else(|_| {
            Err(Status::internal(format!(
                "the saga of order {order_id} ended without an answer"
            )))
        });
        with_order_id(&order_id, result)
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.get_ref().order_id.clone();
        check_order_id("order_id", &id)?;
        tracing::debug!(order_id = %id, "get order");
        let order = self
            .book
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("order {id} not found")))?;
        self.customers.may_read(&request, &order.customer_id)?;
        Ok(Response::new(order))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let id = request.get_ref().order_id.clone();
        check_order_id("order_id", &id)?;
        tracing::debug!(order_id = %id, "watch order");
        let owner = self
            .book
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("order {id} not found")))?
            .customer_id;
        self.customers.may_read(&request, &owner)?;
        let slot = Arc::clone(&self.watch_slots)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!("{MAX_WATCHERS} watches are open; retry later"))
            })?;
        let stream = event_stream::follow(Arc::clone(&self.book), id, self.shutdown.clone(), slot)?;
        Ok(Response::new(stream))
    }
}
