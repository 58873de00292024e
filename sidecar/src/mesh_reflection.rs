//! Mesh-wide reflection at the gateway: `grpcurl GATEWAY list` shows every
//! gRPC service registered in the mesh and `describe` works for each. The
//! descriptors are the registered apps' own (pushed by the control plane),
//! never compiled into the gateway.

use std::collections::BTreeMap;

use arc_swap::ArcSwapOption;
use prost::Message;
use prost_types::FileDescriptorSet;
use tonic::service::Routes;

/// Paths of the reflection services the gateway answers itself.
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The descriptors pushed by the control plane could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MeshReflectionError {
    /// A descriptor set does not decode.
    #[error("descriptor set {index}: {source}")]
    Decode {
        /// Which set in the push.
        index: usize,
        /// Why.
        source: prost::DecodeError,
    },
    /// The sets do not form a consistent schema.
    #[error("reflection: {0}")]
    Build(#[from] tonic_reflection::server::Error),
}

/// The reflection service built from the latest push; swapped whole.
#[derive(Default)]
pub struct MeshReflection {
    current: ArcSwapOption<Routes>,
}

impl std::fmt::Debug for MeshReflection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshReflection")
            .field("built", &self.current.load().is_some())
            .finish()
    }
}

impl MeshReflection {
    /// True if `path` is a reflection call the gateway answers itself.
    pub fn handles(path: &str) -> bool {
        REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p))
    }

    /// The service to answer reflection with, once a push has arrived.
    pub fn current(&self) -> Option<Routes> {
        self.current.load_full().map(|routes| (*routes).clone())
    }

    /// Serves `built` from now on.
    pub fn store(&self, built: Routes) {
        self.current.store(Some(std::sync::Arc::new(built)));
    }

    /// Builds the reflection service for every registered app's
    /// descriptors, without serving it yet (so a push is applied whole or
    /// not at all).
    pub fn build(
        descriptor_sets: &[Vec<u8>],
        grpc_services: &[String],
    ) -> Result<Routes, MeshReflectionError> {
        // Apps share files (google/protobuf/*.proto, their own packages):
        // keep one copy of each by name.
        let mut files = BTreeMap::new();
        for (index, bytes) in descriptor_sets.iter().enumerate() {
            let set = FileDescriptorSet::decode(bytes.as_slice())
                .map_err(|source| MeshReflectionError::Decode { index, source })?;
            for file in set.file {
                files.entry(file.name().to_owned()).or_insert(file);
            }
        }
        let merged = FileDescriptorSet {
            file: files.into_values().collect(),
        };
        let builder = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_file_descriptor_set(merged.clone());
            for service in grpc_services {
                b = b.with_service_name(service.clone());
            }
            b
        };
        Ok(Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
    }
}
