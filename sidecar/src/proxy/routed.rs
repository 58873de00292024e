//! A routed call, attempt by attempt: the plan (`call::plan`), admission
//! (fault, concurrency cap), then per attempt an endpoint, a connection
//! (failing over to another endpoint when it cannot be had), a stream
//! slot, the request, and the answer, which commits the call or goes to
//! `call::judge`.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use mesh::telemetry::rpc::{status, Side};
use tokio::time::Instant;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::answer::{examine, read_ahead, Answer, Examined, Hold};
use super::{attempt_span, connect, copy_parts, propagate, rebuild, send, Attempt, Call, Proxy};
use crate::call::error::{ProxyBody, ProxyError};
use crate::call::judge::{self, RetryRules, Verdict};
use crate::call::plan::CallPlan;
use crate::concurrency::Permit;
use crate::deadline;
use crate::outcome::{CallGuard, Outcome, OutlierScope};
use crate::outlier::Admission;
use crate::policy::{RetryConfig, RoutePolicy};
use crate::replay_body::{OnBudgetExhausted, Replay, RequestBody};
use crate::table::{CompiledRoute, Pick};
use crate::upstream::Upstream;

/// Endpoints a call may move on to after connects that failed (nothing
/// sent): enough to step over a dead or impostor endpoint or two, bounded
/// so a call to a service whose endpoints all fail ends quickly.
const MAX_CONNECT_FAILOVERS: usize = 2;

impl Proxy {
    /// Forwards a call by its route, retrying as the judge says.
    pub(super) async fn forward_routed(
        &self,
        req: Request<Incoming>,
        call: &Call,
        route: &CompiledRoute,
        pick: impl Fn(&[Arc<Upstream>], bool) -> Result<Pick, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let policy = &route.policy;
        let caller = req
            .headers()
            .get(deadline::GRPC_TIMEOUT)
            .and_then(deadline::parse);
        let plan = CallPlan::new(caller, policy, Instant::now(), rand::random::<f64>);
        inject_fault(&plan, policy).await?;
        let mut permit = admit(policy)?;
        let mut request = self.call_request(req, policy.retry.as_ref());
        let attempts = policy.retry.as_ref().map_or(1, |r| r.attempts);
        let breakers = policy.outlier.is_some();
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        let (mut attempt, mut failovers) = (0, 0);
        // Bounded: each turn returns, or makes an attempt (at most
        // `attempts`), or fails over after a connect (at most
        // MAX_CONNECT_FAILOVERS).
        loop {
            attempt += 1;
            let last = attempt >= attempts;
            let started = Instant::now();
            let try_budget = plan.try_budget(started)?;
            let picked = pick(&tried, breakers)?;
            if let Some(trace) = call.debug.get() {
                trace.note(format!(
                    "attempt={attempt} endpoint={} subset={}",
                    picked.upstream.addr(),
                    picked.subset.as_deref().unwrap_or("*")
                ));
            }
            let target = Target::new(route, picked, &call.span, attempt);
            tried.push(target.upstream.clone());

            // Connect before the body is taken: a call whose connect fails
            // (refused, handshake, a peer proving another identity) has
            // sent nothing, so it moves to another endpoint whether or not
            // the route retries, and that move is not an attempt.
            let sender = match target.connect(policy).await {
                Ok(sender) => sender,
                Err(error) => {
                    let elsewhere = error.endpoint_failure()
                        && failovers < MAX_CONNECT_FAILOVERS
                        && pick(&tried, breakers).is_ok_and(|next| {
                            !tried.iter().any(|t| Arc::ptr_eq(t, &next.upstream))
                        });
                    if !elsewhere {
                        return Err(error);
                    }
                    tracing::debug!(route = %policy.name, endpoint = target.upstream.addr(), %error, "connect failed; trying another endpoint");
                    if let Some(trace) = call.debug.get() {
                        trace.note(format!(
                            "connect failed ({}): another endpoint",
                            error.reason()
                        ));
                    }
                    failovers += 1;
                    attempt -= 1;
                    continue;
                }
            };

            let examined = match Box::pin(target.upstream.stream_slot(try_budget)).await {
                Err(error) => Examined::Judge(judge::Outcome::Failed(error), None),
                Ok(slot) => {
                    let outgoing = request.next(last, &target.upstream, try_budget)?;
                    let sent = target.send(sender, outgoing, try_budget).await;
                    // Decided once the headers came: a unary request has
                    // been read whole by then.
                    let ahead = request.read_ahead(policy.retry.as_ref(), last);
                    match examine(&target.upstream, sent, ahead, slot) {
                        // Off the path of calls that cannot be retried, and
                        // boxed so their futures stay small.
                        Examined::ReadAhead(answer, max_bytes) => {
                            let until = try_budget.map(|b| started + b);
                            Box::pin(read_ahead(&target.upstream, answer, max_bytes, until)).await
                        }
                        examined => examined,
                    }
                }
            };
            let (outcome, answer) = match examined {
                Examined::Judge(outcome, answer) => (outcome, answer),
                Examined::Commit(answer) | Examined::ReadAhead(answer, _) => {
                    if let Some(trace) = call.debug.get() {
                        trace.note(format!("attempt={attempt} answered"));
                    }
                    let observer = self.observer(call, &policy.service, target.span);
                    return Ok(answer.respond(permit.take(), plan.deadline(), observer));
                }
            };
            target.record(&outcome, answer.as_ref());
            let inputs = judge::Inputs {
                retry: policy.retry.as_ref().map(RetryRules::from),
                plan: &plan,
                attempt,
                can_replay: request.can_replay(),
                now: Instant::now(),
                jitter: rand::random::<f64>(),
            };
            tracing::debug!(route = %policy.name, attempt, ?outcome, "attempt to judge");
            if let Some(trace) = call.debug.get() {
                trace.note(match &outcome {
                    judge::Outcome::Status(code) => format!("attempt={attempt} status={code}"),
                    judge::Outcome::Failed(error) => {
                        format!("attempt={attempt} failed={}", error.reason())
                    }
                });
            }
            let wait = match judge::judge(outcome, &inputs, || self.take_retry(policy)) {
                Verdict::Retry { wait } => wait,
                Verdict::Fail(error) => return Err(error),
                Verdict::Return => {
                    let Some(answer) = answer else {
                        // Only answers are returned; a failure never is.
                        return Err(ProxyError::upstream_reset(
                            target.upstream.addr(),
                            "no answer to return",
                        ));
                    };
                    let observer = self.observer(call, &policy.service, target.span);
                    return Ok(answer.respond(permit.take(), plan.deadline(), observer));
                }
            };
            drop((answer, target));
            tracing::debug!(route = %policy.name, attempt, ?wait, "retrying");
            if let Some(trace) = call.debug.get() {
                trace.note(format!("retry after {}ms", wait.as_millis()));
            }
            Box::pin(tokio::time::sleep(wait)).await;
        }
    }

