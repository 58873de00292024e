//! The Kubernetes manifests keep the mesh's own invariants. Each check reads
//! the objects `kubectl kustomize` renders, for the base (`k8s/`) and for the
//! canary overlay (`k8s/overlays/canary`):
//!
//! - every shop pod runs the sidecar as a native sidecar (an init container
//!   with `restartPolicy: Always`), and the app beside it;
//! - every long-running container has readiness and liveness probes (the
//!   proxies' probe port 15021, the control plane's admin port; the apps,
//!   which listen on loopback, are ready when their sidecar's `/ready` says
//!   so);
//! - every container has requests and limits and a restricted security
//!   context, every pod its own ServiceAccount and no API token;
//! - every port a process is told to use matches what the others are told
//!   and what the pod declares: the app's `PORT`, the sidecar's
//!   `MESH_APP_ADDR`, the gRPC probes; outbound, inbound, admin; every URL
//!   (control plane, etcd, Jaeger) reaches a Service port that reaches a
//!   container port;
//! - every Service and PodDisruptionBudget selects some pod, and no two
//!   workloads claim each other's pods;
//! - the grace period covers the app's and the sidecar's shutdown;
//! - the routes Job applies every route of its ConfigMap, the routes are
//!   valid, and every subset they name is some pod's `version` label;
//! - identity: every proxy mounts the trust bundle ConfigMap and its own
//!   service's join-token Secret (and no other's), the control plane its
//!   issuer Secret; nothing runs with `--mtls off` or `--insecure`;
//! - etcd: its client URLs are `https://` with `--client-cert-auth`, its
//!   certificate and trusted CA from Secret `etcd-tls`; the control plane
//!   reaches it over `https://` with its client certificate from Secret
//!   `etcd-client-tls`, which nothing else mounts;
//! - NetworkPolicies: etcd's client port only from the control plane, the
//!   shop pods' inbound port only from proxies, their probe port open,
//!   nothing else (the apps and the admin port are loopback-only).
//!
//! The last test breaks the rendered objects one way at a time and checks
//! that the checks notice, so none of them passes by accident.
//!
//! Needs `kubectl` (its built-in kustomize); skipped without it, except
//! under `CI=true`.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;

use mesh::model::Route;
use meshctl::demo::SHOP_SERVICES;
use serde::Deserialize;
use serde_json::{json, Value};

/// The kustomizations under test, relative to the repository.
const BASE: &str = "k8s";
const CANARY: &str = "k8s/overlays/canary";

/// The binaries of the mesh's image.
const MESH_BINARIES: [&str; 8] = [
    "sidecar",
    "control-plane",
    "meshctl",
    "catalog",
    "inventory",
    "payments",
    "orders",
    "users",
];

/// The flags' defaults (sidecar/src/settings.rs, src/app/args.rs,
/// control-plane/src/main.rs), for settings a manifest leaves out.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
const DEFAULT_PROBE_ADDR: &str = "0.0.0.0:15021";
const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:15006";
const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:15001";
const DEFAULT_INGRESS_ADDR: &str = "0.0.0.0:8080";
const DEFAULT_APP_ADDR: &str = "127.0.0.1:50051";
const DEFAULT_APP_PORT: &str = "50051";
const DEFAULT_APP_LISTEN_HOST: &str = "127.0.0.1";
const DEFAULT_APP_OUTBOUND: &str = "http://127.0.0.1:15001";
const DEFAULT_CP_LISTEN: &str = "0.0.0.0:15010";
const DEFAULT_CP_ADMIN: &str = "0.0.0.0:15020";
const DEFAULT_DRAIN_SECONDS: u64 = 10;
const DEFAULT_DEREGISTER_DELAY_MS: u64 = 1000;
const DEFAULT_APP_GRACE_SECONDS: u64 = 10;

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn shop_pods_run_the_sidecar_as_a_native_sidecar() {
    for_each_rendering(native_sidecars);
}

#[test]
fn long_running_containers_have_probes() {
    for_each_rendering(probes);
}

#[test]
fn every_container_is_limited_and_restricted() {
    for_each_rendering(resources_and_security);
}

#[test]
fn ports_match_the_flags_each_process_is_given() {
    for_each_rendering(ports);
}

#[test]
fn every_selector_selects_some_pod() {
    for_each_rendering(selectors);
}

#[test]
fn grace_periods_cover_the_shutdown() {
    for_each_rendering(grace_periods);
}

#[test]
fn proxies_and_control_plane_mount_their_own_credentials_and_nothing_is_insecure() {
    for_each_rendering(identity);
}

#[test]
fn etcd_takes_tls_with_client_certificates_only() {
    for_each_rendering(etcd_tls);
}

#[test]
fn network_policies_guard_etcd_and_the_shop_pods() {
    for_each_rendering(network_policies);
}

#[test]
fn routes_are_valid_applied_and_name_existing_subsets() {
    for_each_rendering(routes);
}

#[test]
fn one_image_for_every_mesh_container_and_telemetry_everywhere() {
    for_each_rendering(image_and_telemetry);
}

#[test]
fn canary_adds_payments_v2_with_a_tenth_of_the_calls() {
    let Some(canary) = rendered(CANARY) else {
        return;
    };
    let base = rendered(BASE).expect("rendered with the canary");
    report(CANARY, canary_differences(base, canary));
}

/// Every check, on deliberately broken copies of the base: each breakage
/// must be reported, with words that say what is wrong.
#[test]
fn a_broken_manifest_is_caught() {
    let Some(base) = rendered(BASE) else { return };
    let Some(canary) = rendered(CANARY) else {
        return;
    };
    assert_eq!(all_checks(base), Vec::<String>::new(), "the base is clean");

    let mut missed = Vec::new();
    let mut try_breakage =
        |clean: &Manifests, (what, expected, breakage): Breakage, canary: bool| {
            let mut broken = clean.clone();
            breakage(&mut broken.objects);
            let violations = if canary {
                canary_differences(base, &broken)
            } else {
                all_checks(&broken)
            };
            match violations.iter().find(|v| v.contains(expected)) {
                Some(caught) => eprintln!("{what}: {caught}"),
                None => missed.push(format!(
                    "{what}: expected a violation mentioning {expected:?}, got {violations:#?}"
                )),
            }
        };
    for breakage in breakages() {
        try_breakage(base, breakage, false);
    }
    for breakage in canary_breakages() {
        try_breakage(canary, breakage, true);
    }
    assert!(
        missed.is_empty(),
        "breakages not caught:\n{}",
        missed.join("\n")
    );
}

/// What is broken, a word the violation must contain, and how to break it.
type Breakage = (&'static str, &'static str, fn(&mut Vec<Value>));

fn breaking(what: &'static str, expected: &'static str, breakage: fn(&mut Vec<Value>)) -> Breakage {
    (what, expected, breakage)
}

