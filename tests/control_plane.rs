//! End-to-end with the control plane: a real etcd, two control-plane
//! replicas, sidecars registering over discovery streams, meshctl and
//! grpcurl as a user runs them. Failures are real SIGKILLs.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh::proto::mesh::v1::mesh_admin_client::MeshAdminClient;
use mesh::proto::mesh::v1::{ApplyRouteRequest, GetRouteRequest, ListRoutesRequest};
use mesh::proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh::proto::shop::inventory::v1::GetStockRequest;
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::{block_on, have_tool, TestMesh};
use tonic::transport::Channel;

/// Registration TTL in these tests: short, so lease expiry is observable.
const TTL_SECONDS: u64 = 3;

fn topology(instances: Vec<(&str, &str, &str)>) -> Topology {
    let mut services: Vec<(String, Vec<InstanceSpec>)> = Vec::new();
    for (service, id, version) in instances {
        let spec = InstanceSpec::new(id).version(version);
        match services.iter_mut().find(|(s, _)| s == service) {
            Some((_, list)) => list.push(spec),
            None => services.push((service.to_owned(), vec![spec])),
        }
    }
    Topology {
        services,
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 2,
            etcd: true,
            lease_ttl_seconds: TTL_SECONDS,
            deregister_delay_ms: 200,
            first_port: None,
            ..ControlPlaneSpec::default()
        }),
        // These tests drive inventory from outside, through the gateway.
        expose_internal: true,
        ..Topology::default()
    }
}

fn inventory_pair() -> Topology {
    topology(vec![
        ("inventory", "inventory-1", "v1"),
        ("inventory", "inventory-2", "v2"),
    ])
}

/// Calls GetStock `n` times through the gateway; who served each call.
fn served_by(mesh: &TestMesh, n: usize) -> HashMap<String, usize> {
    let uri = mesh.gateway_uri();
    block_on(async move {
        let channel = Channel::from_shared(uri)
            .unwrap()
            .connect()
            .await
            .expect("gateway");
        let mut client = InventoryServiceClient::new(channel);
        let mut counts = HashMap::new();
        for _ in 0..n {
            let reply = client
                .get_stock(GetStockRequest {
                    sku: "sku-espresso-beans".into(),
                })
                .await
                .expect("every call succeeds");
            let by = reply
                .metadata()
                .get("x-served-by")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            *counts.entry(by).or_insert(0) += 1;
        }
        counts
    })
}

fn split_yaml(v1: u32, v2: u32) -> String {
    format!(
        "kind: Route\nmetadata:\n  name: inventory\nspec:\n  match:\n    service: shop.inventory.v1.InventoryService\n  destination: inventory\n  exposure: public\n  split:\n    - {{ subset: v1, weight: {v1} }}\n    - {{ subset: v2, weight: {v2} }}\n"
    )
}

/// Applies YAML with meshctl; returns the revision it reports.
fn apply(mesh: &TestMesh, yaml: &str) -> i64 {
    mesh.meshctl_apply(yaml)
}

fn revision_in(out: &str) -> i64 {
    out.rsplit("(revision ")
        .next()
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in meshctl output: {out}"))
}

/// A MeshAdmin client of the first replica, as the admin operator; call
/// inside a runtime.
fn admin(uri: &str, identity: Option<&meshctl::demo::IdentityLayout>) -> MeshAdminClient<Channel> {
    MeshAdminClient::new(support::admin_channel(uri, identity))
}

fn stored_routes(mesh: &TestMesh) -> Vec<String> {
    let uri = mesh.plan.control_planes[0].clone();
    let identity = mesh.plan.identity.clone();
    block_on(async move {
        let mut client = admin(&uri, identity.as_ref());
        let mut routes: Vec<String> = client
            .list_routes(ListRoutesRequest {})
            .await
            .expect("ListRoutes")
            .into_inner()
            .routes
            .into_iter()
            .map(|r| r.route_json)
            .collect();
        routes.sort();
        routes
    })
}

