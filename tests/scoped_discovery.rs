//! Scoped delta discovery, asserted on the stream itself: real etcd over
//! TLS, real control-plane replicas, real sidecars, and simulated proxies
//! holding real discovery streams over mTLS with real certificates. A proxy
//! gets what it declared and nothing else; a first call to an undeclared
//! service subscribes and succeeds; a change sends only the resource that
//! changed; a refused resource blocks no other; a proxy that moves to
//! another replica is sent nothing it already has.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use mesh::proto::mesh::v1::{ResourceType, ResourceUpdate};
use meshctl::demo::admin_get;
use support::sim::{self, names, SimProxy};
use support::{block_on, TestMesh};

fn shop(replicas: usize) -> TestMesh {
    let mut topology = support::secure_services(&["catalog", "payments"]);
    topology.control_plane.as_mut().unwrap().replicas = replicas;
    TestMesh::start(&topology)
}

/// A simulated instance of `service` joining the mesh (a new endpoint), on
/// the first replica, with `tls`, a certificate of `service`.
async fn join(
    mesh: &TestMesh,
    tls: &std::sync::Arc<mesh::identity::MeshTls>,
    service: &str,
    instance: &str,
) -> SimProxy {
    let channels = sim::channels(mesh, tls).await;
    let hello = sim::hello(sim::node(service, instance), &[], Vec::new());
    SimProxy::open(channels[0].clone(), hello, true)
        .await
        .unwrap()
        .0
}

fn has(update: &ResourceUpdate, kind: ResourceType, name: &str) -> bool {
    names(update).contains(&(kind, name.to_owned()))
}

