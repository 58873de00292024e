//! What the fleet costs the store: real etcd (TLS, client certificates),
//! two real control-plane replicas, and simulated sidecars that hold real
//! discovery streams over mTLS with a real `sim` certificate. Registrations
//! live on one lease per replica (not one per sidecar), nothing stored
//! grows with the number of sidecars, a stream that ends takes its keys
//! with it at once, and a descriptor set that does not decode is refused at
//! registration while routing goes on.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use mesh::identity::MeshTls;
use mesh::proto::mesh::v1::Node;
use support::sim::{self, SimProxy};
use support::{block_on, TestMesh};

/// How long the store may take to show what the test waits for on a
/// loaded 2-core machine (a timeout, not an expected time).
const SETTLE: Duration = Duration::from_secs(60);

fn two_replicas() -> TestMesh {
    let mut topology = support::secure_services(&["catalog"]);
    topology.control_plane.as_mut().unwrap().replicas = 2;
    TestMesh::start(&topology)
}

/// Where the mesh's etcd is and the control plane's client certificate.
#[derive(Clone)]
struct EtcdAccess {
    endpoint: String,
    ca: String,
    cert: String,
    key: String,
}

impl EtcdAccess {
    fn of(mesh: &TestMesh) -> Self {
        let files = mesh.plan.identity.as_ref().unwrap().etcd_tls();
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        Self {
            endpoint: format!("https://{}", mesh.plan.process("etcd").unwrap().serving),
            ca: read(files.ca()),
            cert: read(files.client_cert()),
            key: read(files.client_key()),
        }
    }

    async fn connect(self) -> Client {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(self.ca))
            .identity(Identity::from_pem(self.cert, self.key))
            .domain_name("localhost");
        Client::connect([self.endpoint], Some(ConnectOptions::new().with_tls(tls)))
            .await
            .expect("etcd over TLS")
    }
}

/// What the store holds: live leases, and every key's value size.
#[derive(Debug)]
struct Footprint {
    leases: usize,
    sizes: BTreeMap<String, usize>,
}

impl Footprint {
    async fn read(client: &mut Client) -> Self {
        let leases = client.leases().await.unwrap().leases().len();
        let mut sizes = BTreeMap::new();
        for prefix in ["/mesh/", "/mesh-status/"] {
            let found = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            for kv in found.kvs() {
                sizes.insert(kv.key_str().unwrap().to_owned(), kv.value().len());
            }
        }
        Self { leases, sizes }
    }

    fn largest(&self) -> (String, usize) {
        self.sizes
            .iter()
            .max_by_key(|(_, size)| **size)
            .map(|(key, size)| (key.clone(), *size))
            .unwrap_or_default()
    }

    fn count(&self, prefix: &str) -> usize {
        self.sizes.keys().filter(|k| k.starts_with(prefix)).count()
    }
}

fn node(instance: &str, descriptors: Vec<u8>) -> Node {
    Node {
        file_descriptor_set: descriptors,
        ..sim::node("sim", instance)
    }
}

/// Opens `node`'s stream on `channel`, acknowledging every update;
/// resolves once its first update came, or with the status that refused it.
async fn subscribe(
    channel: tonic::transport::Channel,
    node: Node,
) -> Result<SimProxy, tonic::Status> {
    SimProxy::open(channel, sim::hello(node, &["catalog"], Vec::new()), true)
        .await
        .map(|(proxy, _)| proxy)
}

/// `count` simulated sidecars `sim-<from>`.., spread over the replicas.
async fn simulate(
    channels: &[tonic::transport::Channel],
    from: usize,
    count: usize,
) -> Vec<SimProxy> {
    let opened = (from..from + count).map(|i| {
        let channel = channels[i % channels.len()].clone();
        async move {
            subscribe(channel, node(&format!("sim-{i:04}"), Vec::new()))
                .await
                .unwrap_or_else(|status| panic!("sim-{i:04} refused: {status:?}"))
        }
    });
    futures_util::future::join_all(opened).await
}

