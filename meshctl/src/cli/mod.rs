//! `meshctl`'s subcommands that talk to the control plane's admin API, one
//! module each; the binary only parses flags and calls their `run`.
//!
//! Each module keeps its pure part (parsing, shares, rendering) apart from
//! the calls, so it is tested without a server.

pub mod apply;
pub mod auth;
pub mod authentications;
pub mod check;
pub mod connect;
pub mod dashboard;
pub mod delete;
pub mod describe;
pub mod get;
pub mod health;
pub mod identity;
pub mod mtls;
pub mod output;
pub mod policies;
pub mod rotate;
pub mod scrape;
pub mod stat;
pub mod status;
pub mod top;

use anyhow::Context;
use mesh::model::Route;
use mesh::proto::mesh::v1::{GetRouteRequest, StoredRoute};

pub use connect::{AdminClient, ControlPlaneArgs, GrpcError};

/// A route as the control plane stores it: the document and its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionedRoute {
    /// The route document.
    pub route: Route,
    /// The store's revision of it (what compare-and-swap writes compare).
    pub revision: i64,
}

impl TryFrom<&StoredRoute> for RevisionedRoute {
    type Error = anyhow::Error;

    fn try_from(stored: &StoredRoute) -> anyhow::Result<Self> {
        let route = serde_json::from_str(&stored.route_json).with_context(|| {
            format!(
                "cannot decode the route at revision {} sent by the control plane",
                stored.revision
            )
        })?;
        Ok(Self {
            route,
            revision: stored.revision,
        })
    }
}

/// One route by name; NOT_FOUND becomes a plain "not found".
async fn fetch_route(client: &mut AdminClient, name: &str) -> anyhow::Result<RevisionedRoute> {
    let request = GetRouteRequest {
        name: name.to_owned(),
    };
    match client.get_route(request).await {
        Ok(response) => RevisionedRoute::try_from(&response.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("route {name:?} not found")
        }
        Err(status) => Err(GrpcError(status)).with_context(|| format!("cannot get route {name:?}")),
    }
}

/// The kind of object `delete` and `describe` act on (only routes so far);
/// like kubectl, the singular and the plural both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteKind {
    /// Routes.
    #[value(alias = "routes")]
    Route,
    /// Authorization policies.
    #[value(alias = "authorizationpolicies", alias = "authz")]
    Authorizationpolicy,
    /// Request authentications.
    #[value(alias = "requestauthentications", alias = "authn")]
    Requestauthentication,
    /// A mesh service: who may call which of its methods (describe only).
    #[value(alias = "services", alias = "svc")]
    Service,
}