/// The route names in a proxy's running table (`/config`).
fn routes_at(mesh: &TestMesh, proxy: &str) -> Vec<String> {
    let admin = mesh.plan.process(proxy).unwrap().admin.unwrap();
    let (_, body) = admin_get(admin, "/config").unwrap();
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_proxy_gets_the_services_it_declared_and_not_the_others() {
    let mesh = shop(1);
    let tls = mesh.workload_tls("sim");
    block_on(async move {
        let channels = sim::channels(&mesh, &tls).await;
        let hello = sim::hello(
            sim::node("sim", "sim-1"),
            &["catalog", "reviews"],
            Vec::new(),
        );
        let (_proxy, first) = SimProxy::open(channels[0].clone(), hello, true)
            .await
            .unwrap();
        assert!(has(&first, ResourceType::Route, "catalog"), "{first:?}");
        assert!(has(&first, ResourceType::Endpoints, "catalog"), "{first:?}");
        assert!(has(&first, ResourceType::MeshSettings, "mesh"));
        assert!(
            !names(&first).iter().any(|(_, name)| name == "payments"),
            "payments was not declared: {:?}",
            names(&first)
        );
        // A declared service no route serves is said to be missing.
        assert_eq!(first.not_found, ["reviews"]);
    });
}

#[test]
fn a_first_call_to_an_undeclared_service_subscribes_and_succeeds() {
    let mesh = shop(1);
    let outbound = mesh
        .plan
        .process("payments-1-sidecar")
        .unwrap()
        .outbound
        .unwrap();
    assert!(
        !routes_at(&mesh, "payments-1-sidecar").contains(&"catalog".to_owned()),
        "payments' sidecar declared nothing: it has no catalog route yet"
    );
    block_on(async move {
        // payments' app calling catalog through its own sidecar.
        let channel = support::channel(format!("http://{outbound}")).await;
        support::first_product(&channel).await;
        // A service nothing serves: answered (not found), then no route.
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let started = Instant::now();
        let refused = grpc
            .unary(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static("/shop.reviews.v1.ReviewsService/GetReview"),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
        assert!(refused.message().contains("no route"), "{refused:?}");
        // Answered by the control plane, not given up on after the wait.
        assert!(
            started.elapsed() < mesh_sidecar_first_call_wait(),
            "{:?}",
            started.elapsed()
        );
    });
    assert!(routes_at(&mesh, "payments-1-sidecar").contains(&"catalog".to_owned()));
}

/// How long a sidecar's first call waits for the control plane's answer.
fn mesh_sidecar_first_call_wait() -> Duration {
    Duration::from_secs(5)
}

#[test]
fn an_endpoint_change_sends_only_that_services_endpoints() {
    let mesh = shop(1);
    let sim_tls = mesh.workload_tls("sim");
    let catalog_tls = mesh.workload_tls("catalog");
    block_on(async move {
        let channels = sim::channels(&mesh, &sim_tls).await;
        let hello = sim::hello(
            sim::node("sim", "sim-1"),
            &["catalog", "payments"],
            Vec::new(),
        );
        let (mut watcher, first) = SimProxy::open(channels[0].clone(), hello, true)
            .await
            .unwrap();
        assert!(has(&first, ResourceType::Endpoints, "payments"));
        // Another catalog instance joins.
        let joined = join(&mesh, &catalog_tls, "catalog", "catalog-sim").await;
        let update = watcher.next_update().await;
        assert_eq!(
            names(&update),
            [(ResourceType::Endpoints, "catalog".to_owned())],
            "only catalog's endpoints: {update:?}"
        );
        assert!(update.removed.is_empty());
        // It leaves: catalog's endpoints again, nothing else.
        joined.close().await;
        let update = watcher.next_update().await;
        assert_eq!(
            names(&update),
            [(ResourceType::Endpoints, "catalog".to_owned())]
        );
    });
}

#[test]
fn a_refused_resource_blocks_no_other_and_is_reported() {
    let mesh = shop(1);
    let sim_tls = mesh.workload_tls("sim");
    let payments_tls = mesh.workload_tls("payments");
    let replica_admin = mesh.plan.process("control-plane-1").unwrap().admin.unwrap();
    block_on(async move {
        let channels = sim::channels(&mesh, &sim_tls).await;
        let hello = sim::hello(
            sim::node("sim", "sim-1"),
            &["catalog", "payments"],
            Vec::new(),
        );
        let (mut proxy, first) = SimProxy::open(channels[0].clone(), hello, false)
            .await
            .unwrap();
        proxy
            .ack(
                &first,
                &[(ResourceType::Route, "catalog", "spec.timeout: not for me")],
            )
            .await;
        // payments' endpoints change: sent, although catalog's route is
        // refused.
        let _joined = join(&mesh, &payments_tls, "payments", "payments-sim").await;
        let update = proxy.next_update().await;
        assert_eq!(
            names(&update),
            [(ResourceType::Endpoints, "payments".to_owned())]
        );
        proxy
            .ack(
                &update,
                &[(ResourceType::Route, "catalog", "spec.timeout: not for me")],
            )
            .await;
        // The replica reports the refusal for this proxy.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = meshctl::demo::admin_call(replica_admin, http::Method::GET, "/syncz")
                .await
                .unwrap();
            let syncz: serde_json::Value = serde_json::from_str(&body).unwrap();
            let nacks = syncz["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["instance"] == "sim-1")
                .map(|p| p["nacks"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            if nacks.contains("RESOURCE_TYPE_ROUTE catalog") && nacks.contains("not for me") {
                break;
            }
            assert!(Instant::now() < deadline, "no NACK reported: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_proxy_that_moves_to_the_other_replica_is_sent_nothing_it_has() {
    let mesh = shop(2);
    let tls = mesh.workload_tls("sim");
    block_on(async move {
        let channels = sim::channels(&mesh, &tls).await;
        let node = sim::node("sim", "sim-1");
        let hello = sim::hello(node.clone(), &["catalog", "payments"], Vec::new());
        let (proxy, first) = SimProxy::open(channels[0].clone(), hello, true)
            .await
            .unwrap();
        assert!(first.resources.len() >= 5, "{:?}", names(&first));
        proxy.close().await;
        // The other replica, with what the first one sent.
        let known = sim::versions(&first);
        let hello = sim::hello(node.clone(), &["catalog", "payments"], known.clone());
        let (proxy, resumed) = SimProxy::open(channels[1].clone(), hello, true)
            .await
            .unwrap();
        assert!(
            resumed.resources.is_empty() && resumed.removed.is_empty(),
            "nothing changed, nothing resent: {:?} removed {:?}",
            names(&resumed),
            resumed.removed
        );
        proxy.close().await;
        // One stale version: only that resource comes again.
        let mut stale = known;
        let endpoints = stale
            .iter_mut()
            .find(|k| k.r#type == ResourceType::Endpoints as i32 && k.name == "payments")
            .unwrap();
        endpoints.version = "0000000000000000".into();
        let hello = sim::hello(node, &["catalog", "payments"], stale);
        let (_proxy, resumed) = SimProxy::open(channels[0].clone(), hello, true)
            .await
            .unwrap();
        assert_eq!(
            names(&resumed),
            [(ResourceType::Endpoints, "payments".to_owned())]
        );
    });
}

#[test]
fn an_internal_method_behind_a_public_service_route_stays_internal_at_the_gateway() {
    let mesh = shop(1);
    // catalog's service route is public; its GetProduct method gets an
    // internal route of its own.
    let revision = mesh.meshctl_apply(
        "kind: Route\nmetadata:\n  name: catalog-get\nspec:\n  match:\n    service: shop.catalog.v1.CatalogService\n    method: GetProduct\n  destination: catalog\n",
    );
    mesh.wait_for_version(revision);
    let gateway = mesh.gateway_uri();
    block_on(async move {
        use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
        use mesh::proto::shop::catalog::v1::GetProductRequest;
        let channel = support::channel(gateway).await;
        // The public service route still takes the other methods.
        support::first_product(&channel).await;
        let refused = CatalogServiceClient::new(channel)
            .get_product(GetProductRequest {
                sku: "sku-espresso-beans".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    });
}
