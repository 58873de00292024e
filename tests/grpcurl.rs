//! grpcurl, the tool people reach for, against the mesh: through the gateway
//! and straight at a sidecar's inbound port.

mod support;

use meshctl::demo::{InstanceSpec, Topology};
use support::{grpcurl, run_grpcurl, TestMesh};

#[test]
fn grpcurl_lists_describes_and_calls_through_gateway_and_sidecar() {
    let Some(grpcurl) = grpcurl() else { return };
    let one = |name: &str| {
        (
            name.to_owned(),
            vec![InstanceSpec::new(format!("{name}-1"))],
        )
    };
    let topology = Topology {
        services: vec![
            one("catalog"),
            one("inventory"),
            one("payments"),
            one("orders"),
        ],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let gateway = mesh.plan.gateway().unwrap().to_string();

    // Through the gateway: reflection is routed like any gRPC service.
    let (ok, out, err) = run_grpcurl(&grpcurl, &["-plaintext", &gateway, "list"]);
    assert!(ok, "list failed: {err}");
    assert!(out.contains("shop.orders.v1.OrdersService"), "{out}");

    let (ok, out, err) = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            &gateway,
            "describe",
            "shop.orders.v1.OrdersService",
        ],
    );
    assert!(ok, "describe failed: {err}");
    assert!(out.contains("rpc PlaceOrder"), "{out}");
    assert!(out.contains("rpc WatchOrder"), "{out}");

    let request = r#"{"request_id":"grpcurl-1","customer_id":"bob","lines":[{"sku":"sku-espresso-beans","quantity":1}]}"#;
    let (ok, out, err) = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-v",
            "-d",
            request,
            &gateway,
            "shop.orders.v1.OrdersService/PlaceOrder",
        ],
    );
    assert!(ok, "PlaceOrder failed: {out}\n{err}");
    assert!(out.contains("ORDER_STATUS_CONFIRMED"), "{out}");
    assert!(out.contains("x-served-by: orders-1"), "{out}");

    // Straight at inventory's sidecar inbound port: its app's reflection.
    let inbound = mesh.serving("inventory-1-sidecar").to_string();
    let (ok, out, err) = run_grpcurl(&grpcurl, &["-plaintext", &inbound, "list"]);
    assert!(ok, "list failed: {err}");
    assert!(out.contains("shop.inventory.v1.InventoryService"), "{out}");
    assert!(out.contains("grpc.health.v1.Health"), "{out}");
    let (ok, out, err) = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"sku":"sku-espresso-beans"}"#,
            &inbound,
            "shop.inventory.v1.InventoryService/GetStock",
        ],
    );
    assert!(ok, "GetStock failed: {out}\n{err}");
    assert!(out.contains("\"available\""), "{out}");

    // And a proxy error as grpcurl shows it.
    let (ok, _, err) = run_grpcurl(
        &grpcurl,
        &["-plaintext", &gateway, "grpc.health.v1.Health/Check"],
    );
    assert!(!ok);
    assert!(err.contains("Unimplemented"), "{err}");
    assert!(err.contains("unknown method"), "{err}");
}
