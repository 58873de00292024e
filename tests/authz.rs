//! Authorization policies on real processes over real mTLS: the callee's
//! inbound sidecar checks the caller's proven identity against the
//! policies meshctl applied, live, with the codes, headers and metrics a
//! user sees.

mod support;

use mesh::proto::shop::payments::v1::payments_service_client::PaymentsServiceClient;
use mesh::proto::shop::payments::v1::ChargeRequest;
use support::TestMesh;
use tonic::Code;

const POLICY: &str = "kind: AuthorizationPolicy
metadata: { name: payments-callers }
spec:
  service: payments
  mode: MODE
  rules:
    - from: [{ service: orders }]
      to:
        - shop.payments.v1.PaymentsService/Charge
        - shop.payments.v1.PaymentsService/Refund
";

/// Applies the policy in `mode` with meshctl; waits until every proxy runs it.
fn apply_policy(mesh: &TestMesh, mode: &str) {
    let revision = mesh.meshctl_apply(&POLICY.replace("MODE", mode));
    mesh.wait_for_version(revision);
}

/// A charge made as the app behind `instance`'s sidecar.
async fn charge(mesh_outbound: String, key: &str) -> Result<(), tonic::Status> {
    let channel = support::channel(mesh_outbound).await;
    PaymentsServiceClient::new(channel)
        .charge(ChargeRequest {
            idempotency_key: key.to_owned(),
            customer_id: "alice".into(),
            reference: "order-1".into(),
            amount_minor: 100,
            currency: "EUR".into(),
        })
        .await
        .map(|_| ())
}

