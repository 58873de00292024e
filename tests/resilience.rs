//! Resilience end to end: route policies applied with meshctl through the
//! control plane (real etcd), real failing processes, SIGKILL mid-load.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use mesh::proto::shop::catalog::v1::GetProductRequest;
use mesh::proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh::proto::shop::inventory::v1::GetStockRequest;
use mesh::proto::shop::orders::v1::orders_service_client::OrdersServiceClient;
use mesh::proto::shop::orders::v1::{OrderLine, OrderStatus, PlaceOrderRequest};
use mesh::proto::shop::payments::v1::payments_service_client::PaymentsServiceClient;
use mesh::proto::shop::payments::v1::{ChargeRequest, GetPaymentRequest, PaymentStatus};
use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::{block_on, have_tool, TestMesh};
use tonic::transport::Channel;
use tonic::Code;

fn topology(services: Vec<(&str, Vec<InstanceSpec>)>) -> Topology {
    Topology {
        services: services
            .into_iter()
            .map(|(s, i)| (s.to_owned(), i))
            .collect(),
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            etcd: true,
            lease_ttl_seconds: 3,
            deregister_delay_ms: 200,
            first_port: None,
            ..ControlPlaneSpec::default()
        }),
        // These tests drive payments and inventory from outside.
        expose_internal: true,
        ..Topology::default()
    }
}

fn payments(n: usize, args: &[&str]) -> (&'static str, Vec<InstanceSpec>) {
    let instances = (1..=n)
        .map(|i| InstanceSpec::new(format!("payments-{i}")).app_args(args.iter().copied()))
        .collect();
    ("payments", instances)
}

/// Applies a payments route with `policy` (YAML lines under `spec:`).
fn apply_payments_route(mesh: &TestMesh, policy: &str) {
    let yaml = format!(
        "kind: Route\nmetadata:\n  name: payments\nspec:\n  match:\n    service: shop.payments.v1.PaymentsService\n  destination: payments\n  exposure: public\n{policy}"
    );
    let revision = mesh.meshctl_apply(&yaml);
    mesh.wait_for_version(revision);
}

fn charge(key: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.into(),
        customer_id: "alice".into(),
        reference: "order-x".into(),
        amount_minor: 500,
        currency: "EUR".into(),
    }
}

