//! Subscriptions on first use: a call to a gRPC service this proxy has no
//! route for asks the control plane for its routes and waits (briefly) for
//! the answer, so an app that calls a service it did not declare still
//! works; later calls find the route, or the control plane's "not found",
//! without waiting. The subscription lasts as long as the proxy: the
//! service's routes and endpoints keep coming as they change, and a
//! service that did not exist yet arrives when it appears.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The most gRPC services one proxy subscribes to on demand (the control
/// plane's bound too): an app calling garbage paths cannot grow either.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// How long a first call waits for the control plane's answer before it
/// is refused as unrouted.
pub const FIRST_CALL_WAIT: Duration = Duration::from_secs(5);

/// The proxy's on-demand subscriptions, shared by the calls that make them
/// and the discovery stream that sends them.
#[derive(Debug)]
pub struct OnDemand {
    state: Mutex<State>,
    /// Woken when there are subscriptions to send.
    unsent: Notify,
    /// The highest Subscribe id the control plane answered (and whose
    /// answer is applied).
    answered: watch::Sender<u64>,
    /// Whether a discovery stream is open now.
    connected: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Every subscribed gRPC service, with the id of the Subscribe that
    /// asked for it.
    subscribed: BTreeMap<String, u64>,
    last_id: u64,
    /// Subscribed but not yet sent on the current stream.
    unsent: Vec<String>,
}

impl Default for OnDemand {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            unsent: Notify::new(),
            answered: watch::channel(0).0,
            connected: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl OnDemand {
    /// Subscribes to `grpc_service` unless it is already, and waits until
    /// the control plane has answered (and the answer is applied) or
    /// `wait` has passed. Returns at once when it was answered before.
    pub async fn resolve(&self, grpc_service: &str, mut wait: Duration) {
        // Nothing serves a path that names no service; a subscription to
        // it would only be ignored by the control plane.
        if !mesh::model::is_subscription_name(grpc_service) {
            return;
        }
        if !self.connected.load(std::sync::atomic::Ordering::Acquire) {
            // No control plane to ask now: the call is not held for
            // nothing; the subscription goes with the next stream's Hello.
            wait = Duration::ZERO;
        }
        let id = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.subscribed.get(grpc_service) {
                Some(id) => *id,
                None if state.subscribed.len() >= MAX_SUBSCRIPTIONS => {
                    tracing::warn!(
                        grpc_service,
                        "not subscribing: this proxy has {MAX_SUBSCRIPTIONS} subscriptions already"
                    );
                    return;
                }
                None => {
                    state.last_id += 1;
                    let id = state.last_id;
                    state.subscribed.insert(grpc_service.to_owned(), id);
                    state.unsent.push(grpc_service.to_owned());
                    self.unsent.notify_one();
                    tracing::info!(grpc_service, "subscribing on first use");
                    id
                }
            }
        };
        let mut answered = self.answered.subscribe();
        let _ = tokio::time::timeout(wait, answered.wait_for(|a| *a >= id)).await;
    }

    /// Whether a discovery stream is open (calls wait for answers only then).
    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(connected, std::sync::atomic::Ordering::Release);
    }

    /// Waits until there are subscriptions to send.
    pub async fn has_unsent(&self) {
        self.unsent.notified().await;
    }

    /// The subscriptions to send now, with the id of the Subscribe that
    /// carries them; `None` when there are none.
    pub fn take_unsent(&self) -> Option<(u64, Vec<String>)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.unsent.is_empty() {
            return None;
        }
        Some((state.last_id, std::mem::take(&mut state.unsent)))
    }

    /// Every subscription, for a new stream's Hello, with the id the first
    /// update answers: nothing is left unsent.
    pub fn all(&self) -> (Vec<String>, u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unsent.clear();
        (state.subscribed.keys().cloned().collect(), state.last_id)
    }

    /// The control plane answered Subscribes up to `id`, and the answer is
    /// applied: calls waiting for them go on.
    pub fn answered(&self, id: u64) {
        self.answered.send_if_modified(|answered| {
            let newer = id > *answered;
            *answered = (*answered).max(id);
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_first_call_waits_for_the_answer_later_calls_do_not() {
        let on_demand = std::sync::Arc::new(OnDemand::default());
        on_demand.set_connected(true);
        let waiting = tokio::spawn({
            let on_demand = on_demand.clone();
            async move {
                on_demand
                    .resolve("shop.payments.v1.Payments", FIRST_CALL_WAIT)
                    .await
            }
        });
        on_demand.has_unsent().await;
        let (id, services) = on_demand.take_unsent().expect("a subscription to send");
        assert_eq!(services, ["shop.payments.v1.Payments"]);
        assert!(on_demand.take_unsent().is_none(), "sent once");
        on_demand.answered(id);
        waiting.await.expect("resolved");
        // Answered before: no wait, nothing new to send.
        let start = tokio::time::Instant::now();
        on_demand
            .resolve("shop.payments.v1.Payments", FIRST_CALL_WAIT)
            .await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(on_demand.take_unsent().is_none());
        assert_eq!(
            on_demand.all(),
            (vec!["shop.payments.v1.Payments".to_owned()], id)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_subscription_gives_up_after_the_wait() {
        let on_demand = OnDemand::default();
        on_demand.set_connected(true);
        let start = tokio::time::Instant::now();
        on_demand.resolve("a.B", Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // A new stream's Hello carries it.
        assert_eq!(on_demand.all(), (vec!["a.B".to_owned()], 1));
        assert!(on_demand.take_unsent().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_without_a_stream_and_no_subscription_to_a_non_name() {
        let on_demand = OnDemand::default();
        let start = tokio::time::Instant::now();
        on_demand.resolve("a.B", FIRST_CALL_WAIT).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no stream: no wait");
        assert_eq!(on_demand.all().0, ["a.B"], "asked for with the next Hello");
        on_demand.set_connected(true);
        on_demand.resolve("my:svc", FIRST_CALL_WAIT).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(on_demand.all().0, ["a.B"], "not a service name: never sent");
    }
}
