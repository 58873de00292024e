//! Every resource a replica can send, built once per published state, and
//! which of them one proxy gets (its scope).
//!
//! A resource is encoded once, as the `resources` field of a
//! `ResourceUpdate`, and every stream that sends it copies those bytes: a
//! change costs the replica one encoding however many proxies get it. Its
//! version is a hash of its content, so equal content has an equal version
//! on every replica and a proxy that moves to another replica is sent only
//! what differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mesh::identity::TrustBundle;
use mesh::model::{Bootstrap, DefaultAuthorization, Endpoint, Exposure};
use mesh::proto::mesh::v1::{
    self as pb, resource::Body, DescriptorSet, KeySet, MeshSettings, Resource, ResourceType,
};

/// The tag of `ResourceUpdate.resources`: an encoded resource is that
/// field, ready to be appended to an update.
const RESOURCES_FIELD: u32 = 4;

/// Names one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Its kind.
    pub kind: ResourceType,
    /// Its name within the kind.
    pub name: Arc<str>,
}

impl ResourceKey {
    /// The key of the resource `kind`/`name`.
    pub fn new(kind: ResourceType, name: &str) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

/// One resource at one version, encoded.
#[derive(Debug, Clone)]
pub struct Entry {
    /// A hash of the content (hex): what proxies ACK and resume from.
    pub version: Arc<str>,
    /// The resource as a `ResourceUpdate.resources` field (tag, length,
    /// message).
    pub field: Bytes,
}

/// What a route is needed for, to tell whose scope it is in.
#[derive(Debug, Clone)]
struct RouteFacts {
    destination: String,
    grpc_service: String,
    public: bool,
}

/// Whose resources a stream sends: the proxy's own service and gateway
/// flag, the mesh services it declared and the gRPC services it
/// subscribed to on first use.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The proxy's service (for a gateway, its name).
    pub service: String,
    /// A gateway gets public routes, authentication and descriptors.
    pub gateway: bool,
    /// Mesh services the app declared it calls.
    pub calls: BTreeSet<String>,
    /// gRPC services the proxy subscribed to on first use.
    pub grpc_services: BTreeSet<String>,
}

/// The resources in one scope, and the subscriptions nothing serves yet.
#[derive(Debug, Default)]
pub struct Wanted {
    /// The resources the proxy should have.
    pub keys: BTreeSet<ResourceKey>,
    /// Declared services and subscribed gRPC services no route serves.
    pub not_found: Vec<String>,
}

/// Every resource of one published state.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: HashMap<ResourceKey, Entry>,
    routes: BTreeMap<String, RouteFacts>,
    /// Route names by destination service.
    by_destination: HashMap<String, Vec<String>>,
    /// Route names by the gRPC service they match.
    by_grpc_service: HashMap<String, Vec<String>>,
    /// Authorization policy names by the service they guard.
    policies: HashMap<String, Vec<String>>,
    /// For gateways: authentications, key sets, descriptors.
    gateway_only: Vec<ResourceKey>,
}

impl Catalog {
    /// The catalog of `table` (already validated), with the mesh settings
    /// and the registered apps' `descriptor_sets` (checked when registered;
    /// deduplicated here by content).
    pub fn build(
        table: &Bootstrap,
        trust_bundle: Option<&TrustBundle>,
        renew_issuer: &str,
        mtls_permissive: bool,
        descriptor_sets: &[Bytes],
    ) -> Self {
        let mut catalog = Self::default();
        for route in &table.routes {
            let name = route.metadata.name.clone();
            let facts = RouteFacts {
                destination: route.spec.destination.clone(),
                grpc_service: route.spec.matches.service.clone(),
                public: route.spec.exposure() == Exposure::Public,
            };
            catalog
                .by_destination
                .entry(facts.destination.clone())
                .or_default()
                .push(name.clone());
            catalog
                .by_grpc_service
                .entry(facts.grpc_service.clone())
                .or_default()
                .push(name.clone());
            catalog.insert(
                ResourceType::Route,
                &name,
                Body::Route(pb::RouteResource::from(route)),
            );
            catalog.routes.insert(name, facts);
        }
        let mut by_service: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
        for endpoint in &table.endpoints {
            by_service
                .entry(endpoint.service.as_str())
                .or_default()
                .push(endpoint);
        }
        for (service, endpoints) in by_service {
            let resource = pb::ServiceEndpoints {
                service: service.to_owned(),
                endpoints: endpoints
                    .into_iter()
                    .map(pb::EndpointResource::from)
                    .collect(),
            };
            catalog.insert(ResourceType::Endpoints, service, Body::Endpoints(resource));
        }
        for policy in &table.authorization_policies {
            catalog
                .policies
                .entry(policy.spec.service.clone())
                .or_default()
                .push(policy.metadata.name.clone());
            catalog.insert(
                ResourceType::AuthorizationPolicy,
                &policy.metadata.name,
                Body::AuthorizationPolicy(pb::AuthorizationPolicyResource::from(policy)),
            );
        }
        for authn in &table.request_authentications {
            let name = &authn.metadata.name;
            let key = catalog.insert(
                ResourceType::RequestAuthentication,
                name,
                Body::RequestAuthentication(pb::RequestAuthenticationResource::from(authn)),
            );
            catalog.gateway_only.push(key);
            if let Some(jwks) = table.jwks.get(name) {
                let key = catalog.insert(
                    ResourceType::KeySet,
                    name,
                    Body::KeySet(KeySet {
                        jwks_json: jwks.clone(),
                    }),
                );
                catalog.gateway_only.push(key);
            }
        }
        for set in descriptor_sets {
            let name = content_hash(set);
            let key = ResourceKey::new(ResourceType::Descriptors, &name);
            if catalog.entries.contains_key(&key) {
                continue;
            }
            let key = catalog.insert(
                ResourceType::Descriptors,
                &name,
                Body::Descriptors(DescriptorSet {
                    file_descriptor_set: set.to_vec(),
                }),
            );
            catalog.gateway_only.push(key);
        }
        let mut settings = MeshSettings {
            renew_certificates_not_issued_by: renew_issuer.to_owned(),
            ..MeshSettings::default()
        };
        if let Some(bundle) = trust_bundle {
            settings.trust_anchors_der = bundle.anchors().iter().map(|a| a.to_vec()).collect();
            settings.trust_bundle_version = bundle.version();
        }
        settings.set_mtls_mode(if mtls_permissive {
            pb::MtlsMode::Permissive
        } else {
            pb::MtlsMode::Strict
        });
        settings.set_default_authorization(match table.default_authorization {
            DefaultAuthorization::Deny => pb::DefaultAuthorization::Deny,
            DefaultAuthorization::AllAuthenticated => pb::DefaultAuthorization::AllAuthenticated,
        });
        catalog.insert(
            ResourceType::MeshSettings,
            MESH_SETTINGS,
            Body::MeshSettings(settings),
        );
        catalog
    }

