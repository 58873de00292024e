//! End-to-end: the shop on real processes, every call through real sidecars.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use mesh::model::Endpoint;
use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use mesh::proto::shop::catalog::v1::Product;
use mesh::proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh::proto::shop::inventory::v1::{GetStockRequest, StockAdjustment};
use mesh::proto::shop::orders::v1::orders_service_client::OrdersServiceClient;
use mesh::proto::shop::orders::v1::{
    GetOrderRequest, OrderLine, OrderStatus, PlaceOrderRequest, WatchOrderRequest,
};
use mesh::proto::shop::payments::v1::payments_service_client::PaymentsServiceClient;
use mesh::proto::shop::payments::v1::{ChargeRequest, GetPaymentRequest};
use meshctl::demo::{route, InstanceSpec, Topology};
use support::TestMesh;
use tonic::transport::Channel;
use tonic::Code;

const SERVED_BY: &str = "x-served-by";
const REASON: &str = "x-mesh-error";

use support::channel;

fn one(name: &str) -> (String, Vec<InstanceSpec>) {
    (name.into(), vec![InstanceSpec::new(format!("{name}-1"))])
}

fn shop(payments: InstanceSpec) -> Topology {
    Topology {
        services: vec![
            one("catalog"),
            one("inventory"),
            ("payments".into(), vec![payments]),
            one("orders"),
        ],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        // The test calls inventory (internal in the demo) from outside.
        expose_internal: true,
        ..Topology::default()
    }
}

use support::first_product;

async fn available(ch: &Channel, sku: &str) -> i64 {
    InventoryServiceClient::new(ch.clone())
        .get_stock(GetStockRequest { sku: sku.into() })
        .await
        .expect("GetStock")
        .into_inner()
        .available
}

