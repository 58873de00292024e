//! `meshctl status`: the control plane replicas, the sidecars connected to
//! them, and whether each sidecar runs the latest table it was pushed.

use anyhow::Context;
use mesh::proto::mesh::v1::{ConnectedSidecar, Replica, StatusRequest, StatusResponse};
use serde::Serialize;

use super::output::{self, print, OutputFormat, Table};
use super::{ControlPlaneArgs, GrpcError};

/// Options of `meshctl status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs `meshctl status`.
pub async fn run(control_plane: &ControlPlaneArgs, args: StatusArgs) -> anyhow::Result<()> {
    let mut client = control_plane.connect().await?;
    let mut status = client
        .status(StatusRequest {})
        .await
        .map_err(GrpcError)
        .context("cannot get the status")?
        .into_inner();
    status.replicas.sort_by(|a, b| a.id.cmp(&b.id));
    status
        .sidecars
        .sort_by_key(|s| (s.gateway, s.service.clone(), s.instance.clone()));
    print(&render(&status, args.output)?)
}

/// The status in the chosen format.
pub fn render(status: &StatusResponse, format: OutputFormat) -> anyhow::Result<String> {
    match format {
        OutputFormat::Table => Ok(tables(status)),
        OutputFormat::Yaml => output::yaml_stream(&[StatusDocument::from(status)]),
        OutputFormat::Json => output::json(&StatusDocument::from(status)),
    }
}

/// Where a sidecar stands with the tables pushed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// It acked the last version pushed.
    Synced,
    /// It has not answered the last push yet (or never acked one): it
    /// still routes with an older table.
    Behind,
    /// It refused the last push: it keeps its older table until fixed.
    Nacked,
}

impl SyncState {
    /// The state of one sidecar.
    pub fn of(sidecar: &ConnectedSidecar) -> Self {
        if !sidecar.nack_reason.is_empty() {
            Self::Nacked
        } else if sidecar.acked_version < sidecar.pushed_version {
            Self::Behind
        } else {
            Self::Synced
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Behind => "BEHIND",
            Self::Nacked => "NACKED",
        }
    }
}

/// `service/instance`, or `gateway/instance` for a gateway (it has no
/// mesh service).
fn sidecar_name(sidecar: &ConnectedSidecar) -> String {
    if sidecar.gateway && sidecar.service.is_empty() {
        format!("gateway/{}", sidecar.instance)
    } else if sidecar.gateway {
        format!("{}/{} (gateway)", sidecar.service, sidecar.instance)
    } else {
        format!("{}/{}", sidecar.service, sidecar.instance)
    }
}

/// Two tables: replicas, then sidecars. Anything not synced shouts in
/// capitals so it stands out in a long list.
pub fn tables(status: &StatusResponse) -> String {
    let mut replicas = Table::new(["REPLICA", "ADDRESS", "REVISION", "SIDECARS"]);
    for r in &status.replicas {
        replicas.row([
            r.id.clone(),
            r.address.clone(),
            r.revision.to_string(),
            r.connected_sidecars.to_string(),
        ]);
    }
    let mut out = String::new();
    if !status.mtls_mode.is_empty() {
        out.push_str(&format!("mTLS mode: {}\n\n", status.mtls_mode));
    }
    out.push_str(&replicas.render());
    out.push('\n');
    if status.sidecars.is_empty() {
        out.push_str("No sidecars connected.\n");
        return out;
    }
    let mut sidecars = Table::new([
        "SIDECAR",
        "IDENTITY",
        "CERT EXPIRES IN",
        "BUNDLE",
        "REPLICA",
        "PUSHED",
        "ACKED",
        "STATE",
        "NACK",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for s in &status.sidecars {
        let expires = if s.certificate_not_after_unix == 0 {
            "-".to_owned()
        } else {
            super::identity::human_seconds(s.certificate_not_after_unix - now)
        };
        sidecars.row([
            sidecar_name(s),
            if s.identity.is_empty() {
                "-".to_owned()
            } else {
                s.identity.clone()
            },
            expires,
            s.trust_bundle_version.to_string(),
            s.replica.clone(),
            s.pushed_version.to_string(),
            s.acked_version.to_string(),
            SyncState::of(s).as_str().to_owned(),
            s.nack_reason.clone(),
        ]);
    }
    out.push_str(&sidecars.render());
    out
}

#[derive(Debug, Serialize)]
struct StatusDocument<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    mtls_mode: &'a str,
    replicas: Vec<ReplicaDocument<'a>>,
    sidecars: Vec<SidecarDocument<'a>>,
}

#[derive(Debug, Serialize)]
struct ReplicaDocument<'a> {
    id: &'a str,
    address: &'a str,
    revision: i64,
    connected_sidecars: i32,
}