fn breakages() -> Vec<Breakage> {
    vec![
        breaking(
            "sidecar without restartPolicy",
            "not a native sidecar",
            |o| {
                let sidecar = container(o, "Deployment", "payments", "sidecar");
                remove(sidecar, "restartPolicy");
            },
        ),
        breaking("sidecar as a regular container", "regular container", |o| {
            let pod = pod_spec(o, "Deployment", "orders");
            let sidecar = pod["initContainers"].as_array_mut().unwrap().remove(0);
            pod["containers"].as_array_mut().unwrap().push(sidecar);
            remove(pod, "initContainers");
        }),
        breaking(
            "a shop service without a Deployment",
            "no workload runs",
            |o| {
                o.retain(|x| !is(x, "Deployment", "inventory"));
            },
        ),
        breaking("sidecar for another service", "MESH_SERVICE", |o| {
            let sidecar = container(o, "Deployment", "catalog", "sidecar");
            set_env(sidecar, "MESH_SERVICE", "orders");
        }),
        breaking("app without readiness probe", "readinessProbe", |o| {
            let app = container(o, "Deployment", "catalog", "app");
            remove(app, "readinessProbe");
        }),
        breaking(
            "native sidecar without liveness probe",
            "livenessProbe",
            |o| {
                let sidecar = container(o, "Deployment", "inventory", "sidecar");
                remove(sidecar, "livenessProbe");
            },
        ),
        breaking("gateway without liveness probe", "livenessProbe", |o| {
            let gateway = container(o, "Deployment", "gateway", "gateway");
            remove(gateway, "livenessProbe");
        }),
        breaking("app probed by TCP", "sidecar's /ready", |o| {
            let app = container(o, "Deployment", "orders", "app");
            app["livenessProbe"] = json!({ "tcpSocket": { "port": 50051 } });
        }),
        breaking("sidecar probed on the wrong port", "probe port", |o| {
            let sidecar = container(o, "Deployment", "orders", "sidecar");
            sidecar["readinessProbe"]["httpGet"]["port"] = json!(15006);
        }),
        breaking("control plane probed on its gRPC port", "admin port", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            cp["readinessProbe"]["httpGet"]["port"] = json!(15010);
        }),
        breaking("no memory limit", "limits.memory", |o| {
            let app = container(o, "Deployment", "payments", "app");
            remove(&mut app["resources"]["limits"], "memory");
        }),
        breaking("no requests", "requests.cpu", |o| {
            let etcd = container(o, "StatefulSet", "etcd", "etcd");
            remove(&mut etcd["resources"], "requests");
        }),
        breaking("request above limit", "above its limit", |o| {
            let sidecar = container(o, "Deployment", "catalog", "sidecar");
            sidecar["resources"]["requests"]["memory"] = json!("1Gi");
        }),
        breaking("writable root filesystem", "readOnlyRootFilesystem", |o| {
            let job = container(o, "Job", "mesh-routes", "meshctl");
            job["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        }),
        breaking("capabilities kept", "drop ALL", |o| {
            let jaeger = container(o, "Deployment", "jaeger", "jaeger");
            remove(&mut jaeger["securityContext"], "capabilities");
        }),
        breaking(
            "privilege escalation allowed",
            "allowPrivilegeEscalation",
            |o| {
                let sidecar = container(o, "Deployment", "payments", "sidecar");
                remove(&mut sidecar["securityContext"], "allowPrivilegeEscalation");
            },
        ),
        breaking("may run as root", "runAsNonRoot", |o| {
            let pod = pod_spec(o, "Deployment", "gateway");
            remove(&mut pod["securityContext"], "runAsNonRoot");
        }),
        breaking("runs as root", "runAsUser 0", |o| {
            let app = container(o, "Deployment", "orders", "app");
            app["securityContext"]["runAsUser"] = json!(0);
        }),
        breaking("no seccomp profile", "seccompProfile", |o| {
            let pod = pod_spec(o, "StatefulSet", "etcd");
            remove(&mut pod["securityContext"], "seccompProfile");
        }),
        breaking("API token mounted", "automountServiceAccountToken", |o| {
            let pod = pod_spec(o, "Deployment", "control-plane");
            pod["automountServiceAccountToken"] = json!(true);
        }),
        breaking("missing ServiceAccount", "no ServiceAccount", |o| {
            o.retain(|x| !is(x, "ServiceAccount", "orders"));
        }),
        breaking("app on another port", "PORT", |o| {
            let app = container(o, "Deployment", "payments", "app");
            set_env(app, "PORT", "50052");
        }),
        breaking("sidecar forwards to another port", "MESH_APP_ADDR", |o| {
            let sidecar = container(o, "Deployment", "inventory", "sidecar");
            set_env(sidecar, "MESH_APP_ADDR", "127.0.0.1:50052");
        }),
        breaking("app probed on its own port", "sidecar's /ready", |o| {
            let app = container(o, "Deployment", "catalog", "app");
            app["readinessProbe"]["httpGet"]["port"] = json!(50051);
        }),
        breaking("app listens on every interface", "LISTEN_HOST", |o| {
            let app = container(o, "Deployment", "orders", "app");
            set_env(app, "LISTEN_HOST", "0.0.0.0");
        }),
        breaking("sidecar probed on the admin port", "probe port", |o| {
            let sidecar = container(o, "Deployment", "payments", "sidecar");
            sidecar["livenessProbe"]["httpGet"]["port"] = json!(15000);
        }),
        breaking("gateway probed on the admin port", "probe port", |o| {
            let gateway = container(o, "Deployment", "gateway", "gateway");
            gateway["readinessProbe"]["httpGet"]["port"] = json!(15000);
        }),
        breaking("admin port on every interface", "must be loopback", |o| {
            let gateway = container(o, "Deployment", "gateway", "gateway");
            set_env(gateway, "MESH_ADMIN_ADDR", "0.0.0.0:15000");
        }),
        breaking("app calls out on another port", "MESH_OUTBOUND", |o| {
            let app = container(o, "Deployment", "orders", "app");
            set_env(app, "MESH_OUTBOUND", "http://127.0.0.1:15002");
        }),
        breaking("outbound on every interface", "MESH_OUTBOUND_ADDR", |o| {
            let sidecar = container(o, "Deployment", "orders", "sidecar");
            set_env(sidecar, "MESH_OUTBOUND_ADDR", "0.0.0.0:15001");
        }),
        breaking("inbound port not declared", "15006", |o| {
            let sidecar = container(o, "Deployment", "orders", "sidecar");
            let ports = sidecar["ports"].as_array_mut().unwrap();
            ports.retain(|p| p["containerPort"] != 15006);
        }),
        breaking("two listeners on one port", "more than once", |o| {
            let sidecar = container(o, "Deployment", "catalog", "sidecar");
            set_env(sidecar, "MESH_ADMIN_ADDR", "127.0.0.1:50051");
        }),
        breaking("pod IP not given to the sidecar", "POD_IP", |o| {
            let sidecar = container(o, "Deployment", "catalog", "sidecar");
            remove_env(sidecar, "POD_IP");
        }),
        breaking(
            "version label as a literal",
            "metadata.labels['version']",
            |o| {
                let sidecar = container(o, "Deployment", "payments", "sidecar");
                set_env(sidecar, "MESH_VERSION_LABEL", "v1");
            },
        ),
        breaking("control plane URL on a wrong port", "control-plane", |o| {
            let env = config_map(o, "mesh-env");
            env["data"]["MESH_CONTROL_PLANE"] = json!("http://control-plane:15011");
        }),
        breaking("control plane listening elsewhere", "MESH_CP_LISTEN", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            set_env(cp, "MESH_CP_LISTEN", "0.0.0.0:15011");
        }),
        breaking(
            "control plane URL reaching its admin port",
            "MESH_CP_LISTEN",
            |o| {
                let service = find_mut(o, "Service", "control-plane");
                service["spec"]["ports"][0]["targetPort"] = json!(15020);
            },
        ),
        breaking("etcd member that does not exist", "etcd-3", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            let urls = "http://etcd-0.etcd:2379,http://etcd-3.etcd:2379";
            set_env(cp, "MESH_CP_ETCD", urls);
        }),
        breaking("etcd reached on its peer port", "client URL", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            set_env(cp, "MESH_CP_ETCD", "http://etcd-0.etcd:2380");
        }),
        breaking("etcd without client-cert auth", "--client-cert-auth", |o| {
            let etcd = container(o, "StatefulSet", "etcd", "etcd");
            remove_env(etcd, "ETCD_CLIENT_CERT_AUTH");
        }),
        breaking("etcd serving plaintext", "ETCD_LISTEN_CLIENT_URLS", |o| {
            let etcd = container(o, "StatefulSet", "etcd", "etcd");
            set_env(etcd, "ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379");
        }),
        breaking(
            "etcd advertising plaintext",
            "ETCD_ADVERTISE_CLIENT_URLS",
            |o| {
                let etcd = container(o, "StatefulSet", "etcd", "etcd");
                set_env(
                    etcd,
                    "ETCD_ADVERTISE_CLIENT_URLS",
                    "http://$(ETCD_NAME).etcd:2379",
                );
            },
        ),
        breaking("etcd's key not from its Secret", "ETCD_KEY_FILE", |o| {
            let etcd = container(o, "StatefulSet", "etcd", "etcd");
            set_env(etcd, "ETCD_KEY_FILE", "/var/lib/etcd/server.key");
        }),
        breaking(
            "control plane dialing etcd in plaintext",
            "MESH_CP_ETCD must be https",
            |o| {
                let cp = container(o, "Deployment", "control-plane", "control-plane");
                let urls =
                    "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379,http://etcd-2.etcd:2379";
                set_env(cp, "MESH_CP_ETCD", urls);
            },
        ),
        breaking(
            "control plane without its etcd certificate",
            "MESH_CP_ETCD_CERT",
            |o| {
                let cp = container(o, "Deployment", "control-plane", "control-plane");
                remove_env(cp, "MESH_CP_ETCD_CERT");
            },
        ),
        breaking(
            "etcd's client key mounted by the gateway",
            "etcd-client-tls",
            |o| {
                let pod = pod_spec(o, "Deployment", "gateway");
                pod["volumes"]
                    .as_array_mut()
                    .expect("volumes")
                    .push(json!({"name": "stolen", "secret": {"secretName": "etcd-client-tls"}}));
            },
        ),
        breaking("Jaeger unreachable", "OTEL_EXPORTER_OTLP_ENDPOINT", |o| {
            let env = config_map(o, "mesh-env");
            env["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = json!("http://jaeger:4316");
        }),
        breaking("no service name for traces", "OTEL_SERVICE_NAME", |o| {
            let app = container(o, "Deployment", "inventory", "app");
            remove_env(app, "OTEL_SERVICE_NAME");
        }),
        breaking(
            "Service targets a port nobody listens on",
            "targetPort",
            |o| {
                let service = find_mut(o, "Service", "payments");
                service["spec"]["ports"][0]["targetPort"] = json!(15007);
            },
        ),
        breaking("Service selects nothing", "selects no pod", |o| {
            let service = find_mut(o, "Service", "gateway");
            let selector = json!({ "app.kubernetes.io/name": "gatway" });
            service["spec"]["selector"] = selector;
        }),
        breaking("PDB selects nothing", "selects no pod", |o| {
            let pdb = find_mut(o, "PodDisruptionBudget", "etcd");
            let selector = json!({ "app.kubernetes.io/name": "etc" });
            pdb["spec"]["selector"]["matchLabels"] = selector;
        }),
        breaking("a Deployment claims another's pods", "also selects", |o| {
            let catalog = find_mut(o, "Deployment", "catalog");
            catalog["spec"]["selector"]["matchLabels"] = json!({ "version": "v1" });
        }),
        breaking("no drain before the app stops", "preStop", |o| {
            let app = container(o, "Deployment", "payments", "app");
            remove(app, "lifecycle");
        }),
        breaking("drain by GET", "POST /drain", |o| {
            let app = container(o, "Deployment", "catalog", "app");
            app["lifecycle"]["preStop"] = json!({ "httpGet": { "path": "/drain", "port": 15000 } });
        }),
        breaking("drain sent to another port", "POST /drain", |o| {
            let app = container(o, "Deployment", "orders", "app");
            let script = &mut app["lifecycle"]["preStop"]["exec"]["command"][2];
            *script = json!(script.as_str().unwrap().replace("/15000", "/15001"));
        }),
        breaking("short grace period", "terminationGracePeriodSeconds", |o| {
            let pod = pod_spec(o, "Deployment", "orders");
            pod["terminationGracePeriodSeconds"] = json!(20);
        }),
        breaking(
            "gateway drains too long",
            "terminationGracePeriodSeconds",
            |o| {
                let gateway = container(o, "Deployment", "gateway", "gateway");
                set_env(gateway, "MESH_DRAIN_SECONDS", "60");
            },
        ),
        breaking("invalid route", "not valid", |o| {
            edit_route(
                o,
                "catalog.yaml",
                "destination: catalog",
                "destination: Catalog!",
            );
        }),
        breaking("route to a service nobody runs", "destination", |o| {
            edit_route(
                o,
                "orders.yaml",
                "destination: orders",
                "destination: order",
            );
        }),
        breaking("route to a subset nobody runs", "subset v3", |o| {
            edit_route(o, "catalog.yaml", "subset: v1", "subset: v3");
        }),
        breaking("a shop service without a route", "no route", |o| {
            let routes = config_map(o, "mesh-routes");
            remove(&mut routes["data"], "inventory.yaml");
            container(o, "Job", "mesh-routes", "meshctl")["command"] = json!([
                "/usr/local/bin/meshctl",
                "apply",
                "-f",
                "/etc/mesh/routes/catalog.yaml",
                "-f",
                "/etc/mesh/routes/payments.yaml",
                "-f",
                "/etc/mesh/routes/orders.yaml",
            ]);
        }),
        breaking("Job forgets a route", "does not apply", |o| {
            let job = container(o, "Job", "mesh-routes", "meshctl");
            let command = job["command"].as_array_mut().unwrap();
            command.truncate(command.len() - 2);
        }),
        breaking(
            "sidecar without the trust bundle",
            "mesh-trust-bundle",
            |o| {
                let sidecar = container(o, "Deployment", "catalog", "sidecar");
                let mounts = sidecar["volumeMounts"].as_array_mut().unwrap();
                mounts.retain(|m| m["name"] != "trust-bundle");
            },
        ),
        breaking("gateway without a token", "MESH_IDENTITY_TOKEN_FILE", |o| {
            let gateway = container(o, "Deployment", "gateway", "gateway");
            remove_env(gateway, "MESH_IDENTITY_TOKEN_FILE");
        }),
        breaking(
            "sidecar with another service's token",
            "payments-join-token",
            |o| {
                let pod = pod_spec(o, "Deployment", "orders");
                let volumes = pod["volumes"].as_array_mut().unwrap();
                let token = volumes
                    .iter_mut()
                    .find(|v| v["name"] == "join-token")
                    .unwrap();
                token["secret"]["secretName"] = json!("payments-join-token");
            },
        ),
        breaking(
            "a pod mounts another service's token too",
            "catalog-join-token",
            |o| {
                let pod = pod_spec(o, "Deployment", "inventory");
                pod["volumes"].as_array_mut().unwrap().push(json!({
                    "name": "other-token",
                    "secret": { "secretName": "catalog-join-token" }
                }));
            },
        ),
        breaking("the app mounts the token", "only the proxy", |o| {
            let app = container(o, "Deployment", "payments", "app");
            app["volumeMounts"] = json!([{ "name": "join-token", "mountPath": "/token" }]);
        }),
        breaking("token Secret required at start", "optional", |o| {
            let pod = pod_spec(o, "Deployment", "catalog");
            let volumes = pod["volumes"].as_array_mut().unwrap();
            let token = volumes
                .iter_mut()
                .find(|v| v["name"] == "join-token")
                .unwrap();
            remove(&mut token["secret"], "optional");
        }),
        breaking("control plane without its issuer", "mesh-issuer", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            let mounts = cp["volumeMounts"].as_array_mut().unwrap();
            mounts.retain(|m| m["name"] != "issuer");
        }),
        breaking("issuer key from elsewhere", "issuer.key", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            set_env(cp, "MESH_CP_ISSUER_KEY", "/etc/mesh/trust/issuer.key");
        }),
        breaking("the issuer mounted by the gateway", "mesh-issuer", |o| {
            let pod = pod_spec(o, "Deployment", "gateway");
            pod["volumes"].as_array_mut().unwrap().push(json!({
                "name": "issuer",
                "secret": { "secretName": "mesh-issuer" }
            }));
        }),
        breaking("control plane --insecure", "--insecure", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            cp["args"] = json!(["--insecure"]);
        }),
        breaking("control plane insecure by env", "--insecure", |o| {
            let cp = container(o, "Deployment", "control-plane", "control-plane");
            set_env(cp, "MESH_CP_INSECURE", "true");
        }),
        breaking("meshctl insecure", "--insecure", |o| {
            let job = container(o, "Job", "mesh-routes", "meshctl");
            job["command"]
                .as_array_mut()
                .unwrap()
                .push(json!("--insecure"));
        }),
        breaking("sidecar --mtls off", "--mtls off", |o| {
            let sidecar = container(o, "Deployment", "inventory", "sidecar");
            sidecar["args"] = json!(["--mtls", "off"]);
        }),
        breaking("gateway mTLS off by env", "--mtls off", |o| {
            let env = config_map(o, "mesh-env");
            env["data"]["MESH_MTLS"] = json!("off");
        }),
        breaking("etcd without a NetworkPolicy", "anyone reaches etcd", |o| {
            o.retain(|x| !is(x, "NetworkPolicy", "etcd"));
        }),
        breaking(
            "etcd's client port open to all",
            "more than the control plane",
            |o| {
                let policy = find_mut(o, "NetworkPolicy", "etcd");
                remove(&mut policy["spec"]["ingress"][0], "from");
            },
        ),
        breaking(
            "etcd's client port open to the shop",
            "more than the control plane",
            |o| {
                let policy = find_mut(o, "NetworkPolicy", "etcd");
                policy["spec"]["ingress"][0]["from"][0]["podSelector"] =
                    json!({ "matchLabels": { "app.kubernetes.io/part-of": "mesh" } });
            },
        ),
        breaking("control plane cut off from etcd", "client port", |o| {
            let policy = find_mut(o, "NetworkPolicy", "etcd");
            policy["spec"]["ingress"][0]["ports"][0]["port"] = json!(2380);
        }),
        breaking("shop pods without a NetworkPolicy", "anyone reaches", |o| {
            o.retain(|x| !is(x, "NetworkPolicy", "shop-inbound"));
        }),
        breaking(
            "inbound open to every pod",
            "more than the mesh's proxies",
            |o| {
                let policy = find_mut(o, "NetworkPolicy", "shop-inbound");
                policy["spec"]["ingress"][0]["from"] = json!([{ "namespaceSelector": {} }]);
            },
        ),
        breaking(
            "inbound open to Jaeger",
            "more than the mesh's proxies",
            |o| {
                let policy = find_mut(o, "NetworkPolicy", "shop-inbound");
                policy["spec"]["ingress"][0]["from"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "podSelector": { "matchLabels": { "app.kubernetes.io/name": "jaeger" } } }));
            },
        ),
        breaking("app port exposed", "exposes port 50051", |o| {
            let policy = find_mut(o, "NetworkPolicy", "shop-inbound");
            policy["spec"]["ingress"][1]["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "port": 50051 }));
        }),
        breaking("every port open", "opens every port", |o| {
            let policy = find_mut(o, "NetworkPolicy", "shop-inbound");
            remove(&mut policy["spec"]["ingress"][1], "ports");
        }),
        breaking("probe port closed", "probe port", |o| {
            let policy = find_mut(o, "NetworkPolicy", "shop-inbound");
            policy["spec"]["ingress"]
                .as_array_mut()
                .unwrap()
                .truncate(1);
        }),
        breaking("images: not applied", "registry reference", |o| {
            for object in o.iter_mut() {
                let pod = &mut object["spec"]["template"]["spec"];
                for list in ["initContainers", "containers"] {
                    for c in pod[list].as_array_mut().into_iter().flatten() {
                        if c["image"] == "registry.example.com/mesh:0.1.0" {
                            c["image"] = json!("mesh");
                        }
                    }
                }
            }
        }),
        breaking("two mesh images", "one image", |o| {
            let sidecar = container(o, "Deployment", "catalog", "sidecar");
            sidecar["image"] = json!("registry.example.com/mesh:0.0.9");
        }),
    ]
}

