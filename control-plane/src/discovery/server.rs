//! The Discovery service's gRPC edge, written by hand: the generated
//! server encodes each message into a buffer per stream, while pushes here
//! are built of resources encoded once per version ([`crate::catalog`]) and
//! sent as they are.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::HeaderValue;
use mesh::proto::mesh::v1::DiscoveryRequest;
use tonic::body::Body;
use tonic::codec::BufferSettings;
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tonic_prost::ProstDecoder;

use super::DiscoveryService;
use crate::store::Store;

const RESOURCES: &str = "/mesh.v1.Discovery/Resources";
/// The largest sidecar message accepted (a Hello carries its app's
/// descriptors); tonic's default.
const MAX_MESSAGE: usize = 4 << 20;
/// Sidecar messages are mostly ACKs of a few bytes: the read buffer starts
/// small (tonic's default is 8 KiB per stream) and grows for a large Hello.
const READ_BUFFER: usize = 1024;

/// `mesh.v1.Discovery` as a tower service, to add to a tonic server.
pub struct DiscoveryServer<S> {
    service: Arc<DiscoveryService<S>>,
}

impl<S> DiscoveryServer<S> {
    /// Serves `service`.
    pub fn new(service: DiscoveryService<S>) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl<S> Clone for DiscoveryServer<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
        }
    }
}

impl<S> NamedService for DiscoveryServer<S> {
    const NAME: &'static str = mesh::proto::mesh::v1::discovery_server::SERVICE_NAME;
}

impl<S: Store> tower_service::Service<http::Request<Body>> for DiscoveryServer<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            let response = match subscribe(&service, request).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            };
            Ok(response)
        })
    }
}

async fn subscribe<S: Store>(
    service: &DiscoveryService<S>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    if request.uri().path() != RESOURCES {
        return Err(Status::unimplemented(""));
    }
    // No compression is offered, so a compressed request cannot be read
    // (gRPC over HTTP/2: answer UNIMPLEMENTED).
    if let Some(encoding) = request.headers().get("grpc-encoding") {
        if encoding != "identity" {
            return Err(Status::unimplemented(format!(
                "grpc-encoding {encoding:?} is not supported"
            )));
        }
    }
    let peer = crate::access::connection(request.extensions()).and_then(|c| c.peer.0.clone());
    let decoder =
        ProstDecoder::<DiscoveryRequest>::new(BufferSettings::new(READ_BUFFER, 32 * 1024));
    let inbound = Streaming::new_request(decoder, request.into_body(), None, Some(MAX_MESSAGE));
    let pushes = service.subscribe(inbound, peer).await?;
    let mut response = http::Response::new(Body::new(pushes));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}
