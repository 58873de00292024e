use mesh::model::Endpoint;

use super::*;
use crate::store::{KeyValue, Snapshot, WatchBatch, WatchEvent};

fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        mod_revision: rev,
    }
}

fn route_json(name: &str, service: &str) -> String {
    serde_json::to_string(&meshctl::demo::route(name, service, "inventory")).unwrap()
}

fn registration(service: &str, instance: &str) -> String {
    serde_json::to_string(&Registration {
        endpoint: Endpoint {
            service: service.into(),
            instance: instance.into(),
            address: "127.0.0.1:7000".into(),
            version: "v1".into(),
            weight: 1,
        },
        grpc_services: vec!["shop.inventory.v1.InventoryService".into()],
    })
    .unwrap()
}

#[test]
fn valid_data_is_published_and_bad_data_reported_and_skipped() {
    let snapshot = Snapshot {
        revision: 7,
        items: vec![
            kv(
                &keys::route("inventory"),
                &route_json("inventory", "shop.inventory.v1.InventoryService"),
                2,
            ),
            kv(&keys::route("broken"), "{not json", 3),
            kv(
                &keys::route("twin"),
                &route_json("twin", "shop.inventory.v1.InventoryService"),
                4,
            ),
            kv(&keys::route("misnamed"), &route_json("other", "a.B"), 4),
            kv(
                &keys::endpoint("inventory", "inv-1"),
                &registration("inventory", "inv-1"),
                5,
            ),
            kv(
                &keys::endpoint("inventory", "inv-2"),
                &registration("inventory", "wrong"),
                6,
            ),
            kv(&keys::descriptors("inventory", "inv-1"), "fds", 5),
        ],
    };
    let published = Index::from_snapshot(&snapshot).publish();
    assert_eq!(published.revision, 7);
    assert_eq!(published.table.routes.len(), 1);
    assert_eq!(published.table.routes[0].metadata.name, "inventory");
    assert_eq!(published.table.endpoints.len(), 1);
    let descriptors = crate::catalog::ResourceKey::new(
        mesh::proto::mesh::v1::ResourceType::Descriptors,
        &crate::catalog::content_hash(b"fds"),
    );
    assert!(published.catalog.get(&descriptors).is_some());
    assert_eq!(published.problems.len(), 4, "{:?}", published.problems);
    published
        .table
        .validate()
        .expect("what is published is valid");
}

#[test]
fn watch_events_update_the_index() {
    let mut index = Index::from_snapshot(&Snapshot {
        revision: 1,
        items: vec![],
    });
    index.apply(&WatchBatch {
        revision: 2,
        events: vec![WatchEvent::Put(kv(
            &keys::endpoint("inventory", "inv-1"),
            &registration("inventory", "inv-1"),
            2,
        ))],
    });
    assert_eq!(index.publish().table.endpoints.len(), 1);
    index.apply(&WatchBatch {
        revision: 3,
        events: vec![WatchEvent::Delete {
            key: keys::endpoint("inventory", "inv-1"),
            mod_revision: 3,
        }],
    });
    let published = index.publish();
    assert!(published.table.endpoints.is_empty());
    assert_eq!(published.revision, 3);
}

#[test]
fn only_a_change_of_some_resource_or_problem_is_published() {
    let mut index = Index::default();
    let put = |index: &mut Index, revision: i64, key: &str, value: &str| {
        index.apply(&WatchBatch {
            revision,
            events: vec![WatchEvent::Put(kv(key, value, revision))],
        });
        index.publish()
    };
    let first = put(
        &mut index,
        2,
        &keys::endpoint("inventory", "inv-1"),
        &registration("inventory", "inv-1"),
    );
    assert!(first.differs_from(&Published::default()));

    // Only a problem changes: published (operators see it).
    let second = put(&mut index, 3, &keys::route("broken"), "{");
    assert!(second.differs_from(&first));
    assert!(second.catalog.same_as(&first.catalog));

    // A second instance of the same service: its endpoints change.
    let third = put(
        &mut index,
        4,
        &keys::endpoint("inventory", "inv-2"),
        &registration("inventory", "inv-2"),
    );
    assert!(third.differs_from(&second));

    assert!(!index.publish().differs_from(&third));
}

