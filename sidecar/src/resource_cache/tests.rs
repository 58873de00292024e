use mesh::model::Endpoint;
use mesh::proto::mesh::v1 as pb;

use super::*;

fn route(name: &str, destination: &str) -> Route {
    serde_json::from_value(serde_json::json!({
        "kind": "Route",
        "metadata": { "name": name },
        "spec": {
            "match": { "service": format!("shop.{destination}.v1.Service") },
            "destination": destination,
        },
    }))
    .expect("a route")
}

fn route_resource(route: &Route, version: &str) -> Resource {
    Resource {
        r#type: ResourceType::Route as i32,
        name: route.metadata.name.clone(),
        version: version.into(),
        body: Some(Body::Route(pb::RouteResource::from(route))),
    }
}

fn endpoints_resource(service: &str, addresses: &[&str], version: &str) -> Resource {
    Resource {
        r#type: ResourceType::Endpoints as i32,
        name: service.into(),
        version: version.into(),
        body: Some(Body::Endpoints(pb::ServiceEndpoints {
            service: service.into(),
            endpoints: addresses
                .iter()
                .enumerate()
                .map(|(i, address)| {
                    pb::EndpointResource::from(&Endpoint {
                        service: service.into(),
                        instance: format!("{service}-{i}"),
                        address: (*address).into(),
                        version: "v1".into(),
                        weight: 1,
                    })
                })
                .collect(),
        })),
    }
}

fn update(resources: Vec<Resource>) -> ResourceUpdate {
    ResourceUpdate {
        schema_version: pb::SchemaVersion::SchemaVersion1 as i32,
        nonce: 1,
        revision: 1,
        resources,
        ..ResourceUpdate::default()
    }
}

#[test]
fn a_bad_resource_is_refused_and_the_others_are_taken() {
    let mut cache = ResourceCache::default();
    cache.apply(update(vec![
        route_resource(&route("catalog", "catalog"), "c1"),
        endpoints_resource("catalog", &["127.0.0.1:7001"], "e1"),
    ]));
    assert!(cache.refused().is_empty());
    // A route whose destination is empty does not validate; the endpoints
    // beside it are taken all the same.
    let mut bad = route_resource(&route("catalog", "catalog"), "c2");
    if let Some(Body::Route(r)) = &mut bad.body {
        r.destination.clear();
    }
    cache.apply(update(vec![
        bad,
        endpoints_resource("catalog", &["127.0.0.1:7001", "127.0.0.1:7002"], "e2"),
    ]));
    let refused = cache.refused();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].name.as_str(), refused[0].version.as_str()),
        ("catalog", "c2")
    );
    assert!(
        refused[0].reason.contains("destination"),
        "{}",
        refused[0].reason
    );
    let table = cache.table();
    assert_eq!(
        table.routes[0].spec.destination, "catalog",
        "the last good route"
    );
    assert_eq!(table.endpoints.len(), 2, "the new endpoints");
    let versions: Vec<_> = cache
        .known()
        .into_iter()
        .map(|k| (k.name, k.version))
        .collect();
    assert_eq!(
        versions,
        [
            ("catalog".to_owned(), "c1".to_owned()),
            ("catalog".to_owned(), "e2".to_owned())
        ],
        "it resumes from the last good versions"
    );
    // A good version replaces the refused one: no NACK left.
    cache.apply(update(vec![route_resource(
        &route("catalog", "catalog"),
        "c3",
    )]));
    assert!(cache.refused().is_empty());
}

#[test]
fn removals_and_mismatched_names_and_bodies() {
    let mut cache = ResourceCache::default();
    cache.apply(update(vec![
        route_resource(&route("catalog", "catalog"), "c1"),
        endpoints_resource("catalog", &["127.0.0.1:7001"], "e1"),
    ]));
    let mut removal = update(Vec::new());
    removal.removed.push(ResourceVersion {
        r#type: ResourceType::Endpoints as i32,
        name: "catalog".into(),
        version: "e1".into(),
    });
    cache.apply(removal);
    assert!(cache.table().endpoints.is_empty());

    let mut misnamed = route_resource(&route("catalog", "catalog"), "c2");
    misnamed.name = "payments".into();
    let mut wrong_body = endpoints_resource("catalog", &[], "x");
    wrong_body.r#type = ResourceType::Route as i32;
    let mut unknown = endpoints_resource("catalog", &[], "y");
    unknown.r#type = 99;
    cache.apply(update(vec![misnamed, wrong_body, unknown]));
    let reasons: Vec<_> = cache.refused().into_iter().map(|n| n.reason).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("name:")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("body:")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("type:")),
        "{reasons:?}"
    );
}

#[test]
fn settings_are_checked() {
    let mut cache = ResourceCache::default();
    let settings = |mode: i32| Resource {
        r#type: ResourceType::MeshSettings as i32,
        name: "mesh".into(),
        version: format!("s{mode}"),
        body: Some(Body::MeshSettings(pb::MeshSettings {
            mtls_mode: mode,
            ..pb::MeshSettings::default()
        })),
    };
    cache.apply(update(vec![settings(pb::MtlsMode::Permissive as i32)]));
    assert_eq!(
        cache.settings().map(|s| s.mtls_mode),
        Some(MeshMtlsMode::Permissive)
    );
    cache.apply(update(vec![settings(7)]));
    assert_eq!(
        cache.settings().map(|s| s.mtls_mode),
        Some(MeshMtlsMode::Permissive),
        "the last good settings stay"
    );
    assert!(cache.refused()[0].reason.starts_with("mtls_mode"));
}
