//! The gRPC edge of the catalog: turns requests into store calls and store
//! answers into responses or `tonic::Status`.

use mesh::proto::shop::catalog::v1::{
    catalog_service_server::CatalogService, GetProductRequest, ListProductsRequest,
    ListProductsResponse, Product, UpsertProductsResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::product::{self, InvalidField};
use crate::store::{CatalogFull, ProductStore, MAX_PRODUCTS};

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page served; bigger requests are capped, as the API promises.
pub const MAX_PAGE_SIZE: usize = 500;
/// Most products one `UpsertProducts` stream may carry: the import is applied
/// atomically at the end, so it is buffered, and the buffer is bounded.
pub const MAX_UPSERT_STREAM: usize = 10_000;

/// `shop.catalog.v1.CatalogService` over a [`ProductStore`].
#[derive(Debug)]
pub struct Catalog {
    store: ProductStore,
}

impl Catalog {
    /// Serves `store`.
    pub fn new(store: ProductStore) -> Self {
        Self { store }
    }
}

fn invalid_argument(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The page size to serve for the requested one.
fn page_size(requested: i32) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Err(_) => Err(Status::invalid_argument(format!(
            "page_size: {requested} is negative"
        ))),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        // The token is the last SKU of the previous page: anything that could
        // not be a SKU was not made by us.
        let after = if request.page_token.is_empty() {
            None
        } else {
            product::validate_sku("page_token", &request.page_token).map_err(|_| {
                Status::invalid_argument("page_token: not a token from a previous ListProducts")
            })?;
            Some(request.page_token.as_str())
        };
        let page = self.store.page(after, size);
        tracing::debug!(size, after, returned = page.products.len(), "list products");
        Ok(Response::new(ListProductsResponse {
            products: page.products,
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }

    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let sku = request.into_inner().sku;
        product::validate_sku("sku", &sku).map_err(invalid_argument)?;
        tracing::debug!(%sku, "get product");
        self.store
            .get(&sku)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("product {sku} not found")))
    }

    async fn upsert_products(
        &self,
        request: Request<Streaming<Product>>,
    ) -> Result<Response<UpsertProductsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut products = Vec::new();
        while let Some(product) = stream.message().await? {
            if products.len() == MAX_UPSERT_STREAM {
                return Err(Status::invalid_argument(format!(
                    "more than {MAX_UPSERT_STREAM} products in one stream; split the import"
                )));
            }
            product::validate(&product).map_err(|e| {
                Status::invalid_argument(format!(
                    "product #{} ({:?}): {e}; nothing imported",
                    products.len() + 1,
                    product.sku
                ))
            })?;
            products.push(product);
        }
        let received = products.len();
        let counts = self.store.upsert_all(products).map_err(|CatalogFull| {
            Status::resource_exhausted(format!(
                "the catalog holds at most {MAX_PRODUCTS} products; nothing imported"
            ))
        })?;
        tracing::info!(
            received,
            created = counts.created,
            updated = counts.updated,
            "products imported"
        );
        // Both counts are at most MAX_UPSERT_STREAM, far below i32::MAX.
        Ok(Response::new(UpsertProductsResponse {
            created: i32::try_from(counts.created).unwrap_or(i32::MAX),
            updated: i32::try_from(counts.updated).unwrap_or(i32::MAX),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7).ok(), Some(7));
        assert_eq!(page_size(10_000).ok(), Some(MAX_PAGE_SIZE));
        assert_eq!(
            page_size(-1).map_err(|s| s.code()).err(),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