fn canary_breakages() -> Vec<Breakage> {
    vec![
        breaking("no v2 Deployment", "payments-v2", |o| {
            o.retain(|x| !is(x, "Deployment", "payments-v2"));
        }),
        breaking("v2 pods labelled v1", "version", |o| {
            let v2 = find_mut(o, "Deployment", "payments-v2");
            v2["spec"]["template"]["metadata"]["labels"]["version"] = json!("v1");
            v2["spec"]["selector"]["matchLabels"]["version"] = json!("v1");
        }),
        breaking("v2 drifts from v1", "differs", |o| {
            let pod = pod_spec(o, "Deployment", "payments-v2");
            pod["terminationGracePeriodSeconds"] = json!(41);
        }),
        breaking("split of 20 %", "10 %", |o| {
            edit_route(o, "payments.yaml", "weight: 90", "weight: 40");
        }),
        breaking("routes Job does not wait for v2", "wait", |o| {
            let pod = pod_spec(o, "Job", "mesh-routes");
            remove(pod, "initContainers");
        }),
    ]
}

// ---------------------------------------------------------------------------
// Rendering.

/// The objects of one rendering.
#[derive(Debug, Clone)]
struct Manifests {
    objects: Vec<Value>,
}

fn for_each_rendering(check: fn(&Manifests) -> Vec<String>) {
    for dir in [BASE, CANARY] {
        let Some(manifests) = rendered(dir) else {
            return;
        };
        report(dir, check(manifests));
    }
}

fn report(dir: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{dir}: {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

/// `kubectl kustomize DIR`, once per test binary; `None` to skip without
/// kubectl (outside CI).
fn rendered(dir: &str) -> Option<&'static Manifests> {
    static BASE_RENDER: OnceLock<Option<Manifests>> = OnceLock::new();
    static CANARY_RENDER: OnceLock<Option<Manifests>> = OnceLock::new();
    let cell = if dir == BASE {
        &BASE_RENDER
    } else {
        &CANARY_RENDER
    };
    cell.get_or_init(|| {
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
        if kubectl == "kubectl" && !support::have_tool("kubectl") {
            return None;
        }
        let out = Command::new(&kubectl)
            .args(["kustomize", dir])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {kubectl}: {e}"));
        assert!(
            out.status.success(),
            "kubectl kustomize {dir} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
        let objects = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).expect("kustomize prints valid YAML"))
            .filter(|v| !v.is_null())
            .collect();
        Some(Manifests { objects })
    })
    .as_ref()
}

fn all_checks(m: &Manifests) -> Vec<String> {
    let checks: [fn(&Manifests) -> Vec<String>; 11] = [
        native_sidecars,
        probes,
        resources_and_security,
        ports,
        selectors,
        grace_periods,
        routes,
        image_and_telemetry,
        identity,
        etcd_tls,
        network_policies,
    ];
    checks.iter().flat_map(|check| check(m)).collect()
}

// ---------------------------------------------------------------------------
// The model of what was rendered: workloads, their pods, containers, env.

/// Something that runs pods.
#[derive(Debug, Clone, Copy)]
struct Workload<'a> {
    kind: &'a str,
    name: &'a str,
    /// `spec.selector` (a label selector) of the workload.
    selector: Option<&'a Value>,
    /// The pod template's metadata.labels.
    labels: &'a Value,
    /// The pod template's spec.
    pod: &'a Value,
}

impl<'a> Workload<'a> {
    fn id(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// Runs until stopped (a server), rather than to completion (a Job).
    fn long_running(&self) -> bool {
        matches!(self.kind, "Deployment" | "StatefulSet" | "DaemonSet")
    }

    /// The `app.kubernetes.io/name` label of its pods.
    fn app_name(&self) -> &'a str {
        self.labels["app.kubernetes.io/name"].as_str().unwrap_or("")
    }

    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels[key].as_str()
    }

    fn containers(&self) -> Vec<Container<'a>> {
        let mut all = Vec::new();
        for c in self.pod["initContainers"].as_array().into_iter().flatten() {
            let role = if c["restartPolicy"] == "Always" {
                Role::NativeSidecar
            } else {
                Role::Init
            };
            all.push(Container { spec: c, role });
        }
        for c in self.pod["containers"].as_array().into_iter().flatten() {
            all.push(Container {
                spec: c,
                role: Role::Main,
            });
        }
        all
    }

    /// Containers that run as long as the pod: main ones and native sidecars.
    fn running_containers(&self) -> Vec<Container<'a>> {
        self.containers()
            .into_iter()
            .filter(|c| c.role != Role::Init)
            .collect()
    }

    /// The container running `binary`, if exactly one does.
    fn running(&self, binary: &str) -> Option<Container<'a>> {
        let found: Vec<_> = self
            .containers()
            .into_iter()
            .filter(|c| c.binary() == Some(binary))
            .collect();
        (found.len() == 1).then(|| found[0])
    }

    /// The number of the port (a number or a name) that one of the pod's
    /// running containers declares.
    fn port_number(&self, port: &Value) -> Option<u16> {
        self.running_containers()
            .iter()
            .find_map(|c| c.port_number(port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// In `containers`.
    Main,
    /// In `initContainers` with `restartPolicy: Always`.
    NativeSidecar,
    /// In `initContainers`, run to completion before the others.
    Init,
}

#[derive(Debug, Clone, Copy)]
struct Container<'a> {
    spec: &'a Value,
    role: Role,
}

impl Container<'_> {
    fn name(&self) -> &str {
        self.spec["name"].as_str().unwrap_or("?")
    }

    /// The program it runs: the file name of `command[0]`.
    fn binary(&self) -> Option<&str> {
        self.spec["command"][0]
            .as_str()
            .and_then(|c| c.rsplit('/').next())
    }

    /// The number of `port` (a number or a name) if the container declares
    /// it.
    fn port_number(&self, port: &Value) -> Option<u16> {
        self.spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| match port {
                Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
                Value::String(name) => p["name"] == name.as_str(),
                _ => false,
            })
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
    }

    fn container_ports(&self) -> BTreeSet<u16> {
        self.spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .map(|p| p as u16)
            .collect()
    }
}

/// An environment variable as the pod will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvValue {
    /// A literal, from `value` or from a ConfigMap.
    Literal(String),
    /// From the downward API: the `fieldPath`.
    Field(String),
    /// Anything else (secrets, resource fields, a missing ConfigMap key).
    Other,
}

