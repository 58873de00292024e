//! `meshctl mtls get` and `meshctl mtls set strict|permissive`: the
//! mesh-wide mTLS mode, stored by the control plane and pushed to every
//! proxy with the table. `off` is not a mode the mesh can be switched to:
//! a plaintext mesh is each process's own explicit flag (`--mtls off`,
//! `meshctl up --insecure`).

use anyhow::Context;
use mesh::proto::mesh::v1::{GetMtlsModeRequest, MtlsModeResponse, SetMtlsModeRequest};

use super::output::print;
use super::{ControlPlaneArgs, GrpcError};

/// `meshctl mtls ...`.
#[derive(Debug, clap::Subcommand)]
pub enum MtlsCommand {
    /// Show the mesh-wide mode and the store revision it was set at.
    Get,
    /// Set the mesh-wide mode (admins only); proxies apply it with the
    /// table version it was stored at, without a restart.
    Set(SetArgs),
}

/// Options of `meshctl mtls set`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    /// The mode.
    #[arg(value_enum)]
    pub mode: MeshMode,
}

/// The modes an operator may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshMode {
    /// Only mutual TLS reaches a proxy's inbound port (the default).
    Strict,
    /// Inbound ports also serve plaintext gRPC, for moving a running mesh
    /// to mTLS; callers in the mesh still use mTLS.
    Permissive,
}

impl MeshMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

/// Runs `meshctl mtls`.
pub async fn run(control_plane: &ControlPlaneArgs, command: MtlsCommand) -> anyhow::Result<()> {
    let mut client = control_plane.connect().await?;
    match command {
        MtlsCommand::Get => {
            let current = client
                .get_mtls_mode(GetMtlsModeRequest {})
                .await
                .map_err(GrpcError)
                .context("cannot get the mTLS mode")?
                .into_inner();
            print(&render_get(&current))
        }
        MtlsCommand::Set(args) => {
            let stored = client
                .set_mtls_mode(SetMtlsModeRequest {
                    mode: args.mode.as_str().to_owned(),
                    expected_revision: None,
                })
                .await
                .map_err(GrpcError)
                .context("cannot set the mTLS mode")?
                .into_inner();
            print(&render_set(&stored))
        }
    }
}

/// `meshctl mtls get`'s line.
pub fn render_get(current: &MtlsModeResponse) -> String {
    if current.revision == 0 {
        format!("mtls mode: {} (never set: the default)\n", current.mode)
    } else {
        format!(
            "mtls mode: {} (revision {})\n",
            current.mode, current.revision
        )
    }
}

/// `meshctl mtls set`'s line: the revision is the table version a proxy
/// runs once it applied the mode (`meshctl status`, ACKED).
pub fn render_set(stored: &MtlsModeResponse) -> String {
    format!(
        "mtls mode set to {} (revision {}): proxies apply it with table version {}\n",
        stored.mode, stored.revision, stored.revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_mode_and_the_revision() {
        let never = MtlsModeResponse {
            mode: "strict".into(),
            revision: 0,
        };
        assert_eq!(
            render_get(&never),
            "mtls mode: strict (never set: the default)\n"
        );
        let set = MtlsModeResponse {
            mode: "permissive".into(),
            revision: 42,
        };
        assert_eq!(render_get(&set), "mtls mode: permissive (revision 42)\n");
        assert!(render_set(&set).contains("permissive (revision 42)"));
    }
}
