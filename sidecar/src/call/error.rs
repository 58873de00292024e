//! Errors the proxy makes itself, answered as gRPC trailers-only responses
//! (gRPC over HTTP/2 spec, "Responses": `Trailers-Only`), never as an HTTP
//! error page: a gRPC client then sees a real status code and reason.
//!
//! Each kind of failure is a variant that knows its gRPC code, its
//! `x-mesh-error` reason (also the metrics label) and what it means for a
//! retry ([`ProxyError::sent_nothing`], [`ProxyError::endpoint_failure`]),
//! so the call path decides by type, never by comparing strings.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use http_body_util::Either;
use tonic::Code;

use crate::response_body::ResponseBody;

/// The body of every response the proxy sends: the upstream's, passed
/// through untouched, or one the proxy made (empty for trailers-only errors;
/// the gateway's own reflection answers).
pub type ProxyBody = Either<ResponseBody, tonic::body::Body>;

/// Header naming which proxy rule made an error, short and machine-readable
/// (e.g. `no-route`), beside the human `grpc-message`.
pub const ERROR_REASON_HEADER: &str = "x-mesh-error";

/// How long a rate-limited caller should wait before its next call, in
/// milliseconds (gRPC retry design A6).
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// A failure the proxy answers itself. The `Display` form is the full
/// message for people (logs, spans, `grpc-message` inside the mesh).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the call's gRPC path.
    #[error("no route for {path}")]
    NoRoute {
        /// The call's path.
        path: String,
    },
    /// The path is not `/package.Service/Method`.
    #[error("{path:?} is not a gRPC path (/package.Service/Method)")]
    MalformedPath {
        /// The call's path.
        path: String,
    },
    /// The route's destination has no endpoint to send to.
    #[error("no endpoints for service {service}{}", subset_suffix(subset.as_deref()))]
    NoEndpoints {
        /// The destination mesh service.
        service: String,
        /// The subset picked, if the route splits by subset.
        subset: Option<String>,
    },
    /// Connecting to the chosen endpoint failed (refused, timed out,
    /// backing off): nothing was sent.
    #[error("cannot connect to {addr}: {detail}")]
    ConnectFailed {
        /// The endpoint.
        addr: String,
        /// What the connect said.
        detail: String,
    },
    /// The endpoint proved another identity than its service's: nothing was
    /// sent to it (and its breaker counts the failure).
    #[error("{addr} is not who the table says: {detail}")]
    PeerIdentityMismatch {
        /// The endpoint.
        addr: String,
        /// What the handshake said.
        detail: String,
    },
    /// The upstream connection or stream broke before (or, mid-stream,
    /// after) response headers came.
    #[error("upstream {addr} reset the call: {detail}")]
    UpstreamReset {
        /// The endpoint.
        addr: String,
        /// What broke.
        detail: String,
        /// False when HTTP/2 gave the request back unsent (refused stream,
        /// GOAWAY before it was opened): the upstream never saw it.
        request_sent: bool,
    },
    /// The call's deadline passed before the upstream answered.
    #[error("route {route}: no response within {budget:?} ({})", whose_deadline(*callers))]
    DeadlineExceeded {
        /// The route.
        route: Arc<str>,
        /// The call's whole budget.
        budget: Duration,
        /// True when the caller's `grpc-timeout` was the tighter bound.
        callers: bool,
    },
    /// One attempt's per-try timeout passed.
    #[error("{addr} did not answer within the per-try timeout of {timeout:?}")]
    AttemptTimeout {
        /// The endpoint.
        addr: String,
        /// The attempt's budget.
        timeout: Duration,
    },
    /// The route's concurrency cap is full.
    #[error("route {route}: {max} calls already in flight (concurrency.maxRequests)")]
    ConcurrencyLimit {
        /// The route.
        route: Arc<str>,
        /// The cap.
        max: usize,
    },
    /// Too many calls wait for a connection.
    #[error(
        "route {route}: {max} calls already wait for a connection (concurrency.maxPendingConnects)"
    )]
    PendingConnectLimit {
        /// The route.
        route: Arc<str>,
        /// The cap.
        max: usize,
    },
    /// Every stream slot of the endpoint's connection is taken and too many
    /// calls wait already, or the wait outlasted the call's time: the
    /// bound that keeps HTTP/2's own (unbounded) pending-open queue unused.
    #[error("{addr}: all {max_streams} streams busy; {detail}")]
    UpstreamQueueFull {
        /// The endpoint.
        addr: String,
        /// Its stream limit.
        max_streams: usize,
        /// Why the call stopped waiting.
        detail: String,
    },
    /// The callee's authorization policies do not let this caller call
    /// this method (the policy and rule that decided are in the proxy's
    /// logs and the call's span, not in the answer).
    #[error("{caller} may not call {method} on {service}")]
    Unauthorized {
        /// Who called (a SPIFFE ID, or `a plaintext caller`).
        caller: String,
        /// `package.Service/Method`.
        method: String,
        /// The mesh service called.
        service: Arc<str>,
    },
    /// A call from outside the mesh to a method no public route takes
    /// (internal, or not there at all: the answer is the same, so the
    /// outside learns nothing of what the mesh runs inside).
    #[error("unknown method {path}")]
    NotExposed {
        /// The call's path.
        path: String,
    },
    /// A call from outside the mesh with a bearer token that does not
    /// verify (the detail is for the logs; clients get a short reason).
    #[error("invalid credentials: {detail}")]
    Unauthenticated {
        /// Why the token was refused.
        detail: String,
    },
    /// The caller went over a rate limit of the route.
    #[error("route {route}: {scope} rate limit exceeded; retry in {retry_after:?}")]
    RateLimited {
        /// The route.
        route: Arc<str>,
        /// Which limit: `total` or `per-caller`.
        scope: &'static str,
        /// When the next call would pass.
        retry_after: Duration,
    },
    /// Fault injection aborted the call.
    #[error("route {route}: aborted by fault injection")]
    FaultAbort {
        /// The route.
        route: Arc<str>,
        /// The code the route's fault gives.
        code: i32,
    },
}