    /// The call's request, its body kept for replay when the route retries.
    fn call_request(&self, req: Request<Incoming>, retry: Option<&RetryConfig>) -> CallRequest {
        let (parts, body) = req.into_parts();
        let (direct, replay) = match retry {
            Some(retry) => {
                retry.deposit();
                let metrics = self.inner.metrics.clone();
                let direction = self.inner.direction;
                let count: OnBudgetExhausted = Box::new(move || {
                    metrics.record_proxy_error(direction, "replay-budget-exhausted");
                });
                let budget = self.inner.replay_budget.clone();
                let replay = Replay::new(body, retry.buffer_bytes, budget, Some(count));
                (None, Some(replay))
            }
            None => (Some(body), None),
        };
        CallRequest {
            parts: Some(parts),
            direct,
            replay,
        }
    }
}

/// Fault injection as planned: a delay (never past the deadline), an abort.
async fn inject_fault(plan: &CallPlan, policy: &RoutePolicy) -> Result<(), ProxyError> {
    match plan.fault_delay(Instant::now()) {
        Some(Ok(delay)) => Box::pin(tokio::time::sleep(delay)).await,
        Some(Err(deadline)) => {
            Box::pin(tokio::time::sleep_until(deadline)).await;
            return Err(plan.expired());
        }
        None => {}
    }
    match plan.fault.abort {
        Some(code) => Err(ProxyError::fault_abort(&policy.name, code)),
        None => Ok(()),
    }
}

/// A place under the route's concurrency cap, if it has one.
fn admit(policy: &RoutePolicy) -> Result<Option<Permit>, ProxyError> {
    policy
        .max_requests
        .as_ref()
        .map(|limit| {
            limit
                .try_acquire()
                .ok_or_else(|| ProxyError::concurrency_limit(&policy.name, limit.max()))
        })
        .transpose()
}