impl Manifests {
    fn objects_of(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects_of(kind)
            .find(|o| o["metadata"]["name"] == name)
    }

    fn workloads(&self) -> Vec<Workload<'_>> {
        let mut all = Vec::new();
        for o in &self.objects {
            let kind = o["kind"].as_str().unwrap_or("");
            let template = match kind {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &o["spec"]["template"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"],
                _ => continue,
            };
            all.push(Workload {
                kind,
                name: o["metadata"]["name"].as_str().unwrap_or("?"),
                selector: o["spec"].get("selector"),
                labels: &template["metadata"]["labels"],
                pod: &template["spec"],
            });
        }
        all
    }

    fn workload(&self, kind: &str, name: &str) -> Option<Workload<'_>> {
        self.workloads()
            .into_iter()
            .find(|w| w.kind == kind && w.name == name)
    }

    /// Pods of the shop: workloads whose pods are named after a shop service.
    fn shop_workloads(&self) -> Vec<(Workload<'_>, &'static str)> {
        self.workloads()
            .into_iter()
            .filter_map(|w| {
                SHOP_SERVICES
                    .iter()
                    .find(|(service, _)| *service == w.app_name())
                    .map(|(service, _)| (w, *service))
            })
            .collect()
    }

    /// A ConfigMap by the name it was written with: kustomize appends a
    /// hash to generated names, and rewrites references accordingly.
    fn config_map(&self, name: &str) -> Option<&Value> {
        self.objects_of("ConfigMap").find(|o| {
            let actual = o["metadata"]["name"].as_str().unwrap_or("");
            actual == name
                || actual
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.len() == 10 && !hash.contains('-'))
        })
    }

    /// A container's environment: `envFrom` ConfigMaps first, then `env`,
    /// later entries winning, as the kubelet does.
    fn env(&self, c: Container<'_>) -> BTreeMap<String, EnvValue> {
        let mut env = BTreeMap::new();
        for source in c.spec["envFrom"].as_array().into_iter().flatten() {
            let Some(name) = source["configMapRef"]["name"].as_str() else {
                continue;
            };
            let prefix = source["prefix"].as_str().unwrap_or("");
            let data = self
                .objects_of("ConfigMap")
                .find(|o| o["metadata"]["name"] == name)
                .map(|o| &o["data"]);
            for (key, value) in data.and_then(Value::as_object).into_iter().flatten() {
                let value = value.as_str().unwrap_or("").to_owned();
                env.insert(format!("{prefix}{key}"), EnvValue::Literal(value));
            }
        }
        for var in c.spec["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or("").to_owned();
            let value = if let Some(v) = var["value"].as_str() {
                EnvValue::Literal(v.to_owned())
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                EnvValue::Field(field.to_owned())
            } else if let Some(key) = var["valueFrom"]["configMapKeyRef"].as_object() {
                self.objects_of("ConfigMap")
                    .find(|o| o["metadata"]["name"] == key["name"])
                    .and_then(|o| o["data"][key["key"].as_str().unwrap_or("")].as_str())
                    .map_or(EnvValue::Other, |v| EnvValue::Literal(v.to_owned()))
            } else {
                EnvValue::Other
            };
            env.insert(name, value);
        }
        env
    }

    /// The literal value of `name`, or `default` when the variable is unset.
    fn literal(&self, c: Container<'_>, name: &str, default: &str) -> Result<String, String> {
        match self.env(c).get(name) {
            None => Ok(default.to_owned()),
            Some(EnvValue::Literal(v)) => Ok(v.clone()),
            Some(other) => Err(format!("{name} is {other:?}, not a literal")),
        }
    }

    /// The pods a label selector (a Service's map, or a `matchLabels`)
    /// selects.
    fn selected(&self, selector: &Value) -> Vec<Workload<'_>> {
        self.workloads()
            .into_iter()
            .filter(|w| w.long_running() && selects(selector, w.labels))
            .collect()
    }

    /// Where `url` (`http://service:port` or `http://pod.headless:port`)
    /// leads: the workloads behind it, and the container port each declares
    /// for it.
    fn reach(&self, url: &str) -> Result<Vec<(Workload<'_>, u16)>, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| format!("{url:?} has no port"))?;
        let labels: Vec<&str> = host.split('.').collect();
        match labels.as_slice() {
            [service_name] => {
                let service = self
                    .find("Service", service_name)
                    .ok_or_else(|| format!("{url}: no Service {service_name:?}"))?;
                let service_port = service["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["port"].as_u64() == Some(port.into()))
                    .ok_or_else(|| format!("{url}: Service {service_name} has no port {port}"))?;
                let target = match &service_port["targetPort"] {
                    Value::Null => json!(port),
                    other => other.clone(),
                };
                let pods = self.selected(&service["spec"]["selector"]);
                if pods.is_empty() {
                    return Err(format!("{url}: Service {service_name} selects no pod"));
                }
                pods.into_iter()
                    .map(|pod| match pod.port_number(&target) {
                        Some(number) => Ok((pod, number)),
                        None => Err(format!(
                            "{url}: {} declares no port {target} (targetPort of Service {service_name})",
                            pod.id()
                        )),
                    })
                    .collect()
            }
            [pod_name, service_name] => {
                // A StatefulSet's pod through its headless Service.
                let service = self
                    .find("Service", service_name)
                    .ok_or_else(|| format!("{url}: no Service {service_name:?}"))?;
                if service["spec"]["clusterIP"] != "None" {
                    return Err(format!("{url}: Service {service_name} is not headless"));
                }
                let set = self
                    .objects_of("StatefulSet")
                    .find(|s| {
                        s["spec"]["serviceName"] == *service_name
                            && pod_name
                                .rsplit_once('-')
                                .is_some_and(|(set, _)| s["metadata"]["name"] == set)
                    })
                    .ok_or_else(|| {
                        format!("{url}: no StatefulSet behind {service_name} has pod {pod_name}")
                    })?;
                let ordinal: u64 = pod_name
                    .rsplit_once('-')
                    .and_then(|(_, n)| n.parse().ok())
                    .ok_or_else(|| format!("{url}: {pod_name} is not a StatefulSet pod name"))?;
                let replicas = set["spec"]["replicas"].as_u64().unwrap_or(1);
                if ordinal >= replicas {
                    return Err(format!(
                        "{url}: StatefulSet {} has {replicas} replicas, no {pod_name}",
                        set["metadata"]["name"].as_str().unwrap_or("?")
                    ));
                }
                let workload = self
                    .workload(
                        "StatefulSet",
                        set["metadata"]["name"].as_str().unwrap_or(""),
                    )
                    .expect("the StatefulSet just found");
                if !selects(&service["spec"]["selector"], workload.labels) {
                    return Err(format!(
                        "{url}: Service {service_name} does not select {pod_name}"
                    ));
                }
                match workload.port_number(&json!(port)) {
                    Some(number) => Ok(vec![(workload, number)]),
                    None => Err(format!("{url}: {pod_name} declares no port {port}")),
                }
            }
            _ => Err(format!(
                "{url}: expected `service` or `pod.headless-service` as host (same namespace)"
            )),
        }
    }
}

/// Does a label selector (plain map or `{matchLabels: ...}`) select pods
/// with these labels? An empty selector selects nothing here: an empty
/// Service selector means "no endpoints managed", a bug in this repository.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted =
        if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
            if selector.get("matchExpressions").is_some() {
                return false; // not used here; refuse rather than guess
            }
            &selector["matchLabels"]
        } else {
            selector
        };
    match wanted.as_object() {
        Some(map) if !map.is_empty() => map.iter().all(|(k, v)| labels[k] == *v),
        _ => false,
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not an address: {e}"))
}

// ---------------------------------------------------------------------------
// The checks. Each returns its violations, one line each.

fn native_sidecars(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let shop = m.shop_workloads();
    for (service, _) in SHOP_SERVICES {
        if !shop.iter().any(|(w, s)| *s == service && w.long_running()) {
            v.push(format!("no workload runs shop service {service}"));
        }
    }
    for (w, service) in shop {
        let id = w.id();
        let sidecars: Vec<_> = w
            .containers()
            .into_iter()
            .filter(|c| c.binary() == Some("sidecar"))
            .collect();
        match sidecars.as_slice() {
            [] => v.push(format!("{id}: no sidecar")),
            [sidecar] => match sidecar.role {
                Role::NativeSidecar => {}
                Role::Init => v.push(format!(
                    "{id}: the sidecar is an init container without restartPolicy: Always, not a native sidecar"
                )),
                Role::Main => v.push(format!(
                    "{id}: the sidecar is a regular container, not a native sidecar (initContainers, restartPolicy: Always)"
                )),
            },
            _ => v.push(format!("{id}: {} sidecars", sidecars.len())),
        }
        if let [sidecar] = sidecars.as_slice() {
            match m.literal(*sidecar, "MESH_MODE", "sidecar") {
                Ok(mode) if mode == "sidecar" => {}
                other => v.push(format!("{id}: sidecar MESH_MODE is {other:?}")),
            }
            match m.literal(*sidecar, "MESH_SERVICE", "") {
                Ok(s) if s == service => {}
                other => v.push(format!(
                    "{id}: sidecar MESH_SERVICE is {other:?}, not the pods' service {service:?}"
                )),
            }
        }
        match w.running(service) {
            Some(app) if app.role == Role::Main => {}
            Some(app) => v.push(format!("{id}: the app runs as {:?}", app.role)),
            None => v.push(format!(
                "{id}: no (single) container runs /usr/local/bin/{service}"
            )),
        }
    }
    v
}

