//! `meshctl get authorizationpolicies [NAME]` and the policies' part of
//! `meshctl delete`: authorization policies as stored, in the same formats
//! as routes (yaml feeds back into `meshctl apply -f`).

use anyhow::Context;
use mesh::model::{AuthorizationAction, AuthorizationMode, AuthorizationPolicy};
use mesh::proto::mesh::v1::{
    DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, StoredPolicy,
};

use super::output::{self, OutputFormat, Table};
use super::{AdminClient, GrpcError};

/// A policy and the store's revision of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionedPolicy {
    /// The policy document.
    pub policy: AuthorizationPolicy,
    /// Its revision.
    pub revision: i64,
}

impl TryFrom<&StoredPolicy> for RevisionedPolicy {
    type Error = anyhow::Error;

    fn try_from(stored: &StoredPolicy) -> anyhow::Result<Self> {
        let policy = serde_json::from_str(&stored.policy_json).with_context(|| {
            format!(
                "cannot decode the authorization policy at revision {} sent by the control plane",
                stored.revision
            )
        })?;
        Ok(Self {
            policy,
            revision: stored.revision,
        })
    }
}

/// The policy `name`, or every policy (sorted by name).
pub async fn fetch(
    client: &mut AdminClient,
    name: Option<&str>,
) -> anyhow::Result<Vec<RevisionedPolicy>> {
    if let Some(name) = name {
        let request = GetPolicyRequest {
            name: name.to_owned(),
        };
        return match client.get_authorization_policy(request).await {
            Ok(response) => Ok(vec![RevisionedPolicy::try_from(&response.into_inner())?]),
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::bail!("authorization policy {name:?} not found")
            }
            Err(status) => Err(GrpcError(status))
                .with_context(|| format!("cannot read authorization policy {name:?}")),
        };
    }
    let list = client
        .list_authorization_policies(ListPoliciesRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot list authorization policies")?
        .into_inner();
    for invalid in &list.invalid {
        eprintln!("warning: invalid authorization policy in the store, skipped: {invalid}");
    }
    let mut policies = Vec::new();
    for stored in &list.policies {
        match RevisionedPolicy::try_from(stored) {
            Ok(policy) => policies.push(policy),
            Err(error) => eprintln!("warning: {error:#}"),
        }
    }
    policies.sort_by(|a, b| a.policy.metadata.name.cmp(&b.policy.metadata.name));
    Ok(policies)
}

/// Deletes policy `name`.
pub async fn delete(client: &mut AdminClient, name: &str) -> anyhow::Result<()> {
    let request = DeletePolicyRequest {
        name: name.to_owned(),
        expected_revision: None,
    };
    match client.delete_authorization_policy(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("authorization policy {name:?} not found")
        }
        Err(status) => Err(GrpcError(status))
            .with_context(|| format!("cannot delete authorization policy {name:?}")),
    }
}

/// Policies in the chosen format; JSON is one object for one asked by name.
pub fn render(
    policies: &[RevisionedPolicy],
    format: OutputFormat,
    single: bool,
) -> anyhow::Result<String> {
    let documents: Vec<&AuthorizationPolicy> = policies.iter().map(|p| &p.policy).collect();
    match format {
        OutputFormat::Table => Ok(table(policies).render()),
        OutputFormat::Yaml => output::yaml_stream(&documents),
        OutputFormat::Json if single && documents.len() == 1 => output::json(documents[0]),
        OutputFormat::Json => output::json(&documents),
    }
}

/// NAME, SERVICE, ACTION, MODE, RULES, REVISION.
pub fn table(policies: &[RevisionedPolicy]) -> Table {
    let mut table = Table::new(["NAME", "SERVICE", "ACTION", "MODE", "RULES", "REVISION"]);
    for RevisionedPolicy { policy, revision } in policies {
        let spec = &policy.spec;
        table.row([
            policy.metadata.name.clone(),
            spec.service.clone(),
            match spec.action {
                AuthorizationAction::Allow => "ALLOW",
                AuthorizationAction::Deny => "DENY",
            }
            .to_owned(),
            match spec.mode {
                AuthorizationMode::Enforce => "enforce",
                AuthorizationMode::Audit => "audit",
            }
            .to_owned(),
            spec.rules.len().to_string(),
            revision.to_string(),
        ]);
    }
    table
}

/// `meshctl describe service NAME`: who may call which of its methods,
/// rule by rule, and what happens to everyone else.
pub fn callers(service: &str, policies: &[RevisionedPolicy], default: &str) -> String {
    let mine: Vec<&AuthorizationPolicy> = policies
        .iter()
        .map(|p| &p.policy)
        .filter(|p| p.spec.service == service)
        .collect();
    let mut table = Table::new(["POLICY", "ACTION", "MODE", "RULE", "FROM", "TO"]);
    for policy in &mine {
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            let from: Vec<String> = rule
                .from
                .iter()
                .map(|f| match (&f.service, &f.identity, &f.gateway) {
                    (Some(service), _, _) => format!("service {service}"),
                    (_, Some(identity), _) => identity.clone(),
                    (_, _, Some(gateway)) if gateway.claims.is_empty() => "gateway callers".into(),
                    (_, _, Some(gateway)) => {
                        let claims: Vec<String> = gateway
                            .claims
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        format!("gateway callers with {}", claims.join(","))
                    }
                    _ => "?".into(),
                })
                .collect();
            table.row([
                policy.metadata.name.clone(),
                match policy.spec.action {
                    AuthorizationAction::Allow => "ALLOW",
                    AuthorizationAction::Deny => "DENY",
                }
                .to_owned(),
                match policy.spec.mode {
                    AuthorizationMode::Enforce => "enforce",
                    AuthorizationMode::Audit => "audit",
                }
                .to_owned(),
                i.to_string(),
                if from.is_empty() {
                    "any mesh identity".to_owned()
                } else {
                    from.join(", ")
                },
                if rule.to.is_empty() {
                    "every method".to_owned()
                } else {
                    rule.to.join(", ")
                },
            ]);
        }
    }
    let enforced_allow = mine.iter().any(|p| {
        p.spec.action == AuthorizationAction::Allow && p.spec.mode == AuthorizationMode::Enforce
    });
    let rest = if enforced_allow {
        "everyone else: denied (the service has ALLOW policies)".to_owned()
    } else {
        format!("everyone else: the mesh default, {default}")
    };
    if mine.is_empty() {
        return format!("service {service}: no authorization policy\n{rest}\n");
    }
    format!("service {service}\n{}{rest}\n", table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_service_lists_who_may_call_what_and_everyone_else() {
        let yaml = "kind: AuthorizationPolicy
metadata: { name: payments-callers }
spec:
  service: payments
  rules:
    - from: [{ service: orders }, { gateway: { claims: { role: admin } } }]
      to: [shop.payments.v1.PaymentsService/Charge]
";
        let policy: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        let policies = [RevisionedPolicy {
            policy,
            revision: 7,
        }];
        let text = callers("payments", &policies, "all-authenticated");
        assert!(
            text.contains("service orders, gateway callers with role=admin"),
            "{text}"
        );
        assert!(
            text.contains("shop.payments.v1.PaymentsService/Charge"),
            "{text}"
        );
        assert!(text.contains("everyone else: denied"), "{text}");
        let other = callers("catalog", &policies, "all-authenticated");
        assert_eq!(
            other,
            "service catalog: no authorization policy\neveryone else: the mesh default, all-authenticated\n"
        );
    }
}
