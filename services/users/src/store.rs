//! The in-memory user table, keyed by id and by (normalized) email.
//!
//! Bounded: a registration beyond the capacity is refused, so a script
//! registering accounts in a loop cannot eat the process's memory (each
//! user is a few hundred bytes; 100,000 of them about 50 MiB).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::token::Role;

/// One account.
#[derive(Debug, Clone)]
pub struct User {
    /// Opaque id: the `sub` of the user's tokens.
    pub id: String,
    /// The normalized email (the login name).
    pub email: String,
    /// Shown to people.
    pub display_name: String,
    /// The `role` claim of the user's tokens.
    pub role: Role,
    /// The argon2 PHC string; never the password.
    pub password_hash: Arc<str>,
    /// When the account was made.
    pub created_at: SystemTime,
}

/// Why a user was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// Another account has this email.
    #[error("email already registered")]
    EmailTaken,
    /// The store holds its maximum of users.
    #[error("the store is full")]
    Full,
}

#[derive(Debug, Default)]
struct Tables {
    by_id: HashMap<String, Arc<User>>,
    id_by_email: HashMap<String, String>,
}

/// The user table, shared by every request.
///
/// A std `Mutex`: every operation is a short map operation with no `.await`
/// inside (hashing happens before [`UserStore::insert`], outside the lock).
#[derive(Debug)]
pub struct UserStore {
    tables: Mutex<Tables>,
    capacity: usize,
}

impl UserStore {
    /// An empty store holding at most `capacity` users.
    pub fn new(capacity: usize) -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Every write is two inserts with nothing fallible between them, so
        // a poisoned lock still guards consistent maps.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most users this store holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Why `email` could not be registered now, if it could not: a cheap
    /// check before spending an argon2 run on a doomed registration.
    /// [`UserStore::insert`] checks again under the lock.
    pub fn precheck(&self, email: &str) -> Result<(), InsertError> {
        let tables = self.lock();
        if tables.id_by_email.contains_key(email) {
            Err(InsertError::EmailTaken)
        } else if tables.by_id.len() >= self.capacity {
            Err(InsertError::Full)
        } else {
            Ok(())
        }
    }

    /// Adds `user` unless its email is taken or the store is full.
    pub fn insert(&self, user: User) -> Result<Arc<User>, InsertError> {
        let mut tables = self.lock();
        if tables.id_by_email.contains_key(&user.email) {
            return Err(InsertError::EmailTaken);
        }
        if tables.by_id.len() >= self.capacity {
            return Err(InsertError::Full);
        }
        let user = Arc::new(user);
        tables
            .id_by_email
            .insert(user.email.clone(), user.id.clone());
        tables.by_id.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    /// The user with this normalized email.
    pub fn by_email(&self, email: &str) -> Option<Arc<User>> {
        let tables = self.lock();
        let id = tables.id_by_email.get(email)?;
        tables.by_id.get(id).cloned()
    }

    /// The user with this id.
    pub fn by_id(&self, id: &str) -> Option<Arc<User>> {
        self.lock().by_id.get(id).cloned()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, email: &str) -> User {
        User {
            id: id.into(),
            email: email.into(),
            display_name: String::new(),
            role: Role::Customer,
            password_hash: "$argon2id$not-checked-here".into(),
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn users_are_found_by_id_and_email() {
        let store = UserStore::new(10);
        store.insert(user("u1", "a@x")).expect("insert");
        assert_eq!(
            store.by_email("a@x").map(|u| u.id.clone()).as_deref(),
            Some("u1")
        );
        assert_eq!(
            store.by_id("u1").map(|u| u.email.clone()).as_deref(),
            Some("a@x")
        );
        assert!(store.by_email("b@x").is_none());
        assert!(store.by_id("u2").is_none());
    }

    #[test]
    fn an_email_registers_once() {
        let store = UserStore::new(10);
        store.insert(user("u1", "a@x")).expect("insert");
        assert_eq!(store.precheck("a@x"), Err(InsertError::EmailTaken));
        assert_eq!(
            store.insert(user("u2", "a@x")).map(|_| ()),
            Err(InsertError::EmailTaken)
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_store_is_bounded() {
        let store = UserStore::new(2);
        store.insert(user("u1", "a@x")).expect("insert");
        store.insert(user("u2", "b@x")).expect("insert");
        assert_eq!(store.precheck("c@x"), Err(InsertError::Full));
        assert_eq!(
            store.insert(user("u3", "c@x")).map(|_| ()),
            Err(InsertError::Full)
        );
        // A taken email says so even when full: the more useful answer.
        assert_eq!(store.precheck("a@x"), Err(InsertError::EmailTaken));
        assert_eq!(store.len(), 2);
    }
}
