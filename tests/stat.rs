//! `meshctl stat` against a known load: a real mesh (identities, mTLS, a
//! gateway, catalog behind its sidecar), a known number of calls through
//! the gateway of which a known share fails, all inside the window that
//! meshctl measures; its figures must agree.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use mesh::proto::shop::catalog::v1::{GetProductRequest, ListProductsRequest};
use support::{block_on, TestMesh};

const OK_CALLS: usize = 30;
const FAILED_CALLS: usize = 10;

#[test]
fn stat_agrees_with_a_known_load() {
    let mesh = TestMesh::start(&support::secure_catalog());
    let config = mesh.plan.identity.as_ref().map(|i| i.meshconfig());
    // Long enough that the calls below fit inside it on a loaded machine.
    let mut stat = mesh
        .meshctl_command(
            config.as_deref(),
            &[
                "stat", "service", "catalog", "--window", "20s", "-o", "json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl stat");
    // meshctl says when its first reading is taken: the load starts after.
    let mut stderr = BufReader::new(stat.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("measuring for"), "meshctl stat said: {line}");

    let gateway = mesh.gateway_uri();
    block_on(async move {
        let mut catalog = CatalogServiceClient::new(support::channel(gateway).await);
        for i in 0..OK_CALLS + FAILED_CALLS {
            if i % 4 == 3 {
                let missing = catalog
                    .get_product(GetProductRequest {
                        sku: format!("NO-SUCH-SKU-{i}"),
                    })
                    .await
                    .expect_err("an unknown SKU");
                assert_eq!(missing.code(), tonic::Code::NotFound);
            } else {
                catalog
                    .list_products(ListProductsRequest {
                        page_size: 1,
                        page_token: String::new(),
                    })
                    .await
                    .expect("ListProducts");
            }
        }
    });
    let output = stat.wait_with_output().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert!(output.status.success(), "meshctl stat failed: {rest}");
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let rows = stats.as_array().expect("a list of rows");
    assert_eq!(rows.len(), 1, "only catalog was asked for: {stats:#}");
    let catalog = &rows[0];
    assert_eq!(catalog["name"], "catalog");
    let calls = (OK_CALLS + FAILED_CALLS) as u64;
    // Readiness probes and reflection are not calls to catalog's API: the
    // window holds exactly the load.
    assert_eq!(catalog["calls"], calls, "{catalog:#}");
    let success = catalog["success_rate"].as_f64().unwrap();
    assert!(
        (success - OK_CALLS as f64 / calls as f64).abs() < 1e-9,
        "{catalog:#}"
    );
    let rps = catalog["calls_per_second"].as_f64().unwrap();
    assert!((rps - calls as f64 / 20.0).abs() < 1e-9, "{catalog:#}");
    for quantile in ["p50_ms", "p95_ms", "p99_ms"] {
        assert!(
            catalog[quantile].as_f64().is_some_and(|v| v > 0.0),
            "{quantile}: {catalog:#}"
        );
    }
    assert_eq!(catalog["ejected_endpoints"], 0);
}
