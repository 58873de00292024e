//! The gRPC edge of the inventory: validates requests, calls the store and
//! maps its answers (and [`InventoryError`]s) to responses and statuses.

use std::sync::Arc;

use mesh::proto::shop::inventory::v1::{
    inventory_service_server::InventoryService, GetStockRequest, ReleaseRequest, ReleaseResponse,
    Reservation, ReservationLine, ReserveRequest, Stock, StockAdjustment,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::request;
use crate::store::{self, Inventory, InventoryError, StockLevel};

/// Most adjustments one `AdjustStock` stream may carry; a warehouse count
/// bigger than this is split over several streams.
pub const MAX_ADJUSTMENTS_PER_STREAM: usize = 10_000;
/// Replies buffered for a slow reader before the stream stops reading
/// adjustments (backpressure instead of an unbounded queue).
const ADJUST_REPLY_BUFFER: usize = 32;

/// `shop.inventory.v1.InventoryService` over an [`Inventory`].
#[derive(Debug)]
pub struct InventoryApi {
    inventory: Arc<Inventory>,
    /// Ends open `AdjustStock` streams so a graceful shutdown is not held up
    /// by a client that keeps its stream open.
    shutdown: CancellationToken,
}

impl InventoryApi {
    /// Serves `inventory` until `shutdown`.
    pub fn new(inventory: Inventory, shutdown: CancellationToken) -> Self {
        Self {
            inventory: Arc::new(inventory),
            shutdown,
        }
    }
}

impl From<InventoryError> for Status {
    fn from(e: InventoryError) -> Self {
        let message = e.to_string();
        match e {
            InventoryError::UnknownSku(_) | InventoryError::UnknownReservation(_) => {
                Status::not_found(message)
            }
            InventoryError::InsufficientStock { .. }
            | InventoryError::RequestReused(_)
            | InventoryError::OutOfBounds { .. } => Status::failed_precondition(message),
            InventoryError::TooManySkus => Status::resource_exhausted(message),
        }
    }
}

fn stock(sku: String, level: StockLevel) -> Stock {
    Stock {
        sku,
        available: level.available,
        reserved: level.reserved,
    }
}

fn reservation(r: store::Reservation) -> Reservation {
    Reservation {
        reservation_id: r.id,
        request_id: r.request_id,
        lines: r
            .lines
            .into_iter()
            .map(|l| ReservationLine {
                sku: l.sku,
                // Validated to at most request::MAX_QUANTITY on the way in.
                quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
            })
            .collect(),
    }
}

/// Validates and applies one adjustment.
fn adjust(inventory: &Inventory, adjustment: StockAdjustment) -> Result<Stock, Status> {
    request::sku("sku", &adjustment.sku)?;
    request::delta(adjustment.delta)?;
    let level = inventory.adjust(&adjustment.sku, adjustment.delta)?;
    tracing::debug!(sku = %adjustment.sku, delta = adjustment.delta, available = level.available, "stock adjusted");
    Ok(stock(adjustment.sku, level))
}

/// Reads adjustments from `inbound` and answers each on `replies`, until the
/// client ends its stream, an adjustment fails (the error is the stream's
/// last message) or the server shuts down.
async fn run_adjustments(
    inventory: Arc<Inventory>,
    mut inbound: Streaming<StockAdjustment>,
    replies: mpsc::Sender<Result<Stock, Status>>,
    shutdown: CancellationToken,
) {
    let shutting_down = || Status::unavailable("server shutting down; send the rest again");
    let mut applied = 0usize;
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            () = replies.closed() => break,
            () = shutdown.cancelled() => {
                let _ = replies.try_send(Err(shutting_down()));
                break;
            }
        };
        let reply = match next {
            Ok(Some(adjustment)) if applied < MAX_ADJUSTMENTS_PER_STREAM => {
                adjust(&inventory, adjustment)
            }
            Ok(Some(_)) => Err(Status::invalid_argument(format!(
                "more than {MAX_ADJUSTMENTS_PER_STREAM} adjustments in one stream; split them"
            ))),
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "adjustment stream broken by the client");
                break;
            }
        };
        let last = reply.is_err();
        if !last {
            applied += 1;
        }
        tokio::select! {
            sent = replies.send(reply) => if sent.is_err() { break },
            () = shutdown.cancelled() => {
                let _ = replies.try_send(Err(shutting_down()));
                break;
            }
        }
        if last {
            break;
        }
    }
    if applied > 0 {
        tracing::info!(applied, "stock adjustments applied");
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<Stock>, Status> {
        let sku = request.into_inner().sku;
        request::sku("sku", &sku)?;
        tracing::debug!(%sku, "get stock");
        let level = self.inventory.stock(&sku)?;
        Ok(Response::new(stock(sku, level)))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<Reservation>, Status> {
        let request = request.into_inner();
        let lines = request::reserve_lines(&request)?;
        tracing::debug!(request_id = %request.request_id, lines = lines.len(), "reserve");
        let reserved = self
            .inventory
            .reserve(&request.request_id, lines)
            .inspect_err(|e| tracing::debug!(request_id = %request.request_id, error = %e, "reserve refused"))?;
        tracing::info!(
            reservation_id = %reserved.id,
            request_id = %reserved.request_id,
            released = reserved.released,
            "stock reserved"
        );
        Ok(Response::new(reservation(reserved)))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let id = request.into_inner().reservation_id;
        request::id("reservation_id", &id)?;
        let released = self.inventory.release(&id)?;
        if released {
            tracing::info!(reservation_id = %id, "reservation released");
        } else {
            tracing::debug!(reservation_id = %id, "reservation already released");
        }
        Ok(Response::new(ReleaseResponse { released }))
    }

    type AdjustStockStream = ReceiverStream<Result<Stock, Status>>;

    async fn adjust_stock(
        &self,
        request: Request<Streaming<StockAdjustment>>,
    ) -> Result<Response<Self::AdjustStockStream>, Status> {
        let (replies, stream) = mpsc::channel(ADJUST_REPLY_BUFFER);
        tokio::spawn(run_adjustments(
            Arc::clone(&self.inventory),
            request.into_inner(),
            replies,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
