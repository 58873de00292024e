//! The sidecar's admin API on a real mesh: `/drain` takes an instance out
//! of the mesh (POST only) and `DELETE /drain` brings it back, without a
//! restart.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshctl::demo::{ControlPlaneSpec, InstanceSpec, Topology};
use support::TestMesh;

/// A request with an empty body to an admin port: `(status, body)`.
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let method: http::Method = method.parse().expect("an HTTP method");
    meshctl::demo::admin_request(addr, method.clone(), path)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

fn registered(mesh: &TestMesh, instance: &str) -> bool {
    let (ok, out, err) = mesh.meshctl(&["get", "endpoints"], None);
    assert!(ok, "{err}");
    out.contains(instance)
}

/// Polls `cond` for up to 20 s.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn drain_is_post_only_and_delete_brings_the_instance_back() {
    let topology = Topology {
        services: vec![(
            "inventory".to_owned(),
            vec![
                InstanceSpec::new("inventory-1"),
                InstanceSpec::new("inventory-2"),
            ],
        )],
        control_plane: Some(ControlPlaneSpec {
            replicas: 1,
            etcd: false,
            lease_ttl_seconds: 3,
            deregister_delay_ms: 200,
            ..ControlPlaneSpec::default()
        }),
        ..Topology::default()
    };
    let mesh = TestMesh::start(&topology);
    let admin = mesh
        .plan
        .process("inventory-2-sidecar")
        .unwrap()
        .admin
        .unwrap();
    assert!(registered(&mesh, "inventory-2"));

    let (status, _) = request(admin, "GET", "/drain");
    assert_eq!(status, 405, "GET /drain changes nothing");
    assert!(registered(&mesh, "inventory-2"));

    let (status, _) = request(admin, "POST", "/drain");
    assert_eq!(status, 200);
    assert!(
        !registered(&mesh, "inventory-2"),
        "gone when /drain answered"
    );
    assert_eq!(
        request(admin, "GET", "/ready").0,
        503,
        "a drained sidecar is not ready"
    );
    assert!(registered(&mesh, "inventory-1"), "the other instance stays");

    let (status, body) = request(admin, "DELETE", "/drain");
    assert_eq!(status, 200, "{body}");
    eventually("inventory-2 is registered again", || {
        registered(&mesh, "inventory-2")
    });
    eventually("inventory-2 is ready again", || {
        request(admin, "GET", "/ready").0 == 200
    });

    // And it can leave again.
    assert_eq!(request(admin, "POST", "/drain").0, 200);
    assert!(!registered(&mesh, "inventory-2"));
}