#[test]
fn registered_instance_gets_traffic_and_is_gone_after_sigkill() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&topology(vec![
        ("inventory", "inventory-1", "v1"),
        ("inventory", "inventory-2", "v1"),
    ]));
    let (ok, out, err) = mesh.meshctl(&["get", "endpoints"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("inventory-1") && out.contains("inventory-2"),
        "{out}"
    );
    let counts = served_by(&mesh, 40);
    assert_eq!(counts.get("inventory-2"), Some(&20), "{counts:?}");

    let killed = Instant::now();
    mesh.kill("inventory-2");
    mesh.kill("inventory-2-sidecar");
    loop {
        let (ok, out, _) = mesh.meshctl(&["get", "endpoints"], None);
        if ok && !out.contains("inventory-2") {
            break;
        }
        // A generous bound, only so a broken lease cannot hang the test.
        assert!(
            killed.elapsed() < Duration::from_secs(TTL_SECONDS + 60),
            "inventory-2 still registered long after the TTL:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "inventory-2 deregistered {:?} after SIGKILL",
        killed.elapsed()
    );
    // Once the gateway's table no longer lists it, no call goes there.
    while mesh.config("gateway")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["instance"] == "inventory-2")
    {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "gateway kept inventory-2"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = served_by(&mesh, 30);
    assert_eq!(counts.get("inventory-1"), Some(&30), "{counts:?}");
}

#[test]
fn applied_split_reaches_every_sidecar_within_a_second() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&inventory_pair());
    let first = apply(&mesh, &split_yaml(100, 0));
    mesh.wait_for_version(first);
    let counts = served_by(&mesh, 20);
    assert_eq!(counts.get("inventory-1"), Some(&20), "{counts:?}");

    let revision = apply(&mesh, &split_yaml(50, 50));
    let applied = Instant::now();
    mesh.wait_for_version(revision);
    let took = applied.elapsed();
    eprintln!("route change reached every proxy in {took:?}");
    assert!(took <= Duration::from_secs(1), "took {took:?}");

    let counts = served_by(&mesh, 200);
    let v2 = *counts.get("inventory-2").unwrap_or(&0) as f64 / 200.0;
    assert!(
        (v2 - 0.5).abs() <= 0.1,
        "v2 got {:.0} %: {counts:?}",
        v2 * 100.0
    );
}

#[test]
fn calls_survive_losing_every_replica_and_a_restarted_replica_takes_over() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&inventory_pair());
    mesh.kill("control-plane-1");
    mesh.kill("control-plane-2");
    let counts = served_by(&mesh, 20);
    assert_eq!(
        counts.values().sum::<usize>(),
        20,
        "last tables keep serving"
    );

    mesh.restart("control-plane-1");
    let revision = apply(&mesh, &split_yaml(0, 1));
    mesh.wait_for_version(revision);
    let counts = served_by(&mesh, 20);
    assert_eq!(counts.get("inventory-2"), Some(&20), "{counts:?}");
}

#[test]
fn control_plane_recovers_from_an_etcd_restart() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&inventory_pair());
    mesh.kill("etcd");
    let counts = served_by(&mesh, 10);
    assert_eq!(counts.values().sum::<usize>(), 10);
    mesh.restart("etcd");
    // meshctl may meet a replica still reconnecting: retry until one takes it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let revision = loop {
        let (ok, out, err) = mesh.meshctl(&["apply", "-f", "-"], Some(&split_yaml(1, 0)));
        if ok {
            break revision_in(&out);
        }
        assert!(Instant::now() < deadline, "apply never succeeded: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    mesh.wait_for_version(revision);
    let counts = served_by(&mesh, 10);
    assert_eq!(counts.get("inventory-1"), Some(&10), "{counts:?}");
}

