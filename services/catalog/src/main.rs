//! The shop's catalog service: products and their prices.
//!
//! # Layout
//!
//! - [`product`]: what makes a product valid (SKU, price, currency).
//! - [`seed`]: the products every instance starts with.
//! - [`store`]: the in-memory product table, in SKU order for paging.
//! - [`service`]: the gRPC edge (`shop.catalog.v1.CatalogService`).

mod product;
mod seed;
mod service;
mod store;

use clap::Parser;
use mesh::proto::shop::catalog::v1::catalog_service_server::CatalogServiceServer;

/// Command line of the catalog service.
#[derive(Debug, Parser)]
#[command(version, about = "The shop's catalog service")]
struct Args {
    #[command(flatten)]
    app: mesh::app::AppArgs,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mesh::telemetry::init(
        "catalog",
        args.app.log_format,
        args.app.otlp_endpoint.as_deref(),
    )?;
    let shutdown = mesh::shutdown::on_signal()?;

    let server = CatalogServiceServer::new(service::Catalog::new(store::ProductStore::seeded()));
    let served = mesh::app::serve(
        "catalog",
        &args.app,
        &[<CatalogServiceServer<service::Catalog> as tonic::server::NamedService>::NAME],
        tonic::service::Routes::new(server),
        shutdown,
    )
    .await;
    // Flush spans even when serving failed: they may say why.
    telemetry.shutdown().await;
    served?;
    Ok(())
}