fn probes(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for w in m.workloads().into_iter().filter(|w| w.long_running()) {
        let shop_service = SHOP_SERVICES
            .iter()
            .map(|(s, _)| *s)
            .find(|s| *s == w.app_name());
        // The pod's proxy probe port: where the kubelet asks the sidecar.
        let probe_port = w.running("sidecar").map(|proxy| {
            m.literal(proxy, "MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR)
                .and_then(|a| socket_addr(&a))
                .map(|a| a.port())
        });
        for c in w.running_containers() {
            let id = format!("{} container {}", w.id(), c.name());
            let app = shop_service.is_some() && c.binary() == shop_service;
            if c.spec["readinessProbe"].is_null() {
                v.push(format!("{id}: no readinessProbe"));
            }
            // An app's only outside view is its sidecar's /ready, which
            // also fails without a control plane: no liveness probe there.
            if !app && c.spec["livenessProbe"].is_null() {
                v.push(format!("{id}: no livenessProbe"));
            }
            let probes =
                ["startupProbe", "readinessProbe", "livenessProbe"].map(|p| (p, &c.spec[p]));
            let on_port = |probe: &Value, port: u16| {
                let named = &probe["httpGet"]["port"];
                named.as_u64() == Some(port.into())
                    || (named.is_string()
                        && w.running_containers()
                            .iter()
                            .any(|c| c.port_number(named) == Some(port)))
            };
            if app {
                for (name, probe) in probes.iter().filter(|(_, p)| !p.is_null()) {
                    let ok = probe["httpGet"]["path"] == "/ready"
                        && matches!(probe_port, Some(Ok(port)) if on_port(probe, port));
                    if !ok {
                        v.push(format!(
                            "{id}: {name} must be an HTTP GET of the sidecar's /ready on its probe port (the app listens on loopback), is {probe}"
                        ));
                    }
                }
                continue;
            }
            let (what, port) = match c.binary() {
                Some("sidecar") => (
                    "probe port",
                    m.literal(c, "MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR)
                        .and_then(|a| socket_addr(&a)),
                ),
                Some("control-plane") => (
                    "admin port",
                    m.literal(c, "MESH_CP_ADMIN", DEFAULT_CP_ADMIN)
                        .and_then(|a| socket_addr(&a)),
                ),
                _ => continue,
            };
            for (name, probe) in probes.iter().filter(|(_, p)| !p.is_null()) {
                let ok = matches!(&port, Ok(addr) if !addr.ip().is_loopback() && on_port(probe, addr.port()));
                if !ok {
                    v.push(format!(
                        "{id}: {name} must be an HTTP GET on the {what} ({port:?}), is {probe}"
                    ));
                }
            }
        }
    }
    v
}

/// CPU in millicores or memory in bytes.
fn quantity(text: &str) -> Option<f64> {
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("n", 1e-9),
        ("u", 1e-6),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

fn resources_and_security(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for w in m.workloads() {
        let pod = w.pod;
        let pod_security = &pod["securityContext"];
        if pod["automountServiceAccountToken"] != false {
            v.push(format!(
                "{}: automountServiceAccountToken must be false (nothing here calls the Kubernetes API)",
                w.id()
            ));
        }
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod[host] == true {
                v.push(format!("{}: {host}", w.id()));
            }
        }
        if pod["enableServiceLinks"] != false {
            v.push(format!(
                "{}: enableServiceLinks must be false (Service variables would pollute MESH_*/ETCD_* settings)",
                w.id()
            ));
        }
        match pod["serviceAccountName"].as_str() {
            None | Some("") | Some("default") => {
                v.push(format!("{}: no ServiceAccount of its own", w.id()))
            }
            Some(name) => match m.find("ServiceAccount", name) {
                None => v.push(format!(
                    "{}: no ServiceAccount {name:?} in the manifests",
                    w.id()
                )),
                Some(sa) if sa["automountServiceAccountToken"] != false => v.push(format!(
                    "ServiceAccount {name}: automountServiceAccountToken must be false"
                )),
                Some(_) => {}
            },
        }
        for c in w.containers() {
            let id = format!("{} container {}", w.id(), c.name());
            let resources = &c.spec["resources"];
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if resources[kind][resource].is_null() {
                        v.push(format!("{id}: no resources.{kind}.{resource}"));
                    }
                }
            }
            for resource in ["cpu", "memory"] {
                let request = resources["requests"][resource].as_str().and_then(quantity);
                let limit = resources["limits"][resource].as_str().and_then(quantity);
                if let (Some(request), Some(limit)) = (request, limit) {
                    if request > limit {
                        v.push(format!("{id}: {resource} request is above its limit"));
                    }
                }
            }
            let security = &c.spec["securityContext"];
            // A container's setting wins over the pod's.
            let effective = |field: &str| -> Value {
                match &security[field] {
                    Value::Null => pod_security[field].clone(),
                    own => own.clone(),
                }
            };
            if effective("runAsNonRoot") != true {
                v.push(format!("{id}: runAsNonRoot is not true"));
            }
            if effective("runAsUser") == 0 {
                v.push(format!("{id}: runAsUser 0"));
            }
            if security["allowPrivilegeEscalation"] != false {
                v.push(format!("{id}: allowPrivilegeEscalation is not false"));
            }
            if security["privileged"] == true {
                v.push(format!("{id}: privileged"));
            }
            if security["readOnlyRootFilesystem"] != true {
                v.push(format!("{id}: readOnlyRootFilesystem is not true"));
            }
            let drops_all = security["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|c| c == "ALL"));
            if !drops_all || !security["capabilities"]["add"].is_null() {
                v.push(format!("{id}: capabilities must drop ALL and add none"));
            }
            if effective("seccompProfile")["type"] != "RuntimeDefault" {
                v.push(format!("{id}: seccompProfile is not RuntimeDefault"));
            }
        }
    }
    v
}

fn ports(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for (w, service) in m.shop_workloads() {
        let (Some(sidecar), Some(app)) = (w.running("sidecar"), w.running(service)) else {
            continue; // native_sidecars reports it
        };
        let id = w.id();
        let mut check = |result: Result<(), String>| {
            if let Err(e) = result {
                v.push(format!("{id}: {e}"));
            }
        };
        check(shop_pod_ports(m, &w, sidecar, app));
    }
    for w in m.workloads() {
        for c in w.running_containers() {
            let id = format!("{} container {}", w.id(), c.name());
            let mut listeners = Vec::new();
            match c.binary() {
                Some("sidecar")
                    if m.literal(c, "MESH_MODE", "sidecar").as_deref() == Ok("gateway") =>
                {
                    listeners.push(("MESH_INGRESS_ADDR", DEFAULT_INGRESS_ADDR));
                    listeners.push(("MESH_ADMIN_ADDR", DEFAULT_ADMIN_ADDR));
                    listeners.push(("MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR));
                }
                Some("sidecar") => {
                    listeners.push(("MESH_INBOUND_ADDR", DEFAULT_INBOUND_ADDR));
                    listeners.push(("MESH_ADMIN_ADDR", DEFAULT_ADMIN_ADDR));
                    listeners.push(("MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR));
                }
                Some("control-plane") => {
                    listeners.push(("MESH_CP_LISTEN", DEFAULT_CP_LISTEN));
                    listeners.push(("MESH_CP_ADMIN", DEFAULT_CP_ADMIN));
                }
                _ => {}
            }
            for (var, default) in listeners {
                match m.literal(c, var, default).and_then(|a| socket_addr(&a)) {
                    // Loopback: nothing outside the pod reaches it.
                    Ok(addr) if addr.ip().is_loopback() => {}
                    Ok(addr) if c.container_ports().contains(&addr.port()) => {}
                    Ok(addr) => v.push(format!(
                        "{id}: {var} listens on {}, which the container does not declare",
                        addr.port()
                    )),
                    Err(e) => v.push(format!("{id}: {var}: {e}")),
                }
            }
            if c.binary() == Some("sidecar") {
                match m.literal(c, "MESH_ADMIN_ADDR", DEFAULT_ADMIN_ADDR).and_then(|a| socket_addr(&a)) {
                    Ok(addr) if addr.ip().is_loopback() => {}
                    other => v.push(format!(
                        "{id}: MESH_ADMIN_ADDR is {other:?}: the admin port (/drain) must be loopback"
                    )),
                }
            }
            // Every URL a process is given reaches a pod that listens there.
            let env = m.env(c);
            let urls = |var: &str| match env.get(var) {
                Some(EnvValue::Literal(urls)) => urls.split(',').map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            for var in ["MESH_CONTROL_PLANE", "MESHCTL_CONTROL_PLANE"] {
                for url in urls(var) {
                    match m.reach(&url) {
                        Err(e) => v.push(format!("{id}: {var}: {e}")),
                        Ok(pods) => {
                            for (pod, port) in pods {
                                let listen = pod
                                    .running("control-plane")
                                    .map(|cp| m.literal(cp, "MESH_CP_LISTEN", DEFAULT_CP_LISTEN));
                                match listen.map(|l| l.and_then(|a| socket_addr(&a))) {
                                    Some(Ok(addr)) if addr.port() == port => {}
                                    other => v.push(format!(
                                        "{id}: {var} {url} reaches port {port} of {}, not a control plane's MESH_CP_LISTEN ({other:?})",
                                        pod.id()
                                    )),
                                }
                            }
                        }
                    }
                }
            }
            for url in urls("MESH_CP_ETCD") {
                match m.reach(&url) {
                    Err(e) => v.push(format!("{id}: MESH_CP_ETCD: {e}")),
                    Ok(pods) => {
                        for (pod, port) in pods {
                            let client = pod
                                .running("etcd")
                                .map(|etcd| m.literal(etcd, "ETCD_LISTEN_CLIENT_URLS", ""));
                            let listens = matches!(&client, Some(Ok(urls)) if urls
                                .split(',')
                                .any(|u| u.trim_end_matches('/').ends_with(&format!(":{port}"))));
                            if !listens {
                                v.push(format!(
                                    "{id}: MESH_CP_ETCD {url} reaches port {port} of {}, not an etcd client URL ({client:?})",
                                    pod.id()
                                ));
                            }
                        }
                    }
                }
            }
            for url in urls("OTEL_EXPORTER_OTLP_ENDPOINT") {
                match m.reach(&url) {
                    Ok(pods) if pods.iter().all(|(p, _)| p.app_name() == "jaeger") => {}
                    Ok(_) => v.push(format!(
                        "{id}: OTEL_EXPORTER_OTLP_ENDPOINT {url} is not Jaeger"
                    )),
                    Err(e) => v.push(format!("{id}: OTEL_EXPORTER_OTLP_ENDPOINT: {e}")),
                }
            }
        }
    }
    v
}

/// The ports of one shop pod: the app, its sidecar and their probes agree.
fn shop_pod_ports(
    m: &Manifests,
    w: &Workload<'_>,
    sidecar: Container<'_>,
    app: Container<'_>,
) -> Result<(), String> {
    let app_port: u16 = m
        .literal(app, "PORT", DEFAULT_APP_PORT)?
        .parse()
        .map_err(|e| format!("app PORT: {e}"))?;
    let app_host = m.literal(app, "LISTEN_HOST", DEFAULT_APP_LISTEN_HOST)?;
    let app_addr = socket_addr(&m.literal(sidecar, "MESH_APP_ADDR", DEFAULT_APP_ADDR)?)?;
    if app_addr.port() != app_port {
        return Err(format!(
            "sidecar MESH_APP_ADDR {app_addr} is not the app's PORT {app_port}"
        ));
    }
    if !app_addr.ip().is_loopback() {
        return Err(format!(
            "sidecar MESH_APP_ADDR {app_addr} is not loopback: the app is local"
        ));
    }
    if !app.container_ports().contains(&app_port) {
        return Err(format!(
            "the app container does not declare its PORT {app_port}"
        ));
    }
    // Only the local sidecar calls the app.
    let host: std::net::IpAddr = app_host
        .parse()
        .map_err(|e| format!("app LISTEN_HOST {app_host:?}: {e}"))?;
    if !host.is_loopback() {
        return Err(format!(
            "app LISTEN_HOST is {app_host}: the app must listen on loopback (only its sidecar calls it)"
        ));
    }
    // The app's way out is the sidecar's outbound listener, on loopback.
    let outbound =
        socket_addr(&m.literal(sidecar, "MESH_OUTBOUND_ADDR", DEFAULT_OUTBOUND_ADDR)?)?;
    if !outbound.ip().is_loopback() {
        return Err(format!(
            "sidecar MESH_OUTBOUND_ADDR {outbound} must be loopback: only the local app may call out through it"
        ));
    }
    let app_outbound = m.literal(app, "MESH_OUTBOUND", DEFAULT_APP_OUTBOUND)?;
    let uri: http::Uri = app_outbound
        .parse()
        .map_err(|e| format!("app MESH_OUTBOUND {app_outbound:?}: {e}"))?;
    let reaches = uri.port_u16() == Some(outbound.port())
        && uri
            .host()
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip == outbound.ip());
    if !reaches {
        return Err(format!(
            "app MESH_OUTBOUND {app_outbound} is not the sidecar's MESH_OUTBOUND_ADDR {outbound}"
        ));
    }
    // Every listener of the pod on its own port (they share the network).
    let inbound = socket_addr(&m.literal(sidecar, "MESH_INBOUND_ADDR", DEFAULT_INBOUND_ADDR)?)?;
    let admin = socket_addr(&m.literal(sidecar, "MESH_ADMIN_ADDR", DEFAULT_ADMIN_ADDR)?)?;
    let probe = socket_addr(&m.literal(sidecar, "MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR)?)?;
    let mut seen = BTreeMap::new();
    for (what, port) in [
        ("app PORT", app_port),
        ("MESH_OUTBOUND_ADDR", outbound.port()),
        ("MESH_INBOUND_ADDR", inbound.port()),
        ("MESH_ADMIN_ADDR", admin.port()),
        ("MESH_PROBE_ADDR", probe.port()),
    ] {
        if let Some(other) = seen.insert(port, what) {
            return Err(format!(
                "port {port} is used more than once: {other} and {what}"
            ));
        }
    }
    // The address it registers: the pod IP, through the downward API.
    let env = m.env(sidecar);
    if inbound.ip().is_unspecified()
        && !env.contains_key("MESH_ADVERTISE_ADDR")
        && env.get("POD_IP") != Some(&EnvValue::Field("status.podIP".into()))
    {
        return Err("sidecar has no POD_IP from status.podIP: it would register 127.0.0.1".into());
    }
    // The version label: one source, the pod's `version` label.
    let label = EnvValue::Field("metadata.labels['version']".into());
    if w.label("version").is_none() {
        return Err("pods have no `version` label (the routes' subsets)".into());
    }
    for (c, var) in [(sidecar, "MESH_VERSION_LABEL"), (app, "VERSION_LABEL")] {
        if m.env(c).get(var) != Some(&label) {
            return Err(format!(
                "{} {var} must come from metadata.labels['version'] (downward API)",
                c.name()
            ));
        }
    }
    Ok(())
}

fn selectors(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for service in m.objects_of("Service") {
        let name = service["metadata"]["name"].as_str().unwrap_or("?");
        let pods = m.selected(&service["spec"]["selector"]);
        if pods.is_empty() {
            v.push(format!("Service {name} selects no pod"));
        }
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let target = match &port["targetPort"] {
                Value::Null => port["port"].clone(),
                other => other.clone(),
            };
            for pod in &pods {
                if pod.port_number(&target).is_none() {
                    v.push(format!(
                        "Service {name}: targetPort {target} is not a container port of {}",
                        pod.id()
                    ));
                }
            }
        }
    }
    for pdb in m.objects_of("PodDisruptionBudget") {
        let name = pdb["metadata"]["name"].as_str().unwrap_or("?");
        if m.selected(&pdb["spec"]["selector"]).is_empty() {
            v.push(format!("PodDisruptionBudget {name} selects no pod"));
        }
    }
    let workloads = m.workloads();
    for w in &workloads {
        let Some(selector) = w.selector else { continue };
        if w.kind == "Job" {
            continue; // generated by the API server
        }
        if !selects(selector, w.labels) {
            v.push(format!(
                "{}: its selector does not select its own pods",
                w.id()
            ));
        }
        for other in &workloads {
            if other.id() != w.id() && other.long_running() && selects(selector, other.labels) {
                v.push(format!(
                    "{}: its selector also selects the pods of {}",
                    w.id(),
                    other.id()
                ));
            }
        }
    }
    v
}

fn grace_periods(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let seconds = |r: Result<String, String>| -> Result<u64, String> {
        r?.parse::<u64>().map_err(|e| e.to_string())
    };
    for w in m.workloads().into_iter().filter(|w| w.long_running()) {
        let grace = w.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        let Some(proxy) = w.running("sidecar") else {
            continue;
        };
        let drain = seconds(m.literal(
            proxy,
            "MESH_DRAIN_SECONDS",
            &DEFAULT_DRAIN_SECONDS.to_string(),
        ));
        let delay_ms = seconds(m.literal(
            proxy,
            "MESH_DEREGISTER_DELAY_MS",
            &DEFAULT_DEREGISTER_DELAY_MS.to_string(),
        ));
        let (Ok(drain), Ok(delay_ms)) = (drain, delay_ms) else {
            v.push(format!("{}: unreadable drain settings", w.id()));
            continue;
        };
        // The proxy: deregistered but serving, then draining; its admin
        // port drains for one more second.
        let mut needed = delay_ms.div_ceil(1000) + drain + 1;
        // The app stops before a native sidecar gets SIGTERM: its grace for
        // calls in flight, and as much again (orders waits for its sagas
        // after the server stops).
        if let Some(app) = w
            .running_containers()
            .into_iter()
            .find(|c| c.role == Role::Main && c.binary() != Some("sidecar"))
        {
            let app_grace = seconds(m.literal(
                app,
                "SHUTDOWN_GRACE_SECONDS",
                &DEFAULT_APP_GRACE_SECONDS.to_string(),
            ));
            match app_grace {
                Ok(g) => needed += 2 * g,
                Err(e) => v.push(format!("{}: SHUTDOWN_GRACE_SECONDS: {e}", w.id())),
            }
            // Kubernetes stops the app before its native sidecar: the app's
            // preStop hook must make the sidecar leave the mesh first.
            let admin_port = m
                .literal(proxy, "MESH_ADMIN_ADDR", DEFAULT_ADMIN_ADDR)
                .ok()
                .and_then(|a| socket_addr(&a).ok())
                .map(|a| a.port());
            if let Err(e) = drain_hook(&app.spec["lifecycle"]["preStop"], admin_port) {
                v.push(format!("{}: {e}", w.id()));
            }
        }
        if grace < needed {
            v.push(format!(
                "{}: terminationGracePeriodSeconds {grace} < {needed} s the shutdown may take",
                w.id()
            ));
        }
    }
    v
}

/// The app's preStop hook must POST /drain to the sidecar's loopback admin
/// port: an exec hook (an httpGet hook is a GET, to the pod IP).
fn drain_hook(hook: &Value, admin_port: Option<u16>) -> Result<(), String> {
    let port_text = admin_port.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let missing = || {
        format!(
            "the app has no preStop hook that sends POST /drain to the sidecar's admin port 127.0.0.1:{port_text}, is {hook}"
        )
    };
    let command: Vec<&str> = hook["exec"]["command"]
        .as_array()
        .ok_or_else(missing)?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let script = command.join(" ");
    let port = admin_port.ok_or_else(missing)?;
    if script.contains("POST /drain") && script.contains(&format!("/dev/tcp/127.0.0.1/{port}")) {
        Ok(())
    } else {
        Err(missing())
    }
}

/// The volume a file is read from: the container's mount whose path holds
/// `file`, the pod's volume of that name, and the file's key in it.
fn mounted_file<'a>(w: &Workload<'a>, c: Container<'a>, file: &str) -> Option<(&'a Value, String)> {
    let mount = c.spec["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["subPath"].is_null())
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|dir| file.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
        })?;
    let dir = mount["mountPath"].as_str()?.trim_end_matches('/');
    let key = file[dir.len() + 1..].to_owned();
    let volume = w.pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])?;
    Some((volume, key))
}

/// Does `volume` hold `key` of the ConfigMap or Secret named `name`?
fn volume_holds(volume: &Value, source: &str, name: &str, key: &str) -> bool {
    let (name_field, spec) = match source {
        "configMap" => ("name", &volume["configMap"]),
        _ => ("secretName", &volume["secret"]),
    };
    if spec[name_field] != name {
        return false;
    }
    match spec["items"].as_array() {
        None => true,
        Some(items) => items.iter().any(|i| i["path"] == key),
    }
}

/// Checks that `var` of `c` names `key` of ConfigMap/Secret `name`; the
/// volume on success.
fn reads_from<'a>(
    m: &Manifests,
    w: &Workload<'a>,
    c: Container<'a>,
    var: &str,
    (source, name, key): (&str, &str, &str),
) -> Result<&'a Value, String> {
    let kind = if source == "configMap" {
        "ConfigMap"
    } else {
        "Secret"
    };
    let file = m.literal(c, var, "")?;
    if file.is_empty() {
        return Err(format!(
            "{var} is not set: it must name {key} of {kind} {name}"
        ));
    }
    match mounted_file(w, c, &file) {
        Some((volume, k)) if k == key && volume_holds(volume, source, name, key) => Ok(volume),
        other => Err(format!(
            "{var} {file} is not {key} of {kind} {name} (mounted: {other:?})"
        )),
    }
}