/// Calls `method` of payments with an empty message: the app's answer
/// (whatever it is) means the call got through; PERMISSION_DENIED means
/// the sidecar refused it.
async fn call_payments(outbound: String, method: &str) -> Result<(), tonic::Status> {
    let (headers, trailers) = support::raw_unary(
        outbound
            .strip_prefix("http://")
            .expect("http uri")
            .parse()
            .expect("address"),
        &format!("/{method}"),
        &[],
        &[],
    )
    .await;
    let status = headers
        .get("grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(2);
    if status == Code::PermissionDenied as i32 {
        return Err(tonic::Status::permission_denied("refused"));
    }
    Ok(())
}

#[test]
fn only_the_callers_a_policy_names_reach_the_service_and_audit_mode_only_counts() {
    let mesh = TestMesh::start(&support::secure_services(&[
        "catalog", "orders", "payments",
    ]));
    let (from_orders, from_catalog) = (
        mesh.outbound_uri("orders-1"),
        mesh.outbound_uri("catalog-1"),
    );

    // Before any policy: the mesh default lets any mesh identity in.
    let (o, c) = (from_orders.clone(), from_catalog.clone());
    support::block_on(async move {
        charge(o, "before-1").await.expect("orders charges");
        charge(c, "before-2")
            .await
            .expect("catalog charges (no policy yet)");
    });

    apply_policy(&mesh, "enforce");
    let (o, c) = (from_orders.clone(), from_catalog.clone());
    support::block_on(async move {
        charge(o, "enforce-1").await.expect("orders may charge");
        let denied = charge(c, "enforce-2").await.expect_err("catalog may not");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert_eq!(
            denied
                .metadata()
                .get("x-mesh-error")
                .and_then(|v| v.to_str().ok()),
            Some("unauthorized"),
            "{denied:?}"
        );
        assert!(
            denied.message().contains("spiffe://mesh.local/svc/catalog"),
            "the answer names the caller: {}",
            denied.message()
        );
    });
    let denials = |mesh: &TestMesh, decision: &str| {
        mesh.counter(
            "payments-1-sidecar",
            "mesh_authz_decisions_total",
            &[
                ("service", "payments"),
                ("policy", "payments-callers"),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(denials(&mesh, "deny"), 1.0);
    assert!(denials(&mesh, "allow") >= 1.0);
    assert!(
        mesh.log("payments-1-sidecar").contains("call denied"),
        "the denial is logged with its policy"
    );

    // meshctl auth can-i says what the data path does, case by case.
    for (caller, method, allowed) in [
        ("orders", "Charge", true),
        ("catalog", "Charge", false),
        ("orders", "GetPayment", false),
        ("orders", "Refund", true),
    ] {
        let to = format!("shop.payments.v1.PaymentsService/{method}");
        let (said_yes, stdout, stderr) =
            mesh.meshctl(&["auth", "can-i", "--from", caller, "--to", &to], None);
        assert_eq!(
            said_yes, allowed,
            "can-i {caller} {method}: {stdout}{stderr}"
        );
        assert!(
            stdout.starts_with(if allowed { "yes" } else { "no" }),
            "{stdout}"
        );
        let outbound = mesh.outbound_uri(&format!("{caller}-1"));
        let call = support::block_on(async move { call_payments(outbound, &to).await });
        match call {
            Ok(()) => assert!(allowed, "{caller} {method} went through, can-i said no"),
            Err(status) => assert_eq!(
                status.code() == Code::PermissionDenied,
                !allowed,
                "{caller} {method}: {status:?}"
            ),
        }
    }

    // Audit mode: the same call goes through, and is counted as one the
    // policy would have refused.
    let refused_before = denials(&mesh, "deny");
    apply_policy(&mesh, "audit");
    let c = from_catalog.clone();
    support::block_on(async move {
        charge(c, "audit-1").await.expect("audit mode allows");
    });
    assert_eq!(denials(&mesh, "audit-deny"), 1.0);
    assert_eq!(
        denials(&mesh, "deny"),
        refused_before,
        "nothing more was refused"
    );
}

#[test]
fn policy_changes_apply_live_under_load_without_failing_allowed_calls() {
    let mesh = TestMesh::start(&support::secure_services(&[
        "catalog", "orders", "payments",
    ]));
    apply_policy(&mesh, "enforce");
    let from_orders = mesh.outbound_uri("orders-1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    // Allowed calls, back to back, for as long as the policy changes go on.
    let load = std::thread::spawn(move || {
        support::block_on(async move {
            let channel = support::channel(from_orders).await;
            let mut client = PaymentsServiceClient::new(channel);
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !running.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                i += 1;
                let charged = client
                    .charge(ChargeRequest {
                        idempotency_key: format!("live-{i}"),
                        customer_id: "alice".into(),
                        reference: format!("order-{i}"),
                        amount_minor: 100,
                        currency: "EUR".into(),
                    })
                    .await;
                match charged {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status),
                }
            }
            (ok, failed)
        })
    });
    // Ten changes while the calls flow: a DENY for catalog comes and goes,
    // the allowing policy is re-applied in audit and enforce mode.
    const DENY_CATALOG: &str = "kind: AuthorizationPolicy
metadata: { name: no-catalog }
spec:
  service: payments
  action: DENY
  rules: [{ from: [{ service: catalog }] }]
";
    let deny = mesh.dir().join("deny-catalog.yaml");
    std::fs::write(&deny, DENY_CATALOG).expect("write policy");
    for round in 0..5 {
        let (ok, out, err) = mesh.meshctl(&["apply", "-f", deny.to_str().expect("path")], None);
        assert!(ok, "apply round {round}: {out}{err}");
        apply_policy(&mesh, if round % 2 == 0 { "audit" } else { "enforce" });
        let (ok, out, err) = mesh.meshctl(&["delete", "authorizationpolicy", "no-catalog"], None);
        assert!(ok, "delete round {round}: {out}{err}");
    }
    apply_policy(&mesh, "enforce");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("the load thread");
    assert!(ok > 0, "calls were made during the changes");
    assert!(
        failed.is_empty(),
        "{} allowed calls failed during policy changes: {:?}",
        failed.len(),
        failed.first()
    );
}