/// mTLS channels to each replica as a `sim` proxy.
async fn channels(mesh: &TestMesh, tls: &Arc<MeshTls>) -> Vec<tonic::transport::Channel> {
    sim::channels(mesh, tls).await
}

/// Reads the store until `done` holds for it (or fails after [`SETTLE`]).
async fn settle(client: &mut Client, what: &str, done: impl Fn(&Footprint) -> bool) -> Footprint {
    let deadline = Instant::now() + SETTLE;
    loop {
        let footprint = Footprint::read(client).await;
        if done(&footprint) {
            return footprint;
        }
        assert!(Instant::now() < deadline, "{what}: {footprint:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn two_hundred_sidecars_cost_no_lease_and_no_growing_value() {
    let mesh = two_replicas();
    let tls = mesh.workload_tls("sim");
    let access = EtcdAccess::of(&mesh);
    block_on(async move {
        let mut store = access.connect().await;
        let channels = channels(&mesh, &tls).await;
        // The mesh's own proxies (catalog, the gateway) are connected.
        let before = settle(&mut store, "proxies' status written", |f| {
            f.count("/mesh-status/sidecars/") >= 2
        })
        .await;

        let mut fleet = simulate(&channels, 0, 20).await;
        let small = settle(
            &mut store,
            "20 simulated sidecars registered and reported",
            |f| f.count("/mesh/endpoints/sim/") == 20 && f.count("/mesh-status/sidecars/") >= 22,
        )
        .await;
        fleet.extend(simulate(&channels, 20, 180).await);
        let large = settle(
            &mut store,
            "200 simulated sidecars registered and reported",
            |f| f.count("/mesh/endpoints/sim/") == 200 && f.count("/mesh-status/sidecars/") >= 202,
        )
        .await;

        // A lease per sidecar would be 200 more; a replica's keep-alives
        // are the same for 2 sidecars or 200.
        assert_eq!(
            large.leases, before.leases,
            "leases: {} with the mesh alone, {} with 200 more sidecars",
            before.leases, large.leases
        );
        // Ten times the sidecars, the same largest value (a list of
        // sidecars in one value would have grown by ~50 KB).
        let (small_key, small_size) = small.largest();
        let (large_key, large_size) = large.largest();
        assert!(
            large_size <= small_size + 64,
            "the largest value grew with the fleet: {small_key} {small_size} B with 20 sidecars, {large_key} {large_size} B with 200"
        );
        // Each replica's own status stays small.
        for (key, size) in &large.sizes {
            if key.starts_with("/mesh-status/replicas/") {
                assert!(*size < 512, "{key}: {size} B");
            }
        }

        // Streams that end take their keys at once: the replicas' leases
        // live on, so nothing here waits for an expiry.
        for simulated in fleet.drain(100..) {
            simulated.close().await;
        }
        let after = settle(&mut store, "100 ended streams deregistered", |f| {
            f.count("/mesh/endpoints/sim/") == 100 && f.count("/mesh/descriptors/sim/") == 100
        })
        .await;
        assert_eq!(after.leases, before.leases);
        let remaining: Vec<&String> = after
            .sizes
            .keys()
            .filter(|k| k.starts_with("/mesh/endpoints/sim/"))
            .collect();
        assert!(
            remaining
                .iter()
                .all(|k| k.as_str() < "/mesh/endpoints/sim/sim-0100"),
            "the ended ones are gone, the others stay: {remaining:?}"
        );
        drop(fleet);
    });
}

#[test]
fn a_descriptor_set_that_does_not_decode_is_refused_and_routing_goes_on() {
    let mesh = TestMesh::start(&support::secure_catalog());
    let tls = mesh.workload_tls("sim");
    let gateway = mesh.gateway_uri();
    block_on(async move {
        let channels = channels(&mesh, &tls).await;
        let garbage = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let refused = subscribe(channels[0].clone(), node("sim-bad", garbage))
            .await
            .err()
            .expect("a set that does not decode is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("file_descriptor_set"),
            "the field is named: {}",
            refused.message()
        );
        // A good set (an empty one) registers, and the mesh routes.
        let _ok = subscribe(channels[0].clone(), node("sim-good", Vec::new()))
            .await
            .expect("registered");
        let (ok, stdout, stderr) = mesh.meshctl(&["get", "endpoints", "-o", "json"], None);
        assert!(ok, "{stderr}");
        assert!(
            stdout.contains("sim-good") && !stdout.contains("sim-bad"),
            "{stdout}"
        );
        support::first_product(&support::channel(gateway).await).await;
    });
}

/// The replica whose status lists `instance`'s proxy, from the store.
async fn replica_of(client: &mut Client, instance: &str) -> Option<String> {
    let found = client
        .get(
            "/mesh-status/sidecars/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    found.kvs().iter().find_map(|kv| {
        let status: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
        (status["instance"] == instance).then(|| {
            let key = kv.key_str().ok()?;
            key.strip_prefix("/mesh-status/sidecars/")?
                .split('/')
                .next()
                .map(str::to_owned)
        })?
    })
}

/// The lease an endpoint's key is on, if the key exists.
async fn endpoint_lease(client: &mut Client, service: &str, instance: &str) -> Option<i64> {
    let found = client
        .get(format!("/mesh/endpoints/{service}/{instance}"), None)
        .await
        .unwrap();
    found.kvs().first().map(|kv| kv.lease())
}

#[test]
fn sigkill_of_a_replica_under_load_loses_no_call_and_its_sidecars_move_before_its_lease_ends() {
    let mut mesh = two_replicas();
    let gateway = mesh.gateway_uri();
    let access = EtcdAccess::of(&mesh);
    let (victim, lease) = block_on({
        let access = access.clone();
        async move {
            let mut store = access.connect().await;
            let deadline = Instant::now() + SETTLE;
            let victim = loop {
                if let Some(replica) = replica_of(&mut store, "catalog-1").await {
                    break replica;
                }
                assert!(
                    Instant::now() < deadline,
                    "catalog-1's sidecar never reported"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let lease = endpoint_lease(&mut store, "catalog", "catalog-1")
                .await
                .expect("catalog-1 registered");
            (victim, lease)
        }
    });
    // Calls through the gateway to catalog all along: bounded in count and time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = std::thread::spawn({
        let stop = stop.clone();
        move || {
            block_on(async move {
                let channel = support::channel(gateway).await;
                let mut client = mesh::proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient::new(channel);
                let (mut calls, mut failures) = (0u32, Vec::new());
                let started = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && calls < 20_000
                    && started.elapsed() < Duration::from_secs(120)
                {
                    let answer = client
                        .list_products(mesh::proto::shop::catalog::v1::ListProductsRequest {
                            page_size: 1,
                            page_token: String::new(),
                        })
                        .await;
                    calls += 1;
                    if let Err(status) = answer {
                        failures.push(status);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (calls, failures)
            })
        }
    });
    mesh.kill(&victim);
    let victim_name = victim.clone();
    block_on(async move {
        // A client of this runtime: the first one's ended with its runtime.
        let mut store = access.connect().await;
        let victim = victim_name;
        // The dead replica's lease ends (it is kept alive by no one now);
        // by then catalog-1 is registered again, on the other replica's.
        let deadline = Instant::now() + SETTLE;
        loop {
            let alive = store.leases().await.unwrap();
            if !alive.leases().iter().any(|l| l.id() == lease) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dead replica's lease never ended"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let now = endpoint_lease(&mut store, "catalog", "catalog-1").await;
        assert!(
            now.is_some_and(|l| l != lease),
            "catalog-1 outlived {victim}'s lease {lease} on another: {now:?}"
        );
        let moved = replica_of(&mut store, "catalog-1").await;
        assert!(
            moved.as_deref().is_some_and(|r| r != victim),
            "catalog-1's sidecar reports to {moved:?}"
        );
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failures) = load.join().unwrap();
    assert!(calls > 10, "the load ran: {calls} calls");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed while {victim} died: {:?}",
        failures.len(),
        failures.first()
    );
}
