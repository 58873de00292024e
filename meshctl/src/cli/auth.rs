//! `meshctl auth can-i --from CALLER --to pkg.Service/Method`: whether a
//! call would be allowed, and the policy and rule that decide, from the
//! policies and default the control plane pushes, evaluated by the same
//! function the callee's sidecar runs (like `kubectl auth can-i`; exits 1
//! on "no"). And `meshctl auth default [all-authenticated|deny]`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use mesh::identity::{SpiffeId, Workload};
use mesh::model::{authorize, Caller, DefaultAuthorization};
use mesh::proto::mesh::v1::{GetDefaultAuthorizationRequest, SetDefaultAuthorizationRequest};

use super::output::print;
use super::{AdminClient, ControlPlaneArgs, GrpcError};

/// `meshctl auth ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Would this caller be allowed to call this method? Prints yes or no
    /// and what decided; exits 1 on no.
    CanI(CanIArgs),
    /// Show the mesh-wide default for services no ALLOW policy names, or
    /// set it (admins only).
    Default(DefaultArgs),
}

/// Options of `meshctl auth can-i`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanIArgs {
    /// The caller: a mesh service name, a SPIFFE ID, or `gateway` (an
    /// external client through the gateway, with `--claim`s).
    #[arg(long)]
    pub from: String,
    /// The method: `package.Service/Method`.
    #[arg(long)]
    pub to: String,
    /// The mesh service called (default: the destination of the route
    /// that takes the method).
    #[arg(long)]
    pub service: Option<String>,
    /// A verified claim of a gateway caller, `name=value` (repeatable).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
    /// The trust domain of service names given to `--from`.
    #[arg(long, default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// Options of `meshctl auth default`.
#[derive(Debug, Clone, clap::Args)]
pub struct DefaultArgs {
    /// `all-authenticated` or `deny`; absent: show the current one.
    pub value: Option<String>,
}

/// Runs `meshctl auth`.
pub async fn run(control_plane: &ControlPlaneArgs, command: AuthCommand) -> anyhow::Result<()> {
    let mut client = control_plane.connect().await?;
    match command {
        AuthCommand::CanI(args) => can_i(&mut client, args).await,
        AuthCommand::Default(args) => {
            let response = match args.value {
                None => client
                    .get_default_authorization(GetDefaultAuthorizationRequest {})
                    .await
                    .map_err(GrpcError)
                    .context("cannot read the default authorization")?,
                Some(value) => client
                    .set_default_authorization(SetDefaultAuthorizationRequest {
                        default: value,
                        expected_revision: None,
                    })
                    .await
                    .map_err(GrpcError)
                    .context("cannot set the default authorization")?,
            }
            .into_inner();
            print(&format!(
                "default authorization: {} (revision {})\n",
                response.default, response.revision
            ))
        }
    }
}

async fn can_i(client: &mut AdminClient, args: CanIArgs) -> anyhow::Result<()> {
    let identity = caller_identity(&args.from, &args.trust_domain)?;
    let claims = parse_claims(&args.claims)?;
    let method = args.to.trim_start_matches('/').to_owned();
    let Some((grpc_service, _)) = method.split_once('/') else {
        bail!("--to {method:?}: not package.Service/Method");
    };
    let policies = super::policies::fetch(client, None).await?;
    let policies: Vec<_> = policies.into_iter().map(|p| p.policy).collect();
    let default = client
        .get_default_authorization(GetDefaultAuthorizationRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot read the default authorization")?
        .into_inner()
        .default;
    let default = if default == "deny" {
        DefaultAuthorization::Deny
    } else {
        DefaultAuthorization::AllAuthenticated
    };
    let service = match args.service {
        Some(service) => service,
        None => destination_of(client, grpc_service, &method).await?,
    };
    let caller = Caller {
        identity: Some(&identity),
        claims: (!claims.is_empty()).then_some(&claims),
        permissive: false,
    };
    let decision = authorize(&policies, default, &service, &method, &caller);
    let answer = if decision.allowed { "yes" } else { "no" };
    let mut text = format!(
        "{answer}: {identity} calling {method} on {service}: {}\n",
        decision.reason
    );
    if let Some(audit) = &decision.audit_denied_by {
        text.push_str(&format!("(audit-mode policy {audit} would deny it)\n"));
    }
    print(&text)?;
    if !decision.allowed {
        std::process::exit(1);
    }
    Ok(())
}

/// `orders` (a service), `gateway`, or a SPIFFE ID.
fn caller_identity(from: &str, trust_domain: &str) -> anyhow::Result<SpiffeId> {
    if from.starts_with("spiffe://") {
        return SpiffeId::parse(from).with_context(|| format!("--from {from:?}"));
    }
    let workload = if from == "gateway" {
        Workload::Gateway("gateway".to_owned())
    } else {
        Workload::Service(from.to_owned())
    };
    SpiffeId::new(trust_domain, workload).with_context(|| format!("--from {from:?}"))
}

fn parse_claims(claims: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    claims
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--claim {c:?}: not name=value"))
        })
        .collect()
}

/// The mesh service the routes send `method` to.
async fn destination_of(
    client: &mut AdminClient,
    grpc_service: &str,
    method: &str,
) -> anyhow::Result<String> {
    let routes = client
        .list_routes(mesh::proto::mesh::v1::ListRoutesRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot list routes")?
        .into_inner()
        .routes;
    let method_path = format!("/{method}");
    let service_path = format!("/{grpc_service}/");
    let mut best = None;
    for stored in &routes {
        let Ok(route) = serde_json::from_str::<mesh::model::Route>(&stored.route_json) else {
            continue;
        };
        let path = route.path();
        if path == method_path {
            return Ok(route.spec.destination);
        }
        if path == service_path {
            best = Some(route.spec.destination);
        }
    }
    best.with_context(|| format!("no route takes {method}; name the service with --service"))
}
