//! `meshctl delete route|authorizationpolicy|requestauthentication NAME`.

use anyhow::{bail, Context};
use mesh::proto::mesh::v1::DeleteRouteRequest;

use super::output::print;
use super::{ControlPlaneArgs, GrpcError, RouteKind};

/// Options of `meshctl delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// What to delete.
    pub kind: RouteKind,
    /// Its name.
    pub name: String,
}

/// Runs `meshctl delete`.
pub async fn run(control_plane: &ControlPlaneArgs, args: DeleteArgs) -> anyhow::Result<()> {
    if args.kind == RouteKind::Service {
        bail!("a mesh service is its registered endpoints: it cannot be deleted, only described");
    }
    let mut client = control_plane.connect().await?;
    if args.kind == RouteKind::Requestauthentication {
        super::authentications::delete(&mut client, &args.name).await?;
        return print(&format!("requestauthentication/{} deleted\n", args.name));
    }
    if args.kind == RouteKind::Authorizationpolicy {
        super::policies::delete(&mut client, &args.name).await?;
        return print(&format!("authorizationpolicy/{} deleted\n", args.name));
    }
    let request = DeleteRouteRequest {
        name: args.name.clone(),
        expected_revision: None,
    };
    match client.delete_route(request).await {
        Ok(_) => print(&format!("route/{} deleted\n", args.name)),
        Err(status) if status.code() == tonic::Code::NotFound => {
            bail!("route {:?} not found", args.name)
        }
        Err(status) => {
            Err(GrpcError(status)).with_context(|| format!("cannot delete route {:?}", args.name))
        }
    }
}
