//! Resilience policies a route carries: retries, outlier detection (circuit
//! breaking), concurrency limits and fault injection. Durations are written
//! like `250ms` or `2s`; gRPC codes by name (`unavailable`,
//! `resource-exhausted`, ...).
//!
//! ```yaml
//! spec:
//!   retries:
//!     attempts: 3                 # in total, the first included
//!     perTryTimeout: 500ms
//!     retryOn: [unavailable]
//!     backoff: { base: 25ms, max: 250ms }
//!     budget: { ratio: 0.2, minPerSecond: 10 }
//!     bufferBytes: 65536
//!     bufferResponse: 64KiB       # optional: retry a status after DATA
//!   outlierDetection:
//!     consecutiveFailures: 5
//!     failureCodes: [unavailable]
//!     baseEjection: 5s
//!     maxEjection: 60s
//!     maxEjectionPercent: 50
//!   concurrency: { maxRequests: 1000, maxPendingConnects: 100 }
//!   fault:
//!     abort: { percent: 50, code: unavailable }
//!     delay: { percent: 10, duration: 100ms }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::route::parse_duration;
use super::validation::ValidationError;

/// gRPC status codes by their lowercase, dash-separated names.
pub const GRPC_CODES: [(&str, i32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

/// The numeric gRPC code of a name (`unavailable` = 14); `_` and upper
/// case are accepted as in `UNAVAILABLE` or `resource_exhausted`.
pub fn grpc_code(name: &str) -> Option<i32> {
    let normal = name.trim().to_ascii_lowercase().replace('_', "-");
    GRPC_CODES
        .iter()
        .find(|(n, _)| *n == normal)
        .map(|(_, c)| *c)
}

fn codes(names: &[String], field: &str) -> Result<Vec<i32>, ValidationError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            grpc_code(n).ok_or_else(|| {
                ValidationError::new(
                    format!("{field}[{i}]"),
                    format!("{n:?} is not a gRPC status code name (e.g. unavailable)"),
                )
            })
        })
        .collect()
}

fn duration(text: &str, field: &str) -> Result<Duration, ValidationError> {
    parse_duration(text).map_err(|reason| ValidationError::new(field, reason))
}

/// Retries of failed calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Time one attempt may take to answer; absent = the call's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// gRPC codes that are retried (besides connection failures).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Exponential backoff between attempts, with full jitter.
    #[serde(default)]
    pub backoff: Backoff,
    /// How many retries the route may add on top of its live traffic.
    #[serde(default)]
    pub budget: RetryBudget,
    /// Request bodies larger than this are forwarded but never retried.
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: u32,
    /// Buffers a whole unary response up to this size (`64KiB`, `1MiB` or
    /// plain bytes) so that a retryable `grpc-status` in trailers that come
    /// after DATA is retried too (only for methods that are safe to run
    /// twice). Larger responses stream through and are never retried.
    /// Absent: only a response whose first frame is its trailers is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_response: Option<String>,
}

/// Largest `retries.bufferResponse`: the proxy holds that much per call.
pub const MAX_BUFFER_RESPONSE: u64 = 16 << 20;

/// Parses a byte size: plain bytes (`65536`) or a number with a binary
/// unit `KiB`, `MiB` (`64KiB`).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("KiB") {
        (n, 1u64 << 10)
    } else if let Some(n) = text.strip_suffix("MiB") {
        (n, 1u64 << 20)
    } else {
        (text, 1)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size like 65536, 64KiB or 1MiB"))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<String> {
    vec!["unavailable".into()]
}
fn default_buffer_bytes() -> u32 {
    64 * 1024
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// The first wait's ceiling; doubles each retry.
    pub base: String,
    /// The largest ceiling.
    pub max: String,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: "25ms".into(),
            max: "250ms".into(),
        }
    }
}

