//! Mutual TLS over the write-combining stream: the inbound listener's
//! server side and an upstream connection's client side.
//!
//! TLS runs over [`CoalescedIo`], so the TLS records of what h2 writes in
//! one event-loop turn still leave in one system call (TLS under the
//! combiner would cost a `writev` per h2 flush again). The handshakes are
//! the library's (`mesh::identity::transport`), on this stream type.
//!
//! In permissive mode the inbound listener first tells TLS from plaintext
//! HTTP/2 by the connection's first bytes ([`classify`], [`first_bytes`]):
//! both protocols have the client speak first, and their openings differ
//! from the first byte on.

use std::time::Duration;

use mesh::identity::transport::{HandshakeError, PeerIdentity, HANDSHAKE_TIMEOUT};
use mesh::identity::{MeshTls, SpiffeId};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use crate::coalesced_io::CoalescedIo;

/// The server side of a handshake on an accepted connection: the client
/// must present a certificate chaining to the bundle; says who it is.
pub async fn accept(
    tls: &MeshTls,
    io: CoalescedIo,
) -> Result<(server::TlsStream<CoalescedIo>, PeerIdentity), HandshakeError> {
    mesh::identity::transport::accept(tls, io).await
}

/// The client side of a handshake on a connected stream, failing unless
/// the server proves `peer` within `timeout`.
pub async fn connect(
    tls: &MeshTls,
    io: CoalescedIo,
    peer: SpiffeId,
    timeout: Duration,
) -> Result<client::TlsStream<CoalescedIo>, HandshakeError> {
    mesh::identity::transport::handshake(tls, io, peer, timeout).await
}

/// True when the handshake failed because the server proved another
/// identity than the one expected (not a transient failure: the endpoint
/// is someone else).
pub fn is_identity_mismatch(error: &HandshakeError) -> bool {
    error.is_identity_mismatch()
}

/// The client connection preface of HTTP/2 with prior knowledge, what a
/// plaintext gRPC client sends first (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The content type of a TLS handshake record, the first byte of every
/// ClientHello (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS handshake record.
    Tls,
    /// The whole HTTP/2 client preface: plaintext gRPC.
    Http2Preface,
    /// Neither (an HTTP/1 request, garbage): treated as a failed TLS
    /// handshake, as in strict mode.
    Other,
    /// Too few bytes to tell yet.
    NeedMore,
}

/// Classifies the bytes a client sent first. One byte tells TLS; plaintext
/// needs the whole 24-byte preface, so nothing that merely starts like it
/// is served as HTTP/2.
pub fn classify(first: &[u8]) -> FirstBytes {
    match first.first() {
        None => FirstBytes::NeedMore,
        Some(&TLS_HANDSHAKE_RECORD) => FirstBytes::Tls,
        Some(_) => {
            let seen = first.len().min(HTTP2_PREFACE.len());
            if first[..seen] != HTTP2_PREFACE[..seen] {
                FirstBytes::Other
            } else if seen == HTTP2_PREFACE.len() {
                FirstBytes::Http2Preface
            } else {
                FirstBytes::NeedMore
            }
        }
    }
}

/// How long a client that sent part of the preface waits between peeks:
/// `peek` returns at once while bytes are queued, so waiting for more
/// must not spin.
const PEEK_RETRY: Duration = Duration::from_millis(5);

/// Peeks at `stream` (the bytes stay queued for whoever reads next) until
/// its first bytes are classified, for at most the handshake timeout. A
/// client that closes first is [`FirstBytes::Other`].
pub async fn first_bytes(stream: &TcpStream) -> Result<FirstBytes, HandshakeError> {
    let peek = async {
        let mut buf = [0u8; HTTP2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Ok(FirstBytes::Other);
            }
            match classify(&buf[..n]) {
                FirstBytes::NeedMore => tokio::time::sleep(PEEK_RETRY).await,
                decided => return Ok(decided),
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, peek)
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_tells_tls() {
        assert_eq!(classify(&[0x16]), FirstBytes::Tls);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), FirstBytes::Tls);
    }

    #[test]
    fn plaintext_needs_the_whole_preface() {
        assert_eq!(classify(b""), FirstBytes::NeedMore);
        for n in 1..HTTP2_PREFACE.len() {
            assert_eq!(classify(&HTTP2_PREFACE[..n]), FirstBytes::NeedMore, "{n}");
        }
        assert_eq!(classify(HTTP2_PREFACE), FirstBytes::Http2Preface);
        let mut with_settings = HTTP2_PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_settings), FirstBytes::Http2Preface);
    }

    #[test]
    fn anything_else_is_neither() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Other);
        assert_eq!(classify(b"PRI * HTTP/1.1"), FirstBytes::Other);
        assert_eq!(classify(&[0x15, 0x03, 0x03]), FirstBytes::Other);
        assert_eq!(classify(&[0]), FirstBytes::Other);
    }

    #[tokio::test]
    async fn peeking_leaves_the_bytes_for_the_reader() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // The preface in two segments: the classifier waits for the rest.
        client.write_all(&HTTP2_PREFACE[..10]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&HTTP2_PREFACE[10..]).await.unwrap();
            client
        });
        assert_eq!(
            first_bytes(&server).await.unwrap(),
            FirstBytes::Http2Preface
        );
        let mut read = [0u8; 24];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, HTTP2_PREFACE);
        drop(writer.await.unwrap());
        assert_eq!(first_bytes(&server).await.unwrap(), FirstBytes::Other);
    }
}
