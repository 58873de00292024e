//! Whether a call goes on after an attempt: return the upstream's answer,
//! fail with the proxy's error, or retry after a wait. A pure function of
//! what happened and the route's rules: no clock (the time is passed in),
//! no randomness (the jitter is passed in), and the retry budget is asked
//! last, only when everything else says retry, so a call that would not be
//! retried anyway never spends it.

use std::time::Duration;

use tokio::time::Instant;

use crate::call::error::ProxyError;
use crate::call::plan::CallPlan;
use crate::policy::RetryConfig;

/// What an attempt came to, before anything reached the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this gRPC status (trailers-only, or
    /// trailers held back before any of the response was sent on).
    Status(i32),
    /// No answer: the proxy's error for the attempt.
    Failed(ProxyError),
}

/// What the call does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the upstream's answer to the client.
    Return,
    /// Answer the client with this error.
    Fail(ProxyError),
    /// Try again after `wait`.
    Retry {
        /// Jittered backoff, never past the deadline.
        wait: Duration,
    },
}

/// A route's retry rules, as plain data.
#[derive(Debug, Clone, Copy)]
pub struct RetryRules<'a> {
    /// Attempts in total.
    pub attempts: u32,
    /// gRPC codes retried.
    pub retry_on: &'a [i32],
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_max: Duration,
}

impl<'a> From<&'a RetryConfig> for RetryRules<'a> {
    fn from(retry: &'a RetryConfig) -> Self {
        Self {
            attempts: retry.attempts,
            retry_on: &retry.retry_on,
            backoff_base: retry.backoff_base,
            backoff_max: retry.backoff_max,
        }
    }
}

impl RetryRules<'_> {
    /// The ceiling of the wait before retry number `retry` (1-based):
    /// doubling from the base, capped.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        mesh::backoff::exponential(self.backoff_base, self.backoff_max, retry)
    }
}

/// Everything besides the outcome that the verdict depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The route's retries; `None`: the route never retries.
    pub retry: Option<RetryRules<'a>>,
    /// The call's plan (its deadline).
    pub plan: &'a CallPlan,
    /// The attempt just made, 1-based.
    pub attempt: u32,
    /// Whether the request body could be sent again as it was.
    pub can_replay: bool,
    /// The time now.
    pub now: Instant,
    /// A uniform draw in `0..1` for full jitter.
    pub jitter: f64,
}

