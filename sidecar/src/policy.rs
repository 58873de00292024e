//! A route's policies compiled for the request path: durations parsed,
//! codes resolved. Budgets and limits (state, not configuration) come from
//! the route state map, so they outlast table changes that leave them as
//! they were ([`crate::route_state`]).

use std::sync::Arc;
use std::time::Duration;

use mesh::model::{grpc_code, parse_duration, Route, ValidationError};
use tower::retry::budget::{Budget, TpsBudget};

use crate::concurrency::ConcurrencyLimit;
use crate::outlier::OutlierPolicy;
use crate::route_state::{Piece, StateBuilder};

/// How long a retry budget remembers requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Everything a route does to its calls beyond choosing an endpoint.
#[derive(Debug)]
pub struct RoutePolicy {
    /// The route's name: proxy errors say which rule made them.
    pub name: Arc<str>,
    /// The destination mesh service (metrics and span attribute).
    pub service: Arc<str>,
    /// Bound on the whole call.
    pub timeout: Option<Duration>,
    /// Retries, if any.
    pub retry: Option<RetryConfig>,
    /// Circuit breaking, if any.
    pub outlier: Option<Arc<OutlierPolicy>>,
    /// Cap on calls in flight.
    pub max_requests: Option<Arc<ConcurrencyLimit>>,
    /// Cap on calls waiting for a connection.
    pub max_pending_connects: Option<Arc<ConcurrencyLimit>>,
    /// Drills.
    pub fault: Option<Fault>,
}

/// Retries, compiled.
pub struct RetryConfig {
    /// Attempts in total.
    pub attempts: u32,
    /// Bound on one attempt until its response headers.
    pub per_try_timeout: Option<Duration>,
    /// gRPC codes retried.
    pub retry_on: Vec<i32>,
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_max: Duration,
    /// Retries allowed relative to traffic; shared with the route's
    /// earlier tables while its budget settings stay the same.
    pub budget: Arc<TpsBudget>,
    /// Largest request body kept for replay.
    pub buffer_bytes: usize,
    /// Largest unary response held back so a retryable status in its
    /// trailers after DATA is retried too (`retries.bufferResponse`).
    pub buffer_response: Option<usize>,
}

impl std::fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryConfig")
            .field("attempts", &self.attempts)
            .field("per_try_timeout", &self.per_try_timeout)
            .field("retry_on", &self.retry_on)
            .finish_non_exhaustive()
    }
}

impl RetryConfig {
    /// Counts a call toward the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// Fault injection, compiled.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Share of calls aborted, 0..=1.
    pub abort_ratio: f64,
    /// The code they get.
    pub abort_code: i32,
    /// Share of calls delayed, 0..=1.
    pub delay_ratio: f64,
    /// By how much.
    pub delay: Duration,
}