    /// Encodes `body` as the resource `kind`/`name`, versioned by its content.
    fn insert(&mut self, kind: ResourceType, name: &str, body: Body) -> ResourceKey {
        let mut content = Vec::new();
        body.encode(&mut content);
        let resource = Resource {
            r#type: kind as i32,
            name: name.to_owned(),
            version: content_hash(&content),
            body: Some(body),
        };
        let mut field = BytesMut::new();
        prost::encoding::message::encode(RESOURCES_FIELD, &resource, &mut field);
        let key = ResourceKey::new(kind, name);
        self.entries.insert(
            key.clone(),
            Entry {
                version: resource.version.into(),
                field: field.freeze(),
            },
        );
        key
    }

    /// The resource `key` at its current version, if it exists.
    pub fn get(&self, key: &ResourceKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is none (the store has not been read).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the two catalogs hold the same resources at the same versions.
    pub fn same_as(&self, other: &Catalog) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(key, entry)| {
                other
                    .entries
                    .get(key)
                    .is_some_and(|o| o.version == entry.version)
            })
    }

    /// The resources a proxy of `scope` should have now.
    pub fn wanted(&self, scope: &Scope) -> Wanted {
        let mut wanted = Wanted::default();
        wanted
            .keys
            .insert(ResourceKey::new(ResourceType::MeshSettings, MESH_SETTINGS));
        let mut destinations = BTreeSet::new();
        // A route is taken with every route of its gRPC service: a table
        // routes by path with a fallback from `/S/M` to `/S/`, so a table
        // holding `/S/` but not `/S/M` would send M's calls where `/S/`
        // goes (and a gateway would expose an internal method behind a
        // public service route). A gateway's table refuses the non-public
        // ones itself.
        let mut take_route = |wanted: &mut Wanted, name: &str| {
            let Some(facts) = self.routes.get(name) else {
                return;
            };
            for sibling in self
                .by_grpc_service
                .get(&facts.grpc_service)
                .into_iter()
                .flatten()
            {
                if let Some(sibling_facts) = self.routes.get(sibling) {
                    destinations.insert(sibling_facts.destination.clone());
                    wanted
                        .keys
                        .insert(ResourceKey::new(ResourceType::Route, sibling));
                }
            }
        };
        if scope.gateway {
            for (name, facts) in &self.routes {
                if facts.public {
                    take_route(&mut wanted, name);
                }
            }
            wanted.keys.extend(self.gateway_only.iter().cloned());
        } else {
            for service in &scope.calls {
                match self.by_destination.get(service) {
                    Some(names) => names.iter().for_each(|n| take_route(&mut wanted, n)),
                    None => wanted.not_found.push(service.clone()),
                }
            }
            for service in &scope.grpc_services {
                match self.by_grpc_service.get(service) {
                    Some(names) => names.iter().for_each(|n| take_route(&mut wanted, n)),
                    None => wanted.not_found.push(service.clone()),
                }
            }
            // Its own routes (inbound rate limits), with their endpoints:
            // an app may call its own service.
            for name in self
                .by_destination
                .get(&scope.service)
                .into_iter()
                .flatten()
            {
                take_route(&mut wanted, name);
            }
        }
        for destination in destinations {
            let key = ResourceKey::new(ResourceType::Endpoints, &destination);
            if self.entries.contains_key(&key) {
                wanted.keys.insert(key);
            }
        }
        if !scope.gateway {
            // Its own policies: its inbound enforces them.
            for name in self.policies.get(&scope.service).into_iter().flatten() {
                wanted
                    .keys
                    .insert(ResourceKey::new(ResourceType::AuthorizationPolicy, name));
            }
        }
        wanted
    }
}

/// The name of the mesh settings resource.
pub const MESH_SETTINGS: &str = mesh::proto::mesh::v1::MESH_SETTINGS_NAME;

/// The first 16 hex digits of the SHA-256 of `bytes`: a content version
/// (64 bits: a collision between two versions of one resource is not a
/// practical concern).
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
