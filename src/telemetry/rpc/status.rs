//! A call's gRPC status as the span records it: `rpc.grpc.status_code`,
//! and the span's error status where the conventions call the code an
//! error (for a server, only the codes that mean the server failed).

use http::HeaderMap;
use opentelemetry::trace::Status;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Side;

/// `grpc-status` and the (percent-decoded) `grpc-message` in `headers`
/// (response headers of a trailers-only answer, or trailers); `None` when
/// there is no usable status.
pub fn grpc_status(headers: &HeaderMap) -> Option<(i64, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

/// Whether `code` makes the span an error. OpenTelemetry's RPC conventions:
/// a client span on any code but OK; a server span only on codes that say
/// the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS), not on the caller's mistakes.
pub fn is_error(side: Side, code: i64) -> bool {
    match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// Records a status on `span`.
pub fn record(span: &Span, side: Side, code: i64, message: &str) {
    span.set_attribute("rpc.grpc.status_code", code);
    if is_error(side, code) {
        let description = if message.is_empty() {
            format!("gRPC status {code}")
        } else {
            message.to_owned()
        };
        span.set_status(Status::error(description));
    }
}

/// Records a call that failed without a gRPC status (a transport error, a
/// reset stream).
pub fn record_failure(span: &Span, reason: &str) {
    span.set_status(Status::error(reason.to_owned()));
}

/// `grpc-message` is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses");
/// bytes that do not decode are kept as they are.
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn reads_code_and_decoded_message() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        headers.insert("grpc-message", HeaderValue::from_static("no%20stock%2"));
        assert_eq!(grpc_status(&headers), Some((14, "no stock%2".into())));
        headers.insert("grpc-status", HeaderValue::from_static("fourteen"));
        assert_eq!(grpc_status(&headers), None);
    }

    #[test]
    fn servers_err_only_on_their_own_failures() {
        assert!(!is_error(Side::Server, 0));
        assert!(
            !is_error(Side::Server, 9),
            "FAILED_PRECONDITION is the caller's"
        );
        assert!(is_error(Side::Server, 14));
        assert!(is_error(Side::Client, 9));
        assert!(!is_error(Side::Client, 0));
    }
}