fn subset_suffix(subset: Option<&str>) -> String {
    subset.map(|s| format!(" subset {s}")).unwrap_or_default()
}

fn whose_deadline(callers: bool) -> &'static str {
    if callers {
        "the caller's grpc-timeout"
    } else {
        "the route's timeout"
    }
}

impl ProxyError {
    /// No route matches the call's gRPC path.
    pub fn no_route(path: &str) -> Self {
        Self::NoRoute {
            path: path.to_owned(),
        }
    }

    /// The path is not `/package.Service/Method`.
    pub fn malformed_path(path: &str) -> Self {
        Self::MalformedPath {
            path: path.to_owned(),
        }
    }

    /// The route's destination has no endpoint to send to.
    pub fn no_endpoints(service: &str, subset: Option<&str>) -> Self {
        Self::NoEndpoints {
            service: service.to_owned(),
            subset: subset.map(str::to_owned),
        }
    }

    /// Connecting to the chosen endpoint failed.
    pub fn connect_failed(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::ConnectFailed {
            addr: addr.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// The endpoint proved another identity than its service's.
    pub fn peer_identity_mismatch(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::PeerIdentityMismatch {
            addr: addr.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// The upstream stream broke after the request went out.
    pub fn upstream_reset(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::UpstreamReset {
            addr: addr.to_owned(),
            detail: detail.to_string(),
            request_sent: true,
        }
    }

    /// The upstream connection gave the request back unsent.
    pub fn upstream_refused(addr: &str, detail: impl std::fmt::Display) -> Self {
        Self::UpstreamReset {
            addr: addr.to_owned(),
            detail: detail.to_string(),
            request_sent: false,
        }
    }

    /// The call's deadline passed before the upstream answered.
    pub fn deadline_exceeded(route: &Arc<str>, budget: Duration, callers: bool) -> Self {
        Self::DeadlineExceeded {
            route: route.clone(),
            budget,
            callers,
        }
    }

    /// One attempt's per-try timeout passed.
    pub fn attempt_timeout(addr: &str, timeout: Duration) -> Self {
        Self::AttemptTimeout {
            addr: addr.to_owned(),
            timeout,
        }
    }

    /// The route's concurrency cap is full.
    pub fn concurrency_limit(route: &Arc<str>, max: usize) -> Self {
        Self::ConcurrencyLimit {
            route: route.clone(),
            max,
        }
    }

    /// Too many calls wait for a connection.
    pub fn pending_connect_limit(route: &Arc<str>, max: usize) -> Self {
        Self::PendingConnectLimit {
            route: route.clone(),
            max,
        }
    }

    /// No stream slot at the endpoint within the wait bound.
    pub fn upstream_queue_full(addr: &str, max_streams: usize, detail: impl Into<String>) -> Self {
        Self::UpstreamQueueFull {
            addr: addr.to_owned(),
            max_streams,
            detail: detail.into(),
        }
    }

    /// No public route takes `path` (at a gateway's ingress).
    pub fn not_exposed(path: &str) -> Self {
        Self::NotExposed {
            path: path.to_owned(),
        }
    }

    /// The call's bearer token does not verify.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::Unauthenticated {
            detail: detail.into(),
        }
    }

    /// Fault injection aborted the call.
    pub fn fault_abort(route: &Arc<str>, code: i32) -> Self {
        Self::FaultAbort {
            route: route.clone(),
            code,
        }
    }

    /// The gRPC status code the caller gets.
    pub fn code(&self) -> Code {
        match self {
            Self::NoRoute { .. } | Self::MalformedPath { .. } | Self::NotExposed { .. } => {
                Code::Unimplemented
            }
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Unauthorized { .. } => Code::PermissionDenied,
            Self::FaultAbort { code, .. } => Code::from_i32(*code),
            Self::NoEndpoints { .. }
            | Self::ConnectFailed { .. }
            | Self::PeerIdentityMismatch { .. }
            | Self::UpstreamReset { .. }
            | Self::AttemptTimeout { .. }
            | Self::ConcurrencyLimit { .. }
            | Self::PendingConnectLimit { .. }
            | Self::UpstreamQueueFull { .. } => Code::Unavailable,
        }
    }

    /// Which rule made the error: the `x-mesh-error` header and the
    /// metrics label (tests and dashboards rely on these strings).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no-route",
            Self::MalformedPath { .. } => "malformed-path",
            Self::NoEndpoints { .. } => "no-endpoints",
            Self::ConnectFailed { .. } => "upstream-connect-failed",
            Self::PeerIdentityMismatch { .. } => "peer-identity-mismatch",
            Self::UpstreamReset { .. } => "upstream-reset",
            Self::DeadlineExceeded { .. } => "deadline-exceeded",
            Self::AttemptTimeout { .. } => "per-try-timeout",
            Self::ConcurrencyLimit { .. } => "concurrency-limit",
            Self::PendingConnectLimit { .. } => "pending-connect-limit",
            Self::UpstreamQueueFull { .. } => "upstream-queue-full",
            Self::FaultAbort { .. } => "fault-injected",
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotExposed { .. } => "not-exposed",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::RateLimited { .. } => "rate-limited",
        }
    }