fn invalid(field: &str, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn duration(text: &str, field: &str) -> Result<Duration, ValidationError> {
    parse_duration(text).map_err(|reason| invalid(field, reason))
}

fn codes(names: &[String], field: &str) -> Result<Vec<i32>, ValidationError> {
    names
        .iter()
        .map(|n| grpc_code(n).ok_or_else(|| invalid(field, format!("{n:?} is not a gRPC code"))))
        .collect()
}

impl RoutePolicy {
    /// Compiles a validated route's policies with fresh state (tests; a
    /// table compiles with [`RoutePolicy::compile_in`]).
    #[cfg(test)]
    pub fn compile(route: &Route) -> Result<Self, ValidationError> {
        Self::compile_in(route, &mut StateBuilder::fresh())
    }

    /// Compiles a validated route's policies, taking its budgets, limits
    /// and outlier policy from `states` where their settings are unchanged.
    pub fn compile_in(
        route: &Route,
        states: &mut StateBuilder<'_>,
    ) -> Result<Self, ValidationError> {
        let spec = &route.spec;
        let name = route.metadata.name.as_str();
        let timeout = spec
            .timeout
            .as_deref()
            .map(|t| duration(t, "spec.timeout"))
            .transpose()?;
        let retry = match &spec.retries {
            Some(r) if r.attempts > 1 => Some(RetryConfig {
                attempts: r.attempts,
                per_try_timeout: r
                    .per_try_timeout
                    .as_deref()
                    .map(|t| duration(t, "spec.retries.perTryTimeout"))
                    .transpose()?,
                retry_on: codes(&r.retry_on, "spec.retries.retryOn")?,
                backoff_base: duration(&r.backoff.base, "spec.retries.backoff.base")?,
                backoff_max: duration(&r.backoff.max, "spec.retries.backoff.max")?,
                budget: states.get(
                    name,
                    Piece::RetryBudget {
                        min_per_second: r.budget.min_per_second,
                        ratio_bits: r.budget.ratio.to_bits(),
                    },
                    || {
                        Arc::new(TpsBudget::new(
                            BUDGET_WINDOW,
                            r.budget.min_per_second,
                            r.budget.ratio as f32,
                        ))
                    },
                ),
                buffer_bytes: r.buffer_bytes as usize,
                buffer_response: r
                    .buffer_response
                    .as_deref()
                    .map(|size| {
                        mesh::model::parse_byte_size(size)
                            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
                            .map_err(|e| invalid("spec.retries.bufferResponse", e))
                    })
                    .transpose()?,
            }),
            _ => None,
        };
        let outlier = spec
            .outlier_detection
            .as_ref()
            .map(|o| -> Result<_, ValidationError> {
                let policy = OutlierPolicy {
                    consecutive_failures: o.consecutive_failures,
                    failure_codes: codes(&o.failure_codes, "spec.outlierDetection.failureCodes")?,
                    base_ejection: duration(
                        &o.base_ejection,
                        "spec.outlierDetection.baseEjection",
                    )?,
                    max_ejection: duration(&o.max_ejection, "spec.outlierDetection.maxEjection")?,
                    max_ejection_percent: o.max_ejection_percent,
                };
                Ok(states.get(name, Piece::Outlier(policy.clone()), || Arc::new(policy)))
            })
            .transpose()?;
        let fault = spec
            .fault
            .as_ref()
            .map(|f| -> Result<_, ValidationError> {
                let (abort_ratio, abort_code) = match &f.abort {
                    Some(a) => (
                        a.percent / 100.0,
                        grpc_code(&a.code)
                            .ok_or_else(|| invalid("spec.fault.abort.code", "not a gRPC code"))?,
                    ),
                    None => (0.0, 0),
                };
                let (delay_ratio, delay) = match &f.delay {
                    Some(d) => (
                        d.percent / 100.0,
                        duration(&d.duration, "spec.fault.delay.duration")?,
                    ),
                    None => (0.0, Duration::ZERO),
                };
                Ok(Fault {
                    abort_ratio,
                    abort_code,
                    delay_ratio,
                    delay,
                })
            })
            .transpose()?;
        Ok(Self {
            name: name.into(),
            service: route.spec.destination.as_str().into(),
            timeout,
            retry,
            outlier,
            max_requests: spec.concurrency.as_ref().map(|c| {
                let max = c.max_requests as usize;
                states.get(name, Piece::MaxRequests(max), || ConcurrencyLimit::new(max))
            }),
            max_pending_connects: spec.concurrency.as_ref().map(|c| {
                let max = c.max_pending_connects as usize;
                states.get(name, Piece::MaxPendingConnects(max), || {
                    ConcurrencyLimit::new(max)
                })
            }),
            fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_alone_a_policy_has_fresh_state() {
        let route: Route = serde_json::from_value(serde_json::json!({
            "kind": "Route",
            "metadata": { "name": "echo" },
            "spec": {
                "match": { "service": "bench.v1.EchoService" },
                "destination": "echo",
                "retries": { "attempts": 2 },
                "concurrency": { "maxRequests": 1 }
            }
        }))
        .expect("a route");
        let (a, b) = (RoutePolicy::compile(&route), RoutePolicy::compile(&route));
        let (a, b) = (a.expect("compiles"), b.expect("compiles"));
        let budget = |p: &RoutePolicy| p.retry.as_ref().map(|r| r.budget.clone());
        assert!(!Arc::ptr_eq(
            &budget(&a).expect("a budget"),
            &budget(&b).expect("a budget")
        ));
        let _held = a.max_requests.as_ref().and_then(|l| l.try_acquire());
        assert!(b
            .max_requests
            .as_ref()
            .and_then(|l| l.try_acquire())
            .is_some());
    }
}