/// What a call sends, attempt after attempt.
struct CallRequest {
    /// The head, taken by the last attempt (copied for the others).
    parts: Option<Parts>,
    /// The body on routes without retries (one attempt only).
    direct: Option<Incoming>,
    /// The body kept for replay on routes with retries.
    replay: Option<Replay>,
}

impl CallRequest {
    /// The request for the next attempt at `upstream`.
    fn next(
        &mut self,
        last: bool,
        upstream: &Upstream,
        timeout: Option<Duration>,
    ) -> Result<Request<RequestBody>, ProxyError> {
        let sent = || ProxyError::upstream_reset(upstream.addr(), "request already sent");
        let body = match &self.replay {
            Some(replay) => RequestBody::Replay(replay.body()),
            None => RequestBody::Direct(self.direct.take().ok_or_else(sent)?),
        };
        let parts = if last {
            self.parts.take()
        } else {
            self.parts.as_ref().map(copy_parts)
        };
        Ok(rebuild(parts.ok_or_else(sent)?, body, upstream, timeout))
    }

    /// True while the body could be sent again as it was.
    fn can_replay(&self) -> bool {
        self.replay.as_ref().is_some_and(Replay::can_replay)
    }

    /// How far to read an answer ahead: only when a retry could follow
    /// (not the last attempt, a body that can be replayed).
    fn read_ahead(&self, retry: Option<&RetryConfig>, last: bool) -> Option<Hold> {
        let (retry, replay) = (retry?, self.replay.as_ref()?);
        if last || !replay.can_replay() {
            return None;
        }
        Some(if replay.is_unary() {
            Hold::Unary(retry.buffer_response.unwrap_or(0))
        } else {
            Hold::Peek
        })
    }
}

/// The endpoint of one attempt, and what the attempt reports to.
struct Target {
    upstream: Arc<Upstream>,
    outlier: Option<OutlierScope>,
    span: Span,
}

impl Target {
    fn new(route: &CompiledRoute, picked: Pick, call_span: &Span, attempt: u32) -> Self {
        let policy = &route.policy;
        let outlier = policy.outlier.as_ref().map(|p| OutlierScope {
            policy: p.clone(),
            peers: picked.peers.clone(),
            route: policy.name.clone(),
            ejections: route.counters.ejections.clone(),
        });
        let span = attempt_span(
            call_span,
            attempt,
            &picked.upstream,
            picked.subset.as_deref(),
        );
        if picked.admission == Admission::Probe {
            tracing::info!(route = %policy.name, endpoint = picked.upstream.addr(), "probing an ejected endpoint");
        }
        Self {
            upstream: picked.upstream,
            outlier,
            span,
        }
    }

    /// The connection, waiting for it under the route's pending-connect
    /// cap; a failed connect is the endpoint's failure, told its breaker.
    async fn connect(&self, policy: &RoutePolicy) -> Result<SendRequest<RequestBody>, ProxyError> {
        if let Some(sender) = self.upstream.ready_now() {
            return Ok(sender);
        }
        let pending = policy
            .max_pending_connects
            .as_ref()
            .map(|limit| (&policy.name, limit));
        Box::pin(connect(&self.upstream, pending))
            .await
            .inspect_err(|error| {
                if error.endpoint_failure() {
                    CallGuard::new(self.upstream.clone(), self.outlier.clone(), None)
                        .report(Outcome::Reset(error.message()));
                }
                self.span.set_attribute("mesh.error", error.reason());
                status::record_failure(&self.span, &error.message());
            })
    }

    /// Sends `request`, in the attempt's span with its trace context. Not
    /// an `async fn`: a wrapper future would hold a second copy of the
    /// request in every call's future.
    fn send(
        &self,
        sender: SendRequest<RequestBody>,
        mut request: Request<RequestBody>,
        timeout: Option<Duration>,
    ) -> impl std::future::Future<Output = Attempt> + '_ {
        propagate(&self.span, request.headers_mut());
        send(
            &self.upstream,
            sender,
            request,
            timeout,
            self.outlier.clone(),
        )
        .instrument(self.span.clone())
    }

    /// Records a judged outcome on the attempt's span.
    fn record(&self, outcome: &judge::Outcome, answer: Option<&Answer>) {
        match outcome {
            judge::Outcome::Status(code) => {
                let message = answer.map(Answer::message).unwrap_or_default();
                status::record(&self.span, Side::Client, i64::from(*code), &message);
            }
            judge::Outcome::Failed(error) => {
                self.span.set_attribute("mesh.error", error.reason());
                status::record_failure(&self.span, &error.message());
            }
        }
    }
}
