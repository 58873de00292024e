//! What one stream has sent, and the update that brings its proxy to the
//! latest state: the resources of its scope that are new or changed,
//! tombstones for those it must drop, and the subscriptions nothing serves.
//!
//! A stream starts from the versions the proxy says it has (its Hello), so
//! a proxy that reconnects, to this replica or another, is sent only what
//! differs. A refused (NACKed) version counts as sent: the proxy keeps its
//! last good one and gets the resource again when it changes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use mesh::proto::mesh::v1::{ResourceType, ResourceUpdate, ResourceVersion, SchemaVersion};
use prost::Message;

use crate::catalog::{Catalog, ResourceKey, Scope};

/// Bytes before a gRPC message: the compressed flag and the length.
const PREFIX_LEN: usize = 5;

/// One update, framed as a gRPC message.
#[derive(Debug, Clone)]
pub struct Update {
    /// The Length-Prefixed-Message, ready for the wire.
    pub frame: Bytes,
    /// Its nonce: the ACK names it.
    pub nonce: u64,
    /// How many resources it carries.
    pub resources: usize,
    /// How many tombstones it carries.
    pub removed: usize,
}

/// What a stream's proxy has been sent.
#[derive(Debug, Default)]
pub struct StreamState {
    sent: HashMap<ResourceKey, Arc<str>>,
    not_found: Vec<String>,
    nonce: u64,
    answered: u64,
}

impl StreamState {
    /// A stream whose proxy has `known` already (resources of kinds this
    /// replica does not know are ignored: they are never sent, so they are
    /// dropped by a tombstone only if the proxy kept them, which it does
    /// not).
    pub fn resume(known: &[ResourceVersion]) -> Self {
        let sent = known
            .iter()
            .filter_map(|k| {
                let kind = ResourceType::try_from(k.r#type).ok()?;
                (kind != ResourceType::Unspecified).then(|| {
                    (
                        ResourceKey::new(kind, &k.name),
                        Arc::from(k.version.as_str()),
                    )
                })
            })
            .collect();
        Self {
            sent,
            ..Self::default()
        }
    }

    /// How many resources the proxy has (as far as this stream knows).
    pub fn resources(&self) -> usize {
        self.sent.len()
    }

    /// The update that brings the proxy of `scope` to `catalog`, if
    /// anything differs, the subscriptions nothing serves changed, or
    /// `answers` is a Subscribe not yet answered; `first` sends one even
    /// if nothing differs (the proxy learns it is in step).
    pub fn next_update(
        &mut self,
        catalog: &Catalog,
        scope: &Scope,
        revision: u64,
        answers: u64,
        first: bool,
    ) -> Option<Update> {
        let wanted = catalog.wanted(scope);
        let mut fields = Vec::new();
        for key in &wanted.keys {
            let Some(entry) = catalog.get(key) else {
                continue;
            };
            if self.sent.get(key) != Some(&entry.version) {
                fields.push(entry.field.clone());
                self.sent.insert(key.clone(), entry.version.clone());
            }
        }
        let mut removed = Vec::new();
        self.sent.retain(|key, version| {
            let keep = wanted.keys.contains(key) && catalog.get(key).is_some();
            if !keep {
                removed.push(ResourceVersion {
                    r#type: key.kind as i32,
                    name: key.name.to_string(),
                    version: version.to_string(),
                });
            }
            keep
        });
        let not_found_changed = wanted.not_found != self.not_found;
        let answering = answers > self.answered;
        if fields.is_empty() && removed.is_empty() && !not_found_changed && !answering && !first {
            return None;
        }
        self.not_found = wanted.not_found;
        self.answered = self.answered.max(answers);
        self.nonce += 1;
        let header = ResourceUpdate {
            schema_version: SchemaVersion::SchemaVersion1 as i32,
            nonce: self.nonce,
            revision,
            resources: Vec::new(),
            removed,
            not_found: self.not_found.clone(),
            answers_subscribe: self.answered,
        };
        let body_len = header.encoded_len() + fields.iter().map(Bytes::len).sum::<usize>();
        let mut frame = BytesMut::with_capacity(PREFIX_LEN + body_len);
        frame.put_u8(0);
        // An update past 4 GiB cannot be framed; it is far past any limit
        // a client accepts anyway (tonic's default is 4 MiB).
        frame.put_u32(u32::try_from(body_len).unwrap_or(u32::MAX));
        header.encode_raw(&mut frame);
        for field in &fields {
            frame.put_slice(field);
        }
        Some(Update {
            frame: frame.freeze(),
            nonce: self.nonce,
            resources: fields.len(),
            removed: header.removed.len(),
        })
    }
}

#[cfg(test)]
mod tests;
