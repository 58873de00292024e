//! Who may call what: `kind: AuthorizationPolicy`, and the one evaluation
//! both the callee's inbound sidecar (which enforces it) and `meshctl auth
//! can-i` (which explains it) run, so the two never disagree.
//!
//! ```yaml
//! kind: AuthorizationPolicy
//! metadata:
//!   name: payments-from-orders
//! spec:
//!   service: payments            # the callee; its inbound sidecar enforces
//!   action: ALLOW                # or DENY
//!   mode: enforce                # or audit: log and count, never refuse
//!   rules:
//!     - from:
//!         - service: orders      # a mesh service (its SPIFFE identity)
//!         - identity: spiffe://mesh.local/svc/reports
//!         - gateway: { claims: { role: admin } }  # gateway callers whose JWT says so
//!       to:
//!         - shop.payments.v1.PaymentsService/Charge
//!         - shop.payments.v1.PaymentsService/Re*   # globs: * is any run of characters
//! ```
//!
//! Order: a matching rule of a DENY policy refuses; then, if the service
//! has any ALLOW policy, a call no ALLOW rule matches is refused; with
//! none, the mesh-wide default decides (`all-authenticated`: any caller
//! with a mesh identity; or `deny`). Audit-mode policies take part in the
//! same order but only report what they would have refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::RouteMetadata;
use super::validation::{is_dns_label, ValidationError};
use crate::identity::{SpiffeId, Workload};

/// The `kind` every authorization policy document carries.
pub const AUTHORIZATION_POLICY_KIND: &str = "AuthorizationPolicy";

/// An authorization policy document (kind, metadata, spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Always `AuthorizationPolicy`.
    pub kind: String,
    /// Its name: the key it is stored and deleted by.
    pub metadata: RouteMetadata,
    /// What it allows or denies.
    pub spec: AuthorizationSpec,
}

/// The body of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSpec {
    /// The mesh service called: its inbound sidecars enforce the policy.
    pub service: String,
    /// ALLOW or DENY what the rules match.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// Enforce, or only report (audit).
    #[serde(default)]
    pub mode: AuthorizationMode,
    /// Any one matching rule makes the policy apply.
    pub rules: Vec<AuthorizationRule>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuthorizationAction {
    /// The call may go through (and calls no ALLOW rule matches may not).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// The call is refused, whatever ALLOW policies say.
    #[serde(rename = "DENY")]
    Deny,
}

/// Whether a policy refuses calls or only says it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationMode {
    /// Refuse with PERMISSION_DENIED.
    #[default]
    Enforce,
    /// Allow, but log and count the refusal it would have made: for
    /// trying a policy on live traffic first.
    Audit,
}

/// Callers (`from`, any of) calling methods (`to`, any of).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Who; empty means any caller with a mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<CallerMatch>,
    /// Which gRPC methods (`package.Service/Method`, globs); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
}

/// One kind of caller: exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerMatch {
    /// A mesh service, by name (its instances' SPIFFE identity); `*`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A SPIFFE ID; a trailing `*` matches any suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Calls that came in through a gateway, from an external client whose
    /// verified token carries these claims (all must be equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayCaller>,
}

/// Conditions on the verified token of a call that came through a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCaller {
    /// Claim name to required value; empty: any caller the gateway sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// The mesh-wide answer for a service no ALLOW policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAuthorization {
    /// Any caller that proved a mesh identity (mTLS) may call.
    #[default]
    AllAuthenticated,
    /// Nothing not explicitly allowed.
    Deny,
}

/// Who is calling, as the callee's sidecar knows it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The identity the caller's certificate proved; `None`: plaintext.
    pub identity: Option<&'a SpiffeId>,
    /// The verified claims a gateway forwarded (only ever from a caller
    /// whose identity is a gateway's).
    pub claims: Option<&'a BTreeMap<String, String>>,
    /// The mesh runs in permissive mode: a plaintext caller passes the
    /// `all-authenticated` default (what permissive is for: moving a
    /// running mesh to mTLS), though never a policy's rule.
    pub permissive: bool,
}