fn identity(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for w in m.workloads() {
        // The proxy identity of the pod, if it runs one: a sidecar's
        // service, or the gateway's name.
        let proxy = w.running("sidecar");
        let proxy_name = proxy.map(|p| {
            let gateway = m.literal(p, "MESH_MODE", "sidecar").as_deref() == Ok("gateway");
            let default = if gateway { "gateway" } else { "" };
            m.literal(p, "MESH_SERVICE", default).unwrap_or_default()
        });
        for c in w.containers() {
            let id = format!("{} container {}", w.id(), c.name());
            // Nothing insecure, by flag or environment.
            let words: Vec<&str> = ["command", "args"]
                .iter()
                .flat_map(|k| c.spec[*k].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .flat_map(str::split_whitespace)
                .collect();
            for (i, word) in words.iter().enumerate() {
                if *word == "--insecure" || word.starts_with("--insecure=") {
                    v.push(format!("{id}: runs with --insecure"));
                }
                if *word == "--mtls=off" || (*word == "--mtls" && words.get(i + 1) == Some(&"off"))
                {
                    v.push(format!("{id}: runs with --mtls off"));
                }
            }
            let env = m.env(c);
            if env.get("MESH_MTLS") == Some(&EnvValue::Literal("off".into())) {
                v.push(format!("{id}: runs with --mtls off (MESH_MTLS)"));
            }
            for var in ["MESH_CP_INSECURE", "MESHCTL_INSECURE"] {
                if let Some(EnvValue::Literal(value)) = env.get(var) {
                    if !value.is_empty() && value != "false" {
                        v.push(format!("{id}: runs with --insecure ({var}={value})"));
                    }
                }
            }
            // Only a pod's proxy reads its join token.
            let token_volumes: Vec<&str> = w.pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|vol| {
                    vol["secret"]["secretName"]
                        .as_str()
                        .is_some_and(|s| s.ends_with("-join-token"))
                })
                .filter_map(|vol| vol["name"].as_str())
                .collect();
            let mounts_token = c.spec["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|mnt| {
                    mnt["name"]
                        .as_str()
                        .is_some_and(|n| token_volumes.contains(&n))
                });
            if mounts_token && c.binary() != Some("sidecar") {
                v.push(format!(
                    "{id}: mounts a join-token Secret: only the proxy may"
                ));
            }
            match c.binary() {
                Some("sidecar") => {
                    let name = proxy_name.clone().unwrap_or_default();
                    let token = format!("{name}-join-token");
                    if let Err(e) = reads_from(
                        m,
                        &w,
                        c,
                        "MESH_TRUST_BUNDLE",
                        ("configMap", "mesh-trust-bundle", "bundle.crt"),
                    ) {
                        v.push(format!("{id}: {e}"));
                    }
                    match reads_from(m, &w, c, "MESH_IDENTITY_TOKEN_FILE", ("secret", &token, "token")) {
                        Err(e) => v.push(format!("{id}: {e}")),
                        // The Secret may be made after the pod: the sidecar
                        // reads the file again until it appears.
                        Ok(volume) if volume["secret"]["optional"] != true => v.push(format!(
                            "{id}: the {token} volume must be optional: true (the pod may start before the Secret)"
                        )),
                        Ok(_) => {}
                    }
                }
                Some("control-plane") => {
                    for (var, key) in [
                        ("MESH_CP_ISSUER_CERT", "issuer.crt"),
                        ("MESH_CP_ISSUER_KEY", "issuer.key"),
                    ] {
                        if let Err(e) = reads_from(m, &w, c, var, ("secret", "mesh-issuer", key)) {
                            v.push(format!("{id}: {e}"));
                        }
                    }
                    if let Err(e) = reads_from(
                        m,
                        &w,
                        c,
                        "MESH_TRUST_BUNDLE",
                        ("configMap", "mesh-trust-bundle", "bundle.crt"),
                    ) {
                        v.push(format!("{id}: {e}"));
                    }
                }
                _ => {}
            }
        }
        // Secrets: a pod mounts its own proxy's token only; the issuer is
        // the control plane's alone.
        for vol in w.pod["volumes"].as_array().into_iter().flatten() {
            let Some(secret) = vol["secret"]["secretName"].as_str() else {
                continue;
            };
            if let Some(owner) = secret.strip_suffix("-join-token") {
                if proxy_name.as_deref() != Some(owner) {
                    v.push(format!(
                        "{}: mounts {secret}, the join token of {owner}, but its proxy is {proxy_name:?}",
                        w.id()
                    ));
                }
            }
            if secret == "mesh-issuer" && w.running("control-plane").is_none() {
                v.push(format!(
                    "{}: mounts mesh-issuer, the control plane's CA key",
                    w.id()
                ));
            }
        }
    }
    v
}

