//! Local rate limits on real processes over real mTLS: payments' inbound
//! sidecar holds each caller (the mesh service its certificate proves) to
//! the route's per-caller rate. A caller over it gets RESOURCE_EXHAUSTED
//! with `grpc-retry-pushback-ms`; another caller, at the same moment, is
//! not touched.

mod support;

use std::net::SocketAddr;

use support::TestMesh;

const ROUTE: &str = "kind: Route
metadata: { name: payments }
spec:
  match: { service: shop.payments.v1.PaymentsService }
  destination: payments
  rateLimit:
    perCaller: { requestsPerSecond: 1, burst: 2 }
";

const GET_PAYMENT: &str = "/shop.payments.v1.PaymentsService/GetPayment";

/// One GetPayment through `outbound` (the sidecar of the caller): the
/// status, the `x-mesh-error` reason and the pushback, if any.
async fn get_payment(outbound: SocketAddr) -> (String, String, Option<u64>) {
    // GetPaymentRequest { payment_id: "none" }: NOT_FOUND from the app.
    let message = [0x0a, 4, b'n', b'o', b'n', b'e'];
    let (headers, trailers) = support::raw_unary(outbound, GET_PAYMENT, &message, &[]).await;
    let get = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.as_ref().and_then(|t| t.get(name)))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        get("grpc-status").unwrap_or_default(),
        get("x-mesh-error").unwrap_or_default(),
        get("grpc-retry-pushback-ms").and_then(|v| v.parse().ok()),
    )
}

fn address(uri: String) -> SocketAddr {
    uri.trim_start_matches("http://").parse().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_pushed_back_and_others_are_unaffected() {
    let mesh = TestMesh::start(&support::secure_services(&[
        "payments", "orders", "catalog",
    ]));
    let revision = mesh.meshctl_apply(ROUTE);
    mesh.wait_for_version(revision);
    let noisy = address(mesh.outbound_uri("catalog-1"));
    let quiet = address(mesh.outbound_uri("orders-1"));

    // Twenty calls at once from catalog: a burst of two, then one a
    // second; however slow this machine, most are refused.
    const CALLS: usize = 20;
    let mut refused = 0;
    for _ in 0..CALLS {
        let (status, reason, pushback) = get_payment(noisy).await;
        match status.as_str() {
            // NOT_FOUND: the app answered; the call was let through.
            "5" => {}
            "8" => {
                assert_eq!(reason, "rate-limited");
                let pushback = pushback.expect("grpc-retry-pushback-ms");
                assert!(
                    (1..=1_000).contains(&pushback),
                    "pushback {pushback} ms for a rate of one a second"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other} ({reason})"),
        }
    }
    assert!(
        refused >= CALLS / 2,
        "only {refused} of {CALLS} calls over the rate were refused"
    );

    // Orders, meanwhile, has a rate of its own: its calls go through.
    for _ in 0..2 {
        let (status, reason, _) = get_payment(quiet).await;
        assert_eq!(status, "5", "orders was limited too: {reason}");
    }
    let limited = mesh.counter(
        "payments-1-sidecar",
        "mesh_rate_limited_total",
        &[("route", "payments"), ("scope", "per-caller")],
    );
    assert_eq!(limited, refused as f64);
}
