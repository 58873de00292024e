//! Errors the proxy makes itself, answered as gRPC trailers-only responses
//! (gRPC over HTTP/2 spec, "Responses": `Trailers-Only`), never as an HTTP
//! error page: a gRPC client then sees a real status code and reason.

use http::{HeaderValue, Response, StatusCode};
use http_body_util::Either;

use crate::response_body::ResponseBody;
use tonic::Code;

/// The body of every response the proxy sends: the upstream's, passed
/// through untouched, or one the proxy made (empty for trailers-only errors;
/// the gateway's own reflection answers).
pub type ProxyBody = Either<ResponseBody, tonic::body::Body>;

/// Header naming which proxy rule made an error, short and machine-readable
/// (e.g. `no-route`), beside the human `grpc-message`.
pub const ERROR_REASON_HEADER: &str = "x-mesh-error";

/// A failure the proxy answers itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ProxyError {
    /// The gRPC status code the caller gets.
    pub code: Code,
    /// Which rule made the error; also the metrics label.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl ProxyError {
    /// No route matches the call's gRPC path.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            "no-route",
            format!("no route for {path}"),
        )
    }

    /// The path is not `/package.Service/Method`.
    pub fn malformed_path(path: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            "malformed-path",
            format!("{path:?} is not a gRPC path (/package.Service/Method)"),
        )
    }

    /// The route's destination has no endpoint to send to.
    pub fn no_endpoints(service: &str, subset: Option<&str>) -> Self {
        let message = match subset {
            Some(subset) => format!("no endpoints for service {service} subset {subset}"),
            None => format!("no endpoints for service {service}"),
        };
        Self::new(Code::Unavailable, "no-endpoints", message)
    }

    /// Connecting to the chosen endpoint failed (refused, timed out, backing off).
    pub fn connect_failed(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            Code::Unavailable,
            "upstream-connect-failed",
            format!("cannot connect to {addr}: {detail}"),
        )
    }

    /// The endpoint proved another identity than its service's: nothing was
    /// sent to it (and its breaker counts the failure).
    pub fn peer_identity_mismatch(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            Code::Unavailable,
            "peer-identity-mismatch",
            format!("{addr} is not who the table says: {detail}"),
        )
    }

    /// The upstream connection or stream broke before response headers came.
    pub fn upstream_reset(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            Code::Unavailable,
            "upstream-reset",
            format!("upstream {addr} reset the call: {detail}"),
        )
    }

    /// The call's deadline passed before the upstream answered.
    pub fn deadline_exceeded(route: &str, budget: std::time::Duration, callers: bool) -> Self {
        let whose = if callers {
            "the caller's grpc-timeout"
        } else {
            "the route's timeout"
        };
        Self::new(
            Code::DeadlineExceeded,
            "deadline-exceeded",
            format!("route {route}: no response within {budget:?} ({whose})"),
        )
    }

    /// One attempt's per-try timeout passed.
    pub fn attempt_timeout(addr: &str, timeout: std::time::Duration) -> Self {
        Self::new(
            Code::Unavailable,
            "per-try-timeout",
            format!("{addr} did not answer within the per-try timeout of {timeout:?}"),
        )
    }

    /// The route's concurrency cap is full.
    pub fn concurrency_limit(route: &str, max: usize) -> Self {
        Self::new(
            Code::Unavailable,
            "concurrency-limit",
            format!("route {route}: {max} calls already in flight (concurrency.maxRequests)"),
        )
    }

    /// Too many calls wait for a connection.
    pub fn pending_connect_limit(route: &str, max: usize) -> Self {
        Self::new(
            Code::Unavailable,
            "pending-connect-limit",
            format!(
                "route {route}: {max} calls already wait for a connection (concurrency.maxPendingConnects)"
            ),
        )
    }

    /// Fault injection aborted the call.
    pub fn fault_abort(route: &str, code: i32) -> Self {
        Self::new(
            Code::from_i32(code),
            "fault-injected",
            format!("route {route}: aborted by fault injection"),
        )
    }

    fn new(code: Code, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
        }
    }

    /// The trailers-only response: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` and `grpc-message` in the headers, an empty body that
    /// ends the stream.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(tonic::body::Body::default()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.code as i32));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.message)) {
            headers.insert("grpc-message", message);
        }
        headers.insert(ERROR_REASON_HEADER, HeaderValue::from_static(self.reason));
        response
    }
}

/// Percent-encodes a `grpc-message` (spec: every byte outside 0x20..=0x7E,
/// and `%` itself).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_only_response_carries_status_message_and_reason() {
        let response = ProxyError::no_route("/a.B/C").into_response();
        let h = response.headers();
        assert_eq!(h["grpc-status"], "12");
        assert_eq!(h["grpc-message"], "no route for /a.B/C");
        assert_eq!(h[ERROR_REASON_HEADER], "no-route");
        assert_eq!(h["content-type"], "application/grpc");
    }

    #[test]
    fn identity_mismatch_is_unavailable_with_its_reason() {
        let response = ProxyError::peer_identity_mismatch("10.0.0.1:15006", "x").into_response();
        let h = response.headers();
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h[ERROR_REASON_HEADER], "peer-identity-mismatch");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% ümlaut\n"), "50%25 %C3%BCmlaut%0A");
    }
}
