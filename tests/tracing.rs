//! End-to-end tracing: the shop on real processes exporting OTLP to a
//! receiver in the test. One PlaceOrder through the gateway is one trace
//! whose spans nest as the calls did; a dead collector changes nothing for
//! traffic.
//!
//! The assertions walk parent links through whatever spans lie between
//! (proxies may add their own), so they hold with or without sidecar spans.

mod support;

use std::time::Duration;

use mesh::proto::shop::orders::v1::orders_service_client::OrdersServiceClient;
use mesh::proto::shop::orders::v1::{OrderLine, OrderStatus, PlaceOrderRequest};
use meshctl::demo::Topology;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::otlp::{descends_from, OtlpReceiver, ReceivedSpan};
use support::TestMesh;
use tonic::transport::Channel;

/// How long spans may take to arrive (100 ms batches, a loaded 2-core box).
const SPAN_TIMEOUT: Duration = Duration::from_secs(30);

/// Every process of the shop that makes spans: the proxies and the apps.
const SHOP_PROCESSES: [&str; 9] = [
    "gateway",
    "orders-sidecar",
    "catalog-sidecar",
    "inventory-sidecar",
    "payments-sidecar",
    "orders",
    "catalog",
    "inventory",
    "payments",
];

const PLACE_ORDER: &str = "shop.orders.v1.OrdersService/PlaceOrder";
const GET_PRODUCT: &str = "shop.catalog.v1.CatalogService/GetProduct";
const RESERVE: &str = "shop.inventory.v1.InventoryService/Reserve";
const CHARGE: &str = "shop.payments.v1.PaymentsService/Charge";

use support::channel;

async fn some_sku(gateway: &Channel) -> String {
    support::first_product(gateway).await.sku
}

/// The shop exporting spans to a receiver of the test's own: the receiver,
/// the running mesh (kept alive by the caller), a gateway channel and a
/// SKU in stock.
async fn traced_shop() -> (OtlpReceiver, TestMesh, Channel, String) {
    let receiver = OtlpReceiver::start();
    let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
    topology.otlp_endpoint = Some(receiver.endpoint());
    let mesh = TestMesh::start(&topology);
    let gateway = channel(mesh.gateway_uri()).await;
    let sku = some_sku(&gateway).await;
    (receiver, mesh, gateway, sku)
}

fn order(request_id: &str, sku: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        customer_id: "alice".into(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity: 1,
        }],
    }
}

/// A trace id and span id of our own, so the test is the trace's root.
fn root_ids() -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let trace_id = format!(
        "{:032x}",
        (nanos ^ (u128::from(std::process::id()) << 64)) | 1
    );
    let span_id = format!("{:016x}", (nanos as u64) | 1);
    (trace_id, span_id)
}

/// `message` as a call that continues the trace `trace_id` under the span
/// `parent_id` (sampled), as a traced caller would send it.
fn traced<T>(message: T, trace_id: &str, parent_id: &str) -> tonic::Request<T> {
    with_traceparent(message, trace_id, parent_id, true)
}

/// `message` with a `traceparent` saying whether the caller sampled it.
fn with_traceparent<T>(
    message: T,
    trace_id: &str,
    parent_id: &str,
    sampled: bool,
) -> tonic::Request<T> {
    let flags = if sampled { "01" } else { "00" };
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-{flags}")
            .parse()
            .expect("header value"),
    );
    request
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    kind: SpanKind,
) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service_name == service && s.name == name && s.kind == kind)
}

