//! Endpoint health as every proxy of the mesh sees it: each proxy keeps its
//! own circuit breakers, so `meshctl describe` asks each connected proxy's
//! admin port (`/endpoints`) and shows where an endpoint is out of rotation
//! and why.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh::proto::mesh::v1::{ConnectedSidecar, RegisteredEndpoint};
use serde::Deserialize;

use super::output::Table;

/// One proxy's view of one endpoint (a row of its `/endpoints`).
#[derive(Debug, Clone, Deserialize)]
pub struct EndpointView {
    /// The endpoint's address.
    pub address: String,
    /// `healthy`, `ejected` or `probing`.
    pub state: String,
    /// Time left of an ejection.
    #[serde(default)]
    pub ejected_for_ms: Option<u64>,
    /// Why it last failed.
    #[serde(default)]
    pub last_failure: String,
    /// Calls in flight from that proxy.
    #[serde(default)]
    pub in_flight: u64,
}

/// Fetches `/endpoints` from every proxy with an admin address; proxies
/// that do not answer are listed by name.
pub async fn collect(
    proxies: &[ConnectedSidecar],
) -> (Vec<(String, Vec<EndpointView>)>, Vec<String>) {
    let mut views = Vec::new();
    let mut silent = Vec::new();
    for proxy in proxies {
        let name = if proxy.gateway {
            format!("gateway/{}", proxy.instance)
        } else {
            format!("{}/{}", proxy.service, proxy.instance)
        };
        let Ok(addr) = proxy.admin_address.parse::<SocketAddr>() else {
            silent.push(name);
            continue;
        };
        let fetched = crate::demo::admin_call(addr, http::Method::GET, "/endpoints").await;
        match fetched {
            Ok((200, body)) => match serde_json::from_str::<Vec<EndpointView>>(&body) {
                Ok(list) => views.push((name, list)),
                Err(_) => silent.push(name),
            },
            _ => silent.push(name),
        }
    }
    (views, silent)
}

/// The health section of `describe`: for each endpoint of the route's
/// destination, which proxies have it in rotation and which do not.
pub fn render(
    endpoints: &[RegisteredEndpoint],
    views: &[(String, Vec<EndpointView>)],
    silent: &[String],
) -> String {
    let mut table = Table::new([
        "ENDPOINT",
        "ADDRESS",
        "IN ROTATION AT",
        "OUT OF ROTATION AT",
    ]);
    let mut sorted: Vec<&RegisteredEndpoint> = endpoints.iter().collect();
    sorted.sort_by(|a, b| a.instance.cmp(&b.instance));
    for endpoint in sorted {
        let mut healthy = 0;
        let mut out: BTreeMap<&str, String> = BTreeMap::new();
        for (proxy, list) in views {
            let Some(view) = list.iter().find(|v| v.address == endpoint.address) else {
                continue;
            };
            if view.state == "healthy" {
                healthy += 1;
                continue;
            }
            let left = view
                .ejected_for_ms
                .map(|ms| format!(", {:.1}s left", ms as f64 / 1000.0))
                .unwrap_or_default();
            let why = if view.last_failure.is_empty() {
                String::new()
            } else {
                format!(", last failure: {}", view.last_failure)
            };
            out.insert(proxy, format!("{proxy} ({}{left}{why})", view.state));
        }
        table.row([
            endpoint.instance.clone(),
            endpoint.address.clone(),
            format!("{healthy} prox{}", if healthy == 1 { "y" } else { "ies" }),
            if out.is_empty() {
                "-".to_owned()
            } else {
                out.into_values().collect::<Vec<_>>().join("; ")
            },
        ]);
    }
    let mut text = format!(
        "\nEndpoint health across the mesh (each proxy's breakers):\n{}",
        table.render()
    );
    if !silent.is_empty() {
        text.push_str(&format!("  (no answer from: {})\n", silent.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_are_named_with_their_proxy_and_reason() {
        let endpoints = vec![RegisteredEndpoint {
            service: "payments".into(),
            instance: "payments-1".into(),
            address: "10.0.0.1:15006".into(),
            version: "v1".into(),
            weight: 1,
            grpc_services: vec![],
        }];
        let view = |state: &str| EndpointView {
            address: "10.0.0.1:15006".into(),
            state: state.into(),
            ejected_for_ms: (state == "ejected").then_some(2500),
            last_failure: "grpc-status 14".into(),
            in_flight: 0,
        };
        let text = render(
            &endpoints,
            &[
                ("gateway/gw".into(), vec![view("ejected")]),
                ("orders/orders-1".into(), vec![view("healthy")]),
            ],
            &["catalog/catalog-1".into()],
        );
        assert!(text.contains("1 proxy"), "{text}");
        assert!(
            text.contains("gateway/gw (ejected, 2.5s left, last failure: grpc-status 14)"),
            "{text}"
        );
        assert!(text.contains("no answer from: catalog/catalog-1"), "{text}");
    }
}
