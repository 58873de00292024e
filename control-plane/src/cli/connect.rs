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

/// Where the control plane is (a global option of every subcommand that
/// talks to it).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Control plane replicas to try in order, comma-separated; the first
    /// that answers is used. A missing scheme means `http://`.
    #[arg(
        long = "control-plane",
        global = true,
        env = "MESHCTL_CONTROL_PLANE",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:15010,http://127.0.0.1:15011"
    )]
    pub addresses: Vec<String>,
}

/// The admin client every subcommand uses.
pub type AdminClient = MeshAdminClient<Channel>;

impl ControlPlaneArgs {
    /// Connects to the first replica that answers; the error names every
    /// address tried and why each failed.
    pub async fn connect(&self) -> anyhow::Result<AdminClient> {
        let mut failures = Vec::new();
        for address in self
            .addresses
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
        {
            let uri = with_scheme(address);
            match connect_one(&uri).await {
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

async fn connect_one(uri: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let attempt = async {
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
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
        };
        let error = args.connect().await.unwrap_err().to_string();
        assert!(error.contains(&format!("http://{a} (")), "{error}");
        assert!(error.contains(&format!("http://{b} (")), "{error}");
    }
}
