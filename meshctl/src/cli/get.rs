//! `meshctl get routes|endpoints|authorizationpolicies|requestauthentications
//! [NAME] [-o table|yaml|json]`.

use anyhow::Context;
use mesh::model::{Route, WeightedSubset};
use mesh::proto::mesh::v1::{ListEndpointsRequest, ListRoutesRequest, RegisteredEndpoint};
use serde::Serialize;

use super::output::{self, print, OutputFormat, Table};
use super::{fetch_route, ControlPlaneArgs, GrpcError, RevisionedRoute};

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    /// Routes (all, or the one named).
    #[value(alias = "route", alias = "rt")]
    Routes,
    /// Registered endpoints (all, or those of the named mesh service).
    #[value(alias = "endpoint", alias = "ep")]
    Endpoints,
    /// Authorization policies (all, or the one named).
    #[value(alias = "authorizationpolicy", alias = "authz")]
    Authorizationpolicies,
    /// Request authentications (all, or the one named).
    #[value(alias = "requestauthentication", alias = "authn")]
    Requestauthentications,
}

/// Options of `meshctl get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// What to list.
    pub resource: Resource,
    /// A route name, or for endpoints a mesh service.
    pub name: Option<String>,
    /// Output format; yaml can be fed back to `meshctl apply -f`.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs `meshctl get`.
pub async fn run(control_plane: &ControlPlaneArgs, args: GetArgs) -> anyhow::Result<()> {
    let mut client = control_plane.connect().await?;
    match args.resource {
        Resource::Routes => {
            let routes = match &args.name {
                Some(name) => vec![fetch_route(&mut client, name).await?],
                None => {
                    let list = client
                        .list_routes(ListRoutesRequest {})
                        .await
                        .map_err(GrpcError)
                        .context("cannot list routes")?
                        .into_inner();
                    for invalid in &list.invalid {
                        eprintln!("warning: invalid route in the store, skipped: {invalid}");
                    }
                    let mut routes = Vec::new();
                    for stored in &list.routes {
                        match RevisionedRoute::try_from(stored) {
                            Ok(route) => routes.push(route),
                            Err(error) => eprintln!("warning: {error:#}"),
                        }
                    }
                    routes.sort_by(|a, b| a.route.metadata.name.cmp(&b.route.metadata.name));
                    routes
                }
            };
            if routes.is_empty() && args.output == OutputFormat::Table {
                eprintln!("No routes found.");
                return Ok(());
            }
            print(&render_routes(&routes, args.output, args.name.is_some())?)
        }
        Resource::Authorizationpolicies => {
            let policies = super::policies::fetch(&mut client, args.name.as_deref()).await?;
            if policies.is_empty() && args.output == OutputFormat::Table {
                eprintln!("No authorization policies found.");
                return Ok(());
            }
            print(&super::policies::render(
                &policies,
                args.output,
                args.name.is_some(),
            )?)
        }
        Resource::Requestauthentications => {
            let found = super::authentications::fetch(&mut client, args.name.as_deref()).await?;
            if found.is_empty() && args.output == OutputFormat::Table {
                eprintln!("No request authentications found.");
                return Ok(());
            }
            print(&super::authentications::render(
                &found,
                args.output,
                args.name.is_some(),
            )?)
        }
        Resource::Endpoints => {
            let request = ListEndpointsRequest {
                service: args.name.clone().unwrap_or_default(),
            };
            let mut endpoints = client
                .list_endpoints(request)
                .await
                .map_err(GrpcError)
                .context("cannot list endpoints")?
                .into_inner()
                .endpoints;
            endpoints.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
            if endpoints.is_empty() && args.output == OutputFormat::Table {
                eprintln!("No endpoints found.");
                return Ok(());
            }
            print(&render_endpoints(&endpoints, args.output)?)
        }
    }
}

/// Routes in the chosen format. JSON is one object when one route was
/// asked for by name, an array otherwise.
pub fn render_routes(
    routes: &[RevisionedRoute],
    format: OutputFormat,
    single: bool,
) -> anyhow::Result<String> {
    let documents: Vec<&Route> = routes.iter().map(|r| &r.route).collect();
    match format {
        OutputFormat::Table => Ok(routes_table(routes).render()),
        OutputFormat::Yaml => output::yaml_stream(&documents),
        OutputFormat::Json if single && documents.len() == 1 => output::json(documents[0]),
        OutputFormat::Json => output::json(&documents),
    }
}

/// NAME, GRPC SERVICE, DESTINATION, SPLIT, RULES, EXPOSURE, REVISION.
pub fn routes_table(routes: &[RevisionedRoute]) -> Table {
    let mut table = Table::new([
        "NAME",
        "GRPC SERVICE",
        "DESTINATION",
        "SPLIT",
        "RULES",
        "EXPOSURE",
        "REVISION",
    ]);
    for RevisionedRoute { route, revision } in routes {
        let matches = &route.spec.matches;
        let grpc = match &matches.method {
            Some(method) => format!("{}/{method}", matches.service),
            None => matches.service.clone(),
        };
        table.row([
            route.metadata.name.clone(),
            grpc,
            route.spec.destination.clone(),
            split_summary(&route.spec.split),
            route.spec.rules.len().to_string(),
            match route.spec.exposure() {
                mesh::model::Exposure::Public => "public",
                mesh::model::Exposure::Internal => "internal",
            }
            .to_owned(),
            revision.to_string(),
        ]);
    }
    table
}

