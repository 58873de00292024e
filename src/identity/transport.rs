//! Mutual TLS over TCP for mesh servers and clients.
//!
//! Servers: [`accept`] runs one handshake with a deadline and says who the
//! client proved to be; [`TlsIncoming`] does that for a tonic server, off
//! the accept loop (a slow handshake never holds up the next client), and
//! puts a [`PeerIdentity`] on every request. Clients: [`connect`] makes one
//! connection that fails unless the server proves the expected identity,
//! and [`channel`] makes a tonic channel out of it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::spiffe::SpiffeId;
use super::tls::MeshTls;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection: the SPIFFE ID its certificate
/// proves, or `None` for a client that presented none (allowed only where
/// client certificates are optional). Servers find it in each request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity(pub Option<SpiffeId>);

/// Why a connection did not become a mutually authenticated one.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// TCP or TLS failed (including a refused certificate).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer did not finish in time.
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    /// The peer's certificate is valid but names no identity of ours.
    #[error("peer certificate: {0}")]
    Identity(#[from] super::CertificateError),
}

impl HandshakeError {
    /// A short label for metrics (`mesh_tls_handshake_failures_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Identity(_) => "identity",
            Self::Io(_) if self.is_identity_mismatch() => "peer-identity-mismatch",
            Self::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                        | rustls::AlertDescription::CertificateRequired
                        | rustls::AlertDescription::UnknownCA
                        | rustls::AlertDescription::CertificateExpired,
                    ),
                ) => "certificate",
                Some(_) => "protocol",
                None if e.kind() == io::ErrorKind::InvalidData => "protocol",
                None => "io",
            },
        }
    }

    /// True when the server proved another identity than the one expected.
    pub fn is_identity_mismatch(&self) -> bool {
        let Self::Io(e) = self else {
            return false;
        };
        matches!(
            e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)))
                if other.0.downcast_ref::<super::tls::PeerIdentityMismatch>().is_some()
        )
    }
}

/// Runs the server side of a handshake on `tcp`.
pub async fn accept<IO>(
    tls: &MeshTls,
    io: IO,
) -> Result<(tokio_rustls::server::TlsStream<IO>, PeerIdentity), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))??;
    let peer = tls.peer_identity(stream.get_ref().1.peer_certificates())?;
    Ok((stream, PeerIdentity(peer)))
}

/// Connects to `addr` and runs the client side of a handshake that fails
/// unless the server proves `peer`.
pub async fn connect(
    tls: &MeshTls,
    addr: &str,
    peer: SpiffeId,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HandshakeError> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    handshake(tls, tcp, peer, HANDSHAKE_TIMEOUT).await
}

/// The client side of a handshake on a connected stream (a socket, or one
/// wrapped to combine writes), failing unless the server proves `peer`
/// within `timeout`.
pub async fn handshake<IO>(
    tls: &MeshTls,
    io: IO,
    peer: SpiffeId,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = tls
        .client_config(peer)
        .map_err(|e| io::Error::other(e.to_string()))?;
    tokio::time::timeout(
        timeout,
        TlsConnector::from(config).connect(super::tls::handshake_name(), io),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(timeout))?
    .map_err(HandshakeError::from)
}

/// A tonic channel to `uri` (`https://host:port`; `http://` means the same
/// here, since TLS is always on and the scheme only says where) that only
/// talks to a server proving `peer`.
pub async fn channel(
    uri: &str,
    tls: Arc<MeshTls>,
    peer: SpiffeId,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(uri.replacen("https://", "http://", 1))?
        .connect_timeout(connect_timeout)
        .connect_with_connector(Connector::new(tls, peer))
        .await
}

/// Connects tonic channels with [`connect`].
#[derive(Clone)]
pub struct Connector {
    tls: Arc<MeshTls>,
    peer: SpiffeId,
}

impl Connector {
    /// Connections that must reach `peer`.
    pub fn new(tls: Arc<MeshTls>, peer: SpiffeId) -> Self {
        Self { tls, peer }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, HandshakeError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let peer = self.peer.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::other(format!("{uri} has no host:port")))?
                .to_string();
            let stream = connect(&tls, &authority, peer).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// What a tonic server learns of each connection (see
/// `tonic::transport::server::Connected`).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// Who the client proved to be.
    pub peer: PeerIdentity,
    /// The organizations of the client's certificate subject: where an
    /// operator certificate says its role.
    pub organizations: Vec<String>,
}

/// A server-side TLS connection, for tonic.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Handshaken connections for `tonic::transport::Server::serve_with_incoming`.
pub type TlsIncoming = tokio_stream::wrappers::ReceiverStream<Result<TlsConnection, io::Error>>;

/// Accepts on `listener` until `stop`, handshakes each connection in its
/// own task, and yields those that succeed. Failed handshakes are logged
/// and passed to `on_failure` (a metric), never to tonic: one bad client
/// must not end the server.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<MeshTls>,
    stop: CancellationToken,
    on_failure: impl Fn(&HandshakeError) + Send + Sync + 'static,
) -> TlsIncoming {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let on_failure = Arc::new(on_failure);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let tx = tx.clone();
            let on_failure = on_failure.clone();
            tokio::spawn(async move {
                match accept(&tls, tcp).await {
                    Ok((stream, peer)) => {
                        let organizations = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| super::CertificateInfo::parse(leaf).ok())
                            .map(|info| info.organizations)
                            .unwrap_or_default();
                        let info = TlsConnectInfo {
                            remote: Some(remote),
                            peer,
                            organizations,
                        };
                        let _ = tx.send(Ok(TlsConnection { stream, info })).await;
                    }
                    Err(error) => {
                        tracing::info!(%remote, %error, "TLS handshake failed");
                        on_failure(&error);
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
