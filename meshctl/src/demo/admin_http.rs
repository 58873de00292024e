//! Requests to the HTTP admin ports of proxies, the control plane and etcd
//! (`/ready`, `/config`, `/metrics`, `/drain`, etcd's `/health`), with
//! hyper-util's client. Async for meshctl; blocking wrappers for tests and
//! planners that poll from plain threads.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A whole request (connect, send, read the body) takes at most this: the
/// admin ports answer from memory, so longer means the process is stuck.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why an admin request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminHttpError {
    /// The method or path do not make a request.
    #[error("bad request {0}")]
    Request(String),
    /// Connecting or the exchange failed (refused, reset).
    #[error("{addr}: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The body broke off.
    #[error("{addr}: reading the body: {source}")]
    Body {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// No whole answer within the timeout.
    #[error("{addr}: no answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    /// The blocking wrapper could not run the request.
    #[error("running the request: {0}")]
    Runtime(#[from] std::io::Error),
}

/// One request with no body; the status and the body (lossy UTF-8).
pub async fn admin_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<(u16, String), AdminHttpError> {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| AdminHttpError::Request(e.to_string()))?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(TIMEOUT));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build::<_, Empty<Bytes>>(connector);
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|source| AdminHttpError::Exchange { addr, source })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| AdminHttpError::Body { addr, source })?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| AdminHttpError::Timeout { addr })?
}

/// [`admin_call`] with `GET`, blocking.
pub fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String), AdminHttpError> {
    admin_request(addr, http::Method::GET, path)
}

/// [`admin_call`], blocking: on a thread of its own with a one-thread
/// runtime, so it works from plain threads and from inside a runtime alike.
pub fn admin_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> Result<(u16, String), AdminHttpError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(admin_call(addr, method, path))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_an_exchange_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let error = admin_get(port, "/ready").expect_err("nothing listens");
        assert!(matches!(error, AdminHttpError::Exchange { .. }), "{error}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepted by the kernel's backlog, never answered.
        let error = admin_get(addr, "/ready").expect_err("no answer");
        assert!(matches!(error, AdminHttpError::Timeout { .. }), "{error}");
        drop(listener);
    }
}
