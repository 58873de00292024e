//! `meshctl describe route NAME`: where the route's calls go and why. For
//! the default split and each header rule: each subset's share, and under it
//! the destination's endpoints in that subset with their share of the calls,
//! the way the sidecars balance them (a subset by the split's weights, then
//! an endpoint of it by the endpoints' weights).

use anyhow::Context;
use mesh::model::{HeaderMatch, Route, WeightedSubset};
use mesh::proto::mesh::v1::{
    ListEndpointsRequest, ListRoutesRequest, RegisteredEndpoint, StatusRequest,
};

use super::health;
use super::output::{print, Table};
use super::{fetch_route, ControlPlaneArgs, GrpcError, RevisionedRoute, RouteKind};

/// Options of `meshctl describe`.
#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    /// What to describe.
    pub kind: RouteKind,
    /// Its name.
    pub name: String,
}

/// Runs `meshctl describe`.
pub async fn run(control_plane: &ControlPlaneArgs, args: DescribeArgs) -> anyhow::Result<()> {
    let mut client = control_plane.connect().await?;
    if args.kind == RouteKind::Service {
        let policies = super::policies::fetch(&mut client, None).await?;
        let default = client
            .get_default_authorization(mesh::proto::mesh::v1::GetDefaultAuthorizationRequest {})
            .await
            .map_err(GrpcError)
            .context("cannot read the default authorization")?
            .into_inner()
            .default;
        return super::output::print(&super::policies::callers(&args.name, &policies, &default));
    }
    if args.kind == RouteKind::Requestauthentication {
        let found = super::authentications::fetch(&mut client, Some(&args.name)).await?;
        let mut text = super::authentications::table(&found).render();
        text.push('\n');
        text.push_str(&super::authentications::render(
            &found,
            super::output::OutputFormat::Yaml,
            true,
        )?);
        return super::output::print(&text);
    }
    if args.kind == RouteKind::Authorizationpolicy {
        let policies = super::policies::fetch(&mut client, Some(&args.name)).await?;
        let mut text = super::policies::table(&policies).render();
        text.push('\n');
        text.push_str(&super::policies::render(
            &policies,
            super::output::OutputFormat::Yaml,
            true,
        )?);
        return super::output::print(&text);
    }
    let route = fetch_route(&mut client, &args.name).await?;
    let destination = route.route.spec.destination.clone();
    let endpoints = client
        .list_endpoints(ListEndpointsRequest {
            service: destination.clone(),
        })
        .await
        .map_err(GrpcError)
        .with_context(|| format!("cannot list the endpoints of {destination:?}"))?
        .into_inner()
        .endpoints;
    // Other routes, to say which methods a more specific route takes away.
    let others: Vec<Route> = client
        .list_routes(ListRoutesRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot list routes")?
        .into_inner()
        .routes
        .iter()
        .filter_map(|stored| RevisionedRoute::try_from(stored).ok())
        .map(|r| r.route)
        .collect();
    let proxies = client
        .status(StatusRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot read the mesh's status")?
        .into_inner()
        .sidecars;
    let (views, silent) = health::collect(&proxies).await;
    let mut text = render(&route, &endpoints, &others);
    text.push_str(&health::render(&endpoints, &views, &silent));
    print(&text)
}

/// One subset of a split and the calls it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetShare {
    /// The `version` label; `None` for an empty split (every endpoint).
    pub subset: Option<String>,
    /// Its weight in the split.
    pub weight: u32,
    /// Its percentage of the calls that reach this split.
    pub percent: f64,
    /// Its endpoints, by instance.
    pub endpoints: Vec<EndpointShare>,
}

/// One endpoint and the calls it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointShare {
    /// Instance id.
    pub instance: String,
    /// Its sidecar's address.
    pub address: String,
    /// Its weight among the endpoints of its subset.
    pub weight: u32,
    /// Its percentage of the calls that reach this split.
    pub percent: f64,
}

/// How one split shares its calls among the subsets and their endpoints.
/// An empty split means every endpoint of the service, by weight.
pub fn shares(split: &[WeightedSubset], endpoints: &[RegisteredEndpoint]) -> Vec<SubsetShare> {
    let subset_share = |subset: Option<&str>, weight: u32, percent: f64| {
        let mut members: Vec<&RegisteredEndpoint> = endpoints
            .iter()
            .filter(|e| subset.is_none_or(|s| e.version == s))
            .collect();
        members.sort_by(|a, b| a.instance.cmp(&b.instance));
        let total: u64 = members.iter().map(|e| u64::from(e.weight)).sum();
        SubsetShare {
            subset: subset.map(str::to_owned),
            weight,
            percent,
            endpoints: members
                .into_iter()
                .map(|e| EndpointShare {
                    instance: e.instance.clone(),
                    address: e.address.clone(),
                    weight: e.weight,
                    percent: ratio(u64::from(e.weight), total) * percent,
                })
                .collect(),
        }
    };
    if split.is_empty() {
        return vec![subset_share(None, 1, 100.0)];
    }
    let total: u64 = split.iter().map(|s| u64::from(s.weight)).sum();
    split
        .iter()
        .map(|s| {
            let percent = ratio(u64::from(s.weight), total) * 100.0;
            subset_share(Some(&s.subset), s.weight, percent)
        })
        .collect()
}