fn require<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    kind: SpanKind,
) -> &'a ReceivedSpan {
    find(spans, service, name, kind)
        .unwrap_or_else(|| panic!("no {kind:?} span {name} from {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_is_one_trace_nested_as_the_calls() {
    let (receiver, _mesh, gateway, sku) = traced_shop().await;

    let (trace_id, root_id) = root_ids();
    let request = traced(order("trace-1", &sku), &trace_id, &root_id);
    let placed = OrdersServiceClient::new(gateway.clone())
        .place_order(request)
        .await
        .expect("PlaceOrder")
        .into_inner();
    assert_eq!(placed.status(), OrderStatus::Confirmed);

    let expected = [
        ("orders", PLACE_ORDER, SpanKind::Server),
        ("orders", "saga.price", SpanKind::Internal),
        ("orders", "saga.reserve", SpanKind::Internal),
        ("orders", "saga.charge", SpanKind::Internal),
        ("orders", "saga.confirm", SpanKind::Internal),
        ("orders", GET_PRODUCT, SpanKind::Client),
        ("orders", RESERVE, SpanKind::Client),
        ("orders", CHARGE, SpanKind::Client),
        ("catalog", GET_PRODUCT, SpanKind::Server),
        ("inventory", RESERVE, SpanKind::Server),
        ("payments", CHARGE, SpanKind::Server),
    ];
    let trace = receiver.wait_until("the PlaceOrder trace", SPAN_TIMEOUT, |spans| {
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        // Spans arrive in batches: wait until they form the whole tree.
        let whole = trace.iter().all(|s| descends_from(s, &root_id, &trace));
        (whole
            && expected
                .iter()
                .all(|(service, name, kind)| find(&trace, service, name, *kind).is_some()))
        .then_some(trace)
    });

    // One tree under the test's own span: every span's parent is in the
    // trace, or is the root.
    for span in &trace {
        assert!(
            descends_from(span, &root_id, &trace),
            "{} from {} is not under the caller's span",
            span.name,
            span.service_name
        );
    }
    // Propagation, not luck: no span of these calls started a trace of its own.
    for (service, name, kind) in &expected {
        for other in receiver
            .spans()
            .iter()
            .filter(|s| s.service_name == *service && s.name == *name && s.kind == *kind)
        {
            assert_eq!(
                other.trace_id, trace_id,
                "{name} from {service} in another trace"
            );
        }
    }

    let place_order = require(&trace, "orders", PLACE_ORDER, SpanKind::Server);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "shop.orders.v1.OrdersService"),
        ("rpc.method", "PlaceOrder"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(place_order.attr(key), Some(value), "PlaceOrder {key}");
    }
    assert!(!place_order.error);

    // The saga's steps are under PlaceOrder, with the order id and outcome.
    for step in ["saga.price", "saga.reserve", "saga.charge", "saga.confirm"] {
        let span = require(&trace, "orders", step, SpanKind::Internal);
        assert!(
            descends_from(span, &place_order.span_id, &trace),
            "{step} is not under PlaceOrder"
        );
        assert_eq!(
            span.attr("order_id"),
            Some(placed.order_id.as_str()),
            "{step}"
        );
        assert_eq!(span.attr("outcome"), Some("ok"), "{step}");
        assert!(!span.error, "{step}");
    }

    // Each downstream call: the callee's server span is under orders' client
    // span for it, which is under the saga step that made the call.
    for (step, callee, method) in [
        ("saga.price", "catalog", GET_PRODUCT),
        ("saga.reserve", "inventory", RESERVE),
        ("saga.charge", "payments", CHARGE),
    ] {
        let step_span = require(&trace, "orders", step, SpanKind::Internal);
        let client = require(&trace, "orders", method, SpanKind::Client);
        let server = require(&trace, callee, method, SpanKind::Server);
        assert!(
            descends_from(client, &step_span.span_id, &trace),
            "{method} client span is not under {step}"
        );
        assert!(
            descends_from(server, &client.span_id, &trace),
            "{callee}'s {method} is not under orders' call"
        );
        for span in [client, server] {
            assert_eq!(span.attr("rpc.system"), Some("grpc"));
            assert_eq!(span.attr("rpc.grpc.status_code"), Some("0"), "{method}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_does_not_touch_traffic() {
    // A port nothing listens on.
    let closed = support::port_allocator()();
    let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
    topology.otlp_endpoint = Some(format!("http://127.0.0.1:{closed}"));
    let mesh = TestMesh::start(&topology);
    let gateway = channel(mesh.gateway_uri()).await;
    let sku = some_sku(&gateway).await;

    for i in 0..3 {
        let placed = tokio::time::timeout(
            Duration::from_secs(10),
            OrdersServiceClient::new(gateway.clone())
                .place_order(order(&format!("dead-{i}"), &sku)),
        )
        .await
        .expect("PlaceOrder is not held up by the collector")
        .expect("PlaceOrder")
        .into_inner();
        assert_eq!(placed.status(), OrderStatus::Confirmed);
    }

    // The spans were dropped (and counted); orders says so once, and the
    // gateway's drop counter rises.
    let deadline = std::time::Instant::now() + SPAN_TIMEOUT;
    while !mesh.log("orders-1").contains("span export failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "orders never reported failed span exports"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = std::time::Instant::now() + SPAN_TIMEOUT;
    while mesh.counter("gateway", "mesh_trace_spans_dropped_total", &[]) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway's mesh_trace_spans_dropped_total never rose"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_marks_its_spans_as_errors() {
    let receiver = OtlpReceiver::start();
    let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
    for (service, instances) in &mut topology.services {
        if service == "payments" {
            for instance in instances {
                instance.app_args = vec!["--failure-rate".into(), "1".into()];
            }
        }
    }
    topology.otlp_endpoint = Some(receiver.endpoint());
    let mesh = TestMesh::start(&topology);
    let gateway = channel(mesh.gateway_uri()).await;
    let sku = some_sku(&gateway).await;

    let (trace_id, root_id) = root_ids();
    let request = traced(order("trace-fail-1", &sku), &trace_id, &root_id);
    let status = OrdersServiceClient::new(gateway.clone())
        .place_order(request)
        .await
        .expect_err("payments fails every charge");

    let trace = receiver.wait_until("the failed PlaceOrder trace", SPAN_TIMEOUT, |spans| {
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let whole = trace.iter().all(|s| descends_from(s, &root_id, &trace));
        let all_there = [
            ("orders", PLACE_ORDER, SpanKind::Server),
            ("orders", "saga.charge", SpanKind::Internal),
            ("orders", "saga.refund", SpanKind::Internal),
            ("orders", "saga.release", SpanKind::Internal),
            ("orders", CHARGE, SpanKind::Client),
        ]
        .iter()
        .all(|(service, name, kind)| find(&trace, service, name, *kind).is_some());
        (whole && all_there).then_some(trace)
    });

    let place_order = require(&trace, "orders", PLACE_ORDER, SpanKind::Server);
    let code = (status.code() as i32).to_string();
    assert_eq!(
        place_order.attr("rpc.grpc.status_code"),
        Some(code.as_str())
    );
    let charge = require(&trace, "orders", "saga.charge", SpanKind::Internal);
    assert_eq!(charge.attr("outcome"), Some("failed"));
    assert!(charge.error, "a failed step is an error");
    let charge_call = require(&trace, "orders", CHARGE, SpanKind::Client);
    assert!(
        charge_call.error,
        "a failed call is an error on the caller's side"
    );
    assert!(descends_from(charge_call, &charge.span_id, &trace));
    // The compensations are steps of the same saga.
    let release = require(&trace, "orders", "saga.release", SpanKind::Internal);
    assert_eq!(release.attr("outcome"), Some("undone"));
    assert!(!release.error);
    for step in ["saga.charge", "saga.refund", "saga.release"] {
        let span = require(&trace, "orders", step, SpanKind::Internal);
        assert!(descends_from(span, &place_order.span_id, &trace), "{step}");
    }
    assert!(
        find(&trace, "orders", "saga.confirm", SpanKind::Internal).is_none(),
        "nothing was confirmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_add_a_span_per_hop_and_one_per_attempt() {
    use mesh::model::RetryPolicy;
    use meshctl::demo::InstanceSpec;

    let receiver = OtlpReceiver::start();
    let one = |name: &str| {
        (
            name.to_owned(),
            vec![InstanceSpec::new(format!("{name}-1"))],
        )
    };
    let mut retrying =
        meshctl::demo::route("payments", "shop.payments.v1.PaymentsService", "payments");
    retrying.spec.retries = Some(
        serde_json::from_value::<RetryPolicy>(serde_json::json!({ "attempts": 2 }))
            .expect("a retry policy"),
    );
    let topology = Topology {
        services: vec![
            one("catalog"),
            one("inventory"),
            (
                "payments".into(),
                vec![
                    // Picked first by round-robin, and always failing: the
                    // charge is retried on payments-2.
                    InstanceSpec::new("payments-1").app_args(["--failure-rate", "1"]),
                    InstanceSpec::new("payments-2"),
                ],
            ),
            one("orders"),
        ],
        gateway: Some("127.0.0.1:0".parse().expect("address")),
        extra_routes: vec![retrying],
        otlp_endpoint: Some(receiver.endpoint()),
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let gateway = channel(mesh.gateway_uri()).await;
    let sku = some_sku(&gateway).await;

    // No traceparent: the gateway starts the trace.
    let placed = OrdersServiceClient::new(gateway)
        .place_order(order("proxied-1", &sku))
        .await
        .expect("PlaceOrder succeeds thanks to the retry")
        .into_inner();
    assert_eq!(placed.status(), OrderStatus::Confirmed);

    let services = SHOP_PROCESSES;
    let trace = receiver.wait_until("the proxied PlaceOrder trace", SPAN_TIMEOUT, |spans| {
        let root = spans.iter().find(|s| {
            s.service_name == "gateway" && s.name == PLACE_ORDER && s.parent_span_id.is_none()
        })?;
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .cloned()
            .collect();
        let outbound_charge = find(&trace, "orders-sidecar", CHARGE, SpanKind::Client)?;
        let attempts = trace
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == Some(outbound_charge.span_id.as_str()))
            .count();
        // Spans arrive in batches: wait for the whole tree, not just some.
        let whole = trace
            .iter()
            .all(|s| s.span_id == root.span_id || descends_from(s, &root.span_id, &trace));
        (services
            .iter()
            .all(|svc| trace.iter().any(|s| s.service_name == *svc))
            && attempts == 2
            && whole)
            .then_some(trace)
    });

    // One tree, rooted at the gateway's server span.
    let root = require(&trace, "gateway", PLACE_ORDER, SpanKind::Server);
    for span in &trace {
        assert!(
            span.span_id == root.span_id || descends_from(span, &root.span_id, &trace),
            "{} from {} is outside the gateway's tree",
            span.name,
            span.service_name
        );
    }
    // gateway -> orders' sidecar (inbound, server) -> orders.
    let inbound = require(&trace, "orders-sidecar", PLACE_ORDER, SpanKind::Server);
    let app = require(&trace, "orders", PLACE_ORDER, SpanKind::Server);
    assert!(descends_from(inbound, &root.span_id, &trace));
    assert!(descends_from(app, &inbound.span_id, &trace));
    assert_eq!(root.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(root.attr("mesh.service"), Some("orders"));

    // The retried charge: one outbound request span, two attempt spans,
    // the first failed at payments-1, the second served by payments-2.
    let outbound = require(&trace, "orders-sidecar", CHARGE, SpanKind::Client);
    let mut attempts: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(outbound.span_id.as_str()))
        .collect();
    attempts.sort_by_key(|s| s.attr("mesh.attempt").map(str::to_owned));
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].attr("mesh.attempt"), Some("1"));
    assert!(attempts[0].error, "the first attempt failed");
    assert_eq!(attempts[1].attr("mesh.attempt"), Some("2"));
    assert!(!attempts[1].error);
    assert_ne!(
        attempts[0].attr("server.address"),
        attempts[1].attr("server.address"),
        "the retry went to another endpoint"
    );
    assert!(!outbound.error, "the call itself succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_did_not_sample_gets_no_spans_anywhere() {
    let (receiver, _mesh, gateway, sku) = traced_shop().await;

    // First a call whose caller decided not to sample (flags 00) ...
    let (unsampled, parent) = root_ids();
    let request = with_traceparent(order("unsampled-1", &sku), &unsampled, &parent, false);
    let placed = OrdersServiceClient::new(gateway.clone())
        .place_order(request)
        .await
        .expect("an unsampled PlaceOrder")
        .into_inner();
    assert_eq!(placed.status(), OrderStatus::Confirmed);

    // ... then a sampled one, through the same processes.
    let (sampled, root) = root_ids();
    assert_ne!(sampled, unsampled);
    let placed = OrdersServiceClient::new(gateway.clone())
        .place_order(traced(order("sampled-1", &sku), &sampled, &root))
        .await
        .expect("a sampled PlaceOrder")
        .into_inner();
    assert_eq!(placed.status(), OrderStatus::Confirmed);

    // Every process exports its spans in the order it finished them: once
    // the sampled call's spans have come from every proxy and service, any
    // span of the earlier call would have come too.
    receiver.wait_until("the sampled call's spans", SPAN_TIMEOUT, |spans| {
        SHOP_PROCESSES
            .iter()
            .all(|p| {
                spans
                    .iter()
                    .any(|s| s.trace_id == sampled && s.service_name == *p)
            })
            .then_some(())
    });
    let leaked: Vec<String> = receiver
        .spans()
        .iter()
        .filter(|s| s.trace_id == unsampled)
        .map(|s| format!("{} from {}", s.name, s.service_name))
        .collect();
    assert!(
        leaked.is_empty(),
        "spans recorded for a caller that did not sample: {leaked:?}"
    );
}