/// The answer for one call, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call goes through.
    pub allowed: bool,
    /// The policy that decided (`None`: the mesh-wide default); when no
    /// rule of the service's ALLOW policies matched, their names, joined
    /// with `,`.
    pub policy: Option<String>,
    /// Its rule (index in `spec.rules`), when a rule matched.
    pub rule: Option<usize>,
    /// In words, for logs, spans, `x-mesh-debug` and `meshctl auth can-i`.
    pub reason: String,
    /// An audit-mode policy would have refused this call (which is
    /// allowed): its name.
    pub audit_denied_by: Option<String>,
}

impl Decision {
    /// The metrics label: `allow`, `deny` or `audit-deny`.
    pub fn label(&self) -> &'static str {
        match (self.allowed, &self.audit_denied_by) {
            (false, _) => "deny",
            (true, Some(_)) => "audit-deny",
            (true, None) => "allow",
        }
    }
}

impl AuthorizationPolicy {
    /// Checks every field; errors name the field's path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.kind != AUTHORIZATION_POLICY_KIND {
            return Err(ValidationError::new(
                "kind",
                format!("must be {AUTHORIZATION_POLICY_KIND:?}, not {:?}", self.kind),
            ));
        }
        if !is_dns_label(&self.metadata.name) {
            return Err(ValidationError::new(
                "metadata.name",
                format!("{:?} is not a DNS label", self.metadata.name),
            ));
        }
        let spec = &self.spec;
        if !is_dns_label(&spec.service) {
            return Err(ValidationError::new(
                "spec.service",
                format!("{:?} is not a mesh service name", spec.service),
            ));
        }
        if spec.rules.is_empty() {
            return Err(ValidationError::new(
                "spec.rules",
                "at least one rule is needed",
            ));
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| e.within(&format!("spec.rules[{i}]")))?;
        }
        Ok(())
    }

    /// The first rule matching `caller` calling `method`, if any.
    fn matching_rule(&self, caller: &Caller<'_>, method: &str) -> Option<usize> {
        self.spec
            .rules
            .iter()
            .position(|rule| rule.matches(caller, method))
    }
}

impl AuthorizationRule {
    fn validate(&self) -> Result<(), ValidationError> {
        for (i, from) in self.from.iter().enumerate() {
            from.validate()
                .map_err(|e| e.within(&format!("from[{i}]")))?;
        }
        for (i, method) in self.to.iter().enumerate() {
            validate_method_pattern(method)
                .map_err(|reason| ValidationError::new(format!("to[{i}]"), reason))?;
        }
        Ok(())
    }

    fn matches(&self, caller: &Caller<'_>, method: &str) -> bool {
        let who = if self.from.is_empty() {
            caller.identity.is_some()
        } else {
            self.from.iter().any(|f| f.matches(caller))
        };
        who && (self.to.is_empty() || self.to.iter().any(|p| glob(p, method)))
    }
}

impl CallerMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        let set = [
            self.service.is_some(),
            self.identity.is_some(),
            self.gateway.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        if set != 1 {
            return Err(ValidationError::new(
                "",
                "exactly one of service, identity or gateway",
            ));
        }
        if let Some(service) = &self.service {
            if service != "*" && !is_dns_label(service) {
                return Err(ValidationError::new(
                    "service",
                    format!("{service:?} is not a mesh service name (or *)"),
                ));
            }
        }
        if let Some(identity) = &self.identity {
            let exact = identity.strip_suffix('*').unwrap_or(identity);
            if !exact.starts_with("spiffe://") || exact.contains('*') {
                return Err(ValidationError::new(
                    "identity",
                    format!("{identity:?} is not a SPIFFE ID (spiffe://<trust domain>/..., optionally ending in *)"),
                ));
            }
            if !identity.ends_with('*') {
                SpiffeId::parse(identity)
                    .map_err(|e| ValidationError::new("identity", e.to_string()))?;
            }
        }
        if let Some(gateway) = &self.gateway {
            if let Some(name) = gateway.claims.keys().find(|k| k.is_empty()) {
                return Err(ValidationError::new(
                    "gateway.claims",
                    format!("claim name {name:?} is empty"),
                ));
            }
        }
        Ok(())
    }

    fn matches(&self, caller: &Caller<'_>) -> bool {
        let Some(identity) = caller.identity else {
            return false;
        };
        if let Some(service) = &self.service {
            return matches!(identity.workload(), Workload::Service(name) if service == "*" || name == service);
        }
        if let Some(pattern) = &self.identity {
            return glob(pattern, identity.as_str());
        }
        if let Some(gateway) = &self.gateway {
            let is_gateway = matches!(identity.workload(), Workload::Gateway(_));
            let claims = caller.claims;
            return is_gateway
                && gateway.claims.iter().all(|(name, want)| {
                    claims.and_then(|c| c.get(name)).is_some_and(|v| v == want)
                });
        }
        false
    }
}

