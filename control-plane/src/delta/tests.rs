use mesh::proto::mesh::v1::{resource::Body, ResourceType, ResourceUpdate};
use prost::Message;

use super::*;
use crate::catalog::tests::shop;

fn decode(update: &Update) -> ResourceUpdate {
    let len = u32::from_be_bytes([
        update.frame[1],
        update.frame[2],
        update.frame[3],
        update.frame[4],
    ]) as usize;
    assert_eq!(update.frame[0], 0, "not compressed");
    assert_eq!(len, update.frame.len() - PREFIX_LEN);
    ResourceUpdate::decode(&update.frame[PREFIX_LEN..]).expect("a ResourceUpdate")
}

fn orders() -> Scope {
    Scope {
        service: "orders".into(),
        calls: ["catalog".to_owned(), "payments".to_owned()].into(),
        ..Scope::default()
    }
}

fn kinds(update: &ResourceUpdate) -> Vec<(ResourceType, &str)> {
    update
        .resources
        .iter()
        .map(|r| (ResourceType::try_from(r.r#type).unwrap(), r.name.as_str()))
        .collect()
}

#[test]
fn the_first_update_is_the_scope_then_only_changes() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let mut state = StreamState::default();
    let first = state
        .next_update(&catalog, &orders(), 7, 0, true)
        .expect("a first update");
    let update = decode(&first);
    assert_eq!(update.nonce, 1);
    assert_eq!(update.revision, 7);
    assert_eq!(update.schema_version, SchemaVersion::SchemaVersion1 as i32);
    assert_eq!(
        kinds(&update),
        [
            (ResourceType::Route, "catalog"),
            (ResourceType::Route, "payments"),
            (ResourceType::Endpoints, "catalog"),
            (ResourceType::Endpoints, "payments"),
            (ResourceType::MeshSettings, "mesh"),
        ]
    );
    assert!(matches!(
        update.resources[0].body,
        Some(Body::Route(ref r)) if r.destination == "catalog"
    ));
    assert!(
        state
            .next_update(&catalog, &orders(), 8, 0, false)
            .is_none(),
        "nothing changed"
    );

    // One endpoint of payments changes: only payments' endpoints go.
    let mut changed = shop();
    changed
        .endpoints
        .iter_mut()
        .find(|e| e.service == "payments")
        .unwrap()
        .weight = 3;
    let catalog = Catalog::build(&changed, None, "", false, &[]);
    let update = decode(&state.next_update(&catalog, &orders(), 9, 0, false).unwrap());
    assert_eq!(kinds(&update), [(ResourceType::Endpoints, "payments")]);
    assert_eq!(update.nonce, 2);
    // Not in its scope: nothing.
    changed.endpoints[2].weight = 9; // inventory
    let catalog = Catalog::build(&changed, None, "", false, &[]);
    assert!(state
        .next_update(&catalog, &orders(), 10, 0, false)
        .is_none());
}

#[test]
fn a_deleted_route_is_a_tombstone_and_not_found() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let mut state = StreamState::default();
    state.next_update(&catalog, &orders(), 1, 0, true).unwrap();
    let mut without = shop();
    without.routes.retain(|r| r.metadata.name != "payments");
    let catalog = Catalog::build(&without, None, "", false, &[]);
    let update = decode(&state.next_update(&catalog, &orders(), 2, 0, false).unwrap());
    assert!(update.resources.is_empty());
    let mut removed: Vec<_> = update.removed.iter().map(|r| r.name.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, ["payments", "payments"], "its route and endpoints");
    assert_eq!(update.not_found, ["payments"]);
}

#[test]
fn a_stream_that_resumes_with_everything_gets_nothing_but_an_empty_first_update() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let mut first_stream = StreamState::default();
    let sent = decode(
        &first_stream
            .next_update(&catalog, &orders(), 1, 0, true)
            .unwrap(),
    );
    let known: Vec<ResourceVersion> = sent.resources.iter().map(|r| r.version_of()).collect();
    // Another replica built the same catalog from the same store.
    let other_replica = Catalog::build(&shop(), None, "", false, &[]);
    let mut resumed = StreamState::resume(&known);
    let update = resumed
        .next_update(&other_replica, &orders(), 1, 0, true)
        .expect("the first update says it is in step");
    let update = decode(&update);
    assert!(update.resources.is_empty() && update.removed.is_empty());
}

#[test]
fn a_subscription_is_answered_even_when_nothing_serves_it() {
    let catalog = Catalog::build(&shop(), None, "", false, &[]);
    let mut state = StreamState::default();
    let mut scope = orders();
    state.next_update(&catalog, &scope, 1, 0, true).unwrap();
    scope
        .grpc_services
        .insert("shop.inventory.v1.Inventory".into());
    let update = decode(&state.next_update(&catalog, &scope, 1, 1, false).unwrap());
    assert_eq!(update.answers_subscribe, 1);
    assert_eq!(
        kinds(&update),
        [
            (ResourceType::Route, "inventory"),
            (ResourceType::Endpoints, "inventory")
        ]
    );
    scope.grpc_services.insert("shop.reviews.v1.Reviews".into());
    let update = decode(&state.next_update(&catalog, &scope, 1, 2, false).unwrap());
    assert_eq!(update.answers_subscribe, 2);
    assert_eq!(update.not_found, ["shop.reviews.v1.Reviews"]);
    assert!(state.next_update(&catalog, &scope, 1, 2, false).is_none());
}