/// The number of a NetworkPolicy port (a number, or a name the pod declares).
fn policy_port(w: &Workload<'_>, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(_) => w.port_number(port),
        _ => None,
    }
}

/// The ingress rules of every NetworkPolicy that selects `w`'s pods;
/// `None` if none does (everything may reach them).
fn ingress_rules<'a>(m: &'a Manifests, w: &Workload<'_>) -> Option<Vec<&'a Value>> {
    let policies: Vec<&Value> = m
        .objects_of("NetworkPolicy")
        .filter(|p| {
            let types = &p["spec"]["policyTypes"];
            let ingress = types.is_null()
                || types
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == "Ingress"));
            ingress && selects(&p["spec"]["podSelector"], w.labels)
        })
        .collect();
    if policies.is_empty() {
        return None;
    }
    Some(
        policies
            .iter()
            .flat_map(|p| p["spec"]["ingress"].as_array().into_iter().flatten())
            .collect(),
    )
}

/// Does `rule` let anything reach `port`?
fn rule_allows(w: &Workload<'_>, rule: &Value, port: u16) -> bool {
    match rule["ports"].as_array() {
        None => true,
        Some(ports) if ports.is_empty() => true,
        Some(ports) => ports
            .iter()
            .any(|p| policy_port(w, &p["port"]) == Some(port)),
    }
}

/// Every peer of `rule` is a pod selector of this namespace that selects
/// only pods for which `allowed` holds.
fn peers_only(
    m: &Manifests,
    rule: &Value,
    allowed: impl Fn(&Workload<'_>) -> bool,
) -> Result<(), String> {
    let peers = rule["from"]
        .as_array()
        .filter(|f| !f.is_empty())
        .ok_or("from anywhere")?;
    for peer in peers {
        if !peer["namespaceSelector"].is_null() || !peer["ipBlock"].is_null() {
            return Err(format!("from {peer} (other namespaces or addresses)"));
        }
        let selected = m.selected(&peer["podSelector"]);
        if selected.is_empty() {
            return Err(format!("from {peer} (every pod, or none of the mesh's)"));
        }
        if let Some(other) = selected.iter().find(|w| !allowed(w)) {
            return Err(format!("from {peer}, which selects {}", other.id()));
        }
    }
    Ok(())
}

/// etcd serves its clients over TLS and lets in only certificates the
/// mesh's anchors sign; the control plane dials `https://` with its own.
fn etcd_tls(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let all_https =
        |urls: &str| !urls.is_empty() && urls.split(',').all(|u| u.trim().starts_with("https://"));
    for w in m.workloads() {
        if let Some(etcd) = w.running("etcd") {
            let id = format!("{} container {}", w.id(), etcd.name());
            match m.literal(etcd, "ETCD_CLIENT_CERT_AUTH", "false").as_deref() {
                Ok("true") => {}
                other => v.push(format!(
                    "{id}: ETCD_CLIENT_CERT_AUTH is {other:?}: without --client-cert-auth anyone who reaches etcd reads and writes the mesh's state"
                )),
            }
            for var in ["ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS"] {
                match m.literal(etcd, var, "") {
                    Ok(urls) if all_https(&urls) => {}
                    other => v.push(format!(
                        "{id}: {var} must be https:// URLs only, is {other:?}"
                    )),
                }
            }
            for (var, key) in [
                ("ETCD_TRUSTED_CA_FILE", "ca.crt"),
                ("ETCD_CERT_FILE", "server.crt"),
                ("ETCD_KEY_FILE", "server.key"),
            ] {
                if let Err(e) = reads_from(m, &w, etcd, var, ("secret", "etcd-tls", key)) {
                    v.push(format!("{id}: {e}"));
                }
            }
        }
        if let Some(cp) = w.running("control-plane") {
            let id = format!("{} container {}", w.id(), cp.name());
            let store = m.literal(cp, "MESH_CP_STORE", "etcd").unwrap_or_default();
            if store == "etcd" {
                match m.literal(cp, "MESH_CP_ETCD", "") {
                    Ok(urls) if all_https(&urls) => {}
                    other => v.push(format!(
                        "{id}: MESH_CP_ETCD must be https:// URLs only, is {other:?}"
                    )),
                }
                for (var, key) in [
                    ("MESH_CP_ETCD_CA", "ca.crt"),
                    ("MESH_CP_ETCD_CERT", "client.crt"),
                    ("MESH_CP_ETCD_KEY", "client.key"),
                ] {
                    if let Err(e) = reads_from(m, &w, cp, var, ("secret", "etcd-client-tls", key)) {
                        v.push(format!("{id}: {e}"));
                    }
                }
            }
        }
        // etcd's keys belong to etcd, its client key to the control plane.
        for vol in w.pod["volumes"].as_array().into_iter().flatten() {
            let owner = match vol["secret"]["secretName"].as_str() {
                Some("etcd-tls") => "etcd",
                Some("etcd-client-tls") => "control-plane",
                _ => continue,
            };
            if w.running(owner).is_none() {
                v.push(format!(
                    "{}: mounts Secret {}, which only {owner} may",
                    w.id(),
                    vol["secret"]["secretName"]
                ));
            }
        }
    }
    v
}

fn network_policies(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    for w in m.workloads().into_iter().filter(|w| w.long_running()) {
        let id = w.id();
        if let Some(etcd) = w.running("etcd") {
            let client_port = m
                .literal(etcd, "ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379")
                .ok()
                .and_then(|urls| {
                    urls.split(',')
                        .next()
                        .and_then(|u| u.parse::<http::Uri>().ok())
                })
                .and_then(|u| u.port_u16())
                .unwrap_or(2379);
            let Some(rules) = ingress_rules(m, &w) else {
                v.push(format!(
                    "{id}: no NetworkPolicy selects its pods: anyone reaches etcd"
                ));
                continue;
            };
            let allowing: Vec<_> = rules
                .iter()
                .filter(|r| rule_allows(&w, r, client_port))
                .collect();
            if allowing.is_empty() {
                v.push(format!("{id}: no NetworkPolicy rule lets the control plane reach etcd's client port {client_port}"));
            }
            for rule in allowing {
                if let Err(e) = peers_only(m, rule, |p| p.running("control-plane").is_some()) {
                    v.push(format!("{id}: etcd's client port {client_port} is open to more than the control plane: {e}"));
                }
            }
        }
    }
    for (w, _) in m
        .shop_workloads()
        .into_iter()
        .filter(|(w, _)| w.long_running())
    {
        let id = w.id();
        let Some(sidecar) = w.running("sidecar") else {
            continue;
        };
        let port = |var, default| {
            m.literal(sidecar, var, default)
                .and_then(|a| socket_addr(&a))
                .map(|a| a.port())
                .ok()
        };
        let (Some(inbound), Some(probe)) = (
            port("MESH_INBOUND_ADDR", DEFAULT_INBOUND_ADDR),
            port("MESH_PROBE_ADDR", DEFAULT_PROBE_ADDR),
        ) else {
            continue; // ports reports it
        };
        let Some(rules) = ingress_rules(m, &w) else {
            v.push(format!(
                "{id}: no NetworkPolicy selects its pods: anyone reaches every port"
            ));
            continue;
        };
        let to_inbound: Vec<_> = rules
            .iter()
            .filter(|r| rule_allows(&w, r, inbound))
            .collect();
        if to_inbound.is_empty() {
            v.push(format!(
                "{id}: no NetworkPolicy rule lets the proxies reach the inbound port {inbound}"
            ));
        }
        for rule in to_inbound {
            // The users pods serve the token keys to the control plane too.
            let jwks_source = w.id() == "Deployment users";
            let allowed = |p: &Workload<'_>| {
                p.running("sidecar").is_some()
                    || (jwks_source && p.id() == "Deployment control-plane")
            };
            if let Err(e) = peers_only(m, rule, allowed) {
                v.push(format!(
                    "{id}: the inbound port {inbound} is open to more than the mesh's proxies: {e}"
                ));
            }
        }
        if !rules.iter().any(|r| rule_allows(&w, r, probe)) {
            v.push(format!("{id}: no NetworkPolicy rule lets the kubelet and Prometheus reach the probe port {probe}"));
        }
        for rule in &rules {
            match rule["ports"].as_array().filter(|p| !p.is_empty()) {
                None => v.push(format!(
                    "{id}: a NetworkPolicy rule opens every port: {rule}"
                )),
                Some(ports) => {
                    for p in ports {
                        let number = policy_port(&w, &p["port"]);
                        if number != Some(inbound) && number != Some(probe) {
                            v.push(format!(
                                "{id}: a NetworkPolicy exposes port {} (only the inbound {inbound} and probe {probe} ports may be reached)",
                                p["port"]
                            ));
                        }
                    }
                }
            }
        }
    }
    v
}

/// The routes in the mesh-routes ConfigMap, by key.
fn routes_of(m: &Manifests) -> Result<BTreeMap<String, Route>, Vec<String>> {
    documents_of(m).map(|(routes, _)| routes)
}

/// The mesh-routes ConfigMap's documents: its routes (one per key) by key,
/// and the keys of its security documents (request authentications and
/// authorization policies, several per key), each checked as its kind.
/// Routes by key, and the keys of security documents.
type Documents = (BTreeMap<String, Route>, BTreeSet<String>);

