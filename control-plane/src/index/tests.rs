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
    serde_json::to_string(&mesh::demo::route(name, service, "inventory")).unwrap()
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
    assert_eq!(published.descriptor_sets, vec![b"fds".to_vec()]);
    assert_eq!(
        published.grpc_services,
        vec!["shop.inventory.v1.InventoryService"]
    );
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
