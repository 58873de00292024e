//! The error every validation in the model returns: which field, and why.

/// A value that is not acceptable, named by its path in the document (e.g.
/// `spec.split[1].weight`) so an operator can find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// Dotted path of the offending field within its document.
    pub field: String,
    /// What is wrong with it, in words.
    pub reason: String,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, for errors found inside a nested value.
    pub(crate) fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// True for a DNS-1123 label: what Kubernetes accepts as a name, and what we
/// accept for route, service and subset names so they fit in etcd keys and
/// Kubernetes labels unchanged.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for a protobuf identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn is_proto_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` can be subscribed to: a mesh service or a gRPC service
/// name (letters, digits, `.`, `_`, `-`, at most 253 bytes). The sidecar
/// subscribes only to such names and the control plane takes only such:
/// one rule on both sides, so an app calling a path that is no service
/// name can never make a sidecar's subscriptions unacceptable.
pub fn is_subscription_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