#[derive(Debug, Serialize)]
struct SidecarDocument<'a> {
    service: &'a str,
    instance: &'a str,
    gateway: bool,
    replica: &'a str,
    pushed_version: u64,
    acked_version: u64,
    state: SyncState,
    #[serde(skip_serializing_if = "str::is_empty")]
    nack_reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    identity: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    certificate_not_after_unix: i64,
    trust_bundle_version: u64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl<'a> From<&'a StatusResponse> for StatusDocument<'a> {
    fn from(status: &'a StatusResponse) -> Self {
        Self {
            mtls_mode: &status.mtls_mode,
            replicas: status.replicas.iter().map(ReplicaDocument::from).collect(),
            sidecars: status.sidecars.iter().map(SidecarDocument::from).collect(),
        }
    }
}

impl<'a> From<&'a Replica> for ReplicaDocument<'a> {
    fn from(r: &'a Replica) -> Self {
        Self {
            id: &r.id,
            address: &r.address,
            revision: r.revision,
            connected_sidecars: r.connected_sidecars,
        }
    }
}

impl<'a> From<&'a ConnectedSidecar> for SidecarDocument<'a> {
    fn from(s: &'a ConnectedSidecar) -> Self {
        Self {
            service: &s.service,
            instance: &s.instance,
            gateway: s.gateway,
            replica: &s.replica,
            pushed_version: s.pushed_version,
            acked_version: s.acked_version,
            state: SyncState::of(s),
            nack_reason: &s.nack_reason,
            identity: &s.identity,
            certificate_not_after_unix: s.certificate_not_after_unix,
            trust_bundle_version: s.trust_bundle_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(
        service: &str,
        instance: &str,
        pushed: u64,
        acked: u64,
        nack: &str,
    ) -> ConnectedSidecar {
        ConnectedSidecar {
            service: service.into(),
            instance: instance.into(),
            gateway: service.is_empty(),
            pushed_version: pushed,
            acked_version: acked,
            nack_reason: nack.into(),
            replica: "cp-0".into(),
            admin_address: String::new(),
            ..ConnectedSidecar::default()
        }
    }

    fn status() -> StatusResponse {
        StatusResponse {
            replicas: vec![Replica {
                id: "cp-0".into(),
                address: "127.0.0.1:15010".into(),
                revision: 42,
                connected_sidecars: 3,
            }],
            sidecars: vec![
                sidecar("catalog", "catalog-0", 5, 5, ""),
                sidecar("orders", "orders-0", 5, 4, ""),
                sidecar("", "gw-0", 5, 4, "route \"x\": no such subset"),
            ],
            ..StatusResponse::default()
        }
    }

    #[test]
    fn tables_mark_sidecars_that_are_behind_or_refused() {
        assert_eq!(
            tables(&status()),
            "REPLICA   ADDRESS           REVISION   SIDECARS\n\
             cp-0      127.0.0.1:15010   42         3\n\
             \n\
             SIDECAR             IDENTITY   CERT EXPIRES IN   BUNDLE   REPLICA   PUSHED   ACKED   STATE    NACK\n\
             catalog/catalog-0   -          -                 0        cp-0      5        5       synced\n\
             orders/orders-0     -          -                 0        cp-0      5        4       BEHIND\n\
             gateway/gw-0        -          -                 0        cp-0      5        4       NACKED   route \"x\": no such subset\n"
        );
    }

    #[test]
    fn the_mesh_wide_mtls_mode_heads_the_status() {
        let mut status = status();
        status.mtls_mode = "permissive".into();
        assert!(tables(&status).starts_with("mTLS mode: permissive\n\nREPLICA"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&status, OutputFormat::Json).unwrap()).unwrap();
        assert_eq!(json["mtls_mode"], "permissive");
    }

    #[test]
    fn json_carries_the_state() {
        let json: serde_json::Value =
            serde_json::from_str(&render(&status(), OutputFormat::Json).unwrap()).unwrap();
        assert_eq!(json["replicas"][0]["revision"], 42);
        assert_eq!(json["sidecars"][1]["state"], "behind");
        assert_eq!(
            json["sidecars"][2]["nack_reason"],
            "route \"x\": no such subset"
        );
    }
}