/// `package.Service/Method` with `*` anywhere, or `*` alone.
fn validate_method_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let Some((service, method)) = pattern.split_once('/') else {
        return Err(format!(
            "{pattern:?} is not package.Service/Method (globs allowed: pkg.Svc/*)"
        ));
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'*'))
    };
    if !ok(service) || !ok(method) {
        return Err(format!(
            "{pattern:?} is not package.Service/Method (letters, digits, _, . and * only)"
        ));
    }
    Ok(())
}

/// True when `text` matches `pattern`, where `*` is any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Decides one call to `service`'s `method` (`package.Service/Method`)
/// by `caller`, under `policies` (every policy of the mesh; those of other
/// services are passed over) and the mesh-wide `default`.
pub fn authorize(
    policies: &[AuthorizationPolicy],
    default: DefaultAuthorization,
    service: &str,
    method: &str,
    caller: &Caller<'_>,
) -> Decision {
    let mine = || policies.iter().filter(|p| p.spec.service == service);
    let mut audit_denied_by = None;
    for policy in mine().filter(|p| p.spec.action == AuthorizationAction::Deny) {
        if let Some(rule) = policy.matching_rule(caller, method) {
            let name = policy.metadata.name.clone();
            if policy.spec.mode == AuthorizationMode::Audit {
                audit_denied_by.get_or_insert(name);
                continue;
            }
            return Decision {
                allowed: false,
                reason: format!("DENY policy {name} rule {rule} matches"),
                policy: Some(name),
                rule: Some(rule),
                audit_denied_by,
            };
        }
    }
    let allows = |mode| {
        mine().filter(move |p| p.spec.action == AuthorizationAction::Allow && p.spec.mode == mode)
    };
    // Audit ALLOW policies: would the call be refused if they were enforced?
    if allows(AuthorizationMode::Audit).next().is_some()
        && !allows(AuthorizationMode::Audit).any(|p| p.matching_rule(caller, method).is_some())
    {
        if let Some(p) = allows(AuthorizationMode::Audit).next() {
            audit_denied_by.get_or_insert(p.metadata.name.clone());
        }
    }
    let mut enforced = allows(AuthorizationMode::Enforce).peekable();
    if enforced.peek().is_some() {
        for policy in enforced {
            if let Some(rule) = policy.matching_rule(caller, method) {
                let name = policy.metadata.name.clone();
                return Decision {
                    allowed: true,
                    reason: format!("ALLOW policy {name} rule {rule} matches"),
                    policy: Some(name),
                    rule: Some(rule),
                    audit_denied_by,
                };
            }
        }
        // Named by the ALLOW policies none of whose rules matched.
        let names: Vec<&str> = allows(AuthorizationMode::Enforce)
            .map(|p| p.metadata.name.as_str())
            .collect();
        return Decision {
            allowed: false,
            policy: Some(names.join(",")),
            rule: None,
            reason: format!(
                "{service} has ALLOW policies ({}) and none of their rules matches",
                names.join(", ")
            ),
            audit_denied_by,
        };
    }
    let (allowed, reason) = match (default, caller.identity) {
        (DefaultAuthorization::AllAuthenticated, Some(_)) => (
            true,
            "mesh default all-authenticated: the caller has a mesh identity",
        ),
        (DefaultAuthorization::AllAuthenticated, None) if caller.permissive => (
            true,
            "mesh default all-authenticated, permissive mode: plaintext callers pass",
        ),
        (DefaultAuthorization::AllAuthenticated, None) => (
            false,
            "mesh default all-authenticated: the caller proved no mesh identity",
        ),
        (DefaultAuthorization::Deny, _) => (false, "mesh default deny: no policy allows it"),
    };
    Decision {
        allowed,
        policy: None,
        rule: None,
        reason: reason.to_owned(),
        audit_denied_by,
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
