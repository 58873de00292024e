//! Local rate limits on a route: a total rate for all callers of the route
//! together and a rate for each caller, with overrides for named callers.
//! The destination's sidecars enforce them (GCRA, each sidecar for itself:
//! "local", like Linkerd's HTTPLocalRateLimitPolicy), so a route's total
//! rate is per instance of the destination.
//!
//! ```yaml
//! rateLimit:
//!   total: { requestsPerSecond: 500, burst: 100 }
//!   perCaller: { requestsPerSecond: 20, burst: 40 }
//!   overrides:
//!     - { service: orders, requestsPerSecond: 200 }     # a mesh caller
//!     - { subject: load-test, requestsPerSecond: 1000 } # a JWT subject
//! ```
//!
//! A caller is the service its certificate proves, or for calls through a
//! gateway, the subject of the verified token the gateway forwarded (calls
//! without one share the gateway's own bucket).

use serde::{Deserialize, Serialize};

use super::validation::{is_dns_label, ValidationError};

/// Highest rate a limit may state, per second.
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;

/// Most overrides one route may carry.
pub const MAX_OVERRIDES: usize = 1_000;

/// The limits of one route; at least one of `total` or `perCaller`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// All callers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Rate>,
    /// Each caller on its own.
    #[serde(default, rename = "perCaller", skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<Rate>,
    /// Callers with a rate of their own instead of `perCaller`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateOverride>,
}

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Calls per second, sustained.
    #[serde(rename = "requestsPerSecond")]
    pub requests_per_second: u32,
    /// Calls allowed at once after a quiet spell; absent: one second's
    /// worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// One caller's own rate: exactly one of `service` or `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// A mesh service calling from inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A token subject calling through a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Calls per second, sustained.
    #[serde(rename = "requestsPerSecond")]
    pub requests_per_second: u32,
    /// Calls allowed at once; absent: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    /// The burst, or one second's worth when not stated.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second).max(1)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate_rate(self.requests_per_second, self.burst)
    }
}

impl RateOverride {
    /// The override's rate.
    pub fn rate(&self) -> Rate {
        Rate {
            requests_per_second: self.requests_per_second,
            burst: self.burst,
        }
    }
}

impl RateLimit {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.total.is_none() && self.per_caller.is_none() && self.overrides.is_empty() {
            return Err(ValidationError::new(
                "total",
                "a rate limit needs `total`, `perCaller` or `overrides`",
            ));
        }
        if let Some(rate) = &self.total {
            rate.validate().map_err(|e| e.within("total"))?;
        }
        if let Some(rate) = &self.per_caller {
            rate.validate().map_err(|e| e.within("perCaller"))?;
        }
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(ValidationError::new(
                "overrides",
                format!("at most {MAX_OVERRIDES} overrides"),
            ));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            o.validate()
                .map_err(|e| e.within(&format!("overrides[{i}]")))?;
            let same = |p: &RateOverride| p.service == o.service && p.subject == o.subject;
            if self.overrides[..i].iter().any(same) {
                return Err(ValidationError::new(
                    format!("overrides[{i}]"),
                    "this caller already has an override",
                ));
            }
        }
        Ok(())
    }
}

impl RateOverride {
    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.service, &self.subject) {
            (Some(service), None) if !is_dns_label(service) => {
                return Err(ValidationError::new(
                    "service",
                    format!("{service:?} is not a mesh service name (DNS label)"),
                ))
            }
            (None, Some(subject)) if subject.is_empty() || subject.len() > 256 => {
                return Err(ValidationError::new(
                    "subject",
                    "a subject is 1 to 256 characters",
                ))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(ValidationError::new(
                    "service",
                    "exactly one of `service` or `subject` must be set",
                ))
            }
        }
        validate_rate(self.requests_per_second, self.burst)
    }
}

fn validate_rate(per_second: u32, burst: Option<u32>) -> Result<(), ValidationError> {
    if per_second == 0 || per_second > MAX_REQUESTS_PER_SECOND {
        return Err(ValidationError::new(
            "requestsPerSecond",
            format!("must be 1 to {MAX_REQUESTS_PER_SECOND}"),
        ));
    }
    if burst.is_some_and(|b| b == 0 || b > MAX_REQUESTS_PER_SECOND) {
        return Err(ValidationError::new(
            "burst",
            format!("must be 1 to {MAX_REQUESTS_PER_SECOND}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> RateLimit {
        serde_yaml_ng::from_str(yaml).expect("parses")
    }

    #[test]
    fn a_full_limit_is_valid_and_burst_defaults_to_a_second() {
        let limit = parse(
            "total: { requestsPerSecond: 500 }\nperCaller: { requestsPerSecond: 20, burst: 40 }\noverrides:\n  - { service: orders, requestsPerSecond: 200 }\n  - { subject: alice, requestsPerSecond: 5 }\n",
        );
        assert_eq!(limit.validate(), Ok(()));
        assert_eq!(limit.total.map(|r| r.burst()), Some(500));
        assert_eq!(limit.per_caller.map(|r| r.burst()), Some(40));
    }

    #[test]
    fn bad_limits_name_the_field() {
        let cases = [
            ("{}", "total"),
            ("total: { requestsPerSecond: 0 }", "total.requestsPerSecond"),
            (
                "perCaller: { requestsPerSecond: 5, burst: 0 }",
                "perCaller.burst",
            ),
            (
                "overrides: [{ requestsPerSecond: 5 }]",
                "overrides[0].service",
            ),
            (
                "overrides: [{ service: a, subject: b, requestsPerSecond: 5 }]",
                "overrides[0].service",
            ),
            (
                "overrides: [{ service: Orders, requestsPerSecond: 5 }]",
                "overrides[0].service",
            ),
            (
                "overrides: [{ service: a, requestsPerSecond: 5 }, { service: a, requestsPerSecond: 6 }]",
                "overrides[1]",
            ),
        ];
        for (yaml, field) in cases {
            let error = parse(yaml).validate().expect_err(yaml);
            assert_eq!(error.field, field, "{yaml}: {error}");
        }
    }
}
