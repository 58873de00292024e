//! The channel a service uses for every call to another service: to its own
//! sidecar's outbound listener, never to the other service directly.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The outbound address is not a usable URI.
#[derive(Debug, thiserror::Error)]
#[error("bad outbound address {uri:?}: {source}")]
pub struct OutboundError {
    uri: String,
    source: tonic::transport::Error,
}

/// A lazily connected channel to the sidecar at `uri`. Lazy, so a service
/// starts even while its sidecar is still coming up; tonic reconnects by
/// itself if the sidecar restarts.
pub fn outbound_channel(uri: &str) -> Result<Channel, OutboundError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|source| OutboundError {
        uri: uri.to_owned(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}
