//! The gateway as an edge: only `exposure: public` routes are reachable
//! from outside, the gateway's reflection shows only what is public, and
//! routing headers from outside steer nothing unless a route allows them.
//! Real processes, real mTLS inside, grpcurl outside.

mod support;

use mesh::model::{HeaderMatch, Route, RouteRule, WeightedSubset};
use meshctl::demo::InstanceSpec;
use std::net::SocketAddr;

use support::{block_on, grpcurl, run_grpcurl, TestMesh};

const LIST_PRODUCTS: &str = "/shop.catalog.v1.CatalogService/ListProducts";
const GET_STOCK: &str = "/shop.inventory.v1.InventoryService/GetStock";

/// One unary call by hand (see [`support::raw_unary`]): headers and trailers.
fn raw_unary(
    addr: SocketAddr,
    path: &'static str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (http::HeaderMap, Option<http::HeaderMap>) {
    let message = message.to_vec();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    block_on(async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
        support::raw_unary(addr, path, &message, &headers).await
    })
}

fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `grpc-status` from the headers (trailers-only) or the trailers.
fn status(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> String {
    headers
        .get("grpc-status")
        .or_else(|| trailers.and_then(|t| t.get("grpc-status")))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn internal_services_are_unreachable_and_invisible_from_outside() {
    let grpcurl = grpcurl();
    let mesh = TestMesh::start(&support::secure_services(&[
        "catalog",
        "inventory",
        "payments",
    ]));
    let gateway = mesh.serving("gateway");

    // A public service is served; an internal one (and one that does not
    // exist at all) get the same UNIMPLEMENTED: the outside cannot tell
    // them apart.
    let (headers, trailers) = raw_unary(gateway, LIST_PRODUCTS, &[], &[]);
    assert_eq!(status(&headers, trailers.as_ref()), "0", "{headers:?}");
    for path in [
        GET_STOCK,
        "/shop.payments.v1.PaymentsService/Refund",
        "/shop.nothing.v1.Nothing/Here",
    ] {
        let (headers, _) = raw_unary(gateway, path, &[], &[]);
        assert_eq!(headers["grpc-status"], "12", "{path}: {headers:?}");
        assert_eq!(headers["x-mesh-error"], "not-exposed", "{path}");
    }
    assert!(
        mesh.counter(
            "gateway",
            "mesh_proxy_errors_total",
            &[("reason", "not-exposed")]
        ) >= 3.0
    );

    // Reflection at the gateway lists public services only, and cannot
    // describe an internal one.
    if let Some(grpcurl) = &grpcurl {
        let gateway = gateway.to_string();
        let (ok, out, err) = run_grpcurl(grpcurl, &["-plaintext", &gateway, "list"]);
        assert!(ok, "list: {err}");
        assert!(out.contains("shop.catalog.v1.CatalogService"), "{out}");
        assert!(!out.contains("Inventory"), "{out}");
        assert!(!out.contains("Payments"), "{out}");
        let (ok, out, _) = run_grpcurl(
            grpcurl,
            &[
                "-plaintext",
                &gateway,
                "describe",
                "shop.payments.v1.PaymentsService",
            ],
        );
        assert!(!ok, "an internal service was described: {out}");
        let (ok, out, err) = run_grpcurl(
            grpcurl,
            &[
                "-plaintext",
                &gateway,
                "describe",
                "shop.catalog.v1.CatalogService",
            ],
        );
        assert!(ok && out.contains("rpc ListProducts"), "{out}{err}");
    }

    // Made public, inventory is reachable and listed.
    let mut inventory = meshctl::demo::route(
        "inventory",
        "shop.inventory.v1.InventoryService",
        "inventory",
    );
    inventory.spec.exposure = Some("public".into());
    let revision = mesh.apply_routes(&[inventory]);
    mesh.wait_for_version(revision);
    // GetStock{sku: "sku-espresso-beans"}
    let mut request = vec![0x0a, 18];
    request.extend_from_slice(b"sku-espresso-beans");
    let (headers, trailers) = raw_unary(gateway, GET_STOCK, &request, &[]);
    assert_eq!(status(&headers, trailers.as_ref()), "0", "{headers:?}");
    if let Some(grpcurl) = &grpcurl {
        let (ok, out, err) = run_grpcurl(grpcurl, &["-plaintext", &gateway.to_string(), "list"]);
        assert!(ok, "list: {err}");
        assert!(out.contains("shop.inventory.v1.InventoryService"), "{out}");
        assert!(!out.contains("Payments"), "{out}");
    }
}

/// Catalog with a canary rule on `x-canary` (v2) and everything else on
/// v1, public, taking `external` headers from outside.
fn canary_route(external: &[&str]) -> Route {
    let mut route = meshctl::demo::route("catalog", "shop.catalog.v1.CatalogService", "catalog");
    route.spec.exposure = Some("public".into());
    route.spec.rules = vec![RouteRule {
        headers: vec![HeaderMatch {
            name: "x-canary".into(),
            exact: Some("true".into()),
            regex: None,
        }],
        split: vec![WeightedSubset {
            subset: "v2".into(),
            weight: 1,
        }],
    }];
    route.spec.split = vec![WeightedSubset {
        subset: "v1".into(),
        weight: 1,
    }];
    route.spec.external_headers = external.iter().map(|h| (*h).to_owned()).collect();
    route
}

#[test]
fn routing_headers_from_outside_steer_nothing_unless_the_route_takes_them() {
    let mut topology = support::secure_services(&[]);
    topology.services = vec![(
        "catalog".into(),
        vec![
            InstanceSpec::new("catalog-1"),
            InstanceSpec::new("catalog-2").version("v2"),
        ],
    )];
    let mesh = TestMesh::start(&topology);
    let gateway = mesh.serving("gateway");
    let calls = |headers: &[(&str, &str)]| -> Vec<String> {
        (0..6)
            .map(|_| {
                let (h, t) = raw_unary(gateway, LIST_PRODUCTS, &[], headers);
                assert_eq!(status(&h, t.as_ref()), "0", "{h:?}");
                served_by(&h)
            })
            .collect()
    };

    let revision = mesh.apply_routes(&[canary_route(&[])]);
    mesh.wait_for_version(revision);
    let served = calls(&[("x-canary", "true")]);
    assert!(
        served.iter().all(|s| s == "catalog-1"),
        "an outside x-canary steered calls: {served:?}"
    );

    let revision = mesh.apply_routes(&[canary_route(&["x-canary"])]);
    mesh.wait_for_version(revision);
    let served = calls(&[("x-canary", "true")]);
    assert!(
        served.iter().all(|s| s == "catalog-2"),
        "the route takes x-canary from outside now: {served:?}"
    );
    let served = calls(&[]);
    assert!(served.iter().all(|s| s == "catalog-1"), "{served:?}");
}
