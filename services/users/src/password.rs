//! Password hashing with argon2id (the `argon2` crate's defaults: OWASP's
//! recommended m=19 MiB, t=2, p=1) and a fresh 16-byte salt per hash from
//! the system's RNG.
//!
//! Hashing is deliberately slow and memory-hungry, so it runs on tokio's
//! blocking pool, never on a worker thread, and at most
//! `max_concurrent` at once: a burst of logins queues instead of taking
//! `19 MiB x callers` of memory.
//!
//! An unknown email is checked against a dummy hash made at start-up, so it
//! costs the same time as a wrong password and the two cannot be told apart
//! (OWASP Authentication Cheat Sheet, "authentication responses").

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

/// Bytes of salt per hash: the PHC string format's recommended 16.
const SALT_LEN: usize = 16;

/// Why a password could not be hashed or checked. Never carries the
/// password itself.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The system RNG failed to give a salt.
    #[error("no randomness for a salt")]
    Rng,
    /// argon2 refused the input or the stored hash is not a PHC string.
    /// (`password_hash::Error` implements `std::error::Error` only with its
    /// `std` feature, which would pull a second `rand_core`: kept as text.)
    #[error("argon2: {0}")]
    Argon2(String),
    /// The hashing semaphore was closed (never, today: kept so a closed
    /// one is an error, not a panic).
    #[error("password hashing is shut down")]
    Closed,
    /// The blocking task died (panicked or was cancelled at shutdown).
    #[error("hashing task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn argon2_error(e: argon2::password_hash::Error) -> PasswordError {
    PasswordError::Argon2(e.to_string())
}

/// Hashes `password` with a fresh random salt; the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) keeps the parameters,
/// so hashes stay verifiable if the defaults change.
pub fn hash(password: &str, rng: &dyn SecureRandom) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt).map_err(|_| PasswordError::Rng)?;
    let salt = SaltString::encode_b64(&salt).map_err(argon2_error)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(argon2_error)?
        .to_string())
}

/// Whether `password` matches the PHC string `stored`. The final comparison
/// is constant-time (`password_hash::Output`'s `PartialEq`).
pub fn verify(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(stored).map_err(argon2_error)?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(argon2_error(e)),
    }
}

/// Hashing and checking passwords off the async workers, a bounded number
/// at a time. Cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    rng: SystemRandom,
    /// What an unknown email is checked against (a hash of random bytes no
    /// one knows).
    dummy: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// At most `max_concurrent` (at least 1) hashes run at once. Makes the
    /// dummy hash (one argon2 run).
    pub fn new(max_concurrent: usize) -> Result<Self, PasswordError> {
        let rng = SystemRandom::new();
        let mut secret = [0u8; 32];
        rng.fill(&mut secret).map_err(|_| PasswordError::Rng)?;
        // Hex of 32 random bytes: a password nobody can type.
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let dummy = hash(&secret, &rng)?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            rng,
            dummy: dummy.into(),
        })
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        tokio::task::spawn_blocking(work).await?
    }

    /// A PHC hash of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let rng = self.rng.clone();
        self.run(move || hash(&password, &rng)).await
    }

    /// Whether `password` matches `stored`; with `None` (no such user) it
    /// checks against the dummy hash and answers `false`, taking as long as
    /// a real check.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<Arc<str>>,
    ) -> Result<bool, PasswordError> {
        let known = stored.is_some();
        let against = stored.unwrap_or_else(|| self.dummy.clone());
        let matched = self.run(move || verify(&password, &against)).await?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let rng = SystemRandom::new();
        let stored = hash("correct horse", &rng).expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(!stored.contains("correct horse"));
        assert!(verify("correct horse", &stored).expect("verify"));
        assert!(!verify("correct horsf", &stored).expect("verify"));
    }

    #[test]
    fn every_hash_gets_its_own_salt() {
        let rng = SystemRandom::new();
        let a = hash("same password", &rng).expect("hash");
        let b = hash("same password", &rng).expect("hash");
        assert_ne!(a, b);
        assert!(verify("same password", &a).expect("verify"));
        assert!(verify("same password", &b).expect("verify"));
    }

    #[test]
    fn a_stored_value_that_is_not_a_hash_is_an_error_not_a_match() {
        assert!(matches!(
            verify("x", "not a phc string"),
            Err(PasswordError::Argon2(_))
        ));
    }

    #[tokio::test]
    async fn unknown_users_never_match_even_with_the_right_guess() {
        let passwords = Passwords::new(2).expect("passwords");
        let stored: Arc<str> = passwords
            .hash("hunter2hunter2".into())
            .await
            .expect("hash")
            .into();
        assert!(passwords
            .verify("hunter2hunter2".into(), Some(stored.clone()))
            .await
            .expect("verify"));
        assert!(!passwords
            .verify("wrong-password".into(), Some(stored))
            .await
            .expect("verify"));
        assert!(!passwords
            .verify("hunter2hunter2".into(), None)
            .await
            .expect("verify"));
    }
}
