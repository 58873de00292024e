//! Reaching the control plane: the first replica that answers, out of the
//! list given by `--control-plane`; and how gRPC errors read on a terminal.

use std::time::Duration;

use mesh::proto::mesh::v1::mesh_admin_client::MeshAdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long one replica gets to answer before the next one is tried. Short:
/// a person is waiting, and any replica will do (they are stateless).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on each admin call, so a wedged replica cannot hang meshctl.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Replicas tried when neither the flag nor the config file names any.
const DEFAULT_ADDRESSES: [&str; 2] = ["127.0.0.1:15010", "127.0.0.1:15011"];

/// Where the control plane is and who meshctl is to it (global options of
/// every subcommand that talks to it).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Control plane replicas to try in order, comma-separated; the first
    /// that answers is used. Default: the config file's, else
    /// 127.0.0.1:15010,15011.
    #[arg(
        long = "control-plane",
        global = true,
        env = "MESHCTL_CONTROL_PLANE",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub addresses: Vec<String>,
    /// meshctl's config (like a kubeconfig): the control plane, the trust
    /// bundle, and the operator certificate and key. Default
    /// `~/.mesh/config`.
    #[arg(long, global = true, env = "MESHCONFIG", value_name = "FILE")]
    pub meshconfig: Option<std::path::PathBuf>,
    /// Talk plaintext, without an operator certificate (a control plane
    /// run with `--insecure` only).
    #[arg(long, global = true, env = "MESHCTL_INSECURE")]
    pub insecure: bool,
}

/// What `~/.mesh/config` (or `$MESHCONFIG`) holds. Paths are relative to
/// the file.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Replicas, `host:port`.
    #[serde(default)]
    pub control_planes: Vec<String>,
    /// The trust domain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The trust anchors (PEM file).
    pub trust_bundle: std::path::PathBuf,
    /// The operator certificate chain (PEM file).
    pub certificate: std::path::PathBuf,
    /// Its key (PEM file).
    pub key: std::path::PathBuf,
}

fn default_trust_domain() -> String {
    mesh::identity::DEFAULT_TRUST_DOMAIN.to_owned()
}

impl MeshConfig {
    /// Reads `path`, resolving relative paths against its directory.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: Self = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a meshctl config", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for file in [
            &mut config.trust_bundle,
            &mut config.certificate,
            &mut config.key,
        ] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// meshctl's TLS: the bundle and the operator credential.
    pub fn tls(&self) -> anyhow::Result<std::sync::Arc<mesh::identity::MeshTls>> {
        use anyhow::Context;
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let bundle = mesh::identity::TrustBundle::from_pem(&read(&self.trust_bundle)?, 0)?;
        let tls = mesh::identity::MeshTls::new(
            &self.trust_domain,
            bundle,
            mesh::identity::ClientAuth::Required,
        )?;
        tls.set_credential(mesh::identity::Credential::from_pem(
            &read(&self.certificate)?,
            &read(&self.key)?,
        )?);
        Ok(std::sync::Arc::new(tls))
    }
}

/// How meshctl reaches the control plane, resolved from flags and config.
enum Transport {
    Plaintext,
    Tls {
        tls: std::sync::Arc<mesh::identity::MeshTls>,
        peer: mesh::identity::SpiffeId,
    },
}

/// The admin client every subcommand uses.
pub type AdminClient = MeshAdminClient<Channel>;

impl ControlPlaneArgs {
    /// Connects to the first replica that answers; the error names every
    /// address tried and why each failed.
    pub async fn connect(&self) -> anyhow::Result<AdminClient> {
        let mut failures = Vec::new();
        let (addresses, transport) = self.resolve()?;
        for address in addresses.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let uri = with_scheme(address);
            match connect_one(&uri, &transport).await {
                Ok(channel) => {
                    tracing::debug!(control_plane = %uri, "connected");
                    return Ok(MeshAdminClient::new(channel));
                }
                Err(reason) => failures.push((uri, reason)),
            }
        }
        Err(unreachable(&failures))
    }
}

