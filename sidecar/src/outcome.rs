//! What became of one attempt at one endpoint: held while the attempt is
//! in flight (counting it, holding its concurrency place), and told the
//! outcome once, which it feeds to the endpoint's breaker and, with the
//! time the attempt took, to the endpoint's round-trip estimate (the
//! peak-EWMA balancer's input).
//!
//! The round trip is measured from the guard's creation (the attempt is
//! sent) to its outcome (a status: response headers of a trailers-only
//! answer, or the trailers) or, failing that, its drop: for a unary call,
//! the call's latency at this hop. A long server stream counts as one slow
//! round trip, which peak-EWMA forgets within its decay time.

use std::sync::Arc;

use tokio::time::Instant;

use crate::concurrency::Permit;
use crate::outlier::OutlierPolicy;
use crate::upstream::Upstream;

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream answered with this gRPC status.
    Status(i32),
    /// The connection or stream broke.
    Reset(String),
}

/// Outlier detection for the subset an endpoint was picked from.
#[derive(Debug, Clone)]
pub struct OutlierScope {
    /// The route's policy.
    pub policy: Arc<OutlierPolicy>,
    /// The subset's endpoints, for the max-ejection-percent rule.
    pub peers: Arc<[Arc<Upstream>]>,
    /// Route name, for logs.
    pub route: Arc<str>,
    /// Counts the route's ejections.
    pub ejections: prometheus_client::metrics::counter::Counter,
}

/// One attempt in flight at `upstream`.
#[derive(Debug)]
pub struct CallGuard {
    upstream: Arc<Upstream>,
    outlier: Option<OutlierScope>,
    _permit: Option<Permit>,
    reported: bool,
    sent: Instant,
    /// Whether the round trip has been recorded.
    timed: bool,
}

impl CallGuard {
    /// Counts an attempt at `upstream` until dropped.
    pub fn new(
        upstream: Arc<Upstream>,
        outlier: Option<OutlierScope>,
        permit: Option<Permit>,
    ) -> Self {
        upstream.call_started();
        Self {
            upstream,
            outlier,
            _permit: permit,
            reported: false,
            sent: Instant::now(),
            timed: false,
        }
    }

    /// Feeds the time since the attempt was sent to the endpoint's
    /// round-trip estimate, once: an answer as a sample, a failure as a
    /// floor (an endpoint that fails fast must not look fast).
    fn time(&mut self, now: Instant, answered: bool) {
        if std::mem::replace(&mut self.timed, true) {
            return;
        }
        let elapsed = now.saturating_duration_since(self.sent);
        if answered {
            self.upstream.rtt().observe(elapsed, now);
        } else {
            self.upstream.rtt().observe_failure(elapsed, now);
        }
    }

    /// Records the outcome (the first one only).
    pub fn report(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let now = Instant::now();
        self.time(now, matches!(outcome, Outcome::Status(_)));
        let Some(scope) = &self.outlier else {
            return;
        };
        let breaker = self.upstream.breaker();
        let failure = match &outcome {
            Outcome::Status(code) if scope.policy.is_failure(*code) => {
                format!("grpc-status {code}")
            }
            Outcome::Status(_) => {
                if breaker.on_success(now, &scope.policy) {
                    tracing::info!(route = %scope.route, endpoint = self.upstream.addr(), "endpoint readmitted after a successful probe");
                }
                return;
            }
            Outcome::Reset(why) => why.clone(),
        };
        let ejected = scope
            .peers
            .iter()
            .filter(|p| p.breaker().is_ejected())
            .count();
        let may_eject = scope.policy.may_eject(ejected, scope.peers.len());
        if let Some(length) = breaker.on_failure(now, &failure, &scope.policy, may_eject) {
            scope.ejections.inc();
            tracing::info!(
                route = %scope.route,
                endpoint = self.upstream.addr(),
                reason = %failure,
                ejected_for = ?length,
                "endpoint ejected"
            );
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // Ended without a status (the client went away, or a connect
        // failed before anything was sent): still a round trip's worth.
        self.time(Instant::now(), true);
        self.upstream.call_ended();
    }
}
