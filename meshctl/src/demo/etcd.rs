//! The etcd of a plan: one member on loopback, with or without TLS.

use std::net::SocketAddr;
use std::path::Path;

use super::{EtcdTlsFiles, ProcessSpec, Role};

/// A single-member etcd on loopback with its own data directory: what
/// `meshctl up` and the tests run. Ready when `/health` answers 200.
pub fn etcd_process(
    name: &str,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: &Path,
) -> ProcessSpec {
    ProcessSpec {
        name: name.to_owned(),
        program: "etcd".into(),
        args: vec![
            "--name".into(),
            name.to_owned(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://{client}"),
            "--advertise-client-urls".into(),
            format!("http://{client}"),
            "--listen-peer-urls".into(),
            format!("http://{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://{peer}"),
            "--initial-cluster".into(),
            format!("{name}=http://{peer}"),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ],
        env: Vec::new(),
        role: Role::Etcd,
        service: "etcd".into(),
        admin: Some(client),
        ready_path: "/health",
        serving: client,
        outbound: None,
    }
}

/// Where a secure plan keeps etcd's TLS files.
pub(super) fn etcd_tls_files(identity_dir: &Path) -> EtcdTlsFiles {
    EtcdTlsFiles {
        dir: identity_dir.join("etcd"),
    }
}

/// [`etcd_process`] with TLS and client-certificate auth on its client
/// URL: only a client whose certificate chains to `tls.ca()` gets in (the
/// control plane's; `meshctl identity issue-etcd` makes both). `/health`
/// moves to a plaintext metrics listener on loopback, where readiness is
/// polled (the client port would want a certificate). The peer URL stays
/// plaintext: a single member on loopback has no peer to talk to.
pub fn etcd_tls_process(
    name: &str,
    client: SocketAddr,
    peer: SocketAddr,
    metrics: SocketAddr,
    data_dir: &Path,
    tls: &EtcdTlsFiles,
) -> ProcessSpec {
    let mut spec = etcd_process(name, client, peer, data_dir);
    let https = format!("https://{client}");
    for (i, arg) in spec.args.clone().iter().enumerate() {
        if arg == "--listen-client-urls" || arg == "--advertise-client-urls" {
            spec.args[i + 1] = https.clone();
        }
    }
    spec.args.extend([
        "--client-cert-auth".into(),
        "--trusted-ca-file".into(),
        tls.ca().display().to_string(),
        "--cert-file".into(),
        tls.server_cert().display().to_string(),
        "--key-file".into(),
        tls.server_key().display().to_string(),
        "--listen-metrics-urls".into(),
        format!("http://{metrics}"),
    ]);
    spec.admin = Some(metrics);
    spec
}