impl ControlPlaneArgs {
    /// The config file named, or `~/.mesh/config` if it exists.
    fn config(&self) -> anyhow::Result<Option<MeshConfig>> {
        if let Some(path) = &self.meshconfig {
            return MeshConfig::load(path).map(Some);
        }
        let default = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".mesh/config"))
            .filter(|p| p.is_file());
        default.map(|p| MeshConfig::load(&p)).transpose()
    }

    fn resolve(&self) -> anyhow::Result<(Vec<String>, Transport)> {
        let config = if self.insecure { None } else { self.config()? };
        let addresses = if !self.addresses.is_empty() {
            self.addresses.clone()
        } else if let Some(c) = config.as_ref().filter(|c| !c.control_planes.is_empty()) {
            c.control_planes.clone()
        } else {
            DEFAULT_ADDRESSES.map(str::to_owned).to_vec()
        };
        let transport = match (self.insecure, config) {
            (true, _) => Transport::Plaintext,
            (false, Some(config)) => Transport::Tls {
                tls: config.tls()?,
                peer: mesh::identity::SpiffeId::new(
                    &config.trust_domain,
                    mesh::identity::Workload::ControlPlane,
                )?,
            },
            (false, None) => anyhow::bail!(
                "no meshctl config: set MESHCONFIG (meshctl up prints it) or --meshconfig, \
                 or write ~/.mesh/config; --insecure only for a control plane run with --insecure"
            ),
        };
        Ok((addresses, transport))
    }
}

async fn connect_one(uri: &str, transport: &Transport) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.replacen("https://", "http://", 1))
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let attempt = async {
        let channel = match transport {
            Transport::Plaintext => endpoint.connect().await,
            Transport::Tls { tls, peer } => {
                endpoint
                    .connect_with_connector(mesh::identity::transport::Connector::new(
                        tls.clone(),
                        peer.clone(),
                    ))
                    .await
            }
        }
        .map_err(|e| error_chain(&e))?;
        probe(channel.clone()).await?;
        Ok(channel)
    };
    // `connect_timeout` covers TCP only; this also bounds the probe, for a
    // listener that accepts and then says nothing.
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// A connection proves little (HTTP/2 does not wait for the server's
/// preface); an answered health check proves a gRPC server that says it is
/// serving. One without the health service answered too: good enough.
async fn probe(channel: Channel) -> Result<(), String> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.get_ref().status() {
            ServingStatus::Serving => Ok(()),
            status => Err(format!("health check says {}", status.as_str_name())),
        },
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Err(status) => Err(format!("health check: {}", GrpcError(status))),
    }
}

/// `127.0.0.1:15010` means `http://127.0.0.1:15010`: people type addresses.
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

fn unreachable(failures: &[(String, String)]) -> anyhow::Error {
    if failures.is_empty() {
        return anyhow::anyhow!("no control plane address given (--control-plane)");
    }
    let tried: Vec<String> = failures
        .iter()
        .map(|(uri, reason)| format!("{uri} ({reason})"))
        .collect();
    anyhow::anyhow!("cannot reach the control plane; tried {}", tried.join(", "))
}

/// tonic's transport error says "transport error" and hides the cause
/// (connection refused, ...) in its sources. Some layers repeat their
/// source's words: those are said once.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if words != last {
            text.push_str(": ");
            text.push_str(&words);
        }
        last = words;
        source = cause.source();
    }
    text
}

/// A gRPC error as `CODE: message` (the codes as the gRPC spec spells them,
/// `NOT_FOUND`, `ABORTED`, ...), for anyhow chains.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", code_name(.0.code()), .0.message())]
pub struct GrpcError(pub tonic::Status);

impl From<tonic::Status> for GrpcError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

impl GrpcError {
    /// The status code.
    pub fn code(&self) -> tonic::Code {
        self.0.code()
    }
}

/// `InvalidArgument` -> `INVALID_ARGUMENT`.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_the_grpc_spec() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Aborted), "ABORTED");
        let e = GrpcError(tonic::Status::not_found("route \"x\" not found"));
        assert_eq!(e.to_string(), "NOT_FOUND: route \"x\" not found");
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(with_scheme("127.0.0.1:15010"), "http://127.0.0.1:15010");
        assert_eq!(with_scheme("https://cp:443"), "https://cp:443");
    }

    #[tokio::test]
    async fn error_lists_every_address_tried() {
        // Two ports that were free a moment ago: nothing answers there.
        let closed = |l: std::net::TcpListener| l.local_addr().unwrap().to_string();
        let a = closed(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let b = closed(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let args = ControlPlaneArgs {
            addresses: vec![a.clone(), format!("http://{b}")],
            meshconfig: None,
            insecure: true,
        };
        let error = args.connect().await.unwrap_err().to_string();
        assert!(error.contains(&format!("http://{a} (")), "{error}");
        assert!(error.contains(&format!("http://{b} (")), "{error}");
    }
}