fn order(request_id: &str, sku: &str, quantity: i32) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        customer_id: "alice".into(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_through_gateway_goes_through_a_sidecar_at_every_hop() {
    let mesh = TestMesh::start(&shop(InstanceSpec::new("payments-1")));
    let gw = channel(mesh.gateway_uri()).await;
    let product = first_product(&gw).await;
    let before = available(&gw, &product.sku).await;

    let reply = OrdersServiceClient::new(gw.clone())
        .place_order(order("e2e-1", &product.sku, 2))
        .await
        .expect("PlaceOrder succeeds");
    assert_eq!(reply.metadata().get(SERVED_BY).unwrap(), "orders-1");
    let placed = reply.into_inner();
    assert_eq!(placed.status(), OrderStatus::Confirmed);
    assert_eq!(placed.total_minor, 2 * product.price_minor);
    assert_eq!(available(&gw, &product.sku).await, before - 2);

    // Each hop was counted by the proxy it went through: the gateway took
    // the call in, orders' sidecar took it in and every saga step out, and
    // each callee's sidecar took its step in.
    let count = |proxy: &str, direction: &str, service: &str| {
        mesh.counter(
            proxy,
            "mesh_requests_total",
            &[("direction", direction), ("service", service)],
        )
    };
    assert!(count("gateway", "ingress", "orders") >= 1.0);
    assert!(count("orders-1-sidecar", "inbound", "orders") >= 1.0);
    for callee in ["catalog", "inventory", "payments"] {
        assert!(
            count("orders-1-sidecar", "outbound", callee) >= 1.0,
            "orders -> {callee} left through orders' sidecar"
        );
        assert!(
            count(&format!("{callee}-1-sidecar"), "inbound", callee) >= 1.0,
            "orders -> {callee} came in through {callee}'s sidecar"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_given_worker_threads_proxies_like_one_on_its_main_thread() {
    // orders' sidecar on two workers; every other proxy on one thread (the
    // default). The saga's calls go out through the former and in through
    // the latter.
    let mut topology = shop(InstanceSpec::new("payments-1"));
    for (service, instances) in &mut topology.services {
        if service == "orders" {
            instances[0] = InstanceSpec::new("orders-1").sidecar_args(["--worker-threads", "2"]);
        }
    }
    let mesh = TestMesh::start(&topology);
    let gw = channel(mesh.gateway_uri()).await;
    let product = first_product(&gw).await;
    let reply = OrdersServiceClient::new(gw)
        .place_order(order("threads-1", &product.sku, 1))
        .await
        .expect("PlaceOrder succeeds");
    assert_eq!(reply.metadata().get(SERVED_BY).unwrap(), "orders-1");
    assert_eq!(reply.into_inner().status(), OrderStatus::Confirmed);

    // Main thread plus two workers, against one thread (a blocking helper
    // of tokio's may come and go).
    let workers = mesh.threads("orders-1-sidecar");
    assert!(workers >= 3, "orders' sidecar runs {workers} threads");
    let single = mesh.threads("catalog-1-sidecar");
    assert!(single <= 2, "catalog's sidecar runs {single} threads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_splits_three_to_one() {
    let topology = Topology {
        services: vec![(
            "inventory".into(),
            vec![
                InstanceSpec::new("inventory-1").weight(3),
                InstanceSpec::new("inventory-2").weight(1),
            ],
        )],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        // The test calls inventory (internal in the demo) from outside.
        expose_internal: true,
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let gw = channel(mesh.gateway_uri()).await;
    // Any SKU will do: an unknown one still gets an answer (NOT_FOUND)
    // carrying x-served-by, so the split is measured either way.
    let product_sku = "sku-espresso-beans";
    let mut client = InventoryServiceClient::new(gw);
    let mut served: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let metadata = match client
            .get_stock(GetStockRequest {
                sku: product_sku.into(),
            })
            .await
        {
            Ok(reply) => reply.metadata().clone(),
            Err(status) => status.metadata().clone(),
        };
        let by = metadata
            .get(SERVED_BY)
            .expect("every answer says who served it")
            .to_str()
            .unwrap()
            .to_owned();
        *served.entry(by).or_default() += 1;
    }
    // Smooth weighted round-robin is exact, not random: over 100 whole
    // periods of 3 + 1, each instance gets precisely its share (a random
    // 3:1 choice would miss by about 9 either way).
    let count = |id: &str| i64::from(served.get(id).copied().unwrap_or(0));
    assert!(
        (count("inventory-1") - 300).abs() <= 1 && (count("inventory-2") - 100).abs() <= 1,
        "not an exact 3:1 split: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_streams_through_two_sidecars() {
    let mesh = TestMesh::start(&shop(InstanceSpec::new("payments-1")));
    // The test plays catalog's app: out through catalog's sidecar, in
    // through orders' sidecar.
    let via_sidecars = channel(mesh.outbound_uri("catalog-1")).await;
    let product = first_product(&via_sidecars).await;
    let mut orders = OrdersServiceClient::new(via_sidecars);
    let placed = orders
        .place_order(order("watch-1", &product.sku, 1))
        .await
        .expect("PlaceOrder")
        .into_inner();

    let mut stream = orders
        .watch_order(WatchOrderRequest {
            order_id: placed.order_id.clone(),
        })
        .await
        .expect("WatchOrder")
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(event) = stream.message().await.expect("stream message") {
        assert_eq!(event.order_id, placed.order_id);
        statuses.push(event.status());
    }
    assert_eq!(
        statuses.first(),
        Some(&OrderStatus::Pending),
        "history starts at the beginning: {statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&OrderStatus::Confirmed),
        "the stream ends at the final status: {statuses:?}"
    );
    assert!(statuses.len() >= 3, "{statuses:?}");
    assert!(
        mesh.counter(
            "catalog-1-sidecar",
            "mesh_requests_total",
            &[("direction", "outbound"), ("service", "orders")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_payment_compensates_and_restores_stock() {
    let failing = InstanceSpec::new("payments-1").app_args(["--failure-rate", "1"]);
    let mesh = TestMesh::start(&shop(failing));
    let gw = channel(mesh.gateway_uri()).await;
    let product = first_product(&gw).await;
    let before = available(&gw, &product.sku).await;

    let status = OrdersServiceClient::new(gw.clone())
        .place_order(order("doomed-1", &product.sku, 3))
        .await
        .expect_err("the payment fails, so the order fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("payment"),
        "the message names the failed step: {}",
        status.message()
    );
    assert_eq!(
        available(&gw, &product.sku).await,
        before,
        "the reservation was released"
    );
    let order_id = status
        .metadata()
        .get("x-order-id")
        .expect("the failed order's id")
        .to_str()
        .unwrap()
        .to_owned();
    let cancelled = OrdersServiceClient::new(gw)
        .get_order(GetOrderRequest { order_id })
        .await
        .expect("GetOrder")
        .into_inner();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert!(!cancelled.failure_reason.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_bidi_streaming_pass_through() {
    let topology = Topology {
        services: vec![one("catalog"), one("inventory")],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        // The test calls inventory (internal in the demo) from outside.
        expose_internal: true,
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let gw = channel(mesh.gateway_uri()).await;

    // Client streaming: 50 products in, one summary out.
    let products: Vec<Product> = (0..50)
        .map(|i| Product {
            sku: format!("sku-import-{i:03}"),
            name: format!("Imported {i}"),
            description: String::new(),
            price_minor: 100 + i,
            currency: "EUR".into(),
        })
        .collect();
    let summary = CatalogServiceClient::new(gw.clone())
        .upsert_products(tokio_stream::iter(products))
        .await
        .expect("UpsertProducts")
        .into_inner();
    assert_eq!(summary.created + summary.updated, 50);

    // Bidi: each adjustment answered in order, on one stream.
    let sku = first_product(&gw).await.sku;
    let start = available(&gw, &sku).await;
    let adjustments = (1..=5).map(move |delta| StockAdjustment {
        sku: sku.clone(),
        delta,
    });
    let mut replies = InventoryServiceClient::new(gw)
        .adjust_stock(tokio_stream::iter(adjustments))
        .await
        .expect("AdjustStock")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(stock) = replies.message().await.expect("reply") {
        seen.push(stock.available);
    }
    assert_eq!(
        seen,
        vec![start + 1, start + 3, start + 6, start + 10, start + 15]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_grpc_statuses_with_reasons() {
    let mut ports = support::port_allocator();
    let closed_port = ports();
    drop(ports); // nothing listens there any more
    let topology = Topology {
        services: vec![(
            "payments".into(),
            vec![InstanceSpec::new("payments-1").app_args(["--latency-ms", "5000"])],
        )],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        extra_routes: vec![
            public(route("orders", "shop.orders.v1.OrdersService", "orders")),
            public(route(
                "inventory",
                "shop.inventory.v1.InventoryService",
                "inventory",
            )),
        ],
        expose_internal: true,
        extra_endpoints: vec![Endpoint {
            service: "inventory".into(),
            instance: "inventory-dead".into(),
            address: format!("127.0.0.1:{closed_port}"),
            version: "v1".into(),
            weight: 1,
        }],
        ..Topology::default()
    };
    let mut mesh = TestMesh::start(&topology);
    let gw = channel(mesh.gateway_uri()).await;
    let reason = |status: &tonic::Status| {
        status
            .metadata()
            .get(REASON)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };

    // No public route: the gateway routes no health service, and says so
    // as it would for an internal one.
    let status = tonic_health::pb::health_client::HealthClient::new(gw.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(reason(&status), "not-exposed");
    assert!(status.message().contains("/grpc.health.v1.Health/Check"));

    // No endpoints: orders is routed but nothing is registered.
    let status = OrdersServiceClient::new(gw.clone())
        .get_order(GetOrderRequest {
            order_id: "x".into(),
        })
        .await
        .expect_err("no endpoints");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "no-endpoints");

    // Upstream refused: the only inventory endpoint has nothing listening.
    let status = InventoryServiceClient::new(gw.clone())
        .get_stock(GetStockRequest { sku: "x".into() })
        .await
        .expect_err("connection refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "upstream-connect-failed");

    // Upstream reset: payments dies (SIGKILL) while a slow charge is in flight.
    let mut payments = PaymentsServiceClient::new(gw.clone());
    let warm = payments
        .get_payment(GetPaymentRequest {
            payment_id: "none".into(),
        })
        .await;
    assert_eq!(warm.expect_err("unknown payment").code(), Code::NotFound);
    let charge = tokio::spawn(async move {
        payments
            .charge(ChargeRequest {
                idempotency_key: "k1".into(),
                customer_id: "alice".into(),
                reference: "r".into(),
                amount_minor: 100,
                currency: "EUR".into(),
            })
            .await
    });
    let in_flight = || {
        mesh.counter(
            "payments-1-sidecar",
            "mesh_requests_total",
            &[("direction", "inbound")],
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while in_flight() < 2.0 {
        assert!(std::time::Instant::now() < deadline, "charge never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    mesh.kill("payments-1");
    let status = charge.await.unwrap().expect_err("the upstream died");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "upstream-reset");

    let errors =
        |reason: &str| mesh.counter("gateway", "mesh_proxy_errors_total", &[("reason", reason)]);
    assert_eq!(errors("not-exposed"), 1.0);
    assert_eq!(errors("no-endpoints"), 1.0);
    assert_eq!(errors("upstream-connect-failed"), 1.0);
}

/// `route` reachable from outside, through the gateway.
fn public(mut route: mesh::model::Route) -> mesh::model::Route {
    route.spec.exposure = Some("public".into());
    route
}
