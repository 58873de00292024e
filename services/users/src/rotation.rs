//! The timer that rotates the signing keys: every interval the announced
//! key starts signing, the current one retires (still published until its
//! tokens expired) and a fresh one is announced. See [`crate::key_ring`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ring::rand::SystemRandom;
use tokio_util::sync::CancellationToken;

use crate::key_ring::KeyRing;
use crate::token::unix_now;

/// The keys every request reads: swapped whole on rotation, read without a
/// lock.
pub type SharedKeys = Arc<ArcSwap<KeyRing>>;

/// Rotates `keys` every `every` until `shutdown`. A failed rotation (the
/// system RNG failing) is logged and the current key keeps signing until
/// the next tick.
pub async fn rotate_keys(
    keys: SharedKeys,
    every: Duration,
    retire_after: Duration,
    shutdown: CancellationToken,
) {
    let rng = SystemRandom::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // After a stall (a suspended laptop) rotate once, not once per missed
    // tick: each rotation would retire a key whose tokens are still live.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match keys.load().rotated(unix_now(), retire_after, &rng) {
            Ok(ring) => {
                tracing::info!(
                    kid = ring.current().kid(),
                    "signing key rotated; the previous key stays published until its tokens expire"
                );
                keys.store(Arc::new(ring));
            }
            Err(e) => {
                tracing::error!(error = %e, "key rotation failed; the current key keeps signing");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_rotate_on_the_timer_and_the_task_ends_on_shutdown() {
        let keys: SharedKeys = Arc::new(ArcSwap::from_pointee(
            KeyRing::generate(&SystemRandom::new()).expect("ring"),
        ));
        let first = keys.load().current().kid().to_owned();
        let shutdown = CancellationToken::new();
        let every = Duration::from_secs(3_600);
        let task = tokio::spawn(rotate_keys(
            keys.clone(),
            every,
            Duration::from_secs(900),
            shutdown.clone(),
        ));

        // Not before the interval...
        tokio::time::sleep(every - Duration::from_secs(1)).await;
        assert_eq!(keys.load().current().kid(), first);
        // ...and then once per interval.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = keys.load().current().kid().to_owned();
        assert_ne!(second, first);
        let published = keys.load().jwks(unix_now());
        assert!(
            published.find(&first).is_some(),
            "previous key still published"
        );
        tokio::time::sleep(every).await;
        assert_ne!(keys.load().current().kid(), second);

        shutdown.cancel();
        task.await.expect("rotation task ends");
    }
}
