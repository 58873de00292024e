//! The signing keys at one moment: the one that signs now, the one that
//! will sign next, and the one that signed before.
//!
//! A verifier (the gateway, fed by the control plane) caches the JWKS and
//! refreshes it now and then. Two rules keep rotation invisible to it:
//!
//! - **Publish before use.** The next key is in the JWKS a whole rotation
//!   interval before it signs anything, so a verifier that refreshed at
//!   least once per interval already knows the kid of every new token.
//! - **Retire after use.** The previous key stays published until every
//!   token it signed has expired (token lifetime plus the clock skew), so
//!   tokens issued just before a rotation keep working to their end.
//!
//! A ring is immutable: [`KeyRing::rotated`] makes the next one, which the
//! service publishes with one atomic swap (requests read it lock-free).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use ring::rand::SecureRandom;

use crate::signing_key::{KeyError, SigningKey};

/// How far verifiers' clocks may be behind ours unless told otherwise
/// (`--clock-skew`'s default, 60 s): a verifier accepts a token up to that long after its
/// `exp` (jsonwebtoken's default `leeway` is 60 s; the mesh gateway's
/// `clockSkew` defaults to 30 s), so a retired key stays published that
/// much longer.
#[cfg(test)]
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A key that stopped signing, published until its last token expired.
#[derive(Debug, Clone)]
struct Retired {
    key: Arc<SigningKey>,
    /// Unix seconds after which no token it signed is accepted anywhere.
    publish_until: u64,
}

/// The current, next and previous signing keys.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Arc<SigningKey>,
    next: Arc<SigningKey>,
    previous: Option<Retired>,
}

impl KeyRing {
    /// A ring of two fresh keys (current and next) and no previous one.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, KeyError> {
        Ok(Self {
            current: Arc::new(SigningKey::generate(rng)?),
            next: Arc::new(SigningKey::generate(rng)?),
            previous: None,
        })
    }

    /// The key that signs tokens now.
    pub fn current(&self) -> &Arc<SigningKey> {
        &self.current
    }

    /// The ring after a rotation at `now` (unix seconds): next signs,
    /// current retires and stays published for `retire_after` (a token's
    /// lifetime plus the verifiers' clock skew), a fresh key becomes next. The key retired by the
    /// rotation before is dropped: the service checks at start-up that the
    /// rotation interval outlasts a token (see [`minimum_rotation_interval`]).
    pub fn rotated(
        &self,
        now: u64,
        retire_after: Duration,
        rng: &dyn SecureRandom,
    ) -> Result<Self, KeyError> {
        let publish_until = now.saturating_add(retire_after.as_secs());
        Ok(Self {
            current: self.next.clone(),
            next: Arc::new(SigningKey::generate(rng)?),
            previous: Some(Retired {
                key: self.current.clone(),
                publish_until,
            }),
        })
    }

    /// The public keys verifiers need at `now`: current, next, and the
    /// previous one while its tokens may still be accepted.
    pub fn jwks(&self, now: u64) -> JwkSet {
        let previous = self
            .previous
            .as_ref()
            .filter(|retired| now <= retired.publish_until)
            .map(|retired| &retired.key);
        JwkSet {
            keys: [Some(&self.current), Some(&self.next), previous]
                .into_iter()
                .flatten()
                .map(|key| key.jwk().clone())
                .collect(),
        }
    }
}

/// The shortest rotation interval that never drops a key whose tokens are
/// still accepted: one token lifetime plus the verifiers' clock skew.
pub fn minimum_rotation_interval(token_lifetime: Duration, clock_skew: Duration) -> Duration {
    token_lifetime + clock_skew
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn kids(set: &JwkSet) -> Vec<&str> {
        set.keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect()
    }

    #[test]
    fn a_fresh_ring_publishes_current_and_next() {
        let ring = KeyRing::generate(&SystemRandom::new()).expect("ring");
        let jwks = ring.jwks(1_000);
        assert_eq!(kids(&jwks), [ring.current.kid(), ring.next.kid()]);
    }

    #[test]
    fn rotation_promotes_next_and_keeps_the_previous_until_its_tokens_expired() {
        let rng = SystemRandom::new();
        let lifetime = Duration::from_secs(900);
        let first = KeyRing::generate(&rng).expect("ring");
        let second = first
            .rotated(10_000, lifetime + DEFAULT_CLOCK_SKEW, &rng)
            .expect("rotate");

        // The announced key signs now; the old one is still published.
        assert_eq!(second.current().kid(), first.next.kid());
        let jwks = second.jwks(10_000);
        assert_eq!(
            kids(&jwks),
            [
                second.current().kid(),
                second.next.kid(),
                first.current().kid()
            ]
        );
        // Until the last token it signed (at 10_000, for 900 s) plus the
        // skew allowance is over, and not after.
        let last = 10_000 + 900 + DEFAULT_CLOCK_SKEW.as_secs();
        assert_eq!(second.jwks(last).keys.len(), 3);
        assert_eq!(
            kids(&second.jwks(last + 1)),
            [second.current().kid(), second.next.kid()]
        );

        // The next rotation drops the key retired by this one.
        let third = second
            .rotated(20_000, lifetime + DEFAULT_CLOCK_SKEW, &rng)
            .expect("rotate");
        let kids_now = kids(&third.jwks(20_000)).join(",");
        assert!(!kids_now.contains(first.current().kid()));
        assert!(kids_now.contains(second.current().kid()));
    }

    #[test]
    fn the_minimum_interval_covers_a_token_and_the_skew() {
        assert_eq!(
            minimum_rotation_interval(Duration::from_secs(900), DEFAULT_CLOCK_SKEW),
            Duration::from_secs(960)
        );
    }
}
