//! What became of one attempt at one endpoint: held while the attempt is
//! in flight (counting it, holding its concurrency place), and told the
//! outcome once, which it feeds to the endpoint's breaker.

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
        }
    }

    /// Records the outcome (the first one only).
    pub fn report(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let Some(scope) = &self.outlier else {
            return;
        };
        let now = Instant::now();
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
        self.upstream.call_ended();
    }
}
