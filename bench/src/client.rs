//! gRPC calls made by hand over hyper's HTTP/2 client: the request body is
//! encoded once and shared; a response is checked by its length, its
//! `grpc-status` and who served it, never decoded. So the load generator
//! spends as little of the two cores as it can, the same for every
//! topology.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::proto::bench::v1::{EchoReply, EchoRequest, EchoStreamRequest};
use prost::Message;

/// The instance the benchmark counts replies of, to check the 3:1 split.
pub const PRIMARY_INSTANCE: &[u8] = b"echo-1";

/// Longest a call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/2 connection; cloned per concurrent stream.
pub type Connection = SendRequest<Full<Bytes>>;

/// Opens an HTTP/2 connection (prior knowledge, as gRPC does) to `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let tcp = tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A call to make again and again: its path, encoded body and the size of
/// a correct response body.
#[derive(Debug, Clone)]
pub struct Call {
    uri: http::Uri,
    body: Bytes,
    response_len: usize,
    grpc_timeout: Option<http::HeaderValue>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Call {
    /// `Echo` with a payload of `payload` bytes.
    pub fn unary(addr: SocketAddr, payload: usize) -> anyhow::Result<Self> {
        let payload = vec![b'x'; payload];
        let reply = EchoReply {
            payload: payload.clone(),
        };
        Self::new(
            addr,
            "Echo",
            &EchoRequest { payload }.encode_to_vec(),
            grpc_frame_len(reply.encoded_len()),
        )
    }

    /// `EchoStream`: `count` replies of `payload` bytes each.
    pub fn stream(addr: SocketAddr, payload: usize, count: u32) -> anyhow::Result<Self> {
        let payload = vec![b'x'; payload];
        let reply = EchoReply {
            payload: payload.clone(),
        };
        Self::new(
            addr,
            "EchoStream",
            &EchoStreamRequest { payload, count }.encode_to_vec(),
            grpc_frame_len(reply.encoded_len()) * count as usize,
        )
    }

    fn new(
        addr: SocketAddr,
        method: &str,
        message: &[u8],
        response_len: usize,
    ) -> anyhow::Result<Self> {
        let uri = format!("http://{addr}/{}/{method}", crate::echo::GRPC_SERVICE).parse()?;
        let mut body = Vec::with_capacity(grpc_frame_len(message.len()));
        // gRPC length-prefixed message: compressed flag, 4-byte big-endian length.
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        body.extend_from_slice(message);
        Ok(Self {
            uri,
            body: body.into(),
            response_len,
            grpc_timeout: None,
            headers: Vec::new(),
        })
    }

    /// Sends `grpc-timeout: <timeout>` (e.g. `10S`) with every call.
    pub fn with_grpc_timeout(mut self, timeout: &str) -> anyhow::Result<Self> {
        self.grpc_timeout = Some(timeout.parse()?);
        Ok(self)
    }

    /// Sends the header `name: value` with every call (e.g. a bearer
    /// token), so variants that differ only in the proxies' configuration
    /// send identical requests.
    pub fn with_header(mut self, name: &str, value: &str) -> anyhow::Result<Self> {
        self.headers.push((name.parse()?, value.parse()?));
        Ok(self)
    }

    /// Makes the call on `connection`; `Ok(true)` if the primary instance
    /// (`echo-1`) served it.
    pub async fn send(&self, connection: &mut Connection) -> Result<bool, CallError> {
        let mut request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(self.body.clone()))
            .map_err(|e| CallError::Request(e.to_string()))?;
        if let Some(timeout) = &self.grpc_timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", timeout.clone());
        }
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let response = connection.send_request(request).await?;
        if response.status() != http::StatusCode::OK {
            return Err(CallError::HttpStatus(response.status().as_u16()));
        }
        let primary = response
            .headers()
            .get("x-served-by")
            .is_some_and(|v| v.as_bytes() == PRIMARY_INSTANCE);
        if let Some(status) = response.headers().get("grpc-status") {
            // Trailers-only: the call failed before any message.
            return Err(CallError::GrpcStatus(
                String::from_utf8_lossy(status.as_bytes()).into_owned(),
            ));
        }
        let mut body = response.into_body();
        let mut received = 0;
        let mut status = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                received += data.len();
            } else if let Some(trailers) = frame.trailers_ref() {
                status = trailers.get("grpc-status").cloned();
            }
        }
        match status {
            Some(s) if s == "0" => {}
            Some(s) => {
                return Err(CallError::GrpcStatus(
                    String::from_utf8_lossy(s.as_bytes()).into_owned(),
                ))
            }
            None => return Err(CallError::NoStatus),
        }
        if received != self.response_len {
            return Err(CallError::Length {
                received,
                expected: self.response_len,
            });
        }
        Ok(primary)
    }
}

/// Bytes of one gRPC message frame of `message` bytes.
fn grpc_frame_len(message: usize) -> usize {
    5 + message
}

/// Why a call did not succeed.
#[derive(Debug)]
pub enum CallError {
    /// The request could not be built.
    Request(String),
    /// The connection or stream failed.
    Transport(hyper::Error),
    /// The response was not HTTP 200.
    HttpStatus(u16),
    /// `grpc-status` was not 0.
    GrpcStatus(String),
    /// The response ended without `grpc-status`.
    NoStatus,
    /// The response body had the wrong size.
    Length {
        /// Bytes received.
        received: usize,
        /// Bytes of a correct reply.
        expected: usize,
    },
    /// No answer within [`CALL_TIMEOUT`].
    Timeout,
}

impl From<hyper::Error> for CallError {
    fn from(error: hyper::Error) -> Self {
        Self::Transport(error)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Request(e) => write!(f, "bad request: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::HttpStatus(s) => write!(f, "HTTP status {s}"),
            Self::GrpcStatus(s) => write!(f, "grpc-status {s}"),
            Self::NoStatus => write!(f, "no grpc-status"),
            Self::Length { received, expected } => {
                write!(f, "response body of {received} bytes, expected {expected}")
            }
            Self::Timeout => write!(f, "no answer within {CALL_TIMEOUT:?}"),
        }
    }
}

/// [`Call::send`] bounded by [`CALL_TIMEOUT`].
pub async fn send_bounded(call: &Call, connection: &mut Connection) -> Result<bool, CallError> {
    tokio::time::timeout(CALL_TIMEOUT, call.send(connection))
        .await
        .unwrap_or(Err(CallError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_grpc_framed_and_responses_sized() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let call = Call::unary(addr, 16).expect("call");
        // tag, length, 16 bytes of payload, after the 5-byte prefix.
        assert_eq!(&call.body[..5], &[0, 0, 0, 0, 18]);
        assert_eq!(call.body.len(), 5 + 18);
        assert_eq!(call.response_len, 5 + 18);
        assert_eq!(call.uri.path(), "/bench.v1.EchoService/Echo");

        let stream = Call::stream(addr, 16, 10).expect("call");
        assert_eq!(stream.response_len, 10 * (5 + 18));
        assert_eq!(stream.uri.path(), "/bench.v1.EchoService/EchoStream");

        let empty = Call::unary(addr, 0).expect("call");
        assert_eq!(empty.response_len, 5);
    }
}