#[test]
fn the_mtls_mode_is_pushed_and_a_change_is_a_new_table() {
    let mut index = Index::default();
    let pushed_mode = |published: &Published| {
        let key = crate::catalog::ResourceKey::new(
            mesh::proto::mesh::v1::ResourceType::MeshSettings,
            crate::catalog::MESH_SETTINGS,
        );
        let field = published.catalog.get(&key).expect("settings").field.clone();
        let update = <mesh::proto::mesh::v1::ResourceUpdate as prost::Message>::decode(field)
            .expect("a resources field");
        match update.resources[0].body.clone() {
            Some(mesh::proto::mesh::v1::resource::Body::MeshSettings(settings)) => {
                settings.mtls_mode()
            }
            other => panic!("not settings: {other:?}"),
        }
    };
    use mesh::proto::mesh::v1::MtlsMode;
    let set = |index: &mut Index, revision: i64, value: &str| {
        index.apply(&WatchBatch {
            revision,
            events: vec![WatchEvent::Put(kv(keys::MTLS_MODE, value, revision))],
        });
        index.publish()
    };
    let first = index.publish();
    assert_eq!(first.mtls_mode, "strict", "strict until asked otherwise");
    assert_eq!(pushed_mode(&first), MtlsMode::Strict);

    let permissive = set(&mut index, 3, "permissive");
    assert!(
        permissive.differs_from(&first),
        "proxies are sent the change"
    );
    assert_eq!(pushed_mode(&permissive), MtlsMode::Permissive);

    // Anything else in the store is reported and never opens the mesh.
    let bad = set(&mut index, 4, "off");
    assert!(bad.differs_from(&permissive));
    assert_eq!(pushed_mode(&bad), MtlsMode::Strict);
    assert_eq!(bad.mtls_mode, "strict");
    assert!(
        bad.problems.iter().any(|p| p.contains("revision 4")),
        "{:?}",
        bad.problems
    );

    index.apply(&WatchBatch {
        revision: 5,
        events: vec![WatchEvent::Delete {
            key: keys::MTLS_MODE.into(),
            mod_revision: 5,
        }],
    });
    let deleted = index.publish();
    assert_eq!(deleted.mtls_mode, "strict");
    assert!(deleted.problems.is_empty(), "{:?}", deleted.problems);
}

#[test]
fn authorization_policies_and_the_default_are_pushed_in_the_table() {
    let policy = r#"{"kind":"AuthorizationPolicy","metadata":{"name":"payments"},
        "spec":{"service":"payments","rules":[{"from":[{"service":"orders"}]}]}}"#;
    let mut index = Index::default();
    let first = index.publish();
    index.apply(&WatchBatch {
        revision: 3,
        events: vec![
            WatchEvent::Put(kv(
                &format!("{}payments", keys::AUTHORIZATION_POLICIES),
                policy,
                2,
            )),
            WatchEvent::Put(kv(
                &format!("{}misnamed", keys::AUTHORIZATION_POLICIES),
                policy,
                2,
            )),
            WatchEvent::Put(kv(keys::DEFAULT_AUTHORIZATION, "deny", 3)),
        ],
    });
    let published = index.publish();
    assert!(
        published.differs_from(&first),
        "proxies are sent the change"
    );
    let names: Vec<_> = published
        .table
        .authorization_policies
        .iter()
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["payments"]);
    assert_eq!(
        published.table.default_authorization,
        DefaultAuthorization::Deny
    );
    assert!(published
        .catalog
        .get(&crate::catalog::ResourceKey::new(
            mesh::proto::mesh::v1::ResourceType::AuthorizationPolicy,
            "payments"
        ))
        .is_some());
    assert!(
        published.problems.iter().any(|p| p.contains("misnamed")),
        "{:?}",
        published.problems
    );

    // A default that names nothing is reported, and deny is pushed.
    index.apply(&WatchBatch {
        revision: 4,
        events: vec![WatchEvent::Put(kv(
            keys::DEFAULT_AUTHORIZATION,
            "allow-all",
            4,
        ))],
    });
    let typo = index.publish();
    assert_eq!(typo.table.default_authorization, DefaultAuthorization::Deny);
    assert!(typo.problems.iter().any(|p| p.contains("revision 4")));
}

#[test]
fn join_tokens_do_not_call_for_a_publish_and_the_revision_still_moves() {
    let mut index = Index::from_snapshot(&Snapshot {
        revision: 1,
        items: vec![],
    });
    let token = WatchBatch {
        revision: 2,
        events: vec![
            WatchEvent::Put(kv(&keys::token("ab12"), "{}", 2)),
            WatchEvent::Delete {
                key: keys::token("cd34"),
                mod_revision: 2,
            },
        ],
    };
    assert!(!index.apply(&token), "a token changes no table");
    assert_eq!(index.revision(), 2);
    let route = WatchBatch {
        revision: 3,
        events: vec![
            WatchEvent::Put(kv(&keys::token("ef56"), "{}", 3)),
            WatchEvent::Put(kv(
                &keys::route("inv"),
                &route_json("inv", "shop.inventory.v1.InventoryService"),
                3,
            )),
        ],
    };
    assert!(index.apply(&route), "a batch with a route does");
}
