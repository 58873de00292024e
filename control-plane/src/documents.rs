//! Documents operators keep in the store by name (routes, authorization
//! policies, request authentications): parsed and validated before they are written (errors name
//! the field), written compare-and-swap on their revision, read back as
//! stored, listed with the invalid ones reported rather than hidden.

use mesh::model::{AuthorizationPolicy, RequestAuthentication, Route, ValidationError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::keys;
use crate::store::{Precondition, Store, StoreError};

/// A kind of document kept under one store prefix, by name.
pub(crate) trait Document: Serialize + DeserializeOwned + PartialEq {
    /// What it is called in messages (`route`).
    const NOUN: &'static str;
    /// The store prefix of its kind.
    const PREFIX: &'static str;
    /// Its name (`metadata.name`).
    fn name(&self) -> &str;
    /// Checks every field.
    fn validate(&self) -> Result<(), ValidationError>;
}

impl Document for Route {
    const NOUN: &'static str = "route";
    const PREFIX: &'static str = keys::ROUTES;
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn validate(&self) -> Result<(), ValidationError> {
        Route::validate(self)
    }
}

impl Document for AuthorizationPolicy {
    const NOUN: &'static str = "authorization policy";
    const PREFIX: &'static str = keys::AUTHORIZATION_POLICIES;
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn validate(&self) -> Result<(), ValidationError> {
        AuthorizationPolicy::validate(self)
    }
}

impl Document for RequestAuthentication {
    const NOUN: &'static str = "request authentication";
    const PREFIX: &'static str = keys::REQUEST_AUTHENTICATIONS;
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn validate(&self) -> Result<(), ValidationError> {
        RequestAuthentication::validate(self)
    }
}

/// A document as stored: its JSON and its revision.
pub(crate) struct Stored {
    pub json: String,
    pub revision: i64,
}

/// The outcome of an apply.
pub(crate) struct Applied {
    pub stored: Stored,
    pub created: bool,
    pub changed: bool,
    /// The revision it had before (0: none).
    pub previous: i64,
}

/// Parses and validates a document sent by an operator.
pub(crate) fn parse<D: Document>(json: &str) -> Result<D, Status> {
    let document: D = serde_json::from_str(json)
        .map_err(|e| Status::invalid_argument(format!("{}: {e}", D::NOUN)))?;
    document
        .validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(document)
}

fn key<D: Document>(name: &str) -> String {
    format!("{}{name}", D::PREFIX)
}

/// A name from a request: present and one path segment.
pub(crate) fn name<D: Document>(name: &str) -> Result<&str, Status> {
    if name.is_empty() || name.contains('/') {
        return Err(Status::invalid_argument(format!(
            "name: a {} name is required",
            D::NOUN
        )));
    }
    Ok(name)
}

/// Writes `document` unless it is stored already, identical, under a
/// precondition that holds (then nothing is written: no new version).
pub(crate) async fn apply<S: Store, D: Document>(
    store: &S,
    document: &D,
    expected_revision: Option<i64>,
) -> Result<Applied, Status> {
    let precondition = precondition(expected_revision)?;
    let key = key::<D>(document.name());
    let value = serde_json::to_vec(document).map_err(|e| Status::internal(e.to_string()))?;
    let existing = store.get(&key).await.map_err(store_status)?;
    if let Some(existing) = &existing {
        let unchanged = serde_json::from_slice::<D>(&existing.value).is_ok_and(|d| &d == document);
        let precondition_holds = match precondition {
            Precondition::Any => true,
            Precondition::Absent => false,
            Precondition::Revision(r) => r == existing.mod_revision,
        };
        if unchanged && precondition_holds {
            return Ok(Applied {
                stored: Stored {
                    json: String::from_utf8_lossy(&existing.value).into_owned(),
                    revision: existing.mod_revision,
                },
                created: false,
                changed: false,
                previous: existing.mod_revision,
            });
        }
    }
    let revision = store
        .put(&key, value.clone(), precondition, None)
        .await
        .map_err(store_status)?;
    Ok(Applied {
        stored: Stored {
            json: String::from_utf8_lossy(&value).into_owned(),
            revision,
        },
        created: existing.is_none(),
        changed: true,
        previous: existing.map_or(0, |e| e.mod_revision),
    })
}

/// The stored document `name`; NOT_FOUND if absent.
pub(crate) async fn get<S: Store, D: Document>(store: &S, name: &str) -> Result<Stored, Status> {
    let name = self::name::<D>(name)?;
    let found = store
        .get(&key::<D>(name))
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("{} {name:?} not found", D::NOUN)))?;
    Ok(Stored {
        json: String::from_utf8_lossy(&found.value).into_owned(),
        revision: found.mod_revision,
    })
}

/// Every valid document of the kind, and each invalid one's key and why.
pub(crate) async fn list<S: Store, D: Document>(
    store: &S,
) -> Result<(Vec<Stored>, Vec<String>), Status> {
    let snapshot = store.get_prefix(D::PREFIX).await.map_err(store_status)?;
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for kv in snapshot.items {
        let checked = serde_json::from_slice::<D>(&kv.value)
            .map_err(|e| e.to_string())
            .and_then(|d| d.validate().map_err(|e| e.to_string()));
        match checked {
            Ok(()) => valid.push(Stored {
                json: String::from_utf8_lossy(&kv.value).into_owned(),
                revision: kv.mod_revision,
            }),
            Err(why) => invalid.push(format!("{}: {why}", kv.key)),
        }
    }
    Ok((valid, invalid))
}

/// Deletes document `name`; returns its old revision and the new store
/// revision. NOT_FOUND if absent.
pub(crate) async fn delete<S: Store, D: Document>(
    store: &S,
    name: &str,
    expected_revision: Option<i64>,
) -> Result<(i64, i64), Status> {
    let name = self::name::<D>(name)?;
    let precondition = precondition(expected_revision)?;
    let key = key::<D>(name);
    let old = store
        .get(&key)
        .await
        .map_err(store_status)?
        .map_or(0, |kv| kv.mod_revision);
    let revision = store
        .delete(&key, precondition)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                Status::not_found(format!("{} {name:?} not found", D::NOUN))
            }
            other => store_status(other),
        })?;
    Ok((old, revision))
}

/// The status a store error is answered with.
pub(crate) fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => Status::aborted(format!(
            "conflict on {key}: expected {}, found {}; read it again and re-apply",
            describe_precondition(expected),
            actual.map_or("no value".to_owned(), |r| format!("revision {r}"))
        )),
        StoreError::NotFound { key } => Status::not_found(format!("{key} not found")),
        other => Status::unavailable(format!("store: {other}")),
    }
}

fn describe_precondition(p: Precondition) -> String {
    match p {
        Precondition::Any => "anything".into(),
        Precondition::Absent => "no value".into(),
        Precondition::Revision(r) => format!("revision {r}"),
    }
}

/// A request's `expected_revision` as a store precondition.
pub(crate) fn precondition(expected: Option<i64>) -> Result<Precondition, Status> {
    match expected {
        None => Ok(Precondition::Any),
        Some(0) => Ok(Precondition::Absent),
        Some(r) if r > 0 => Ok(Precondition::Revision(r)),
        Some(r) => Err(Status::invalid_argument(format!(
            "expected_revision: must not be negative, got {r}"
        ))),
    }
}
