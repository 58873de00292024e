use bytes::Bytes;
use mesh::model::{Bootstrap, Endpoint};
use mesh::proto::mesh::v1::ResourceType;

use super::*;

fn endpoint(service: &str, instance: &str) -> Endpoint {
    Endpoint {
        service: service.into(),
        instance: instance.into(),
        address: format!("127.0.0.1:{}", 7000 + instance.len()),
        version: "v1".into(),
        weight: 1,
    }
}

/// catalog (public), payments and inventory (internal), with endpoints.
pub(crate) fn shop() -> Bootstrap {
    let mut catalog = meshctl::demo::route("catalog", "shop.catalog.v1.Catalog", "catalog");
    catalog.spec.exposure = Some("public".into());
    Bootstrap {
        routes: vec![
            catalog,
            meshctl::demo::route("payments", "shop.payments.v1.Payments", "payments"),
            meshctl::demo::route("inventory", "shop.inventory.v1.Inventory", "inventory"),
        ],
        endpoints: vec![
            endpoint("catalog", "catalog-1"),
            endpoint("payments", "payments-1"),
            endpoint("inventory", "inventory-1"),
            endpoint("orders", "orders-1"),
        ],
        ..Bootstrap::default()
    }
}

fn names(wanted: &Wanted, kind: ResourceType) -> Vec<&str> {
    wanted
        .keys
        .iter()
        .filter(|k| k.kind == kind)
        .map(|k| &*k.name)
        .collect()
}

fn sidecar(service: &str, calls: &[&str], grpc_services: &[&str]) -> Scope {
    Scope {
        service: service.into(),
        gateway: false,
        calls: calls.iter().map(|s| s.to_string()).collect(),
        grpc_services: grpc_services.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_sidecar_gets_what_it_declared_and_its_own_routes() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let wanted = catalog.wanted(&sidecar("orders", &["catalog"], &[]));
    assert_eq!(names(&wanted, ResourceType::Route), ["catalog"]);
    assert_eq!(names(&wanted, ResourceType::Endpoints), ["catalog"]);
    assert_eq!(names(&wanted, ResourceType::MeshSettings), ["mesh"]);
    assert!(wanted.not_found.is_empty());

    // payments' own route (its inbound rate limits), and its endpoints (an
    // app may call its own service).
    let wanted = catalog.wanted(&sidecar("payments", &[], &[]));
    assert_eq!(names(&wanted, ResourceType::Route), ["payments"]);
    assert_eq!(names(&wanted, ResourceType::Endpoints), ["payments"]);
}

#[test]
fn every_route_of_a_grpc_service_comes_together() {
    // The service route goes to payments, its Refund method to refunds
    // (internal): a table with the first alone would send Refund to
    // payments, and a gateway would expose it.
    let mut table = shop();
    let mut service_route =
        meshctl::demo::route("payments", "shop.payments.v1.Payments", "payments");
    service_route.spec.exposure = Some("public".into());
    table.routes[1] = service_route;
    let mut refund = meshctl::demo::route("refunds", "shop.payments.v1.Payments", "refunds");
    refund.spec.matches.method = Some("Refund".into());
    table.routes.push(refund);
    table.endpoints.push(endpoint("refunds", "refunds-1"));
    let catalog = Catalog::build(&table, None, "", false, &[]);
    let wanted = catalog.wanted(&sidecar("orders", &["payments"], &[]));
    assert_eq!(names(&wanted, ResourceType::Route), ["payments", "refunds"]);
    assert_eq!(
        names(&wanted, ResourceType::Endpoints),
        ["payments", "refunds"]
    );
    let gateway = catalog.wanted(&Scope {
        service: "edge".into(),
        gateway: true,
        ..Scope::default()
    });
    assert_eq!(
        names(&gateway, ResourceType::Route),
        ["catalog", "payments", "refunds"],
        "the internal method's route comes with the public service route: the gateway refuses it"
    );
}

#[test]
fn a_grpc_subscription_takes_the_routes_of_that_service() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let wanted = catalog.wanted(&sidecar(
        "orders",
        &["catalog"],
        &["shop.payments.v1.Payments"],
    ));
    assert_eq!(names(&wanted, ResourceType::Route), ["catalog", "payments"]);
    assert_eq!(
        names(&wanted, ResourceType::Endpoints),
        ["catalog", "payments"]
    );
}

#[test]
fn what_nothing_serves_is_not_found() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let wanted = catalog.wanted(&sidecar(
        "orders",
        &["reviews"],
        &["shop.reviews.v1.Reviews"],
    ));
    assert_eq!(wanted.not_found, ["reviews", "shop.reviews.v1.Reviews"]);
    assert!(names(&wanted, ResourceType::Route).is_empty());
}

#[test]
fn a_gateway_gets_public_routes_and_one_copy_of_each_descriptor_set() {
    let sets = [
        Bytes::from_static(b"catalog"),
        Bytes::from_static(b"catalog"),
        Bytes::from_static(b"orders"),
    ];
    let catalog = Catalog::build(&shop(), None, "", false, &sets);
    let wanted = catalog.wanted(&Scope {
        service: "edge".into(),
        gateway: true,
        ..Scope::default()
    });
    assert_eq!(names(&wanted, ResourceType::Route), ["catalog"]);
    assert_eq!(names(&wanted, ResourceType::Endpoints), ["catalog"]);
    let descriptors = names(&wanted, ResourceType::Descriptors);
    assert_eq!(descriptors.len(), 2, "{descriptors:?}");
    assert!(descriptors.contains(&content_hash(b"catalog").as_str()));
}

#[test]
fn versions_follow_content_only() {
    let a = Catalog::build(&shop(), None, "", false, &[]);
    let b = Catalog::build(&shop(), None, "", false, &[]);
    assert!(a.same_as(&b), "equal content, equal versions");
    let mut changed = shop();
    changed.endpoints[1].weight = 5;
    let c = Catalog::build(&changed, None, "", false, &[]);
    assert!(!a.same_as(&c));
    let version = |catalog: &Catalog, kind, name| {
        catalog
            .get(&ResourceKey::new(kind, name))
            .map(|e| e.version.clone())
    };
    assert_eq!(
        version(&a, ResourceType::Endpoints, "catalog"),
        version(&c, ResourceType::Endpoints, "catalog")
    );
    assert_ne!(
        version(&a, ResourceType::Endpoints, "payments"),
        version(&c, ResourceType::Endpoints, "payments")
    );
    let permissive = Catalog::build(&shop(), None, "", true, &[]);
    assert_ne!(
        version(&a, ResourceType::MeshSettings, "mesh"),
        version(&permissive, ResourceType::MeshSettings, "mesh")
    );
}

#[test]
fn maps_encode_the_same_every_time() {
    let policy: mesh::model::AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "orders" },
        "spec": {
            "service": "orders",
            "rules": [{ "from": [{ "gateway": { "claims": {
                "role": "admin", "tier": "gold", "region": "eu", "team": "shop",
                "a": "1", "b": "2", "c": "3", "d": "4"
            } } }] }]
        }
    }))
    .unwrap();
    let mut table = shop();
    table.authorization_policies.push(policy);
    let key = ResourceKey::new(ResourceType::AuthorizationPolicy, "orders");
    let first = Catalog::build(&table, None, "", false, &[]);
    let version = first.get(&key).unwrap().version.clone();
    for _ in 0..20 {
        let again = Catalog::build(&table, None, "", false, &[]);
        assert_eq!(
            again.get(&key).unwrap().version,
            version,
            "a content version is stable"
        );
    }
}
