//! `meshctl get requestauthentications [NAME]` and their part of `meshctl
//! delete` and `describe`: request authentications as stored, in the same
//! formats as routes and policies (yaml feeds back into `meshctl apply -f`).

use anyhow::Context;
use mesh::model::RequestAuthentication;
use mesh::proto::mesh::v1::{
    DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, StoredPolicy,
};

use super::output::{self, OutputFormat, Table};
use super::{AdminClient, GrpcError};

/// A request authentication and the store's revision of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionedAuthentication {
    /// The document.
    pub authentication: RequestAuthentication,
    /// Its revision.
    pub revision: i64,
}

impl TryFrom<&StoredPolicy> for RevisionedAuthentication {
    type Error = anyhow::Error;

    fn try_from(stored: &StoredPolicy) -> anyhow::Result<Self> {
        let authentication = serde_json::from_str(&stored.policy_json).with_context(|| {
            format!(
                "cannot decode the request authentication at revision {} sent by the control plane",
                stored.revision
            )
        })?;
        Ok(Self {
            authentication,
            revision: stored.revision,
        })
    }
}

/// The request authentication `name`, or every one (sorted by name).
pub async fn fetch(
    client: &mut AdminClient,
    name: Option<&str>,
) -> anyhow::Result<Vec<RevisionedAuthentication>> {
    if let Some(name) = name {
        let request = GetPolicyRequest {
            name: name.to_owned(),
        };
        return match client.get_request_authentication(request).await {
            Ok(response) => Ok(vec![RevisionedAuthentication::try_from(
                &response.into_inner(),
            )?]),
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::bail!("request authentication {name:?} not found")
            }
            Err(status) => Err(GrpcError(status))
                .with_context(|| format!("cannot read request authentication {name:?}")),
        };
    }
    let list = client
        .list_request_authentications(ListPoliciesRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot list request authentications")?
        .into_inner();
    for invalid in &list.invalid {
        eprintln!("warning: invalid request authentication in the store, skipped: {invalid}");
    }
    let mut found = Vec::new();
    for stored in &list.policies {
        match RevisionedAuthentication::try_from(stored) {
            Ok(authentication) => found.push(authentication),
            Err(error) => eprintln!("warning: {error:#}"),
        }
    }
    found.sort_by(|a, b| {
        a.authentication
            .metadata
            .name
            .cmp(&b.authentication.metadata.name)
    });
    Ok(found)
}

/// Deletes request authentication `name` (and its fetched key set).
pub async fn delete(client: &mut AdminClient, name: &str) -> anyhow::Result<()> {
    let request = DeletePolicyRequest {
        name: name.to_owned(),
        expected_revision: None,
    };
    match client.delete_request_authentication(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("request authentication {name:?} not found")
        }
        Err(status) => Err(GrpcError(status))
            .with_context(|| format!("cannot delete request authentication {name:?}")),
    }
}

/// In the chosen format; JSON is one object for one asked by name.
pub fn render(
    found: &[RevisionedAuthentication],
    format: OutputFormat,
    single: bool,
) -> anyhow::Result<String> {
    let documents: Vec<&RequestAuthentication> = found.iter().map(|a| &a.authentication).collect();
    match format {
        OutputFormat::Table => Ok(table(found).render()),
        OutputFormat::Yaml => output::yaml_stream(&documents),
        OutputFormat::Json if single && documents.len() == 1 => output::json(documents[0]),
        OutputFormat::Json => output::json(&documents),
    }
}

/// NAME, ISSUER, AUDIENCES, JWKS, REVISION.
pub fn table(found: &[RevisionedAuthentication]) -> Table {
    let mut table = Table::new(["NAME", "ISSUER", "AUDIENCES", "JWKS", "REVISION"]);
    for RevisionedAuthentication {
        authentication,
        revision,
    } in found
    {
        let spec = &authentication.spec;
        let source = match (&spec.jwks.method, &spec.jwks.file) {
            (Some(method), _) => method.clone(),
            (None, Some(file)) => file.clone(),
            (None, None) => String::new(),
        };
        table.row([
            authentication.metadata.name.clone(),
            spec.issuer.clone(),
            spec.audiences.join(","),
            source,
            revision.to_string(),
        ]);
    }
    table
}