/// Decides what follows an attempt; `withdraw` takes one retry from the
/// route's budget and is called at most once, only for a retry.
pub fn judge(outcome: Outcome, inputs: &Inputs<'_>, withdraw: impl FnOnce() -> bool) -> Verdict {
    let give_up = |outcome: Outcome| match outcome {
        Outcome::Status(_) => Verdict::Return,
        Outcome::Failed(error) => Verdict::Fail(error),
    };
    let retryable = match &outcome {
        Outcome::Status(0) => return Verdict::Return,
        Outcome::Failed(_) if inputs.plan.is_expired(inputs.now) => {
            return Verdict::Fail(inputs.plan.expired())
        }
        Outcome::Status(code) => inputs.retry.is_some_and(|r| r.retry_on.contains(code)),
        // Never sent: always safe to try again. Sent and then lost (reset,
        // per-try timeout): retried when the route retries the code the
        // caller would see (UNAVAILABLE).
        Outcome::Failed(error) => {
            error.sent_nothing()
                || inputs
                    .retry
                    .is_some_and(|r| r.retry_on.contains(&(error.code() as i32)))
        }
    };
    let Some(retry) = inputs.retry else {
        return give_up(outcome);
    };
    if !retryable || inputs.attempt >= retry.attempts || !inputs.can_replay {
        return give_up(outcome);
    }
    let mut wait = mesh::backoff::jittered(retry.backoff_ceiling(inputs.attempt), inputs.jitter);
    if let Some(deadline) = inputs.plan.deadline() {
        let left = deadline.saturating_duration_since(inputs.now);
        if left.is_zero() {
            return give_up(outcome);
        }
        wait = wait.min(left);
    }
    if !withdraw() {
        return give_up(outcome);
    }
    Verdict::Retry { wait }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::policy::RoutePolicy;

    const UNAVAILABLE: i32 = 14;
    const RESOURCE_EXHAUSTED: i32 = 8;

    fn plan(timeout_ms: Option<u64>, now: Instant) -> CallPlan {
        let policy = RoutePolicy {
            name: "orders".into(),
            service: "orders".into(),
            timeout: timeout_ms.map(Duration::from_millis),
            retry: None,
            outlier: None,
            max_requests: None,
            max_pending_connects: None,
            fault: None,
        };
        CallPlan::new(None, &policy, now, || 1.0)
    }

    fn reset() -> ProxyError {
        ProxyError::upstream_reset("10.0.0.1:7000", "stream reset")
    }

    fn refused() -> ProxyError {
        ProxyError::connect_failed("10.0.0.1:7000", "connection refused")
    }

    /// The expected verdict, without its error's details.
    #[derive(Debug, PartialEq)]
    enum Want {
        Return,
        Fail(&'static str),
        Retry(u64),
    }

    struct Case {
        name: &'static str,
        outcome: Outcome,
        retry_on: &'static [i32],
        attempt: u32,
        can_replay: bool,
        budget: bool,
        /// Milliseconds since the call came, under a 1 s route timeout.
        at_ms: u64,
        want: Want,
        /// Whether the budget must have been asked.
        spends: bool,
    }

    fn case(name: &'static str, outcome: Outcome, want: Want) -> Case {
        let spends = matches!(want, Want::Retry(_));
        Case {
            name,
            outcome,
            retry_on: &[UNAVAILABLE],
            attempt: 1,
            can_replay: true,
            budget: true,
            at_ms: 0,
            want,
            spends,
        }
    }

    #[test]
    fn verdicts() {
        let cases = [
            case(
                "trailers-only retryable code",
                Outcome::Status(UNAVAILABLE),
                Want::Retry(50),
            ),
            Case {
                budget: false,
                spends: true,
                ..case(
                    "retryable code, budget spent",
                    Outcome::Status(UNAVAILABLE),
                    Want::Return,
                )
            },
            case(
                "code not retried",
                Outcome::Status(RESOURCE_EXHAUSTED),
                Want::Return,
            ),
            case("ok", Outcome::Status(0), Want::Return),
            Case {
                retry_on: &[],
                ..case(
                    "connect failure: nothing sent, retried whatever retryOn says",
                    Outcome::Failed(refused()),
                    Want::Retry(50),
                )
            },
            Case {
                retry_on: &[],
                ..case(
                    "refused stream: nothing sent",
                    Outcome::Failed(ProxyError::upstream_refused("a:1", "goaway")),
                    Want::Retry(50),
                )
            },
            case(
                "sent then reset, route retries UNAVAILABLE",
                Outcome::Failed(reset()),
                Want::Retry(50),
            ),
            case(
                "per-try timeout, route retries UNAVAILABLE",
                Outcome::Failed(ProxyError::attempt_timeout("a:1", Duration::from_millis(5))),
                Want::Retry(50),
            ),
            Case {
                retry_on: &[],
                ..case(
                    "no stream slot: nothing sent",
                    Outcome::Failed(ProxyError::upstream_queue_full("a:1", 2, "full")),
                    Want::Retry(50),
                )
            },
            Case {
                retry_on: &[RESOURCE_EXHAUSTED],
                ..case(
                    "sent then reset, route does not retry UNAVAILABLE",
                    Outcome::Failed(reset()),
                    Want::Fail("upstream-reset"),
                )
            },
            Case {
                attempt: 3,
                ..case(
                    "last attempt, status",
                    Outcome::Status(UNAVAILABLE),
                    Want::Return,
                )
            },
            Case {
                attempt: 3,
                ..case(
                    "last attempt, failure",
                    Outcome::Failed(refused()),
                    Want::Fail("upstream-connect-failed"),
                )
            },
            Case {
                at_ms: 1000,
                ..case(
                    "deadline passed, failure",
                    Outcome::Failed(reset()),
                    Want::Fail("deadline-exceeded"),
                )
            },
            Case {
                at_ms: 1000,
                ..case(
                    "deadline passed, status: the upstream's answer",
                    Outcome::Status(UNAVAILABLE),
                    Want::Return,
                )
            },
            Case {
                at_ms: 990,
                ..case(
                    "backoff cut to the deadline",
                    Outcome::Status(UNAVAILABLE),
                    Want::Retry(10),
                )
            },
            Case {
                can_replay: false,
                ..case(
                    "body not replayable",
                    Outcome::Status(UNAVAILABLE),
                    Want::Return,
                )
            },
            Case {
                can_replay: false,
                ..case(
                    "body not replayable, failure",
                    Outcome::Failed(reset()),
                    Want::Fail("upstream-reset"),
                )
            },
            Case {
                attempt: 2,
                ..case(
                    "second retry backs off twice as long",
                    Outcome::Status(UNAVAILABLE),
                    Want::Retry(100),
                )
            },
        ];
        let rules = |retry_on| RetryRules {
            attempts: 3,
            retry_on,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let start = Instant::now();
        let plan = plan(Some(1000), start);
        for c in cases {
            let asked = Cell::new(false);
            let inputs = Inputs {
                retry: Some(rules(c.retry_on)),
                plan: &plan,
                attempt: c.attempt,
                can_replay: c.can_replay,
                now: start + Duration::from_millis(c.at_ms),
                jitter: 0.5,
            };
            let verdict = judge(c.outcome, &inputs, || {
                asked.set(true);
                c.budget
            });
            let got = match verdict {
                Verdict::Return => Want::Return,
                Verdict::Fail(e) => Want::Fail(e.reason()),
                Verdict::Retry { wait } => Want::Retry(wait.as_millis() as u64),
            };
            assert_eq!(got, c.want, "{}", c.name);
            assert_eq!(asked.get(), c.spends, "{}: budget asked", c.name);
        }
    }

    #[test]
    fn a_route_without_retries_never_retries_and_never_spends() {
        let now = Instant::now();
        let plan = plan(None, now);
        let inputs = Inputs {
            retry: None,
            plan: &plan,
            attempt: 1,
            can_replay: true,
            now,
            jitter: 0.5,
        };
        let never = || -> bool { panic!("budget asked") };
        assert_eq!(
            judge(Outcome::Status(UNAVAILABLE), &inputs, never),
            Verdict::Return
        );
        assert_eq!(
            judge(Outcome::Failed(refused()), &inputs, never),
            Verdict::Fail(refused())
        );
    }
}
