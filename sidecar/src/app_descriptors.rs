//! What the local app serves, read from its server reflection: the gRPC
//! services it registers with the control plane and the descriptors the
//! gateway's mesh-wide reflection serves. Nothing is compiled in: any app
//! that serves reflection joins the mesh's `grpcurl list`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// Infrastructure services every app serves; not part of what it offers
/// the mesh.
const INFRASTRUCTURE: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Import chains deeper than this are refused rather than followed.
const MAX_IMPORT_DEPTH: usize = 32;

/// The app's services and their descriptors.
#[derive(Debug, Clone, Default)]
pub struct AppDescriptors {
    /// Fully qualified gRPC services, sorted.
    pub grpc_services: Vec<String>,
    /// An encoded `FileDescriptorSet` with every file they need.
    pub file_descriptor_set: Vec<u8>,
}

/// Reflection could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The app could not be reached.
    #[error("cannot reach the app: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The app answered with an error (e.g. it serves no reflection).
    #[error("app reflection: {0}")]
    Status(#[from] tonic::Status),
    /// The app's answer was not what the protocol promises.
    #[error("app reflection: {0}")]
    Protocol(String),
    /// The app took too long.
    #[error("app reflection timed out")]
    Timeout,
}

/// Reads the app's services and descriptors through reflection v1.
pub async fn read(app: SocketAddr, timeout: Duration) -> Result<AppDescriptors, ReflectionError> {
    tokio::time::timeout(timeout, read_inner(app))
        .await
        .map_err(|_| ReflectionError::Timeout)?
}

async fn read_inner(app: SocketAddr) -> Result<AppDescriptors, ReflectionError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{app}"))
        .map_err(ReflectionError::Connect)?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };

    let list = client
        .server_reflection_info(tokio_stream::once(request(MessageRequest::ListServices(
            String::new(),
        ))))
        .await?
        .into_inner()
        .next()
        .await
        .ok_or_else(|| ReflectionError::Protocol("no answer to ListServices".into()))??;
    let mut grpc_services: Vec<String> = match list.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => return Err(unexpected(other)),
    };
    grpc_services.retain(|s| !INFRASTRUCTURE.contains(&s.as_str()));
    grpc_services.sort();
    grpc_services.dedup();

    // The files declaring the services, then their imports (servers may
    // answer with the file alone), until the set is closed under imports.
    let mut requests: Vec<_> = grpc_services
        .iter()
        .map(|s| request(MessageRequest::FileContainingSymbol(s.clone())))
        .collect();
    let mut files: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    for _round in 0..MAX_IMPORT_DEPTH {
        if requests.is_empty() {
            break;
        }
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(std::mem::take(&mut requests)))
            .await?
            .into_inner();
        while let Some(answer) = answers.next().await {
            match answer?.message_response {
                Some(MessageResponse::FileDescriptorResponse(found)) => {
                    for bytes in found.file_descriptor_proto {
                        let file = FileDescriptorProto::decode(bytes.as_slice())
                            .map_err(|e| ReflectionError::Protocol(e.to_string()))?;
                        files.entry(file.name().to_owned()).or_insert(file);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        let missing: std::collections::BTreeSet<String> = files
            .values()
            .flat_map(|f| f.dependency.iter())
            .filter(|d| !files.contains_key(*d))
            .cloned()
            .collect();
        requests = missing
            .into_iter()
            .map(|name| request(MessageRequest::FileByFilename(name)))
            .collect();
    }
    let set = FileDescriptorSet {
        file: files.into_values().collect(),
    };
    Ok(AppDescriptors {
        grpc_services,
        file_descriptor_set: set.encode_to_vec(),
    })
}

fn unexpected(response: Option<MessageResponse>) -> ReflectionError {
    match response {
        Some(MessageResponse::ErrorResponse(e)) => {
            ReflectionError::Protocol(format!("error {}: {}", e.error_code, e.error_message))
        }
        other => ReflectionError::Protocol(format!("unexpected answer {other:?}")),
    }
}