async fn gateway(mesh_uri: String) -> PaymentsServiceClient<Channel> {
    PaymentsServiceClient::new(
        Channel::from_shared(mesh_uri)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn served_by<T>(result: &Result<tonic::Response<T>, tonic::Status>) -> String {
    let metadata = match result {
        Ok(r) => r.metadata(),
        Err(s) => s.metadata(),
    };
    metadata
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-mesh-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Upstream attempts that reached payments: the sum of every payments
/// sidecar's inbound counter.
fn payments_attempts(mesh: &TestMesh, instances: usize) -> f64 {
    (1..=instances)
        .map(|i| {
            mesh.counter(
                &format!("payments-{i}-sidecar"),
                "mesh_requests_total",
                &[("direction", "inbound")],
            )
        })
        .sum()
}

fn gateway_endpoint_state(mesh: &TestMesh, instance: &str) -> String {
    let address = mesh.serving(&format!("{instance}-sidecar")).to_string();
    let admin = mesh.plan.process("gateway").unwrap().admin.unwrap();
    let (_, body) = meshctl::demo::admin_get(admin, "/endpoints").unwrap();
    let views: serde_json::Value = serde_json::from_str(&body).unwrap();
    views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["address"] == address.as_str())
        .map(|v| v["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn failing_endpoint_is_ejected_then_probed_and_readmitted() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&topology(vec![(
        "payments",
        vec![
            InstanceSpec::new("payments-1").app_args(["--failure-rate", "1"]),
            InstanceSpec::new("payments-2"),
        ],
    )]));
    apply_payments_route(
        &mesh,
        "  outlierDetection:\n    consecutiveFailures: 3\n    baseEjection: 1s\n    maxEjection: 10s\n    maxEjectionPercent: 50\n",
    );
    let uri = mesh.gateway_uri();
    let first: Vec<String> = block_on(async move {
        let mut client = gateway(uri).await;
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(served_by(&client.charge(charge(&format!("a{i}"))).await));
        }
        seen
    });
    let failures = first.iter().filter(|s| *s == "payments-1").count();
    assert_eq!(
        failures, 3,
        "ejected after exactly 3 failures in a row: {first:?}"
    );
    assert_eq!(gateway_endpoint_state(&mesh, "payments-1"), "ejected");
    // Replicas publish who is connected every 500 ms: the gateway may not
    // be listed yet right after start-up, so wait for it (bounded).
    let waited = Instant::now();
    let described = loop {
        let (ok, described, err) = mesh.meshctl(&["describe", "route", "payments"], None);
        assert!(ok, "{err}");
        if described.contains("gateway/gateway") || waited.elapsed() > Duration::from_secs(10) {
            break described;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        described.contains("gateway/gateway (ejected"),
        "meshctl describe shows the ejection and where:\n{described}"
    );
    assert!(described.contains("grpc-status 14"), "{described}");

    // While ejected, payments-1 gets nothing.
    let uri = mesh.gateway_uri();
    let during: Vec<String> = block_on(async move {
        let mut client = gateway(uri).await;
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(served_by(&client.charge(charge(&format!("b{i}"))).await));
        }
        seen
    });
    assert!(during.iter().all(|s| s == "payments-2"), "{during:?}");

    // payments-1 is fixed and redeployed; after the ejection a probe
    // finds it healthy and it is back in rotation.
    mesh.kill("payments-1");
    mesh.spec_mut("payments-1")
        .args
        .retain(|a| a != "--failure-rate" && a != "1");
    mesh.restart("payments-1");
    mesh.restart_wait_ready("payments-1-sidecar");
    let uri = mesh.gateway_uri();
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = block_on(async move {
        let mut client = gateway(uri).await;
        let mut i = 0;
        loop {
            i += 1;
            let result = client.charge(charge(&format!("c{i}"))).await;
            if served_by(&result) == "payments-1" {
                return result.is_ok();
            }
            assert!(Instant::now() < deadline, "payments-1 never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(back, "the probe succeeded");
    assert_eq!(gateway_endpoint_state(&mesh, "payments-1"), "healthy");
}

#[test]
fn sigkill_of_one_of_three_payments_mid_load_loses_no_call_and_books_balance() {
    if !have_tool("etcd") {
        return;
    }
    let mut mesh = TestMesh::start(&topology(vec![
        ("catalog", vec![InstanceSpec::new("catalog-1")]),
        ("inventory", vec![InstanceSpec::new("inventory-1")]),
        payments(3, &[]),
        ("orders", vec![InstanceSpec::new("orders-1")]),
    ]));
    apply_payments_route(
        &mesh,
        "  retries:\n    attempts: 3\n    retryOn: [unavailable]\n    budget: { ratio: 0.5, minPerSecond: 20 }\n  outlierDetection:\n    consecutiveFailures: 2\n    baseEjection: 30s\n",
    );
    let uri = mesh.gateway_uri();
    const ORDERS: usize = 60;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let load = std::thread::spawn(move || {
        block_on(async move {
            let channel = Channel::from_shared(uri).unwrap().connect().await.unwrap();
            let sku = CatalogServiceClient::new(channel.clone())
                .get_product(GetProductRequest {
                    sku: "sku-espresso-beans".into(),
                })
                .await
                .expect("catalog")
                .into_inner();
            let before = InventoryServiceClient::new(channel.clone())
                .get_stock(GetStockRequest {
                    sku: sku.sku.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .available;
            let mut placed = Vec::new();
            for i in 0..ORDERS {
                let mut client = OrdersServiceClient::new(channel.clone());
                let order = client
                    .place_order(PlaceOrderRequest {
                        request_id: format!("load-{i}"),
                        customer_id: "alice".into(),
                        lines: vec![OrderLine {
                            sku: sku.sku.clone(),
                            quantity: 1,
                        }],
                    })
                    .await
                    .map(|r| r.into_inner());
                let _ = tx.send(i);
                placed.push(order);
            }
            let after = InventoryServiceClient::new(channel)
                .get_stock(GetStockRequest {
                    sku: sku.sku.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .available;
            (placed, before, after, sku.price_minor)
        })
    });
    // Kill one instance (app and sidecar) a third of the way in.
    while rx.recv().expect("load runs") < ORDERS / 3 {}
    mesh.kill("payments-2");
    mesh.kill("payments-2-sidecar");
    let (placed, before, after, price) = load.join().unwrap();

    let errors: Vec<_> = placed.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "no client saw an error: {errors:?}");
    let orders: Vec<_> = placed.into_iter().map(Result::unwrap).collect();
    assert!(orders.iter().all(|o| o.status() == OrderStatus::Confirmed));
    assert_eq!(
        before - after,
        ORDERS as i64,
        "stock matches the confirmed orders"
    );

    // Every charge the surviving instances hold belongs to a confirmed
    // order, once, for its total (payments-2's ledger died with it).
    let mut found: HashMap<String, usize> = HashMap::new();
    for instance in ["payments-1", "payments-3"] {
        let inbound = format!("http://{}", mesh.serving(&format!("{instance}-sidecar")));
        let ids: Vec<(String, i64)> = orders
            .iter()
            .map(|o| (o.payment_id.clone(), o.total_minor))
            .collect();
        let hits = block_on(async move {
            let mut client = gateway(inbound).await;
            let mut hits = Vec::new();
            for (id, total) in ids {
                if let Ok(p) = client
                    .get_payment(GetPaymentRequest {
                        payment_id: id.clone(),
                    })
                    .await
                {
                    let p = p.into_inner();
                    assert_eq!(p.status(), PaymentStatus::Captured);
                    assert_eq!(p.amount_minor, total);
                    hits.push(id);
                }
            }
            hits
        });
        for id in hits {
            *found.entry(id).or_default() += 1;
        }
    }
    assert!(
        found.values().all(|&n| n == 1),
        "no payment held twice: {found:?}"
    );
    assert!(orders.iter().all(|o| o.total_minor == price));
}

#[test]
fn retry_budget_caps_attempts_when_every_instance_fails() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![payments(2, &["--failure-rate", "1"])]));
    apply_payments_route(
        &mesh,
        "  retries:\n    attempts: 5\n    retryOn: [unavailable]\n    backoff: { base: 1ms, max: 2ms }\n    budget: { ratio: 0.2, minPerSecond: 1 }\n",
    );
    const REQUESTS: usize = 100;
    let uri = mesh.gateway_uri();
    block_on(async move {
        let mut client = gateway(uri).await;
        for i in 0..REQUESTS {
            let status = client
                .charge(charge(&format!("k{i}")))
                .await
                .expect_err("all fail");
            assert_eq!(status.code(), Code::Unavailable);
        }
    });
    let attempts = payments_attempts(&mesh, 2);
    // TpsBudget keeps min_per_second x its 10 s window in reserve.
    let bound = (1.0 + 0.2) * REQUESTS as f64 + 1.0 * 10.0;
    eprintln!("{attempts} upstream attempts for {REQUESTS} requests (bound {bound})");
    assert!(attempts >= REQUESTS as f64);
    assert!(
        attempts <= bound,
        "{attempts} attempts > {bound}: retry storm"
    );
    assert!(
        mesh.counter(
            "gateway",
            "mesh_proxy_errors_total",
            &[("reason", "retry-budget-exhausted")]
        ) > 0.0
    );
}

#[test]
fn deadlines_route_timeout_and_callers_shorter_grpc_timeout() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![payments(1, &["--latency-ms", "1000"])]));
    apply_payments_route(&mesh, "  timeout: 200ms\n");
    let uri = mesh.gateway_uri();
    let (elapsed, status) = block_on(async move {
        let mut client = gateway(uri).await;
        let started = Instant::now();
        let status = client.charge(charge("slow-1")).await.expect_err("too slow");
        (started.elapsed(), status)
    });
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "deadline-exceeded");
    assert!(status.message().contains("route's timeout"), "{status:?}");
    // Never before the route's timeout (the upper side is the message
    // above: the route's timer fired, not the upstream's answer).
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");

    // The upstream saw the cancellation: the charge was never recorded, so
    // the same key with another amount is accepted (it would be refused as
    // a conflicting retry had the first charge completed).
    // Straight at payments' inbound port, as a peer of the mesh (mTLS).
    let inbound = mesh.serving("payments-1-sidecar");
    let tls = mesh.workload_tls("orders");
    // The app itself says so: the cancelled charge never reached its ledger.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mesh
        .log("payments-1")
        .contains("call abandoned by its caller before it reached the ledger")
    {
        assert!(
            Instant::now() < deadline,
            "payments never saw the charge cancelled:\n{}",
            mesh.log("payments-1")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let recharged = block_on(async move {
        let mut request = charge("slow-1");
        request.amount_minor = 999;
        PaymentsServiceClient::new(support::mtls_channel(inbound, tls, "payments").await)
            .charge(request)
            .await
    });
    assert!(
        recharged.is_ok(),
        "first charge was cancelled upstream: {recharged:?}"
    );

    // A caller's shorter grpc-timeout wins over the route's. The call is
    // made by hand so that no client-side timer races the gateway's answer.
    apply_payments_route(&mesh, "  timeout: 5s\n");
    let gateway_addr = mesh.plan.gateway().unwrap();
    let (elapsed, headers) = block_on(async move {
        use prost::Message;
        let started = Instant::now();
        let (headers, _) = support::raw_unary(
            gateway_addr,
            "/shop.payments.v1.PaymentsService/Charge",
            &charge("slow-2").encode_to_vec(),
            &[("grpc-timeout", "150m")],
        )
        .await;
        (started.elapsed(), headers)
    });
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert_eq!(headers["x-mesh-error"], "deadline-exceeded");
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("caller's grpc-timeout"),
        "{headers:?}"
    );
    // Never before the caller's deadline; that it was the caller's and not
    // the route's 5 s is what grpc-message says above.
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
}