fn ratio(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// The whole description.
pub fn render(
    stored: &RevisionedRoute,
    endpoints: &[RegisteredEndpoint],
    others: &[Route],
) -> String {
    let route = &stored.route;
    let spec = &route.spec;
    let mut out = String::new();
    let method = match &spec.matches.method {
        Some(method) => format!("method {method}"),
        None => "every method".to_owned(),
    };
    out.push_str(&format!("Name:         {}\n", route.metadata.name));
    out.push_str(&format!("Revision:     {}\n", stored.revision));
    out.push_str(&format!(
        "Match:        {} ({method})\n",
        spec.matches.service
    ));
    out.push_str(&format!(
        "Destination:  {} ({} endpoint{})\n",
        spec.destination,
        endpoints.len(),
        if endpoints.len() == 1 { "" } else { "s" }
    ));
    if spec.matches.method.is_none() {
        for other in others {
            let m = &other.spec.matches;
            if let (true, Some(method)) = (m.service == spec.matches.service, &m.method) {
                out.push_str(&format!(
                    "Overridden:   method {method} goes to route/{} (a method route wins)\n",
                    other.metadata.name
                ));
            }
        }
    }
    out.push_str(
        "\nShares are of the calls each rule (or the default) takes; rules are tried in order.\n",
    );

    for (i, rule) in spec.rules.iter().enumerate() {
        out.push_str(&format!(
            "\nRule {}: {}\n",
            i + 1,
            headers_summary(&rule.headers)
        ));
        out.push_str(&split_table(&shares(&rule.split, endpoints)));
    }
    let default = if spec.rules.is_empty() {
        "every call"
    } else {
        "calls no rule matched"
    };
    out.push_str(&format!("\nDefault ({default}):\n"));
    out.push_str(&split_table(&shares(&spec.split, endpoints)));

    let unreached = unreached(route, endpoints);
    if !unreached.is_empty() {
        out.push_str("\nEndpoints this route never reaches (their version is in no split):\n");
        for e in unreached {
            out.push_str(&format!(
                "  {}   {}   version {}\n",
                e.instance, e.address, e.version
            ));
        }
    }
    out
}

/// `x-canary = "true", x-user ~ "a.*"`.
fn headers_summary(headers: &[HeaderMatch]) -> String {
    let conditions: Vec<String> = headers
        .iter()
        .map(|h| match (&h.exact, &h.regex) {
            (Some(exact), _) => format!("{} = {exact:?}", h.name),
            (None, Some(regex)) => format!("{} ~ {regex:?} (regex)", h.name),
            (None, None) => h.name.clone(),
        })
        .collect();
    conditions.join(", ")
}

/// One split as an indented table: each subset, its endpoints under it.
fn split_table(shares: &[SubsetShare]) -> String {
    let mut table = Table::new(["SUBSET / ENDPOINT", "ADDRESS", "WEIGHT", "SHARE"]);
    for share in shares {
        let label = match &share.subset {
            Some(subset) => subset.clone(),
            None => "* (every endpoint)".to_owned(),
        };
        let weight = if share.subset.is_some() {
            share.weight.to_string()
        } else {
            String::new()
        };
        table.row([label, String::new(), weight, percent(share.percent)]);
        if share.endpoints.is_empty() && share.weight > 0 {
            table.note("  no endpoints: calls to this subset fail with UNAVAILABLE");
        }
        for e in &share.endpoints {
            table.row([
                format!("  {}", e.instance),
                e.address.clone(),
                e.weight.to_string(),
                percent(e.percent),
            ]);
        }
    }
    let mut out = String::new();
    for line in table.render().lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

/// Endpoints of the destination that no split of the route sends calls to.
fn unreached<'a>(
    route: &Route,
    endpoints: &'a [RegisteredEndpoint],
) -> Vec<&'a RegisteredEndpoint> {
    let splits =
        std::iter::once(&route.spec.split).chain(route.spec.rules.iter().map(|r| &r.split));
    let mut reached_versions = Vec::new();
    for split in splits {
        if split.is_empty() {
            return Vec::new();
        }
        reached_versions.extend(
            split
                .iter()
                .filter(|s| s.weight > 0)
                .map(|s| s.subset.as_str()),
        );
    }
    let mut unreached: Vec<_> = endpoints
        .iter()
        .filter(|e| !reached_versions.contains(&e.version.as_str()))
        .collect();
    unreached.sort_by(|a, b| a.instance.cmp(&b.instance));
    unreached
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::apply::parse_routes;

    fn endpoint(instance: &str, version: &str, weight: u32) -> RegisteredEndpoint {
        RegisteredEndpoint {
            service: "inventory".into(),
            instance: instance.into(),
            address: format!("127.0.0.1:71{:02}", instance.len()),
            version: version.into(),
            weight,
            grpc_services: vec![],
        }
    }

    fn split(parts: &[(&str, u32)]) -> Vec<WeightedSubset> {
        parts
            .iter()
            .map(|(subset, weight)| WeightedSubset {
                subset: (*subset).into(),
                weight: *weight,
            })
            .collect()
    }

    /// `v1 90.0%: a 67.5%, b 22.5%`, one per subset.
    fn summary(shares: &[SubsetShare]) -> Vec<String> {
        shares
            .iter()
            .map(|s| {
                let endpoints: Vec<String> = s
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {}", e.instance, percent(e.percent)))
                    .collect();
                format!(
                    "{} {}: {}",
                    s.subset.as_deref().unwrap_or("*"),
                    percent(s.percent),
                    endpoints.join(", ")
                )
            })
            .collect()
    }

    #[test]
    fn canary_split_shares_each_subset_by_endpoint_weight() {
        let endpoints = [
            endpoint("a", "v1", 3),
            endpoint("b", "v1", 1),
            endpoint("c", "v2", 5),
        ];
        let shares = shares(&split(&[("v1", 90), ("v2", 10)]), &endpoints);
        assert_eq!(
            summary(&shares),
            ["v1 90.0%: a 67.5%, b 22.5%", "v2 10.0%: c 10.0%"]
        );
    }

    #[test]
    fn empty_split_is_every_endpoint_by_weight() {
        let endpoints = [endpoint("b", "v2", 1), endpoint("a", "v1", 3)];
        assert_eq!(
            summary(&shares(&[], &endpoints)),
            ["* 100.0%: a 75.0%, b 25.0%"]
        );
    }

    #[test]
    fn subset_without_endpoints_keeps_its_share_and_is_flagged() {
        let shares = shares(
            &split(&[("v1", 1), ("v3", 1), ("v9", 0)]),
            &[endpoint("a", "v1", 1)],
        );
        assert_eq!(percent(shares[1].percent), "50.0%");
        assert!(shares[1].endpoints.is_empty());
        assert_eq!(percent(shares[2].percent), "0.0%");
        let table = split_table(&shares);
        // Flagged once: the zero-weight subset takes no calls to fail.
        assert_eq!(
            table
                .matches("no endpoints: calls to this subset fail with UNAVAILABLE")
                .count(),
            1
        );
        assert!(table.contains("v3   "), "{table}");
    }

    #[test]
    fn description_walks_rules_then_default() {
        let text = r#"
kind: Route
metadata: { name: inventory }
spec:
  match: { service: shop.inventory.v1.InventoryService }
  destination: inventory
  rules:
    - headers: [{ name: x-canary, exact: "true" }]
      split: [{ subset: v2, weight: 1 }]
  split:
    - { subset: v1, weight: 90 }
    - { subset: v2, weight: 10 }
---
kind: Route
metadata: { name: reserve }
spec:
  match: { service: shop.inventory.v1.InventoryService, method: Reserve }
  destination: inventory
"#;
        let mut routes = parse_routes("r.yaml", text).0.into_iter().map(|r| r.route);
        let route = RevisionedRoute {
            route: routes.next().unwrap(),
            revision: 9,
        };
        let others: Vec<Route> = routes.collect();
        let endpoints = [endpoint("inv-1", "v1", 1), endpoint("inv-old", "v0", 1)];
        let text = render(&route, &endpoints, &others);
        assert_eq!(
            text,
            "Name:         inventory\n\
             Revision:     9\n\
             Match:        shop.inventory.v1.InventoryService (every method)\n\
             Destination:  inventory (2 endpoints)\n\
             Overridden:   method Reserve goes to route/reserve (a method route wins)\n\
             \n\
             Shares are of the calls each rule (or the default) takes; rules are tried in order.\n\
             \n\
             Rule 1: x-canary = \"true\"\n\
             \x20 SUBSET / ENDPOINT   ADDRESS   WEIGHT   SHARE\n\
             \x20 v2                            1        100.0%\n\
             \x20   no endpoints: calls to this subset fail with UNAVAILABLE\n\
             \n\
             Default (calls no rule matched):\n\
             \x20 SUBSET / ENDPOINT   ADDRESS          WEIGHT   SHARE\n\
             \x20 v1                                   90       90.0%\n\
             \x20   inv-1             127.0.0.1:7105   1        90.0%\n\
             \x20 v2                                   10       10.0%\n\
             \x20   no endpoints: calls to this subset fail with UNAVAILABLE\n\
             \n\
             Endpoints this route never reaches (their version is in no split):\n\
             \x20 inv-old   127.0.0.1:7107   version v0\n"
        );
    }
}