    /// What happened, for people (the full form, with addresses).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// True when the upstream cannot have seen the request: another
    /// attempt cannot run the method twice, whatever it does.
    pub fn sent_nothing(&self) -> bool {
        match self {
            Self::UpstreamReset { request_sent, .. } => !request_sent,
            // The request went out; the upstream may be working on it.
            Self::AttemptTimeout { .. } | Self::DeadlineExceeded { .. } => false,
            Self::NoRoute { .. }
            | Self::MalformedPath { .. }
            | Self::NoEndpoints { .. }
            | Self::ConnectFailed { .. }
            | Self::PeerIdentityMismatch { .. }
            | Self::ConcurrencyLimit { .. }
            | Self::PendingConnectLimit { .. }
            | Self::UpstreamQueueFull { .. }
            | Self::Unauthorized { .. }
            | Self::NotExposed { .. }
            | Self::Unauthenticated { .. }
            | Self::RateLimited { .. }
            | Self::FaultAbort { .. } => true,
        }
    }

    /// True when the endpoint itself failed (its breaker hears of it, and
    /// a connect failure moves the call to another endpoint); false for
    /// the proxy's own limits and decisions, which say nothing about it.
    pub fn endpoint_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailed { .. }
                | Self::PeerIdentityMismatch { .. }
                | Self::UpstreamReset { .. }
                | Self::AttemptTimeout { .. }
        )
    }

    /// True when the message names an endpoint's address, which clients
    /// outside the mesh must not learn.
    pub fn reveals_address(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailed { .. }
                | Self::PeerIdentityMismatch { .. }
                | Self::UpstreamReset { .. }
                | Self::AttemptTimeout { .. }
                | Self::UpstreamQueueFull { .. }
        )
    }

    /// The message a client gets: the full one inside the mesh; at the
    /// edge (`redact`), one without internal addresses (the full one is
    /// in the proxy's logs and the call's span).
    pub fn client_message(&self, redact: bool) -> String {
        if redact && self.reveals_address() {
            format!("upstream unavailable ({})", self.reason())
        } else if redact && matches!(self, Self::Unauthenticated { .. }) {
            // Which check failed helps an attacker more than a client.
            "invalid or missing bearer token".to_owned()
        } else {
            self.message()
        }
    }

    /// The trailers-only response: HTTP 200, `content-type:
    /// application/grpc`, `grpc-status` and `grpc-message` in the headers,
    /// an empty body that ends the stream; the message redacted for
    /// clients outside the mesh when `redact`.
    pub fn response(&self, redact: bool) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(tonic::body::Body::default()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.code() as i32));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.client_message(redact))) {
            headers.insert("grpc-message", message);
        }
        headers.insert(ERROR_REASON_HEADER, HeaderValue::from_static(self.reason()));
        if let Self::RateLimited { retry_after, .. } = self {
            // gRPC's retry design (A6): the client waits this long before
            // trying again. At least 1 ms: 0 would mean "now".
            let millis = retry_after.as_millis().clamp(1, u128::from(u32::MAX));
            headers.insert(RETRY_PUSHBACK_HEADER, HeaderValue::from(millis as u64));
        }
        if matches!(self, Self::Unauthenticated { .. }) {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// What a `grpc-message` carries percent-encoded (gRPC over HTTP/2:
/// every byte outside 0x20..=0x7E, and `%` itself; bytes of non-ASCII
/// characters always are).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message`.
pub fn percent_encode(message: &str) -> String {
    percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_only_response_carries_status_message_and_reason() {
        let response = ProxyError::no_route("/a.B/C").response(false);
        let h = response.headers();
        assert_eq!(h["grpc-status"], "12");
        assert_eq!(h["grpc-message"], "no route for /a.B/C");
        assert_eq!(h[ERROR_REASON_HEADER], "no-route");
        assert_eq!(h["content-type"], "application/grpc");
    }

    #[test]
    fn identity_mismatch_is_unavailable_with_its_reason() {
        let response = ProxyError::peer_identity_mismatch("10.0.0.1:15006", "x").response(false);
        let h = response.headers();
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h[ERROR_REASON_HEADER], "peer-identity-mismatch");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% ümlaut\n"), "50%25 %C3%BCmlaut%0A");
    }

    /// Every variant: its code, reason, and retry semantics, in one table.
    #[test]
    fn each_variant_knows_its_code_reason_and_retry_semantics() {
        let route: Arc<str> = "orders".into();
        let a = "10.0.0.1:7000";
        let ms = Duration::from_millis(5);
        // (error, code, reason, sent nothing, endpoint's failure)
        let table = [
            (
                ProxyError::no_route("/a.B/C"),
                Code::Unimplemented,
                "no-route",
                true,
                false,
            ),
            (
                ProxyError::malformed_path("/x"),
                Code::Unimplemented,
                "malformed-path",
                true,
                false,
            ),
            (
                ProxyError::no_endpoints("s", Some("v2")),
                Code::Unavailable,
                "no-endpoints",
                true,
                false,
            ),
            (
                ProxyError::connect_failed(a, "refused"),
                Code::Unavailable,
                "upstream-connect-failed",
                true,
                true,
            ),
            (
                ProxyError::peer_identity_mismatch(a, "x"),
                Code::Unavailable,
                "peer-identity-mismatch",
                true,
                true,
            ),
            (
                ProxyError::upstream_reset(a, "gone"),
                Code::Unavailable,
                "upstream-reset",
                false,
                true,
            ),
            (
                ProxyError::upstream_refused(a, "goaway"),
                Code::Unavailable,
                "upstream-reset",
                true,
                true,
            ),
            (
                ProxyError::deadline_exceeded(&route, ms, true),
                Code::DeadlineExceeded,
                "deadline-exceeded",
                false,
                false,
            ),
            (
                ProxyError::attempt_timeout(a, ms),
                Code::Unavailable,
                "per-try-timeout",
                false,
                true,
            ),
            (
                ProxyError::concurrency_limit(&route, 3),
                Code::Unavailable,
                "concurrency-limit",
                true,
                false,
            ),
            (
                ProxyError::pending_connect_limit(&route, 3),
                Code::Unavailable,
                "pending-connect-limit",
                true,
                false,
            ),
            (
                ProxyError::upstream_queue_full(a, 8, "8 calls wait"),
                Code::Unavailable,
                "upstream-queue-full",
                true,
                false,
            ),
            (
                ProxyError::fault_abort(&route, 8),
                Code::ResourceExhausted,
                "fault-injected",
                true,
                false,
            ),
        ];
        for (error, code, reason, sent_nothing, endpoint) in table {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
            assert_eq!(error.sent_nothing(), sent_nothing, "{error}");
            assert_eq!(error.endpoint_failure(), endpoint, "{error}");
            let response = error.response(false);
            assert_eq!(response.headers()[ERROR_REASON_HEADER], reason);
            assert_eq!(response.headers()["grpc-status"], (code as i32).to_string());
        }
    }

    #[test]
    fn messages_keep_their_wording() {
        let route: Arc<str> = "orders".into();
        assert_eq!(
            ProxyError::no_endpoints("inventory", Some("v2")).message(),
            "no endpoints for service inventory subset v2"
        );
        assert_eq!(
            ProxyError::deadline_exceeded(&route, Duration::from_millis(200), false).message(),
            "route orders: no response within 200ms (the route's timeout)"
        );
    }

    #[test]
    fn the_edge_gets_no_internal_address_and_the_mesh_gets_it_all() {
        let error = ProxyError::connect_failed("10.1.2.3:7000", "connection refused");
        let edge = error.response(true);
        let message = edge.headers()["grpc-message"].to_str().unwrap();
        assert_eq!(message, "upstream unavailable (upstream-connect-failed)");
        assert!(!message.contains("10.1.2.3"));
        assert_eq!(
            edge.headers()[ERROR_REASON_HEADER],
            "upstream-connect-failed"
        );
        let mesh = error.response(false);
        assert!(mesh.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("10.1.2.3:7000"));
        // Messages with nothing internal stay whole at the edge too.
        let no_route = ProxyError::no_route("/a.B/C").response(true);
        assert_eq!(no_route.headers()["grpc-message"], "no route for /a.B/C");
    }
}