/// `v1:90,v2:10`, or `*` for "every endpoint".
pub fn split_summary(split: &[WeightedSubset]) -> String {
    if split.is_empty() {
        return "*".to_owned();
    }
    let parts: Vec<String> = split
        .iter()
        .map(|s| format!("{}:{}", s.subset, s.weight))
        .collect();
    parts.join(",")
}

/// An endpoint for YAML and JSON (the generated message is not `Serialize`).
#[derive(Debug, Serialize)]
struct EndpointDocument<'a> {
    service: &'a str,
    instance: &'a str,
    address: &'a str,
    version: &'a str,
    weight: u32,
    grpc_services: &'a [String],
}

impl<'a> From<&'a RegisteredEndpoint> for EndpointDocument<'a> {
    fn from(e: &'a RegisteredEndpoint) -> Self {
        Self {
            service: &e.service,
            instance: &e.instance,
            address: &e.address,
            version: &e.version,
            weight: e.weight,
            grpc_services: &e.grpc_services,
        }
    }
}

/// Endpoints in the chosen format.
pub fn render_endpoints(
    endpoints: &[RegisteredEndpoint],
    format: OutputFormat,
) -> anyhow::Result<String> {
    let documents: Vec<EndpointDocument<'_>> = endpoints.iter().map(Into::into).collect();
    match format {
        OutputFormat::Table => Ok(endpoints_table(endpoints).render()),
        OutputFormat::Yaml => output::yaml_stream(&documents),
        OutputFormat::Json => output::json(&documents),
    }
}

/// SERVICE, INSTANCE, ADDRESS, VERSION, WEIGHT, GRPC SERVICES.
pub fn endpoints_table(endpoints: &[RegisteredEndpoint]) -> Table {
    let mut table = Table::new([
        "SERVICE",
        "INSTANCE",
        "ADDRESS",
        "VERSION",
        "WEIGHT",
        "GRPC SERVICES",
    ]);
    for e in endpoints {
        table.row([
            e.service.clone(),
            e.instance.clone(),
            e.address.clone(),
            e.version.clone(),
            e.weight.to_string(),
            e.grpc_services.join(","),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::apply::parse_routes;

    const ROUTES: &str = r#"
kind: Route
metadata: { name: catalog }
spec:
  match: { service: shop.catalog.v1.CatalogService }
  destination: catalog
  exposure: public
---
kind: Route
metadata: { name: inventory-reserve }
spec:
  match: { service: shop.inventory.v1.InventoryService, method: Reserve }
  destination: inventory
  rules:
    - headers: [{ name: x-canary, exact: "true" }]
      split: [{ subset: v2, weight: 1 }]
  split:
    - { subset: v1, weight: 90 }
    - { subset: v2, weight: 10 }
"#;

    fn routes() -> Vec<RevisionedRoute> {
        let (routes, errors) = parse_routes("routes.yaml", ROUTES);
        assert!(errors.is_empty(), "{errors:?}");
        routes
            .into_iter()
            .zip([7, 12])
            .map(|(r, revision)| RevisionedRoute {
                route: r.route,
                revision,
            })
            .collect()
    }

    #[test]
    fn routes_table_summarises_match_split_and_rules() {
        assert_eq!(
            routes_table(&routes()).render(),
            "NAME                GRPC SERVICE                                 DESTINATION   SPLIT         RULES   EXPOSURE   REVISION\n\
             catalog             shop.catalog.v1.CatalogService               catalog       *             0       public     7\n\
             inventory-reserve   shop.inventory.v1.InventoryService/Reserve   inventory     v1:90,v2:10   1       internal   12\n"
        );
    }

    #[test]
    fn yaml_output_applies_back() {
        let routes = routes();
        let yaml = render_routes(&routes, OutputFormat::Yaml, false).unwrap();
        let (again, errors) = parse_routes("-", &yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let again: Vec<_> = again.into_iter().map(|r| r.route).collect();
        let before: Vec<_> = routes.into_iter().map(|r| r.route).collect();
        assert_eq!(again, before);
    }

    #[test]
    fn json_output_is_an_array_unless_one_route_was_named() {
        let routes = routes();
        let list = render_routes(&routes, OutputFormat::Json, false).unwrap();
        let list: Vec<Route> = serde_json::from_str(&list).unwrap();
        assert_eq!(list.len(), 2);
        let one = render_routes(&routes[..1], OutputFormat::Json, true).unwrap();
        let one: Route = serde_json::from_str(&one).unwrap();
        assert_eq!(one, routes[0].route);
    }

    #[test]
    fn endpoints_table_lists_grpc_services() {
        let endpoint = RegisteredEndpoint {
            service: "catalog".into(),
            instance: "catalog-0".into(),
            address: "127.0.0.1:7001".into(),
            version: "v1".into(),
            weight: 2,
            grpc_services: vec![
                "shop.catalog.v1.CatalogService".into(),
                "grpc.health.v1.Health".into(),
            ],
        };
        assert_eq!(
            endpoints_table(&[endpoint]).render(),
            "SERVICE   INSTANCE    ADDRESS          VERSION   WEIGHT   GRPC SERVICES\n\
             catalog   catalog-0   127.0.0.1:7001   v1        2        shop.catalog.v1.CatalogService,grpc.health.v1.Health\n"
        );
    }
}
