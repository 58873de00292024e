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
    mesh::app::run("catalog", &args.app, |_shutdown| async {
        let server =
            CatalogServiceServer::new(service::Catalog::new(store::ProductStore::seeded()));
        Ok::<_, std::convert::Infallible>(mesh::app::App::new(
            &[<CatalogServiceServer<service::Catalog> as tonic::server::NamedService>::NAME],
            tonic::service::Routes::new(server),
        ))
    })
    .await?;
    Ok(())
}
