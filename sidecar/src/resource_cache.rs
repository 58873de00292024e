//! The resources this proxy was sent, each at its last good version.
//!
//! An update is applied resource by resource: one that does not decode or
//! validate is refused (NACK) and the proxy keeps its last good version of
//! it, while the others are taken. From what is held the cache assembles
//! the table the proxy routes by (the same [`Bootstrap`] a static file
//! gives), the mesh settings and, for a gateway, the descriptors.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use mesh::identity::TrustBundle;
use mesh::model::{
    AuthorizationPolicy, Bootstrap, DefaultAuthorization, Endpoint, RequestAuthentication, Route,
};
use mesh::proto::mesh::v1::{
    self as pb, resource::Body, Resource, ResourceNack, ResourceType, ResourceUpdate,
    ResourceVersion,
};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::settings::MeshMtlsMode;

/// A resource's value at the version it was sent at.
#[derive(Debug, Clone)]
struct Held<T> {
    version: String,
    value: T,
}

/// The mesh-wide settings, checked.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// strict or permissive.
    pub mtls_mode: MeshMtlsMode,
    /// The anchors to trust (none when the mesh runs without mTLS).
    pub trust_bundle: Option<TrustBundle>,
    /// Renew promptly unless issued by this issuer (SHA-256 hex); empty: no.
    pub renew_unless_issued_by: String,
    /// The answer for services no ALLOW policy names.
    pub default_authorization: DefaultAuthorization,
}

/// What changed in one update, to redo only what depends on it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Touched {
    /// Routes or descriptors changed: a gateway's reflection is rebuilt.
    pub reflection: bool,
    /// The mesh settings changed.
    pub settings: bool,
}

/// Every resource held, by kind and name.
#[derive(Debug, Clone, Default)]
pub struct ResourceCache {
    routes: BTreeMap<String, Held<Route>>,
    endpoints: BTreeMap<String, Held<Vec<Endpoint>>>,
    policies: BTreeMap<String, Held<AuthorizationPolicy>>,
    authentications: BTreeMap<String, Held<RequestAuthentication>>,
    key_sets: BTreeMap<String, Held<String>>,
    descriptors: BTreeMap<String, Held<Bytes>>,
    settings: Option<Held<MeshSettings>>,
    /// Resources refused and not yet replaced by a good version.
    refused: BTreeMap<(i32, String), ResourceNack>,
    /// Subscriptions no route serves yet.
    not_found: BTreeSet<String>,
}

