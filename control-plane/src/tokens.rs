//! Join tokens: the bootstrap credential a proxy trades for its first
//! certificate (and every renewal). A token proves one service or one
//! gateway, expires, and can be revoked. Its text is `<id>.<secret>`; the
//! store keeps the id, the identity, the expiry and a SHA-256 of the
//! secret, so reading etcd does not yield a usable token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh::identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::store::{Precondition, Store, StoreError};

/// Lifetime of a token made without `--ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(720 * 3600);

/// What the store keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public half of the token.
    pub id: String,
    /// The SPIFFE ID it proves.
    pub identity: String,
    /// SHA-256 of the secret half, hex.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_unix: i64,
    /// Unix seconds.
    pub expires_unix: i64,
    /// Unix seconds of revocation, if revoked.
    #[serde(default)]
    pub revoked_unix: Option<i64>,
    /// The operator who made it.
    #[serde(default)]
    pub created_by: String,
}

/// Why a token does not prove anything.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not `<id>.<secret>`, unknown, or the secret is wrong: one answer
    /// for all three, so a caller learns nothing about which.
    #[error("the token is not valid")]
    Invalid,
    /// Past its expiry.
    #[error("the token expired")]
    Expired,
    /// Revoked by an operator.
    #[error("the token was revoked")]
    Revoked,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Makes a token for `identity` living `ttl`, stores its record, and
/// returns the token text (shown once) with the record.
pub async fn create<S: Store>(
    store: &S,
    identity: &SpiffeId,
    ttl: Duration,
    created_by: &str,
) -> Result<(String, TokenRecord), StoreError> {
    let id = hex(&rand::random::<[u8; 8]>());
    let secret = hex(&rand::random::<[u8; 32]>());
    let created = now_unix();
    let record = TokenRecord {
        id: id.clone(),
        identity: identity.to_string(),
        secret_sha256: sha256_hex(&secret),
        created_unix: created,
        expires_unix: created.saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64),
        revoked_unix: None,
        created_by: created_by.to_owned(),
    };
    store
        .put(
            &keys::token(&id),
            serde_json::to_vec(&record).unwrap_or_default(),
            Precondition::Absent,
            None,
        )
        .await?;
    Ok((format!("{id}.{secret}"), record))
}

/// The identity `token` proves, if it is known, unexpired and unrevoked.
pub async fn verify<S: Store>(store: &S, token: &str) -> Result<SpiffeId, TokenError> {
    let (id, secret) = token.trim().split_once('.').ok_or(TokenError::Invalid)?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Invalid);
    }
    let stored = store
        .get(&keys::token(id))
        .await?
        .ok_or(TokenError::Invalid)?;
    let record: TokenRecord =
        serde_json::from_slice(&stored.value).map_err(|_| TokenError::Invalid)?;
    let expected = record.secret_sha256.as_bytes();
    let actual = sha256_hex(secret);
    // Compare the whole digest whatever the first difference.
    let same = expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual.as_bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
    if !same {
        return Err(TokenError::Invalid);
    }
    if record.revoked_unix.is_some() {
        return Err(TokenError::Revoked);
    }
    if now_unix() >= record.expires_unix {
        return Err(TokenError::Expired);
    }
    SpiffeId::parse(&record.identity).map_err(|_| TokenError::Invalid)
}

/// Every token record, by id.
pub async fn list<S: Store>(store: &S) -> Result<Vec<TokenRecord>, StoreError> {
    let snapshot = store.get_prefix(keys::TOKENS).await?;
    Ok(snapshot
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Marks token `id` revoked; `NotFound` if there is none.
pub async fn revoke<S: Store>(store: &S, id: &str) -> Result<TokenRecord, StoreError> {
    loop {
        let stored = store
            .get(&keys::token(id))
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: keys::token(id),
            })?;
        let mut record: TokenRecord = serde_json::from_slice(&stored.value)
            .map_err(|e| StoreError::Rejected(format!("token record: {e}")))?;
        if record.revoked_unix.is_some() {
            return Ok(record);
        }
        record.revoked_unix = Some(now_unix());
        match store
            .put(
                &keys::token(id),
                serde_json::to_vec(&record).unwrap_or_default(),
                Precondition::Revision(stored.mod_revision),
                None,
            )
            .await
        {
            Ok(_) => return Ok(record),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn payments() -> SpiffeId {
        SpiffeId::service("mesh.test", "payments").unwrap()
    }

    #[tokio::test]
    async fn a_token_proves_its_identity_until_revoked() {
        let store = MemoryStore::new();
        let (token, record) = create(&store, &payments(), DEFAULT_TTL, "alice")
            .await
            .unwrap();
        assert_eq!(verify(&store, &token).await.unwrap(), payments());
        // The store has no usable secret.
        let stored = store.get(&keys::token(&record.id)).await.unwrap().unwrap();
        let secret = token.split_once('.').unwrap().1;
        assert!(!String::from_utf8_lossy(&stored.value).contains(secret));
        revoke(&store, &record.id).await.unwrap();
        assert!(matches!(
            verify(&store, &token).await,
            Err(TokenError::Revoked)
        ));
        let listed = list(&store).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].revoked_unix.is_some());
    }

    #[tokio::test]
    async fn wrong_unknown_and_expired_tokens_prove_nothing() {
        let store = MemoryStore::new();
        let (token, _) = create(&store, &payments(), DEFAULT_TTL, "").await.unwrap();
        let (id, secret) = token.split_once('.').unwrap();
        let mut wrong = secret.to_owned().into_bytes();
        wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
        let wrong = format!("{id}.{}", String::from_utf8(wrong).unwrap());
        for bad in [
            wrong.as_str(),
            "",
            "nodot",
            "0000000000000000.abcd",
            "../x.y",
        ] {
            assert!(
                matches!(verify(&store, bad).await, Err(TokenError::Invalid)),
                "{bad}"
            );
        }
        let (expired, _) = create(&store, &payments(), Duration::ZERO, "")
            .await
            .unwrap();
        assert!(matches!(
            verify(&store, &expired).await,
            Err(TokenError::Expired)
        ));
    }
}
