//! The channel a service uses for every call to another service: to its own
//! sidecar's outbound listener, never to the other service directly. Every
//! call on it is traced ([`ClientSpanLayer`]): a client span whose context
//! goes out in `traceparent`, so the callee continues the caller's trace.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower_layer::Layer;

use crate::telemetry::{ClientSpan, ClientSpanLayer};

/// A channel to the sidecar whose calls carry trace context: what generated
/// clients are built on (`CatalogServiceClient<OutboundChannel>`).
pub type OutboundChannel = ClientSpan<Channel>;

/// The outbound address is not a usable URI.
#[derive(Debug, thiserror::Error)]
#[error("bad outbound address {uri:?}: {source}")]
pub struct OutboundError {
    uri: String,
    source: tonic::transport::Error,
}

/// A lazily connected, traced channel to the sidecar at `uri`. Lazy, so a
/// service starts even while its sidecar is still coming up; tonic
/// reconnects by itself if the sidecar restarts.
pub fn outbound_channel(uri: &str) -> Result<OutboundChannel, OutboundError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|source| OutboundError {
        uri: uri.to_owned(),
        source,
    })?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy();
    Ok(ClientSpanLayer.layer(channel))
}
