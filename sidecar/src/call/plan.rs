//! The plan of one routed call, made once when it arrives: its deadline
//! (the caller's `grpc-timeout` or the route's timeout, whichever is
//! sooner, and whose it is), each attempt's budget, and what fault
//! injection does to it. Pure: the clock reading and the random draws are
//! passed in, so every rule is testable without time or chance.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::call::error::ProxyError;
use crate::policy::RoutePolicy;

/// What fault injection does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long before anything else.
    pub delay: Option<Duration>,
    /// Then answer with this gRPC code instead of forwarding.
    pub abort: Option<i32>,
}

/// One call's deadline, per-try budget and fault.
#[derive(Debug, Clone)]
pub struct CallPlan {
    route: Arc<str>,
    /// The whole call's budget and whether it is the caller's.
    budget: Option<Duration>,
    callers: bool,
    /// When the call must be over.
    deadline: Option<Instant>,
    per_try: Option<Duration>,
    /// What fault injection decided.
    pub fault: FaultDecision,
}

impl CallPlan {
    /// Plans a call that arrived at `now` with the caller's `grpc-timeout`
    /// `caller`, under `policy`; `roll` draws uniform numbers in `0..1`
    /// (fault injection only draws when the route has faults).
    pub fn new(
        caller: Option<Duration>,
        policy: &RoutePolicy,
        now: Instant,
        mut roll: impl FnMut() -> f64,
    ) -> Self {
        // The caller's deadline and the route's: the smaller wins.
        let (budget, callers) = match (caller, policy.timeout) {
            (Some(c), Some(r)) if c <= r => (Some(c), true),
            (Some(_), Some(r)) => (Some(r), false),
            (Some(c), None) => (Some(c), true),
            (None, r) => (r, false),
        };
        let fault = match &policy.fault {
            Some(f) => FaultDecision {
                delay: (f.delay_ratio > 0.0 && roll() < f.delay_ratio).then_some(f.delay),
                abort: (f.abort_ratio > 0.0 && roll() < f.abort_ratio).then_some(f.abort_code),
            },
            None => FaultDecision::default(),
        };
        Self {
            route: policy.name.clone(),
            budget,
            callers,
            deadline: budget.map(|b| now + b),
            per_try: policy.retry.as_ref().and_then(|r| r.per_try_timeout),
            fault,
        }
    }

    /// When the call must be over, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The error of a call whose deadline passed.
    pub fn expired(&self) -> ProxyError {
        ProxyError::deadline_exceeded(&self.route, self.budget.unwrap_or_default(), self.callers)
    }

    /// True once the deadline has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Time left at `now` (`None`: no deadline); an error once it is gone.
    pub fn time_left(&self, now: Instant) -> Result<Option<Duration>, ProxyError> {
        match self.deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(now) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(self.expired()),
            },
        }
    }

    /// The budget of an attempt starting at `now`: the time left, cut to
    /// the route's per-try timeout. Sent upstream as its `grpc-timeout`.
    pub fn try_budget(&self, now: Instant) -> Result<Option<Duration>, ProxyError> {
        Ok(match (self.time_left(now)?, self.per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// What the fault delay does at `now`: `Ok(d)` to wait `d` and go on,
    /// `Err(until)` when the delay outlasts the deadline (wait until it,
    /// then fail DEADLINE_EXCEEDED).
    pub fn fault_delay(&self, now: Instant) -> Option<Result<Duration, Instant>> {
        let delay = self.fault.delay?;
        Some(match self.deadline {
            Some(d) if now + delay >= d => Err(d),
            _ => Ok(delay),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Fault;

    fn policy(timeout: Option<u64>, fault: Option<Fault>) -> RoutePolicy {
        RoutePolicy {
            name: "orders".into(),
            service: "orders".into(),
            timeout: timeout.map(Duration::from_millis),
            retry: None,
            outlier: None,
            max_requests: None,
            max_pending_connects: None,
            fault,
        }
    }

    #[test]
    fn the_sooner_deadline_wins_and_says_whose_it_is() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // (caller's grpc-timeout, route timeout, budget, caller's?)
        let table = [
            (Some(100), Some(200), Some(100), true),
            (Some(300), Some(200), Some(200), false),
            (Some(100), None, Some(100), true),
            (None, Some(200), Some(200), false),
            (None, None, None, false),
        ];
        for (caller, route, budget, callers) in table {
            let plan = CallPlan::new(caller.map(ms), &policy(route, None), now, || 1.0);
            assert_eq!(
                plan.deadline(),
                budget.map(|b| now + ms(b)),
                "{caller:?} {route:?}"
            );
            assert_eq!(plan.try_budget(now).unwrap(), budget.map(ms));
            if budget.is_some() {
                let message = plan.expired().message();
                let whose = if callers { "caller" } else { "route" };
                assert!(message.contains(whose), "{message}");
                assert!(plan.time_left(now + ms(1000)).is_err());
                assert!(plan.is_expired(now + ms(1000)));
            }
        }
    }

    #[test]
    fn faults_draw_only_on_routes_with_faults_and_a_late_delay_ends_at_the_deadline() {
        let now = Instant::now();
        let fault = Fault {
            abort_ratio: 0.5,
            abort_code: 14,
            delay_ratio: 0.5,
            delay: Duration::from_millis(300),
        };
        let mut draws = 0;
        let plan = CallPlan::new(None, &policy(Some(200), None), now, || {
            draws += 1;
            0.0
        });
        assert_eq!((plan.fault, draws), (FaultDecision::default(), 0));
        let plan = CallPlan::new(None, &policy(Some(200), Some(fault.clone())), now, || 0.1);
        assert_eq!(plan.fault.abort, Some(14));
        assert_eq!(
            plan.fault_delay(now),
            Some(Err(now + Duration::from_millis(200)))
        );
        let plan = CallPlan::new(None, &policy(None, Some(fault)), now, || 0.9);
        assert_eq!(plan.fault, FaultDecision::default());
        assert_eq!(plan.fault_delay(now), None);
    }
}