impl ResourceCache {
    /// Takes `update`: removals, then each resource that decodes and
    /// validates; the others are refused (see [`ResourceCache::refused`]).
    pub fn apply(&mut self, update: ResourceUpdate) -> Touched {
        let mut touched = Touched::default();
        for removed in update.removed {
            let kind = ResourceType::try_from(removed.r#type).unwrap_or_default();
            touched.note(kind);
            self.refused.remove(&(removed.r#type, removed.name.clone()));
            let name = &removed.name;
            match kind {
                ResourceType::Route => drop(self.routes.remove(name)),
                ResourceType::Endpoints => drop(self.endpoints.remove(name)),
                ResourceType::AuthorizationPolicy => drop(self.policies.remove(name)),
                ResourceType::RequestAuthentication => drop(self.authentications.remove(name)),
                ResourceType::KeySet => drop(self.key_sets.remove(name)),
                ResourceType::Descriptors => drop(self.descriptors.remove(name)),
                ResourceType::MeshSettings => self.settings = None,
                ResourceType::Unspecified => {}
            }
        }
        for resource in update.resources {
            let key = (resource.r#type, resource.name.clone());
            let nack = ResourceNack {
                r#type: resource.r#type,
                name: resource.name.clone(),
                version: resource.version.clone(),
                reason: String::new(),
            };
            touched.note(ResourceType::try_from(resource.r#type).unwrap_or_default());
            match self.take(resource) {
                Ok(()) => {
                    self.refused.remove(&key);
                }
                Err(reason) => {
                    tracing::warn!(
                        kind = key.0,
                        name = %key.1,
                        version = %nack.version,
                        %reason,
                        "resource refused (NACK); keeping its last good version"
                    );
                    self.refused.insert(key, ResourceNack { reason, ..nack });
                }
            }
        }
        let not_found: BTreeSet<String> = update.not_found.into_iter().collect();
        if not_found != self.not_found {
            tracing::info!(
                not_found = ?not_found,
                "services this proxy calls or subscribed to that no route serves yet"
            );
            self.not_found = not_found;
        }
        touched
    }

    /// Refuses every resource `sent` with `reason` (the table they make
    /// did not build): the proxy keeps what it had.
    pub fn refuse_all(&mut self, sent: &[ResourceVersion], reason: &str) {
        for resource in sent {
            self.refused.insert(
                (resource.r#type, resource.name.clone()),
                ResourceNack {
                    r#type: resource.r#type,
                    name: resource.name.clone(),
                    version: resource.version.clone(),
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// Refuses the mesh settings just taken (their trust bundle cannot be
    /// used) and holds those of `before` again.
    pub fn refuse_settings(&mut self, before: &ResourceCache, reason: &str) {
        if let Some(held) = self.settings.take() {
            self.refused.insert(
                (
                    ResourceType::MeshSettings as i32,
                    pb::MESH_SETTINGS_NAME.to_owned(),
                ),
                ResourceNack {
                    r#type: ResourceType::MeshSettings as i32,
                    name: pb::MESH_SETTINGS_NAME.to_owned(),
                    version: held.version,
                    reason: reason.to_owned(),
                },
            );
        }
        self.settings = before.settings.clone();
    }

    /// Checks one resource and holds it; the error says why not.
    fn take(&mut self, resource: Resource) -> Result<(), String> {
        let Resource {
            r#type,
            name,
            version,
            body,
        } = resource;
        let kind = ResourceType::try_from(r#type)
            .ok()
            .filter(|k| *k != ResourceType::Unspecified)
            .ok_or_else(|| format!("type: unknown resource type {type}"))?;
        let body = body.ok_or("body: missing")?;
        let named = |actual: &str| {
            if actual == name {
                Ok(())
            } else {
                Err(format!("name: {name:?} but the resource is {actual:?}"))
            }
        };
        match (kind, body) {
            (ResourceType::Route, Body::Route(route)) => {
                let route = Route::try_from(route).map_err(|e| e.to_string())?;
                named(&route.metadata.name)?;
                self.routes.insert(
                    name,
                    Held {
                        version,
                        value: route,
                    },
                );
            }
            (ResourceType::Endpoints, Body::Endpoints(endpoints)) => {
                named(&endpoints.service)?;
                let mut value = Vec::with_capacity(endpoints.endpoints.len());
                for (i, endpoint) in endpoints.endpoints.into_iter().enumerate() {
                    let endpoint =
                        Endpoint::try_from(endpoint).map_err(|e| format!("endpoints[{i}].{e}"))?;
                    if endpoint.service != name {
                        return Err(format!(
                            "endpoints[{i}].service: {:?} in the endpoints of {name:?}",
                            endpoint.service
                        ));
                    }
                    value.push(endpoint);
                }
                self.endpoints.insert(name, Held { version, value });
            }
            (ResourceType::AuthorizationPolicy, Body::AuthorizationPolicy(policy)) => {
                let policy = AuthorizationPolicy::try_from(policy).map_err(|e| e.to_string())?;
                named(&policy.metadata.name)?;
                self.policies.insert(
                    name,
                    Held {
                        version,
                        value: policy,
                    },
                );
            }
            (ResourceType::RequestAuthentication, Body::RequestAuthentication(authn)) => {
                let authn = RequestAuthentication::try_from(authn).map_err(|e| e.to_string())?;
                named(&authn.metadata.name)?;
                self.authentications.insert(
                    name,
                    Held {
                        version,
                        value: authn,
                    },
                );
            }
            (ResourceType::KeySet, Body::KeySet(keys)) => {
                // Checked where tokens are verified: a bad set fails only
                // its own tokens (see crate::authn).
                self.key_sets.insert(
                    name,
                    Held {
                        version,
                        value: keys.jwks_json,
                    },
                );
            }
            (ResourceType::Descriptors, Body::Descriptors(set)) => {
                <prost_types::FileDescriptorSet as prost::Message>::decode(
                    set.file_descriptor_set.as_slice(),
                )
                .map_err(|e| format!("file_descriptor_set: {e}"))?;
                self.descriptors.insert(
                    name,
                    Held {
                        version,
                        value: Bytes::from(set.file_descriptor_set),
                    },
                );
            }
            (ResourceType::MeshSettings, Body::MeshSettings(settings)) => {
                let value = mesh_settings(settings)?;
                self.settings = Some(Held { version, value });
            }
            (kind, _) => return Err(format!("body: not a {} resource", kind.as_str_name())),
        }
        Ok(())
    }

    /// The table the held resources make (the routes, endpoints, policies
    /// and authentications of this proxy's scope).
    pub fn table(&self) -> Bootstrap {
        Bootstrap {
            endpoints: self
                .endpoints
                .values()
                .flat_map(|held| held.value.iter().cloned())
                .collect(),
            routes: self.routes.values().map(|h| h.value.clone()).collect(),
            authorization_policies: self.policies.values().map(|h| h.value.clone()).collect(),
            default_authorization: self
                .settings
                .as_ref()
                .map_or_else(DefaultAuthorization::default, |s| {
                    s.value.default_authorization
                }),
            request_authentications: self
                .authentications
                .values()
                .map(|h| h.value.clone())
                .collect(),
            jwks: self
                .key_sets
                .iter()
                .map(|(name, held)| (name.clone(), held.value.clone()))
                .collect(),
        }
    }

    /// The mesh settings, once sent.
    pub fn settings(&self) -> Option<&MeshSettings> {
        self.settings.as_ref().map(|h| &h.value)
    }

    /// Every registered app's descriptors (gateways).
    pub fn descriptor_sets(&self) -> Vec<Vec<u8>> {
        self.descriptors
            .values()
            .map(|h| h.value.to_vec())
            .collect()
    }

    /// What is held, by version: a new stream starts from it.
    pub fn known(&self) -> Vec<ResourceVersion> {
        fn each<'a, T>(
            kind: ResourceType,
            map: &'a BTreeMap<String, Held<T>>,
        ) -> impl Iterator<Item = ResourceVersion> + 'a {
            map.iter().map(move |(name, held)| ResourceVersion {
                r#type: kind as i32,
                name: name.clone(),
                version: held.version.clone(),
            })
        }
        let mut known: Vec<ResourceVersion> = each(ResourceType::Route, &self.routes)
            .chain(each(ResourceType::Endpoints, &self.endpoints))
            .chain(each(ResourceType::AuthorizationPolicy, &self.policies))
            .chain(each(
                ResourceType::RequestAuthentication,
                &self.authentications,
            ))
            .chain(each(ResourceType::KeySet, &self.key_sets))
            .chain(each(ResourceType::Descriptors, &self.descriptors))
            .collect();
        if let Some(held) = &self.settings {
            known.push(ResourceVersion {
                r#type: ResourceType::MeshSettings as i32,
                name: pb::MESH_SETTINGS_NAME.to_owned(),
                version: held.version.clone(),
            });
        }
        known
    }

    /// The resources refused and not replaced since: what an ACK lists.
    pub fn refused(&self) -> Vec<ResourceNack> {
        self.refused.values().cloned().collect()
    }
}

impl Touched {
    fn note(&mut self, kind: ResourceType) {
        match kind {
            ResourceType::Route | ResourceType::Descriptors => self.reflection = true,
            ResourceType::MeshSettings => self.settings = true,
            _ => {}
        }
    }
}

/// The pushed settings, checked.
fn mesh_settings(settings: pb::MeshSettings) -> Result<MeshSettings, String> {
    let mtls_mode = match pb::MtlsMode::try_from(settings.mtls_mode) {
        Ok(pb::MtlsMode::Strict) => MeshMtlsMode::Strict,
        Ok(pb::MtlsMode::Permissive) => MeshMtlsMode::Permissive,
        Err(_) => {
            return Err(format!(
                "mtls_mode: {}: this proxy knows strict and permissive",
                settings.mtls_mode
            ))
        }
    };
    let default_authorization =
        match pb::DefaultAuthorization::try_from(settings.default_authorization) {
            Ok(pb::DefaultAuthorization::AllAuthenticated) => {
                DefaultAuthorization::AllAuthenticated
            }
            Ok(pb::DefaultAuthorization::Deny) => DefaultAuthorization::Deny,
            Err(_) => {
                return Err(format!(
                    "default_authorization: {}: this proxy knows all-authenticated and deny",
                    settings.default_authorization
                ))
            }
        };
    let trust_bundle = if settings.trust_anchors_der.is_empty() {
        None
    } else {
        let anchors = settings
            .trust_anchors_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        Some(
            TrustBundle::new(anchors, settings.trust_bundle_version)
                .map_err(|e| format!("trust_anchors_der: {e}"))?,
        )
    };
    Ok(MeshSettings {
        mtls_mode,
        trust_bundle,
        renew_unless_issued_by: settings.renew_certificates_not_issued_by,
        default_authorization,
    })
}

#[cfg(test)]
mod tests;
