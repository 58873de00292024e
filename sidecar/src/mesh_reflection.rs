//! Mesh-wide reflection at the gateway: `grpcurl GATEWAY list` shows the
//! public gRPC services registered in the mesh (those with an `exposure:
//! public` route) and `describe` works for each. Internal services are not
//! there at all: their methods are cut from the schema, and files that
//! define nothing public (or that a public file does not import) are left
//! out, so no symbol lookup finds them. The descriptors are the registered
//! apps' own (pushed by the control plane), never compiled into the gateway.

use std::collections::BTreeMap;

use arc_swap::ArcSwapOption;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic::service::Routes;

/// Paths of the reflection services the gateway answers itself.
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The descriptors pushed by the control plane could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MeshReflectionError {
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

    /// Builds the reflection service for the registered apps' descriptors,
    /// showing only the methods `public(service, method)` lets outside
    /// clients call, without serving it yet (so a push is applied whole or
    /// not at all).
    pub fn build(
        descriptor_sets: &[Vec<u8>],
        public: impl Fn(&str, &str) -> bool,
    ) -> Result<Routes, MeshReflectionError> {
        // Apps share files (google/protobuf/*.proto, their own packages):
        // keep one copy of each by name.
        let mut files = BTreeMap::new();
        for (index, bytes) in descriptor_sets.iter().enumerate() {
            // The control plane refuses such sets at registration; one that
            // got through costs its own services their description only.
            let set = match FileDescriptorSet::decode(bytes.as_slice()) {
                Ok(set) => set,
                Err(error) => {
                    tracing::warn!(index, %error, "a pushed descriptor set does not decode; skipped");
                    continue;
                }
            };
            for file in set.file {
                files.entry(file.name().to_owned()).or_insert(file);
            }
        }
        let (merged, services) = public_only(files, public);
        let builder = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_file_descriptor_set(merged.clone());
            for service in &services {
                b = b.with_service_name(service.clone());
            }
            b
        };
        Ok(Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
    }
}

/// The files an outside client may see: each with only its public methods
/// (a service with none is dropped), kept if it defines a public service or
/// is imported, directly or not, by one that does; and the public services'
/// full names.
fn public_only(
    mut files: BTreeMap<String, FileDescriptorProto>,
    public: impl Fn(&str, &str) -> bool,
) -> (FileDescriptorSet, Vec<String>) {
    let mut services = Vec::new();
    let mut wanted: Vec<String> = Vec::new();
    for (name, file) in &mut files {
        let package = file.package().to_owned();
        file.service.retain_mut(|service| {
            let full = if package.is_empty() {
                service.name().to_owned()
            } else {
                format!("{package}.{}", service.name())
            };
            service.method.retain(|m| public(&full, m.name()));
            let keep = !service.method.is_empty();
            if keep {
                services.push(full);
            }
            keep
        });
        if !file.service.is_empty() {
            wanted.push(name.clone());
        }
    }
    let mut kept = BTreeMap::new();
    while let Some(name) = wanted.pop() {
        if kept.contains_key(&name) {
            continue;
        }
        if let Some(file) = files.remove(&name) {
            wanted.extend(file.dependency.iter().cloned());
            kept.insert(name, file);
        }
    }
    services.sort();
    let set = FileDescriptorSet {
        file: kept.into_values().collect(),
    };
    (set, services)
}

#[cfg(test)]
mod tests {
    use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

    use super::*;

    fn file(
        name: &str,
        package: &str,
        deps: &[&str],
        services: &[(&str, &[&str])],
    ) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            dependency: deps.iter().map(|d| (*d).to_owned()).collect(),
            service: services
                .iter()
                .map(|(s, methods)| ServiceDescriptorProto {
                    name: Some((*s).into()),
                    method: methods
                        .iter()
                        .map(|m| MethodDescriptorProto {
                            name: Some((*m).into()),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_public_methods_and_the_files_they_need_are_shown() {
        let files: BTreeMap<String, FileDescriptorProto> = [
            file("common.proto", "shop.common", &[], &[]),
            file(
                "orders.proto",
                "shop.orders",
                &["common.proto"],
                &[("Orders", &["Place", "Purge"])],
            ),
            file(
                "payments.proto",
                "shop.payments",
                &["secret.proto"],
                &[("Payments", &["Charge"])],
            ),
            file("secret.proto", "shop.secret", &[], &[]),
        ]
        .into_iter()
        .map(|f| (f.name().to_owned(), f))
        .collect();
        let (set, services) = public_only(files, |service, method| {
            service == "shop.orders.Orders" && method == "Place"
        });
        assert_eq!(services, ["shop.orders.Orders"]);
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["common.proto", "orders.proto"]);
        let orders = &set.file[1].service[0];
        let methods: Vec<&str> = orders.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, ["Place"]);
    }
}
