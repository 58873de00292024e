use std::time::Duration;

use mesh::model::{Endpoint, LoadBalancer};

use super::*;
use crate::outcome::{CallGuard, Outcome};
use crate::outlier::OutlierPolicy;

const KINDS: [LoadBalancer; 3] = [
    LoadBalancer::WeightedRoundRobin,
    LoadBalancer::LeastRequest,
    LoadBalancer::PeakEwma,
];

fn endpoints(weights: &[u32]) -> Vec<(Endpoint, Arc<Upstream>)> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let address = format!("127.0.0.1:{}", 1000 + i);
            let endpoint = Endpoint {
                service: "echo".into(),
                instance: format!("echo-{i}"),
                address: address.clone(),
                version: "v1".into(),
                weight,
            };
            let upstream = Upstream::new(&address, Duration::from_secs(1)).expect("an address");
            (endpoint, Arc::new(upstream))
        })
        .collect()
}

fn balancer(kind: LoadBalancer, eps: &[(Endpoint, Arc<Upstream>)]) -> Balancer {
    let refs: Vec<(&Endpoint, Arc<Upstream>)> = eps.iter().map(|(e, u)| (e, u.clone())).collect();
    let scope = BalancerScope {
        route: "echo",
        rule: None,
        kind,
    };
    Balancer::new("echo", &[], &refs, scope, &mut StateBuilder::fresh())
}

fn index_of(eps: &[(Endpoint, Arc<Upstream>)], pick: &Pick) -> usize {
    eps.iter()
        .position(|(_, u)| Arc::ptr_eq(u, &pick.upstream))
        .expect("a member")
}

/// Sends a call every millisecond for `calls` ms of paused time; each
/// lasts its endpoint's latency (a `CallGuard` held that long, as the
/// proxy holds one). Returns how many calls each endpoint got.
async fn simulate(
    kind: LoadBalancer,
    weights: &[u32],
    latency: impl Fn(usize) -> Duration,
    calls: usize,
) -> Vec<usize> {
    let eps = endpoints(weights);
    let balancer = balancer(kind, &eps);
    let mut counts = vec![0; eps.len()];
    let mut in_flight: Vec<(Instant, CallGuard)> = Vec::new();
    for _ in 0..calls {
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        in_flight.retain_mut(|(end, guard)| {
            if *end <= now {
                guard.report(Outcome::Status(0));
                false
            } else {
                true
            }
        });
        let pick = balancer.pick(&[], false, now).expect("a pick");
        let i = index_of(&eps, &pick);
        counts[i] += 1;
        in_flight.push((now + latency(i), CallGuard::new(pick.upstream, None, None)));
    }
    counts
}

fn share(counts: &[usize], i: usize) -> f64 {
    counts[i] as f64 / counts.iter().sum::<usize>() as f64
}

#[tokio::test(start_paused = true)]
async fn load_aware_balancers_send_a_slow_endpoint_far_less_than_its_share() {
    // Endpoint 0 takes 200 ms a call, the others 2 ms; a call every ms.
    let latency = |i: usize| Duration::from_millis(if i == 0 { 200 } else { 2 });
    let blind = simulate(LoadBalancer::WeightedRoundRobin, &[1; 4], latency, 4000).await;
    assert!((share(&blind, 0) - 0.25).abs() < 0.01, "{blind:?}");
    for kind in [LoadBalancer::LeastRequest, LoadBalancer::PeakEwma] {
        let counts = simulate(kind, &[1; 4], latency, 4000).await;
        assert!(share(&counts, 0) < 0.02, "{kind:?}: {counts:?}");
        for i in 1..4 {
            assert!(share(&counts, i) > 0.28, "{kind:?}: {counts:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_avoids_a_slow_endpoint_even_with_nothing_in_flight_there() {
    // One call every 50 ms: least-request sees every endpoint idle, but
    // peak-EWMA remembers that endpoint 0 answered slowly.
    let eps = endpoints(&[1; 4]);
    let balancer = balancer(LoadBalancer::PeakEwma, &eps);
    eps[0]
        .1
        .rtt()
        .observe(Duration::from_millis(200), Instant::now());
    for (_, up) in &eps[1..] {
        up.rtt().observe(Duration::from_millis(2), Instant::now());
    }
    let mut to_slow = 0;
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(50)).await;
        let pick = balancer.pick(&[], false, Instant::now()).expect("a pick");
        to_slow += usize::from(index_of(&eps, &pick) == 0);
    }
    assert_eq!(to_slow, 0);
}

#[tokio::test(start_paused = true)]
async fn weights_are_respected_idle_and_under_load() {
    let weights = [3, 1, 1, 1];
    for kind in KINDS {
        // Idle: every call ends before the next. Peak-EWMA is left out:
        // idle endpoints' estimates decay towards zero, so it takes the
        // one unused longest, whatever the weights (see `peak_ewma::cost`).
        if kind != LoadBalancer::PeakEwma {
            let idle = simulate(kind, &weights, |_| Duration::ZERO, 6000).await;
            assert!(
                (share(&idle, 0) - 0.5).abs() < 0.05,
                "{kind:?} idle: {idle:?}"
            );
        }
        // Under load: equal 10 ms latencies, ten calls in flight.
        let busy = simulate(kind, &weights, |_| Duration::from_millis(10), 6000).await;
        assert!(
            (0.44..0.56).contains(&share(&busy, 0)),
            "{kind:?} busy: {busy:?}"
        );
        for i in 1..4 {
            assert!(
                (0.13..0.21).contains(&share(&busy, i)),
                "{kind:?} busy: {busy:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_balancer_skips_tried_and_ejected_endpoints_and_falls_back() {
    let policy = OutlierPolicy {
        consecutive_failures: 1,
        failure_codes: vec![14],
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(10),
        max_ejection_percent: 100,
    };
    for kind in KINDS {
        let eps = endpoints(&[1; 4]);
        let balancer = balancer(kind, &eps);
        let now = Instant::now();
        let tried: Vec<_> = eps[..3].iter().map(|(_, u)| u.clone()).collect();
        for _ in 0..20 {
            let pick = balancer.pick(&tried, false, now).expect("a pick");
            assert_eq!(index_of(&eps, &pick), 3, "{kind:?}: the one not tried");
        }
        eps[3].1.breaker().on_failure(now, "x", &policy, true);
        for _ in 0..20 {
            let pick = balancer.pick(&[], true, now).expect("a pick");
            assert_ne!(index_of(&eps, &pick), 3, "{kind:?}: ejected");
        }
        // Everything else tried and the last ejected: a tried one.
        let pick = balancer.pick(&tried, true, now).expect("a pick");
        assert!(index_of(&eps, &pick) < 3, "{kind:?}");
        // Everything ejected: one anyway.
        for (_, up) in &eps[..3] {
            up.breaker().on_failure(now, "x", &policy, true);
        }
        assert!(balancer.pick(&[], true, now).is_ok(), "{kind:?}");
    }
}

#[test]
fn no_endpoint_with_weight_is_no_endpoints() {
    for kind in KINDS {
        let eps = endpoints(&[0, 0]);
        let picked = balancer(kind, &eps).pick(&[], false, Instant::now());
        assert!(picked.is_err(), "{kind:?}");
    }
}