/// Retries allowed: `ratio` of the route's recent requests, plus
/// `minPerSecond` so a quiet route can still retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a fraction of requests (0.2 = 20 %).
    pub ratio: f64,
    /// Retries always allowed per second.
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// Per-endpoint circuit breaking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// gRPC codes that count as failures (connection errors always do).
    #[serde(default = "default_retry_on")]
    pub failure_codes: Vec<String>,
    /// First ejection's length; doubles with each further ejection.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: String,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection: String,
    /// Never eject more than this share of a subset's endpoints.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> String {
    "5s".into()
}
fn default_max_ejection() -> String {
    "60s".into()
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Caps on a route's calls in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConcurrencyLimits {
    /// Calls in flight at once; more fail fast with UNAVAILABLE.
    pub max_requests: u32,
    /// Calls waiting for an upstream connection at once.
    #[serde(default = "default_pending")]
    pub max_pending_connects: u32,
}

fn default_pending() -> u32 {
    100
}

/// Chaos drills: fail or slow down a share of calls on purpose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjection {
    /// Answer a share of calls with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Hold a share of calls before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
}

/// Abort `percent` % of calls with `code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// 0 to 100.
    pub percent: f64,
    /// The gRPC code name to answer with.
    pub code: String,
}

/// Delay `percent` % of calls by `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// 0 to 100.
    pub percent: f64,
    /// How long.
    pub duration: String,
}

impl RetryPolicy {
    /// Checks every field; field paths are relative to `retries`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.attempts == 0 || self.attempts > 10 {
            return Err(ValidationError::new("attempts", "must be between 1 and 10"));
        }
        if let Some(t) = &self.per_try_timeout {
            duration(t, "perTryTimeout")?;
        }
        codes(&self.retry_on, "retryOn")?;
        let base = duration(&self.backoff.base, "backoff.base")?;
        let max = duration(&self.backoff.max, "backoff.max")?;
        if max < base {
            return Err(ValidationError::new(
                "backoff.max",
                "must not be below backoff.base",
            ));
        }
        if !(0.0..=1.0).contains(&self.budget.ratio) {
            return Err(ValidationError::new(
                "budget.ratio",
                "must be between 0 and 1",
            ));
        }
        if self.buffer_bytes > 16 << 20 {
            return Err(ValidationError::new(
                "bufferBytes",
                "must be at most 16 MiB",
            ));
        }
        if let Some(size) = &self.buffer_response {
            let bytes =
                parse_byte_size(size).map_err(|e| ValidationError::new("bufferResponse", e))?;
            if bytes == 0 || bytes > MAX_BUFFER_RESPONSE {
                return Err(ValidationError::new(
                    "bufferResponse",
                    "must be between 1 byte and 16MiB",
                ));
            }
        }
        Ok(())
    }
}

impl OutlierDetection {
    /// Checks every field; field paths are relative to `outlierDetection`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.consecutive_failures == 0 {
            return Err(ValidationError::new(
                "consecutiveFailures",
                "must be at least 1",
            ));
        }
        codes(&self.failure_codes, "failureCodes")?;
        let base = duration(&self.base_ejection, "baseEjection")?;
        let max = duration(&self.max_ejection, "maxEjection")?;
        if max < base {
            return Err(ValidationError::new(
                "maxEjection",
                "must not be below baseEjection",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(ValidationError::new(
                "maxEjectionPercent",
                "must be between 0 and 100",
            ));
        }
        Ok(())
    }
}

impl ConcurrencyLimits {
    /// Checks every field; field paths are relative to `concurrency`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max_requests == 0 {
            return Err(ValidationError::new("maxRequests", "must be at least 1"));
        }
        if self.max_pending_connects == 0 {
            return Err(ValidationError::new(
                "maxPendingConnects",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl FaultInjection {
    /// Checks every field; field paths are relative to `fault`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let percent = |p: f64, field: &str| {
            if (0.0..=100.0).contains(&p) {
                Ok(())
            } else {
                Err(ValidationError::new(field, "must be between 0 and 100"))
            }
        };
        if let Some(abort) = &self.abort {
            percent(abort.percent, "abort.percent")?;
            match grpc_code(&abort.code) {
                Some(_) => {}
                None => {
                    return Err(ValidationError::new(
                        "abort.code",
                        format!("{:?} is not a gRPC status code name", abort.code),
                    ))
                }
            }
        }
        if let Some(delay) = &self.delay {
            percent(delay.percent, "delay.percent")?;
            duration(&delay.duration, "delay.duration")?;
        }
        Ok(())
    }
}
