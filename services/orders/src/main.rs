//! The shop's orders service: the front door, placing orders with a saga
//! over catalog, inventory and payments, all reached through the local
//! sidecar.
//!
//! # Layout
//!
//! - [`request`]: validation of `PlaceOrder` requests.
//! - [`book`]: the order book: orders, their events, idempotency by
//!   request id, and the `watch` channels that wake watchers.
//! - [`downstream`]: clients of the other services on the one sidecar
//!   channel, every call with a deadline.
//! - [`pricing`]: pricing an order from catalog products.
//! - [`saga`]: the saga itself (price, reserve, charge, confirm).
//! - [`undo`]: what a failed saga must undo, and the failure message.
//! - [`compensation`]: undoing it (refund, release) with retries.
//! - [`event_stream`]: the `WatchOrder` stream.
//! - [`service`]: the gRPC edge (`shop.orders.v1.OrdersService`).

mod book;
mod compensation;
mod customer;
mod downstream;
mod event_stream;
mod pricing;
mod request;
mod saga;
mod service;
mod undo;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh::proto::shop::orders::v1::orders_service_server::OrdersServiceServer;
use tokio_util::task::TaskTracker;

/// Command line of the orders service.
#[derive(Debug, Parser)]
#[command(version, about = "The shop's orders service")]
struct Args {
    #[command(flatten)]
    app: mesh::app::AppArgs,
    /// Deadline, in milliseconds, of every call to catalog, inventory and
    /// payments (sent as `grpc-timeout`, so the mesh enforces it too).
    #[arg(long, env = "ORDERS_CALL_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    call_timeout_ms: u64,
    /// Whose orders a call places and reads: `subject`, the customer the
    /// gateway verified from a bearer token (the body's `customer_id` must
    /// be empty or the same); or `request`, the body's `customer_id` as
    /// sent, for a shop without logins.
    #[arg(
        long,
        env = "ORDERS_CUSTOMER_FROM",
        value_enum,
        default_value = "subject"
    )]
    customer_from: customer::CustomerFrom,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let outbound = args.app.outbound.clone();
    let (call_timeout_ms, customer_from) = (args.call_timeout_ms, args.customer_from);
    let grace = Duration::from_secs(args.app.shutdown_grace_seconds);
    mesh::app::run("orders", &args.app, |shutdown| async move {
        let channel =
            mesh::app::outbound_channel(&outbound).context("outbound channel to the sidecar")?;
        let downstream =
            downstream::Downstream::new(channel, Duration::from_millis(call_timeout_ms));
        let sagas = TaskTracker::new();
        let server = OrdersServiceServer::new(service::Orders::new(
            downstream,
            sagas.clone(),
            shutdown,
            customer_from,
        ));
        Ok::<_, anyhow::Error>(
            mesh::app::App::new(
                &[<OrdersServiceServer<service::Orders> as tonic::server::NamedService>::NAME],
                tonic::service::Routes::new(server),
            )
            // Sagas outlive the calls that started them: let the running
            // ones confirm or compensate before the process ends.
            .finishing(async move {
                sagas.close();
                if tokio::time::timeout(grace, sagas.wait()).await.is_err() {
                    tracing::error!(
                        running = sagas.len(),
                        ?grace,
                        "sagas still running at exit: their orders may hold stock or money"
                    );
                }
            }),
        )
    })
    .await?;
    Ok(())
}
