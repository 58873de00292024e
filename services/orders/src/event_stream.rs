//! The `WatchOrder` stream: every event of an order so far, then each new
//! one as the saga records it, until the order is final.

use std::sync::Arc;
use std::time::Duration;

use mesh::proto::shop::orders::v1::OrderEvent;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::book::OrderBook;

/// Longest a watch lasts. A saga takes seconds; a watch still open after
/// this is following a stuck order or was forgotten by its client, and
/// either way should not hold a task forever.
pub const MAX_WATCH: Duration = Duration::from_secs(300);
/// Events buffered for a slow reader; an order has fewer events than this,
/// so a reader is never the saga's problem.
const BUFFER: usize = 8;

/// The stream type `WatchOrder` answers with.
pub type EventStream = ReceiverStream<Result<OrderEvent, Status>>;

/// Starts following `order_id`; NOT_FOUND if the book does not know it.
/// `permit` is held for as long as the watch lasts.
pub fn follow(
    book: Arc<OrderBook>,
    order_id: String,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> Result<EventStream, Status> {
    // Subscribe before the first read, so no event slips between them.
    let changes = book
        .subscribe(&order_id)
        .ok_or_else(|| Status::not_found(format!("order {order_id} not found")))?;
    let (events, stream) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            () = send_events(&book, &order_id, changes, &events) => {}
            () = shutdown.cancelled() => {
                let _ = events.try_send(Err(Status::unavailable(
                    "server shutting down; watch the order again",
                )));
            }
            () = tokio::time::sleep(MAX_WATCH) => {
                let _ = events.try_send(Err(Status::deadline_exceeded(format!(
                    "watch ended after {} s without a final status; watch the order again",
                    MAX_WATCH.as_secs()
                ))));
            }
        }
        tracing::debug!(%order_id, "watch ended");
    });
    Ok(ReceiverStream::new(stream))
}

/// Sends the order's events until one is final, the order is forgotten, or
/// the client goes away.
async fn send_events(
    book: &OrderBook,
    order_id: &str,
    mut changes: watch::Receiver<usize>,
    events: &mpsc::Sender<Result<OrderEvent, Status>>,
) {
    let mut sent = 0;
    loop {
        let Some((new, last)) = book.events_since(order_id, sent) else {
            return;
        };
        for event in new {
            if events.send(Ok(event)).await.is_err() {
                return;
            }
            sent += 1;
        }
        if last {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = events.closed() => return,
        }
    }
}
