//! The plan's documents through the control plane's MeshAdmin API, as the
//! plan's admin operator.

use mesh::model::{Bootstrap, Route};
use mesh::proto::mesh::v1::mesh_admin_client::MeshAdminClient;
use mesh::proto::mesh::v1::{ApplyPolicyRequest, ApplyRouteRequest};
use tonic::transport::Channel;

use super::IdentityLayout;

/// Applies `routes` through the control plane at `uri` (whatever is
/// stored is overwritten); returns the highest revision written.
pub async fn apply_routes(
    uri: &str,
    routes: &[Route],
    identity: Option<&IdentityLayout>,
) -> Result<i64, tonic::Status> {
    let documents = Bootstrap {
        routes: routes.to_vec(),
        ..Bootstrap::default()
    };
    apply_documents(uri, &documents, identity).await
}

/// Applies the request authentications, authorization policies and routes
/// of `documents` through the control plane at `uri`, in that order (the
/// guards before the paths they guard; whatever is stored is
/// overwritten); returns the highest revision written.
pub async fn apply_documents(
    uri: &str,
    documents: &Bootstrap,
    identity: Option<&IdentityLayout>,
) -> Result<i64, tonic::Status> {
    let mut client = admin_client(uri, identity).await?;
    let mut revision = 0;
    for authentication in &documents.request_authentications {
        let applied = client
            .apply_request_authentication(ApplyPolicyRequest {
                policy_json: json(authentication)?,
                expected_revision: None,
            })
            .await?
            .into_inner();
        revision = revision.max(applied.policy.map_or(0, |p| p.revision));
    }
    for policy in &documents.authorization_policies {
        let applied = client
            .apply_authorization_policy(ApplyPolicyRequest {
                policy_json: json(policy)?,
                expected_revision: None,
            })
            .await?
            .into_inner();
        revision = revision.max(applied.policy.map_or(0, |p| p.revision));
    }
    for route in &documents.routes {
        let applied = client
            .apply_route(ApplyRouteRequest {
                route_json: json(route)?,
                expected_revision: None,
            })
            .await?
            .into_inner();
        revision = revision.max(applied.route.map_or(0, |r| r.revision));
    }
    Ok(revision)
}

/// A MeshAdmin client of the control plane at `uri`, as the plan's admin
/// operator when the mesh has identities.
pub async fn admin_client(
    uri: &str,
    identity: Option<&IdentityLayout>,
) -> Result<MeshAdminClient<Channel>, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let channel = match identity {
        None => endpoint.connect().await,
        Some(identity) => {
            let tls = identity
                .operator_tls()
                .map_err(|e| tonic::Status::unauthenticated(format!("operator credential: {e}")))?;
            let peer = mesh::identity::SpiffeId::new(
                &identity.trust_domain,
                mesh::identity::Workload::ControlPlane,
            )
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            endpoint
                .connect_with_connector(mesh::identity::transport::Connector::new(tls, peer))
                .await
        }
    }
    .map_err(|e| tonic::Status::unavailable(format!("{uri}: {e}")))?;
    Ok(MeshAdminClient::new(channel))
}

/// A document as the admin calls carry it.
fn json<T: serde::Serialize>(document: &T) -> Result<String, tonic::Status> {
    serde_json::to_string(document).map_err(|e| tonic::Status::internal(e.to_string()))
}
