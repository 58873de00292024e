//! `x-mesh-debug: 1`: a call that asks, and may, gets a response header
//! `x-mesh-debug` from every proxy it crossed (one value per proxy, the
//! callee's first) saying what that proxy decided: its table version, the
//! route and rule, each attempt's endpoint, subset and outcome and why the
//! next one was made, the authentication and the authorization decision,
//! the rate limit.
//!
//! Who may ask: at a gateway, a caller whose verified token carries the
//! claims its `RequestAuthentication` names in `debugClaims`; behind a
//! gateway, a call the gateway forwarded the header with (it forwards it
//! only for such a caller, and removes it from everyone else's); at a
//! sidecar's inbound port, an operator's certificate (meshctl's identity)
//! calling it directly. An app's own outbound calls, and other mesh
//! callers, cannot ask: the header would tell them the mesh's insides.

use std::sync::Mutex;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request header that asks, and the response header that answers.
pub const DEBUG_HEADER: &str = "x-mesh-debug";

/// The most notes one hop keeps (a call makes a handful).
const MAX_NOTES: usize = 32;

/// True when `headers` ask for the debug header.
pub fn requested(headers: &HeaderMap) -> bool {
    headers
        .get(DEBUG_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// What one proxy decided for one call, noted as it goes.
#[derive(Debug)]
pub struct DebugTrace {
    /// The proxy: `gateway`, or `<service> inbound`.
    proxy: String,
    notes: Mutex<Vec<String>>,
}

impl DebugTrace {
    /// A trace of what `proxy` decides.
    pub fn new(proxy: impl Into<String>) -> Self {
        Self {
            proxy: proxy.into(),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// Notes one decision (`key=value`, free text after it).
    pub fn note(&self, note: impl Into<String>) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < MAX_NOTES {
            notes.push(note.into());
        }
    }

    /// Adds this proxy's value to the response's `x-mesh-debug` (after
    /// those of the proxies behind it).
    pub fn answer(&self, response_headers: &mut HeaderMap) {
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let text = format!("{}: {}", self.proxy, notes.join("; "));
        // Header values are visible ASCII: anything else is replaced.
        let clean: String = text
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&clean) {
            response_headers.append(HeaderName::from_static(DEBUG_HEADER), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_proxy_appends_its_notes_and_only_one_or_true_asks() {
        let mut headers = HeaderMap::new();
        headers.insert(DEBUG_HEADER, HeaderValue::from_static("1"));
        assert!(requested(&headers));
        headers.insert(DEBUG_HEADER, HeaderValue::from_static("yes"));
        assert!(!requested(&headers));

        let inbound = DebugTrace::new("orders inbound");
        inbound.note("authz=allow policy=orders-callers rule=0");
        let gateway = DebugTrace::new("gateway");
        gateway.note("route=orders");
        gateway.note("attempt=1 endpoint=127.0.0.1:7001 status=0");
        let mut response = HeaderMap::new();
        inbound.answer(&mut response);
        gateway.answer(&mut response);
        let values: Vec<&str> = response
            .get_all(DEBUG_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            values,
            [
                "orders inbound: authz=allow policy=orders-callers rule=0",
                "gateway: route=orders; attempt=1 endpoint=127.0.0.1:7001 status=0"
            ]
        );
    }
}