#[test]
fn concurrency_cap_fails_fast_and_recovers() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![payments(1, &["--latency-ms", "700"])]));
    apply_payments_route(&mesh, "  concurrency: { maxRequests: 2 }\n");
    let uri = mesh.gateway_uri();
    let results = block_on(async move {
        let client = gateway(uri).await;
        let calls = (0..6).map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client.charge(charge(&format!("cc{i}"))).await;
                (result, started.elapsed())
            })
        });
        let mut results = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            results.push(call.await.unwrap());
        }
        results
    });
    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    let refused: Vec<_> = results
        .iter()
        .filter_map(|(r, t)| r.as_ref().err().map(|s| (s, t)))
        .collect();
    assert!(ok >= 2, "{results:?}");
    assert!(!refused.is_empty(), "beyond the cap calls are refused");
    // Refused by the cap itself (not after waiting for a place: the
    // reason says which rule answered).
    for (status, _) in &refused {
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason(status), "concurrency-limit");
    }
    // Load gone: calls go through again.
    let uri = mesh.gateway_uri();
    let after = block_on(async move { gateway(uri).await.charge(charge("after")).await });
    assert!(after.is_ok(), "{after:?}");
}

#[test]
fn fault_injection_aborts_about_the_configured_share() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![payments(1, &[])]));
    let count_aborted = |mesh: &TestMesh, n: usize, prefix: &'static str| {
        let uri = mesh.gateway_uri();
        block_on(async move {
            let mut client = gateway(uri).await;
            let mut aborted = 0;
            for i in 0..n {
                if let Err(status) = client.charge(charge(&format!("{prefix}{i}"))).await {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert_eq!(reason(&status), "fault-injected");
                    aborted += 1;
                }
            }
            aborted
        })
    };
    apply_payments_route(
        &mesh,
        "  fault:\n    abort: { percent: 50, code: resource-exhausted }\n",
    );
    let aborted = count_aborted(&mesh, 200, "f");
    // Binomial(200, 0.5): mean 100, sd ~7.1; +-5 sd.
    assert!((65..=135).contains(&aborted), "{aborted} of 200 aborted");

    apply_payments_route(
        &mesh,
        "  fault:\n    abort: { percent: 0, code: resource-exhausted }\n",
    );
    assert_eq!(count_aborted(&mesh, 100, "z"), 0);
}

#[test]
fn a_body_above_the_retry_buffer_is_forwarded_but_not_retried() {
    if !have_tool("etcd") {
        return;
    }
    let mesh = TestMesh::start(&topology(vec![payments(2, &["--failure-rate", "1"])]));
    apply_payments_route(
        &mesh,
        "  retries:\n    attempts: 3\n    bufferBytes: 1024\n    backoff: { base: 1ms, max: 2ms }\n    budget: { ratio: 1.0, minPerSecond: 100 }\n",
    );
    let uri = mesh.gateway_uri();
    let small = block_on(async move { gateway(uri).await.charge(charge("small")).await });
    assert_eq!(small.expect_err("fails").code(), Code::Unavailable);
    assert_eq!(payments_attempts(&mesh, 2), 3.0, "a small body is retried");

    let uri = mesh.gateway_uri();
    let big = block_on(async move {
        let mut request = charge("big");
        request.reference = "x".repeat(4096);
        gateway(uri).await.charge(request).await
    });
    assert_eq!(big.expect_err("fails").code(), Code::Unavailable);
    assert_eq!(
        payments_attempts(&mesh, 2),
        4.0,
        "the big body reached payments once and was not retried"
    );
}
