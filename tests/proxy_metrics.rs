//! The proxies' `/metrics`, read with a real Prometheus parser (Python's
//! `prometheus_client`, the reference client library), match the calls made.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use mesh::proto::shop::catalog::v1::GetProductRequest;
use meshctl::demo::{InstanceSpec, Topology};
use support::TestMesh;
use tonic::transport::Channel;

/// One parsed sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses OpenMetrics text with `prometheus_client`; every sample as
/// (name, labels, value). `None` (skip) when the parser is not installed,
/// except under CI=true.
fn parse(text: &str) -> Option<Vec<Sample>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus_client (pip) is missing, and CI must have it"
        );
        eprintln!("skipping: pip package prometheus_client is not installed");
        return None;
    }
    assert!(
        out.status.success(),
        "not valid OpenMetrics text: {stderr}\n{text}"
    );
    Some(serde_json::from_slice(&out.stdout).expect("parser output"))
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_the_calls() {
    let topology = Topology {
        services: vec![("catalog".into(), vec![InstanceSpec::new("catalog-1")])],
        gateway: Some("127.0.0.1:0".parse().unwrap()),
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let channel = Channel::from_shared(mesh.gateway_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CatalogServiceClient::new(channel);
    const FOUND: usize = 7;
    const MISSING: usize = 3;
    for _ in 0..FOUND {
        client
            .get_product(GetProductRequest {
                sku: "sku-espresso-beans".into(),
            })
            .await
            .expect("found");
    }
    for _ in 0..MISSING {
        let status = client
            .get_product(GetProductRequest {
                sku: "no-such-sku".into(),
            })
            .await
            .expect_err("not found");
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
    let admin = mesh.plan.process("gateway").unwrap().admin.unwrap();
    let (_, text) = meshctl::demo::admin_get(admin, "/metrics").unwrap();
    let Some(samples) = parse(&text) else { return };
    let method = [
        ("direction", "ingress"),
        ("service", "catalog"),
        ("method", "shop.catalog.v1.CatalogService/GetProduct"),
    ];
    let with_code = |code: &'static str| {
        let mut labels = method.to_vec();
        labels.push(("code", code));
        labels
    };
    assert_eq!(
        sample(&samples, "mesh_responses_total", &with_code("0")),
        FOUND as f64
    );
    assert_eq!(
        sample(&samples, "mesh_responses_total", &with_code("5")),
        MISSING as f64
    );
    assert_eq!(
        sample(
            &samples,
            "mesh_request_duration_seconds_count",
            &with_code("0")
        ),
        FOUND as f64
    );
    assert_eq!(
        sample(
            &samples,
            "mesh_requests_total",
            &[("direction", "ingress"), ("service", "catalog")]
        ),
        (FOUND + MISSING) as f64
    );
    assert_eq!(sample(&samples, "mesh_upstream_connections", &[]), 1.0);
    assert_eq!(sample(&samples, "mesh_ejected_endpoints", &[]), 0.0);

    // The sidecar counted the same calls coming in.
    let admin = mesh
        .plan
        .process("catalog-1-sidecar")
        .unwrap()
        .admin
        .unwrap();
    let (_, text) = meshctl::demo::admin_get(admin, "/metrics").unwrap();
    let samples = parse(&text).expect("parsed");
    assert_eq!(
        sample(
            &samples,
            "mesh_responses_total",
            &[
                ("direction", "inbound"),
                ("service", "catalog"),
                ("code", "0")
            ]
        ),
        FOUND as f64
    );
}
