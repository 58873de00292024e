//! Mutual TLS over the write-combining stream: the inbound listener's
//! server side and an upstream connection's client side.
//!
//! `mesh::identity::transport::{accept, connect}` take a bare `TcpStream`;
//! here TLS runs over [`CoalescedIo`] instead, so the TLS records of what
//! h2 writes in one event-loop turn still leave in one system call (TLS
//! under the combiner would cost a `writev` per h2 flush again). The rules
//! are the library's: its configurations, its handshake timeout, its error
//! type and failure reasons.

use std::io;
use std::time::Duration;

use mesh::identity::transport::{HandshakeError, PeerIdentity, HANDSHAKE_TIMEOUT};
use mesh::identity::{MeshTls, SpiffeId};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::coalesced_io::CoalescedIo;

/// The server side of a handshake on an accepted connection: the client
/// must present a certificate chaining to the bundle; says who it is.
pub async fn accept(
    tls: &MeshTls,
    io: CoalescedIo,
) -> Result<(server::TlsStream<CoalescedIo>, PeerIdentity), HandshakeError> {
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))??;
    let peer = tls.peer_identity(stream.get_ref().1.peer_certificates())?;
    Ok((stream, PeerIdentity(peer)))
}

/// The client side of a handshake on a connected stream, failing unless
/// the server proves `peer` within `timeout`.
pub async fn connect(
    tls: &MeshTls,
    io: CoalescedIo,
    peer: SpiffeId,
    timeout: Duration,
) -> Result<client::TlsStream<CoalescedIo>, HandshakeError> {
    let config = tls
        .client_config(peer)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let connector = TlsConnector::from(config);
    let stream = tokio::time::timeout(
        timeout,
        connector.connect(mesh::identity::tls::handshake_name(), io),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(timeout))??;
    Ok(stream)
}

/// True when the handshake failed because the server proved another
/// identity than the one expected (not a transient failure: the endpoint
/// is someone else).
pub fn is_identity_mismatch(error: &HandshakeError) -> bool {
    error.reason() == "peer-identity-mismatch"
}