fn documents_of(m: &Manifests) -> Result<Documents, Vec<String>> {
    let Some(config) = m.config_map("mesh-routes") else {
        return Err(vec!["no mesh-routes ConfigMap".into()]);
    };
    let mut routes = BTreeMap::new();
    let mut security = BTreeSet::new();
    let mut errors = Vec::new();
    for (key, text) in config["data"].as_object().into_iter().flatten() {
        let text = text.as_str().unwrap_or("");
        let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(text)
            .filter_map(|d| serde_yaml_ng::Value::deserialize(d).ok())
            .filter_map(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
            .collect();
        if kinds.iter().any(|k| k != "Route") {
            for document in serde_yaml_ng::Deserializer::from_str(text) {
                let value = serde_yaml_ng::Value::deserialize(document);
                let checked = value.map_err(|e| e.to_string()).and_then(|value| {
                    match value.get("kind").and_then(|k| k.as_str()) {
                        Some("AuthorizationPolicy") => {
                            serde_yaml_ng::from_value::<mesh::model::AuthorizationPolicy>(value)
                                .map_err(|e| e.to_string())
                                .and_then(|p| p.validate().map_err(|e| e.to_string()))
                        }
                        Some("RequestAuthentication") => {
                            serde_yaml_ng::from_value::<mesh::model::RequestAuthentication>(value)
                                .map_err(|e| e.to_string())
                                .and_then(|a| a.validate().map_err(|e| e.to_string()))
                        }
                        other => Err(format!("kind {other:?} does not belong here")),
                    }
                });
                if let Err(e) = checked {
                    errors.push(format!("{key} is not valid: {e}"));
                }
            }
            security.insert(key.clone());
            continue;
        }
        match serde_yaml_ng::from_str::<Route>(text) {
            Err(e) => errors.push(format!("route {key} is not valid: {e}")),
            Ok(route) => match route.validate() {
                Err(e) => errors.push(format!("route {key} is not valid: {e}")),
                Ok(()) => {
                    routes.insert(key.clone(), route);
                }
            },
        }
    }
    if errors.is_empty() {
        Ok((routes, security))
    } else {
        Err(errors)
    }
}

fn routes(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let (routes, security) = match documents_of(m) {
        Ok(documents) => documents,
        Err(errors) => return errors,
    };
    if security.is_empty() {
        v.push("the mesh-routes ConfigMap holds no security documents".into());
    }
    let keys: BTreeSet<&String> = routes.keys().chain(&security).collect();
    // The Job applies every key of the ConfigMap, from where it is mounted.
    match m.workload("Job", "mesh-routes") {
        None => v.push("no mesh-routes Job".into()),
        Some(job) => match job.running("meshctl") {
            None => v.push("mesh-routes Job: no meshctl container".into()),
            Some(meshctl) => {
                let config_name = m
                    .config_map("mesh-routes")
                    .and_then(|c| c["metadata"]["name"].as_str())
                    .unwrap_or("");
                let volume = job.pod["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|vol| vol["configMap"]["name"] == config_name);
                let mount = volume.and_then(|vol| {
                    meshctl.spec["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|mnt| mnt["name"] == vol["name"])
                        .and_then(|mnt| mnt["mountPath"].as_str())
                });
                let args: Vec<&str> = meshctl.spec["command"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(meshctl.spec["args"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                let files: BTreeSet<&str> = args
                    .windows(2)
                    .filter(|w| w[0] == "-f" || w[0] == "--filename")
                    .map(|w| w[1])
                    .collect();
                match mount {
                    None => v.push(
                        "mesh-routes Job: the routes ConfigMap is not mounted in meshctl".into(),
                    ),
                    Some(dir) => {
                        for key in &keys {
                            let path = format!("{}/{key}", dir.trim_end_matches('/'));
                            if !files.contains(path.as_str()) {
                                v.push(format!("mesh-routes Job does not apply {path}"));
                            }
                        }
                        for file in &files {
                            let key = file.rsplit('/').next().unwrap_or("").to_owned();
                            if !keys.contains(&key) {
                                v.push(format!(
                                    "mesh-routes Job applies {file}, which is not in the ConfigMap"
                                ));
                            }
                        }
                    }
                }
                if !matches!(args.get(1), Some(&"apply")) {
                    v.push(format!("mesh-routes Job runs {args:?}, not meshctl apply"));
                }
            }
        },
    }
    // Every shop service is routed to itself; every route goes to pods that
    // exist, in subsets that exist.
    let shop = m.shop_workloads();
    for (service, grpc) in SHOP_SERVICES {
        let routed = routes
            .values()
            .any(|r| r.spec.matches.service == grpc && r.spec.destination == service);
        if !routed {
            v.push(format!("no route sends {grpc} to {service}"));
        }
    }
    for (key, route) in &routes {
        let spec = &route.spec;
        let pods: Vec<_> = shop
            .iter()
            .filter(|(w, _)| w.long_running())
            .filter(|(w, _)| {
                w.running("sidecar").is_some_and(|s| {
                    m.literal(s, "MESH_SERVICE", "").as_deref() == Ok(spec.destination.as_str())
                })
            })
            .collect();
        if pods.is_empty() {
            v.push(format!(
                "route {key}: destination {:?} is no sidecar's MESH_SERVICE",
                spec.destination
            ));
            continue;
        }
        let subsets = spec
            .split
            .iter()
            .chain(spec.rules.iter().flat_map(|r| r.split.iter()));
        for subset in subsets {
            if !pods
                .iter()
                .any(|(w, _)| w.label("version") == Some(subset.subset.as_str()))
            {
                v.push(format!(
                    "route {key}: subset {} of {} is no pod's `version` label",
                    subset.subset, spec.destination
                ));
            }
        }
    }
    v
}

fn image_and_telemetry(m: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let workloads = m.workloads();
    let mut images = BTreeSet::new();
    for w in &workloads {
        for c in w.containers() {
            if c.binary().is_some_and(|b| MESH_BINARIES.contains(&b)) {
                images.insert(c.spec["image"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    if images.len() != 1 {
        v.push(format!("the mesh's binaries must share one image (set once, kustomize images:), found {images:?}"));
    }
    for image in &images {
        let tagged = image.contains('@')
            || image
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'));
        if !tagged || !image.contains('/') {
            v.push(format!(
                "mesh image {image:?} is not a registry reference with a tag (kustomize images: not applied?)"
            ));
        }
    }
    for w in &workloads {
        for c in w.containers() {
            if !images.contains(c.spec["image"].as_str().unwrap_or("")) {
                continue;
            }
            let id = format!("{} container {}", w.id(), c.name());
            let env = m.env(c);
            for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"] {
                match env.get(var) {
                    Some(EnvValue::Literal(value)) if !value.is_empty() => {}
                    other => v.push(format!("{id}: {var} is {other:?}")),
                }
            }
        }
    }
    v
}

/// What the canary overlay adds to the base, and nothing else.
fn canary_differences(base: &Manifests, canary: &Manifests) -> Vec<String> {
    let mut v = Vec::new();
    let (Some(v1), Some(v2)) = (
        canary.workload("Deployment", "payments"),
        canary.workload("Deployment", "payments-v2"),
    ) else {
        return vec!["the canary has no Deployment payments-v2 beside payments".into()];
    };
    if v1.label("version") != Some("v1") || v2.label("version") != Some("v2") {
        v.push(format!(
            "payments pods must be version v1, payments-v2 pods version v2: {:?}, {:?}",
            v1.label("version"),
            v2.label("version")
        ));
    }
    // The same pods but for the version label.
    let normalize = |w: &Workload<'_>| {
        let mut labels = w.labels.clone();
        if let Some(labels) = labels.as_object_mut() {
            labels.remove("version");
        }
        (labels, w.pod.clone())
    };
    if normalize(&v1) != normalize(&v2) {
        v.push(
            "payments-v2's pod template differs from payments' (beyond the version label)".into(),
        );
    }
    // The base's payments pods are the canary's v1.
    if base
        .workload("Deployment", "payments")
        .map(|w| (w.labels.clone(), w.pod.clone()))
        != Some((v1.labels.clone(), v1.pod.clone()))
    {
        v.push("the canary changes the payments (v1) pods".into());
    }
    match routes_of(canary) {
        Err(errors) => v.extend(errors),
        Ok(routes) => {
            let payments = routes.values().find(|r| r.spec.destination == "payments");
            let share = payments.map(|r| {
                let total: u32 = r.spec.split.iter().map(|s| s.weight).sum();
                let to_v2: u32 = r
                    .spec
                    .split
                    .iter()
                    .filter(|s| s.subset == "v2")
                    .map(|s| s.weight)
                    .sum();
                (to_v2, total)
            });
            match share {
                Some((to_v2, total)) if total > 0 && to_v2 * 10 == total => {}
                other => v.push(format!(
                    "the payments route must send v2 10 % of the calls: {other:?}"
                )),
            }
        }
    }
    // The routes Job applies the split only once v2 has registered.
    let waits = canary.workload("Job", "mesh-routes").is_some_and(|job| {
        job.containers().iter().any(|c| {
            c.role == Role::Init
                && c.spec["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a.as_str().is_some_and(|s| s.contains("version: v2")))
        })
    });
    if !waits {
        v.push(
            "the routes Job must wait for a registered v2 endpoint before applying the split"
                .into(),
        );
    }
    v
}

// ---------------------------------------------------------------------------
// Breaking things (for a_broken_manifest_is_caught).

fn find_mut<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| is(o, kind, name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_spec<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    &mut find_mut(objects, kind, name)["spec"]["template"]["spec"]
}

fn container<'a>(
    objects: &'a mut [Value],
    kind: &str,
    name: &str,
    container: &str,
) -> &'a mut Value {
    let pod = pod_spec(objects, kind, name);
    let in_init = pod["initContainers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == container));
    let list = if in_init {
        "initContainers"
    } else {
        "containers"
    };
    pod[list]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == container))
        .unwrap_or_else(|| panic!("no container {container} in {kind} {name}"))
}

fn config_map<'a>(objects: &'a mut [Value], name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{name}-")))
        })
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))
}

fn set_env(container: &mut Value, name: &str, value: &str) {
    let env = container["env"].as_array_mut().expect("an env list");
    env.retain(|e| e["name"] != name);
    env.push(json!({ "name": name, "value": value }));
}

/// Is `object` the `kind` named `name`?
fn is(object: &Value, kind: &str, name: &str) -> bool {
    object["kind"] == kind && object["metadata"]["name"] == name
}

fn remove(value: &mut Value, key: &str) {
    value.as_object_mut().expect("an object").remove(key);
}

fn remove_env(container: &mut Value, name: &str) {
    let env = container["env"].as_array_mut().expect("an env list");
    env.retain(|e| e["name"] != name);
}

/// Replaces `from` by `to` in the route stored under `key`.
fn edit_route(objects: &mut [Value], key: &str, from: &str, to: &str) {
    let routes = config_map(objects, "mesh-routes");
    let text = routes["data"][key].as_str().expect("a route").to_owned();
    assert!(text.contains(from), "{key} has no {from:?}");
    routes["data"][key] = json!(text.replace(from, to));
}
