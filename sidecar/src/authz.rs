//! Authorization on the inbound listener: before a call reaches the local
//! app, the caller's proven identity (the mTLS peer) and the method are
//! checked against the service's policies from the pushed table, with the
//! same [`mesh::model::authorize`] that `meshctl auth can-i` runs.
//!
//! A refused call is answered PERMISSION_DENIED (`x-mesh-error:
//! unauthorized`) and never reaches the app; the policy and rule that
//! decided go to the log (target `authz`), the call's span (`mesh.authz.*`)
//! and `mesh_authz_decisions_total{service, policy, decision}`. Claims a
//! gateway forwarded (`x-mesh-auth-claims`) count only when the peer's
//! certificate proves a gateway identity.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use mesh::identity::{PeerIdentity, Workload};
use mesh::model::{authorize, Caller, Decision};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::call::error::ProxyError;
use crate::server::InboundMode;
use crate::settings::MeshMtlsMode;
use crate::table::LiveTable;

/// Verified claims a gateway forwards, as a JSON object of strings.
pub const CLAIMS_HEADER: &str = "x-mesh-auth-claims";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    service: Arc<str>,
    policy: String,
    decision: &'static str,
}

/// `mesh_authz_decisions_total`: bounded by the policies in the table
/// (plus `default`), never by what callers send.
#[derive(Debug, Clone, Default)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl AuthzMetrics {
    /// Registers the counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "authz_decisions",
            "Inbound authorization decisions, by service, deciding policy (default: the mesh-wide default) and decision (allow, deny, audit-deny)",
            self.decisions.clone(),
        );
    }
}

/// The inbound listener's authorizer for the local app's service.
#[derive(Debug, Clone)]
pub struct Authorizer {
    service: Arc<str>,
    table: Arc<LiveTable>,
    mode: InboundMode,
    metrics: AuthzMetrics,
}

impl Authorizer {
    /// Checks calls to `service` against the policies of `table` (as
    /// pushed); `mode` says whether plaintext callers are let in.
    pub fn new(
        service: Arc<str>,
        table: Arc<LiveTable>,
        mode: InboundMode,
        metrics: AuthzMetrics,
    ) -> Self {
        Self {
            service,
            table,
            mode,
            metrics,
        }
    }

    /// Decides one call of `path` (`/package.Service/Method`) by `peer`
    /// with `headers`; an error is the answer to send instead.
    pub fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        span: &Span,
    ) -> Result<Decision, ProxyError> {
        let identity = peer.and_then(|p| p.0.as_ref());
        let from_gateway = identity.is_some_and(|id| matches!(id.workload(), Workload::Gateway(_)));
        let table = self.table.load();
        let source = table.source();
        // Parsed only when a rule of this service's policies asks for claims.
        let claims = (from_gateway && claims_needed(&source.authorization_policies, &self.service))
            .then(|| gateway_claims(headers))
            .flatten();
        let caller = Caller {
            identity,
            claims: claims.as_ref(),
            permissive: self.mode.get() == MeshMtlsMode::Permissive,
        };
        let method = path.strip_prefix('/').unwrap_or(path);
        let decision = authorize(
            &source.authorization_policies,
            source.default_authorization,
            &self.service,
            method,
            &caller,
        );
        self.record(&decision, method, identity.map(ToString::to_string), span);
        if decision.allowed {
            return Ok(decision);
        }
        Err(ProxyError::Unauthorized {
            caller: identity.map_or_else(|| "a plaintext caller".to_owned(), ToString::to_string),
            method: method.to_owned(),
            service: self.service.clone(),
        })
    }

    /// The table version the decisions are made with.
    pub fn table_version(&self) -> String {
        self.table.load().version().to_owned()
    }

    /// A decision in a few words, for the debug header.
    pub fn explain(&self, decided: &Result<Decision, ProxyError>) -> String {
        match decided {
            Ok(decision) => format!(
                "authz={} policy={} rule={}",
                decision.label(),
                decision
                    .policy
                    .as_deref()
                    .or(decision.audit_denied_by.as_deref())
                    .unwrap_or("default"),
                decision
                    .rule
                    .map_or_else(|| "-".to_owned(), |r| r.to_string())
            ),
            Err(_) => "authz=deny".to_owned(),
        }
    }

    fn record(&self, decision: &Decision, method: &str, caller: Option<String>, span: &Span) {
        let label = decision.label();
        let policy = decision
            .policy
            .clone()
            .or_else(|| decision.audit_denied_by.clone())
            .unwrap_or_else(|| "default".to_owned());
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                service: self.service.clone(),
                policy: policy.clone(),
                decision: label,
            })
            .inc();
        if !span.is_none() {
            span.set_attribute("mesh.authz.decision", label);
            span.set_attribute("mesh.authz.policy", policy.clone());
            if let Some(rule) = decision.rule {
                span.set_attribute("mesh.authz.rule", rule as i64);
            }
            span.set_attribute("mesh.authz.reason", decision.reason.clone());
        }
        let caller = caller.as_deref().unwrap_or("plaintext");
        match label {
            "deny" => {
                tracing::info!(target: "authz", service = %self.service, method, caller, policy, rule = ?decision.rule, reason = %decision.reason, "call denied")
            }
            "audit-deny" => {
                tracing::info!(target: "authz", service = %self.service, method, caller, policy, reason = %decision.reason, "call allowed; an audit-mode policy would deny it")
            }
            _ => {
                tracing::trace!(target: "authz", service = %self.service, method, caller, policy, "call allowed")
            }
        }
    }
}

/// True when a policy of `service` has a rule on gateway callers' claims.
fn claims_needed(policies: &[mesh::model::AuthorizationPolicy], service: &str) -> bool {
    policies
        .iter()
        .filter(|p| p.spec.service == service)
        .flat_map(|p| &p.spec.rules)
        .flat_map(|r| &r.from)
        .any(|f| f.gateway.as_ref().is_some_and(|g| !g.claims.is_empty()))
}

/// The claims in `x-mesh-auth-claims` (a JSON object; non-string values
/// are kept as their JSON text). Absent or malformed: none.
fn gateway_claims(headers: &HeaderMap) -> Option<BTreeMap<String, String>> {
    let raw = headers.get(CLAIMS_HEADER)?.to_str().ok()?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
    Some(
        object
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
    )
}
