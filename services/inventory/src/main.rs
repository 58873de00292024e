//! The shop's inventory service: stock per SKU and reservations against it.
//!
//! # Layout
//!
//! - [`seed`]: the stock every instance starts with (the catalog's SKUs).
//! - [`request`]: validation of incoming requests into domain values.
//! - [`store`]: the stock table and reservations; all-or-nothing reserve,
//!   idempotent reserve and release. No I/O.
//! - [`service`]: the gRPC edge (`shop.inventory.v1.InventoryService`).

mod request;
mod seed;
mod service;
mod store;

use clap::Parser;
use mesh::proto::shop::inventory::v1::inventory_service_server::InventoryServiceServer;

/// Command line of the inventory service.
#[derive(Debug, Parser)]
#[command(version, about = "The shop's inventory service")]
struct Args {
    #[command(flatten)]
    app: mesh::app::AppArgs,
    /// Units of each seed SKU in stock at start-up.
    #[arg(long, env = "INVENTORY_SEED_STOCK", default_value_t = 100,
          value_parser = clap::value_parser!(i64).range(0..=store::MAX_STOCK))]
    seed_stock: i64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed_stock = args.seed_stock;
    mesh::app::run("inventory", &args.app, |shutdown| async move {
        let store = store::Inventory::new(seed::SKUS.iter().map(|sku| (*sku, seed_stock)));
        let server = InventoryServiceServer::new(service::InventoryApi::new(store, shutdown));
        Ok::<_, std::convert::Infallible>(mesh::app::App::new(
            &[<InventoryServiceServer<service::InventoryApi> as tonic::server::NamedService>::NAME],
            tonic::service::Routes::new(server),
        ))
    })
    .await?;
    Ok(())
}
