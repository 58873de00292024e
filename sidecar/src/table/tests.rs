//! Tables across pushes: what a route accumulates (budgets, limits,
//! rotations) outlives a push that leaves its policy as it was.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mesh::model::Bootstrap;
use serde_json::json;
use tokio::time::Instant;

use super::*;

const PATH: &str = "/bench.v1.EchoService/Echo";

fn live() -> LiveTable {
    LiveTable::new(
        UpstreamPool::new(Duration::from_secs(1), None),
        Arc::new(Metrics::default()),
        Direction::Outbound,
    )
}

/// A table with the echo route (`spec` merged into its spec) over
/// endpoints `(port, weight)`.
fn source(spec: serde_json::Value, endpoints: &[(u16, u32)]) -> Bootstrap {
    let mut route_spec = json!({
        "match": { "service": "bench.v1.EchoService" },
        "destination": "echo",
    });
    if let (Some(into), Some(from)) = (route_spec.as_object_mut(), spec.as_object()) {
        into.extend(from.clone());
    }
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(port, weight)| {
            json!({
                "service": "echo",
                "instance": format!("echo-{port}"),
                "address": format!("127.0.0.1:{port}"),
                "weight": weight,
            })
        })
        .collect();
    serde_json::from_value(json!({
        "endpoints": endpoints,
        "routes": [{ "kind": "Route", "metadata": { "name": "echo" }, "spec": route_spec }],
    }))
    .expect("a bootstrap")
}

fn policy(table: &LiveTable) -> Arc<RoutePolicy> {
    let table = table.load_full();
    let (route, _) = table.route(PATH, &HeaderMap::new()).expect("routed");
    route.policy.clone()
}

fn retries(ratio: f64) -> serde_json::Value {
    json!({ "retries": { "attempts": 3, "budget": { "ratio": ratio, "minPerSecond": 1 } } })
}

#[test]
fn a_spent_retry_budget_stays_spent_across_50_pushes_with_endpoint_churn() {
    let table = live();
    let endpoints = [(1001, 1), (1002, 1), (1003, 1), (1004, 1)];
    table
        .apply(source(retries(0.1), &endpoints), "1".into())
        .expect("applied");
    let first = policy(&table);
    let retry = first.retry.as_ref().expect("retries");
    let reserve = (0..1000).take_while(|_| retry.withdraw()).count();
    assert!(reserve < 1000, "the reserve is bounded");

    // A retry storm: every call fails and asks for a retry, while
    // endpoints come and go with every push.
    let (mut calls, mut retried) = (0u32, 0u32);
    for push in 0..50u16 {
        let churned: Vec<_> = match push % 3 {
            0 => endpoints.to_vec(),
            1 => endpoints[1..].to_vec(),
            _ => [(2000 + push, 1)]
                .iter()
                .chain(&endpoints)
                .copied()
                .collect(),
        };
        table
            .apply(source(retries(0.1), &churned), push.to_string())
            .expect("applied");
        let policy = policy(&table);
        let retry = policy.retry.as_ref().expect("retries");
        assert!(Arc::ptr_eq(
            &retry.budget,
            &first.retry.as_ref().expect("retries").budget
        ));
        for _ in 0..10 {
            retry.deposit();
            calls += 1;
            retried += u32::from(retry.withdraw());
        }
    }
    // 10 % of 500 calls, not a fresh reserve per push (50 x `reserve`).
    assert!(
        f64::from(retried) <= f64::from(calls) * 0.1 + 1.0,
        "{retried} retries for {calls} calls"
    );
}

#[test]
fn a_concurrency_cap_keeps_counting_calls_in_flight_across_a_push() {
    let table = live();
    let capped = json!({ "concurrency": { "maxRequests": 2 } });
    table
        .apply(source(capped.clone(), &[(1001, 1)]), "1".into())
        .expect("applied");
    let before = policy(&table);
    let limit = before.max_requests.as_ref().expect("a cap");
    let held = [limit.try_acquire(), limit.try_acquire()];
    assert!(held.iter().all(Option::is_some));

    table
        .apply(source(capped, &[(1001, 1), (1002, 1)]), "2".into())
        .expect("applied");
    let after = policy(&table);
    let limit = after.max_requests.as_ref().expect("a cap");
    assert!(limit.try_acquire().is_none(), "both calls still count");
    drop(held);
    assert!(limit.try_acquire().is_some());
}

#[test]
fn a_changed_policy_gets_fresh_state_and_a_removed_route_is_forgotten() {
    let table = live();
    let spec = |ratio: f64, max: u32| {
        let mut spec = retries(ratio);
        spec["concurrency"] = json!({ "maxRequests": max });
        spec
    };
    table
        .apply(source(spec(0.1, 1), &[(1001, 1)]), "1".into())
        .expect("applied");
    let before = policy(&table);
    let retry = before.retry.as_ref().expect("retries");
    while retry.withdraw() {}
    let _held = before.max_requests.as_ref().and_then(|l| l.try_acquire());

    table
        .apply(source(spec(0.2, 2), &[(1001, 1)]), "2".into())
        .expect("applied");
    let after = policy(&table);
    assert!(
        after.retry.as_ref().expect("retries").withdraw(),
        "a new budget"
    );
    let limit = after.max_requests.as_ref().expect("a cap");
    let fresh = [limit.try_acquire(), limit.try_acquire()];
    assert!(fresh.iter().all(Option::is_some), "a new counter");

    let kept = table.states.len();
    assert!(kept > 0);
    table
        .apply(Bootstrap::default(), "3".into())
        .expect("applied");
    assert_eq!(table.states.len(), 0, "the route is gone, and its state");
}

#[test]
fn round_robin_positions_survive_a_push_unless_the_endpoints_change() {
    let table = live();
    let endpoints = [(1001, 3), (1002, 1)];
    let picks = |table: &LiveTable, n: usize| -> Vec<String> {
        let table = table.load_full();
        let (_, balancer) = table.route(PATH, &HeaderMap::new()).expect("routed");
        (0..n)
            .map(|_| {
                let pick = balancer.pick(&[], false, Instant::now()).expect("a pick");
                pick.upstream.addr().to_owned()
            })
            .collect()
    };
    let (a, b) = ("127.0.0.1:1001", "127.0.0.1:1002");
    table
        .apply(source(json!({}), &endpoints), "1".into())
        .expect("applied");
    assert_eq!(picks(&table, 2), [a, a]);
    table
        .apply(source(json!({}), &endpoints), "2".into())
        .expect("applied");
    assert_eq!(picks(&table, 2), [b, a], "the rotation goes on");
    table
        .apply(
            source(json!({}), &[(1001, 3), (1002, 1), (1003, 1)]),
            "3".into(),
        )
        .expect("applied");
    assert_eq!(picks(&table, 1), [a], "new members: a new rotation");
}

#[test]
fn the_load_balancer_is_compiled_per_route() {
    let table = live();
    for name in ["least-request", "peak-ewma", "weighted-round-robin"] {
        table
            .apply(
                source(json!({ "loadBalancer": name }), &[(1001, 1), (1002, 1)]),
                name.into(),
            )
            .expect("applied");
        let pick = policy(&table);
        assert_eq!(&*pick.name, "echo");
    }
    let refused = table.apply(
        source(json!({ "loadBalancer": "random" }), &[(1001, 1)]),
        "x".into(),
    );
    assert!(refused.is_err());
}
