//! End-to-end: a control-plane replica's `/metrics` (Prometheus text
//! format) counts the sidecars connected to it and what it pushed to them.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meshctl::demo::{admin_get, ControlPlaneSpec, Topology};
use support::TestMesh;

/// Samples of a text exposition by `name{labels}`, checking every line's
/// shape on the way (`# HELP`/`# TYPE`/`# UNIT` comments, `# EOF` last,
/// samples `name[{labels}] value`).
fn parse(text: &str) -> HashMap<String, f64> {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| *l != "# EOF") {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                ["HELP ", "TYPE ", "UNIT "]
                    .iter()
                    .any(|k| comment.starts_with(k)),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn control_plane_counts_sidecars_pushes_and_acks() {
    let mut topology = Topology::shop("127.0.0.1:0".parse().expect("address"));
    topology.control_plane = Some(ControlPlaneSpec {
        replicas: 1,
        etcd: false,
        ..ControlPlaneSpec::default()
    });
    let mesh = TestMesh::start(&topology);
    let admin = mesh
        .plan
        .process("control-plane-1")
        .and_then(|p| p.admin)
        .expect("the replica's admin address");
    let proxies = mesh.proxies().len() as f64;
    let version = mesh
        .table_version("gateway")
        .expect("the gateway runs a pushed table") as f64;

    // Every proxy acks what it was pushed; wait for the last ACKs to land.
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let (status, text) = admin_get(admin, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        let samples = parse(&text);
        let acks = samples.get("mesh_cp_acks_total").copied().unwrap_or(0.0);
        if acks >= proxies {
            break samples;
        }
        assert!(Instant::now() < deadline, "not every proxy acked:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(samples["mesh_cp_connected_sidecars"], proxies);
    assert!(samples["mesh_cp_pushes_total"] >= proxies);
    assert!(samples["mesh_cp_acks_total"] <= samples["mesh_cp_pushes_total"]);
    assert_eq!(samples["mesh_cp_nacks_total"], 0.0);
    assert!(samples["mesh_cp_published_revision"] >= version);
    assert!(
        !samples
            .keys()
            .any(|k| k.starts_with("mesh_cp_store_errors_total")),
        "the in-memory store does not fail"
    );
}