#[test]
fn racing_writers_one_wins_and_the_other_gets_a_conflict() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&inventory_pair());
    let base = apply(&mesh, &split_yaml(1, 1));
    let uri = mesh.plan.control_planes[0].clone();
    let identity = mesh.plan.identity.clone();
    let current = block_on(async move {
        admin(&uri, identity.as_ref())
            .get_route(GetRouteRequest {
                name: "inventory".into(),
            })
            .await
            .expect("GetRoute")
            .into_inner()
    });
    assert_eq!(current.revision, base);

    let expected = base.to_string();
    let results: Vec<(bool, String, String, u32)> = std::thread::scope(|scope| {
        let writers: Vec<_> = [(3u32, 1u32), (1, 3)]
            .into_iter()
            .map(|(v1, v2)| {
                let mesh = &mesh;
                let expected = expected.clone();
                scope.spawn(move || {
                    let (ok, out, err) = mesh.meshctl(
                        &["apply", "--expected-revision", &expected, "-f", "-"],
                        Some(&split_yaml(v1, v2)),
                    );
                    (ok, out, err, v1)
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let winners: Vec<_> = results.iter().filter(|r| r.0).collect();
    let losers: Vec<_> = results.iter().filter(|r| !r.0).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(losers.len(), 1, "{results:?}");
    assert!(losers[0].2.contains("conflict"), "{}", losers[0].2);

    let stored = stored_routes(&mesh);
    let winner_v1 = winners[0].3;
    assert!(
        stored
            .iter()
            .any(|r| r.contains(&format!("\"subset\":\"v1\",\"weight\":{winner_v1}"))),
        "the winner's route is stored: {stored:?}"
    );
}

#[test]
fn invalid_routes_are_refused_naming_the_field_and_nothing_is_stored() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![("inventory", "inventory-1", "v1")]));
    let before = stored_routes(&mesh);
    let good = split_yaml(1, 1);
    let cases = [
        (good.replace("destination:", "destinaton:"), "destinaton"),
        (split_yaml(0, 0), "spec.split[*].weight"),
        (
            good.replace("  destination: inventory\n", "  destination: inventory\n  timeout: -200ms\n"),
            "spec.timeout",
        ),
        (
            good.replace(
                "  split:\n",
                "  rules:\n    - headers: [{ name: x-canary, regex: \"(unclosed\" }]\n      split: [{ subset: v2, weight: 1 }]\n  split:\n",
            ),
            "spec.rules[0].headers[0].regex",
        ),
        ("kind: Route\nmetadata: [unclosed\n".to_owned(), "document 1"),
        // A bad second document: the good first one is not applied either.
        (
            format!("{}---\n{}", good.replace("name: inventory", "name: other"), split_yaml(0, 0)),
            "document 2",
        ),
    ];
    for (yaml, field) in cases {
        let (ok, out, err) = mesh.meshctl(&["apply", "-f", "-"], Some(&yaml));
        assert!(!ok, "accepted:\n{yaml}\n{out}");
        assert!(err.contains(field), "the error names {field:?}:\n{err}");
    }
    // The server validates too, whoever calls it.
    let uri = mesh.plan.control_planes[0].clone();
    let identity = mesh.plan.identity.clone();
    let status = block_on(async move {
        admin(&uri, identity.as_ref())
            .apply_route(ApplyRouteRequest {
                route_json: r#"{"kind":"Route","metadata":{"name":"x"},"spec":{"match":{"service":"a.B"},"destination":"inventory","split":[{"subset":"v1","weight":0}]}}"#.into(),
                expected_revision: None,
            })
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("spec.split[*].weight"),
        "{status:?}"
    );
    assert_eq!(stored_routes(&mesh), before, "nothing was stored");
}

#[test]
fn grpcurl_sees_every_registered_service_at_the_gateway() {
    if !have_tool("etcd") {
        return;
    }
    let Some(grpcurl) = support::grpcurl() else {
        return;
    };
    let mesh = TestMesh::start(&topology(vec![
        ("catalog", "catalog-1", "v1"),
        ("inventory", "inventory-1", "v1"),
        ("payments", "payments-1", "v1"),
        ("orders", "orders-1", "v1"),
    ]));
    let gateway = mesh.plan.gateway().unwrap().to_string();
    let (ok, out, err) = support::run_grpcurl(&grpcurl, &["-plaintext", &gateway, "list"]);
    assert!(ok, "{err}");
    let calls = [
        (
            "shop.catalog.v1.CatalogService",
            "ListProducts",
            r#"{"page_size":2}"#,
            "products",
        ),
        (
            "shop.inventory.v1.InventoryService",
            "GetStock",
            r#"{"sku":"sku-espresso-beans"}"#,
            "available",
        ),
        (
            "shop.payments.v1.PaymentsService",
            "Charge",
            r#"{"idempotency_key":"k1","customer_id":"c","reference":"r","amount_minor":100,"currency":"EUR"}"#,
            "PAYMENT_STATUS_CAPTURED",
        ),
        (
            "shop.orders.v1.OrdersService",
            "PlaceOrder",
            r#"{"request_id":"g1","customer_id":"c","lines":[{"sku":"sku-espresso-beans","quantity":1}]}"#,
            "ORDER_STATUS_CONFIRMED",
        ),
    ];
    for (service, method, body, expect) in calls {
        assert!(out.contains(service), "list shows {service}:\n{out}");
        let (ok, described, err) =
            support::run_grpcurl(&grpcurl, &["-plaintext", &gateway, "describe", service]);
        assert!(ok, "describe {service}: {err}");
        assert!(described.contains(&format!("rpc {method}")), "{described}");
        let (ok, answer, err) = support::run_grpcurl(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                body,
                &gateway,
                &format!("{service}/{method}"),
            ],
        );
        assert!(ok, "{service}/{method}: {answer}\n{err}");
        assert!(answer.contains(expect), "{service}/{method}: {answer}");
    }
}

#[test]
fn drain_and_sigterm_deregister_first_keep_serving_and_exit_in_time() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&inventory_pair());
    let registered = |mesh: &TestMesh, instance: &str| {
        let (ok, out, err) = mesh.meshctl(&["get", "endpoints"], None);
        assert!(ok, "{err}");
        out.contains(instance)
    };

    // The preStop hook's /drain: inventory-2 leaves the mesh at once (not
    // at lease expiry), reports not ready, and still serves.
    let admin = mesh
        .plan
        .process("inventory-2-sidecar")
        .unwrap()
        .admin
        .unwrap();
    let (status, _) =
        meshctl::demo::admin_request(admin, http::Method::POST, "/drain").expect("POST /drain");
    assert_eq!(status, 200);
    // Deregistered by the drain itself: the sidecar still runs and keeps
    // its lease alive, so expiry cannot have removed it.
    assert!(
        !registered(&mesh, "inventory-2"),
        "deregistered when /drain answered"
    );
    let (ready, _) = meshctl::demo::admin_get(admin, "/ready").unwrap();
    assert_eq!(ready, 503, "a draining sidecar is not ready");
    // Called as a peer of the mesh would (the inbound port is mTLS).
    let inbound = mesh.serving("inventory-2-sidecar");
    let tls = mesh.workload_tls("orders");
    let answered = block_on(async move {
        let channel = support::mtls_channel(inbound, tls, "inventory").await;
        InventoryServiceClient::new(channel)
            .get_stock(GetStockRequest {
                sku: "sku-espresso-beans".into(),
            })
            .await
    });
    assert!(
        answered.is_ok(),
        "still serving while draining: {answered:?}"
    );

    // SIGTERM: inventory-1's sidecar deregisters first and exits within its
    // deregister delay (200 ms here) plus drain (10 s default).
    let took = mesh.terminate("inventory-1-sidecar", Duration::from_secs(15));
    eprintln!("inventory-1-sidecar exited {took:?} after SIGTERM");
    assert!(!registered(&mesh, "inventory-1"), "deregistered on SIGTERM");
}
