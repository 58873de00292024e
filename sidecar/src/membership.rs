//! Whether this proxy is in the mesh: registered with the control plane, or
//! drained out of it by the admin port's `POST /drain` (the Kubernetes
//! preStop hook, or an operator taking an instance out by hand) until
//! `DELETE /drain` puts it back. Shutdown ends membership for good.
//!
//! Registration lives exactly as long as the discovery stream, so leaving
//! means ending the stream (the control plane revokes the lease at once)
//! and coming back means opening a new one: [`Membership::keep_registered`]
//! runs one registration per period of membership.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `DELETE /drain` after shutdown began: the proxy is leaving for good.
#[derive(Debug, thiserror::Error)]
#[error("shutting down")]
pub struct ShuttingDown;

/// Drained or not; shared by the admin API and the registration task.
#[derive(Debug)]
pub struct Membership {
    state: watch::Sender<State>,
    /// The process's shutdown: ends every registration, for good.
    shutdown: CancellationToken,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Drained by the admin API.
    drained: bool,
    /// Drains so far: a drain undone before the registration task saw it
    /// still ends the registration (watch only keeps the latest value).
    drains: u64,
}

impl Membership {
    /// In the mesh (not drained) until `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            state: watch::Sender::new(State::default()),
            shutdown,
        }
    }

    /// Leaves the mesh; false if it was already drained.
    pub fn drain(&self) -> bool {
        self.state.send_if_modified(|state| {
            if state.drained {
                return false;
            }
            state.drained = true;
            state.drains += 1;
            true
        })
    }

    /// Joins the mesh again; false if it was not drained.
    pub fn undrain(&self) -> Result<bool, ShuttingDown> {
        if self.shutdown.is_cancelled() {
            return Err(ShuttingDown);
        }
        Ok(self
            .state
            .send_if_modified(|state| std::mem::replace(&mut state.drained, false)))
    }

    /// Out of the mesh: drained, or shutting down.
    pub fn is_out(&self) -> bool {
        self.state.borrow().drained || self.shutdown.is_cancelled()
    }

    /// Runs `register` whenever this proxy should be in the mesh, until
    /// shutdown. Each run gets a token that fires on drain or shutdown and
    /// must return soon after it fires (having deregistered); after a
    /// drain, the next run starts once `DELETE /drain` undoes it.
    pub async fn keep_registered<F, Fut>(&self, mut register: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut state = self.state.subscribe();
        loop {
            // Wait until wanted in the mesh.
            while state.borrow_and_update().drained {
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = self.shutdown.cancelled() => return,
                }
            }
            if self.shutdown.is_cancelled() {
                return;
            }
            let drains = state.borrow().drains;
            let period = self.shutdown.child_token();
            let run = register(period.clone());
            tokio::pin!(run);
            loop {
                tokio::select! {
                    () = &mut run => break,
                    changed = state.changed() => {
                        if changed.is_err() || state.borrow_and_update().drains != drains {
                            period.cancel();
                        }
                        // An undrain before the run ended: it ends anyway
                        // (its token fired) and the next period starts.
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A registration that counts its periods and whether one is live.
    #[derive(Default)]
    struct Registrations {
        started: AtomicUsize,
        live: AtomicUsize,
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    fn spawn(
        membership: &Arc<Membership>,
        regs: &Arc<Registrations>,
    ) -> tokio::task::JoinHandle<()> {
        let membership = membership.clone();
        let regs = regs.clone();
        tokio::spawn(async move {
            membership
                .keep_registered(|stop| {
                    let regs = regs.clone();
                    async move {
                        regs.started.fetch_add(1, Ordering::SeqCst);
                        regs.live.fetch_add(1, Ordering::SeqCst);
                        stop.cancelled().await;
                        // Deregistering takes a moment.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        regs.live.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await;
        })
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_the_registration_and_undrain_starts_a_new_one() {
        let shutdown = CancellationToken::new();
        let membership = Arc::new(Membership::new(shutdown.clone()));
        let regs = Arc::new(Registrations::default());
        let task = spawn(&membership, &regs);
        wait_until("registered", || regs.live.load(Ordering::SeqCst) == 1).await;
        assert!(!membership.is_out());

        assert!(membership.drain());
        assert!(!membership.drain(), "a second drain changes nothing");
        assert!(membership.is_out());
        wait_until("deregistered", || regs.live.load(Ordering::SeqCst) == 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            regs.started.load(Ordering::SeqCst),
            1,
            "stays out while drained"
        );

        assert!(membership.undrain().unwrap());
        assert!(
            !membership.undrain().unwrap(),
            "a second undrain changes nothing"
        );
        assert!(!membership.is_out());
        wait_until("registered again", || regs.live.load(Ordering::SeqCst) == 1).await;
        assert_eq!(regs.started.load(Ordering::SeqCst), 2);

        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(regs.live.load(Ordering::SeqCst), 0, "shutdown deregisters");
        assert!(membership.is_out());
        assert!(membership.undrain().is_err(), "no way back after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn undrain_while_still_deregistering_comes_back_once() {
        let shutdown = CancellationToken::new();
        let membership = Arc::new(Membership::new(shutdown.clone()));
        let regs = Arc::new(Registrations::default());
        let task = spawn(&membership, &regs);
        wait_until("registered", || regs.live.load(Ordering::SeqCst) == 1).await;
        membership.drain();
        membership.undrain().unwrap();
        wait_until("second period", || regs.started.load(Ordering::SeqCst) == 2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            regs.live.load(Ordering::SeqCst),
            1,
            "one registration, not two"
        );
        assert_eq!(regs.started.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drained_at_shutdown_returns_at_once() {
        let shutdown = CancellationToken::new();
        let membership = Arc::new(Membership::new(shutdown.clone()));
        let regs = Arc::new(Registrations::default());
        let task = spawn(&membership, &regs);
        wait_until("registered", || regs.live.load(Ordering::SeqCst) == 1).await;
        membership.drain();
        wait_until("deregistered", || regs.live.load(Ordering::SeqCst) == 0).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(regs.started.load(Ordering::SeqCst), 1);
    }
}
