//! The services orders calls, all through the local sidecar on one channel
//! (the mesh routes each call by its `:path`), each call with a deadline and
//! a client span whose trace context goes with it.

use std::time::Duration;

use mesh::app::OutboundChannel;
use mesh::proto::shop::catalog::v1::{
    catalog_service_client::CatalogServiceClient, GetProductRequest, Product,
};
use mesh::proto::shop::inventory::v1::{
    inventory_service_client::InventoryServiceClient, ReleaseRequest, ReleaseResponse, Reservation,
    ReservationLine, ReserveRequest,
};
use mesh::proto::shop::payments::v1::{
    payments_service_client::PaymentsServiceClient, ChargeRequest, Payment, RefundRequest,
};
use tonic::{Request, Status};

/// Clients of catalog, inventory and payments. Cheap to clone: every clone
/// shares the one channel to the sidecar.
#[derive(Debug, Clone)]
pub struct Downstream {
    catalog: CatalogServiceClient<OutboundChannel>,
    inventory: InventoryServiceClient<OutboundChannel>,
    payments: PaymentsServiceClient<OutboundChannel>,
    timeout: Duration,
}

impl Downstream {
    /// Clients on `channel` (the sidecar), each call limited to `timeout`.
    pub fn new(channel: OutboundChannel, timeout: Duration) -> Self {
        Self {
            catalog: CatalogServiceClient::new(channel.clone()),
            inventory: InventoryServiceClient::new(channel.clone()),
            payments: PaymentsServiceClient::new(channel),
            timeout,
        }
    }

    /// A request carrying the call timeout, sent as `grpc-timeout` so the
    /// sidecar and the callee know the deadline too (gRPC over HTTP/2,
    /// "Timeout"), not just our client.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// `CatalogService.GetProduct`.
    pub async fn get_product(&self, sku: &str) -> Result<Product, Status> {
        let request = self.request(GetProductRequest {
            sku: sku.to_owned(),
        });
        Ok(self
            .catalog
            .clone()
            .get_product(request)
            .await?
            .into_inner())
    }

    /// `InventoryService.Reserve`.
    pub async fn reserve(
        &self,
        request_id: &str,
        lines: Vec<ReservationLine>,
    ) -> Result<Reservation, Status> {
        let request = self.request(ReserveRequest {
            request_id: request_id.to_owned(),
            lines,
        });
        Ok(self.inventory.clone().reserve(request).await?.into_inner())
    }

    /// `InventoryService.Release`.
    pub async fn release(&self, reservation_id: &str) -> Result<ReleaseResponse, Status> {
        let request = self.request(ReleaseRequest {
            reservation_id: reservation_id.to_owned(),
        });
        Ok(self.inventory.clone().release(request).await?.into_inner())
    }

    /// `PaymentsService.Charge`.
    pub async fn charge(&self, charge: ChargeRequest) -> Result<Payment, Status> {
        let request = self.request(charge);
        Ok(self.payments.clone().charge(request).await?.into_inner())
    }

    /// `PaymentsService.Refund`.
    pub async fn refund(&self, refund: RefundRequest) -> Result<Payment, Status> {
        let request = self.request(refund);
        Ok(self.payments.clone().refund(request).await?.into_inner())
    }
}
