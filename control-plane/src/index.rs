//! The control plane's view of the store: a synchronous index fed by the
//! watch, from which every push is built. Pure (no I/O), so its rules are
//! plain unit tests.
//!
//! Bad data found in the store (a route that does not parse or validate, a
//! registration under the wrong key, two routes for one gRPC path) is
//! reported and skipped: it never reaches a sidecar.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use mesh::identity::TrustBundle;
use mesh::model::{
    AuthorizationPolicy, Bootstrap, DefaultAuthorization, RequestAuthentication, Route,
};

use crate::catalog::Catalog;
use crate::keys::{self, Key};
use crate::registration::Registration;
use crate::store::{KeyValue, Revision, Snapshot, WatchBatch, WatchEvent};

/// Everything under the mesh prefix, parsed.
#[derive(Debug, Default, Clone)]
pub struct Index {
    revision: Revision,
    routes: BTreeMap<String, Result<Route, String>>,
    endpoints: BTreeMap<(String, String), Result<Registration, String>>,
    descriptors: BTreeMap<(String, String), Bytes>,
    trust_bundle: Option<(Revision, Result<TrustBundle, String>)>,
    renew_issuer: String,
    /// The stored mTLS mode, as stored (checked when published).
    mtls_mode: Option<(Revision, String)>,
    policies: BTreeMap<String, Result<AuthorizationPolicy, String>>,
    /// The stored default authorization, as stored (checked when published).
    default_authorization: Option<(Revision, String)>,
    request_authentications: BTreeMap<String, Result<RequestAuthentication, String>>,
    /// Fetched key sets (JWKS JSON) by request authentication name.
    jwks: BTreeMap<String, String>,
    unknown: BTreeSet<String>,
}

/// What proxies are sent, built once per change and shared by every
/// stream of the replica.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The store revision this was built at.
    pub revision: Revision,
    /// The table, whole (what the catalog's resources are made of).
    pub table: Bootstrap,
    /// Every resource, encoded, with its version.
    pub catalog: Arc<Catalog>,
    /// The trust bundle proxies must trust (version: its store revision).
    pub trust_bundle: Option<Arc<TrustBundle>>,
    /// The mesh-wide mTLS mode: `strict` or `permissive` (a stored value
    /// that is neither is reported and published as strict).
    pub mtls_mode: &'static str,
    /// Data in the store that was skipped, and why.
    pub problems: Vec<String>,
}

impl Published {
    /// Whether anything differs from `previous` that a stream or an
    /// operator would see: a resource's version, or the problems found.
    pub fn differs_from(&self, previous: &Published) -> bool {
        !(self.catalog.same_as(&previous.catalog) && self.problems == previous.problems)
    }
}

impl Index {
    /// The index of a full read of the prefix.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let mut index = Self {
            revision: snapshot.revision,
            ..Self::default()
        };
        for kv in &snapshot.items {
            index.put(kv);
        }
        index
    }

    /// Applies a batch of watch events, in order; returns whether any of
    /// them can change what is published (a join token's record cannot).
    pub fn apply(&mut self, batch: &WatchBatch) -> bool {
        let mut relevant = false;
        for event in &batch.events {
            relevant |= match event {
                WatchEvent::Put(kv) => self.put(kv),
                WatchEvent::Delete { key, .. } => self.delete(key),
            };
        }
        self.revision = self.revision.max(batch.revision);
        relevant
    }

    /// The latest store revision seen.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the key can change what is published: a join token's
    /// record cannot.
    fn put(&mut self, kv: &KeyValue) -> bool {
        match keys::parse(&kv.key) {
            Key::Route(name) => {
                let parsed = parse_document::<Route>(&name, &kv.value);
                self.routes.insert(name, parsed);
            }
            Key::Endpoint(service, instance) => {
                let parsed = parse_registration(&service, &instance, &kv.value);
                self.endpoints.insert((service, instance), parsed);
            }
            Key::Descriptors(service, instance) => {
                self.descriptors
                    .insert((service, instance), Bytes::from(kv.value.clone()));
            }
            Key::TrustBundle => {
                let parsed = std::str::from_utf8(&kv.value)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| {
                        TrustBundle::from_pem(pem, kv.mod_revision as u64)
                            .map_err(|e| e.to_string())
                    });
                self.trust_bundle = Some((kv.mod_revision, parsed));
            }
            Key::RenewIssuer => {
                self.renew_issuer = String::from_utf8_lossy(&kv.value).trim().to_owned();
            }
            Key::MtlsMode => {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                self.mtls_mode = Some((kv.mod_revision, value));
            }
            Key::AuthorizationPolicy(name) => {
                let parsed = parse_document::<AuthorizationPolicy>(&name, &kv.value);
                self.policies.insert(name, parsed);
            }
            Key::DefaultAuthorization => {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                self.default_authorization = Some((kv.mod_revision, value));
            }
            Key::RequestAuthentication(name) => {
                let parsed = parse_document::<RequestAuthentication>(&name, &kv.value);
                self.request_authentications.insert(name, parsed);
            }
            Key::Jwks(name) => {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                self.jwks.insert(name, value);
            }
            Key::Token(_) => return false,
            Key::Unknown(key) => {
                self.unknown.insert(key);
            }
        }
        true
    }

    /// As [`Index::put`].
    fn delete(&mut self, key: &str) -> bool {
        match keys::parse(key) {
            Key::Route(name) => {
                self.routes.remove(&name);
            }
            Key::Endpoint(service, instance) => {
                self.endpoints.remove(&(service, instance));
            }
            Key::Descriptors(service, instance) => {
                self.descriptors.remove(&(service, instance));
            }
            Key::TrustBundle => self.trust_bundle = None,
            Key::RenewIssuer => self.renew_issuer.clear(),
            Key::MtlsMode => self.mtls_mode = None,
            Key::AuthorizationPolicy(name) => {
                self.policies.remove(&name);
            }
            Key::DefaultAuthorization => self.default_authorization = None,
            Key::RequestAuthentication(name) => {
                self.request_authentications.remove(&name);
            }
            Key::Jwks(name) => {
                self.jwks.remove(&name);
            }
            Key::Token(_) => return false,
            Key::Unknown(key) => {
                self.unknown.remove(&key);
            }
        }
        true
    }

    /// The route stored under `name`, if it is valid.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.get(name).and_then(|r| r.as_ref().ok())
    }

    /// The name of the valid route that takes `path`, if any.
    pub fn route_for_path(&self, path: &str) -> Option<&str> {
        self.routes
            .values()
            .filter_map(|r| r.as_ref().ok())
            .find(|r| r.path() == path)
            .map(|r| r.metadata.name.as_str())
    }

    /// Builds what proxies get from the current state.
    pub fn publish(&self) -> Published {
        let mut problems = Vec::new();
        let mut routes: Vec<Route> = Vec::new();
        for (name, parsed) in &self.routes {
            match parsed {
                Ok(route) => {
                    if let Some(first) = routes.iter().find(|r| r.path() == route.path()) {
                        problems.push(format!(
                            "route {name:?} skipped: {} is already routed by {:?}",
                            route.path(),
                            first.metadata.name
                        ));
                    } else {
                        routes.push(route.clone());
                    }
                }
                Err(why) => problems.push(format!("route {name:?} skipped: {why}")),
            }
        }
        let mut endpoints = Vec::new();
        let mut descriptor_sets = Vec::new();
        for ((service, instance), parsed) in &self.endpoints {
            match parsed {
                Ok(registration) => {
                    endpoints.push(registration.endpoint.clone());
                    if let Some(set) = self.descriptors.get(&(service.clone(), instance.clone())) {
                        // Instances of one app register the same set: the
                        // catalog keeps one resource per content.
                        if !set.is_empty() {
                            descriptor_sets.push(set.clone());
                        }
                    }
                }
                Err(why) => problems.push(format!("endpoint {service}/{instance} skipped: {why}")),
            }
        }
        for key in &self.unknown {
            problems.push(format!("unknown key {key:?} ignored"));
        }
        let trust_bundle = match &self.trust_bundle {
            Some((_, Ok(bundle))) => Some(Arc::new(bundle.clone())),
            Some((revision, Err(why))) => {
                problems.push(format!("trust bundle (revision {revision}) skipped: {why}"));
                None
            }
            None => None,
        };
        // Strict unless validly asked otherwise: a typo in the store must
        // not open the mesh to plaintext.
        let mtls_mode = match &self.mtls_mode {
            None => "strict",
            Some((revision, value)) => keys::mtls_mode(value).unwrap_or_else(|why| {
                problems.push(format!("{why} (revision {revision}): strict is pushed"));
                "strict"
            }),
        };
        let mut authorization_policies = Vec::new();
        for (name, parsed) in &self.policies {
            match parsed {
                Ok(policy) => authorization_policies.push(policy.clone()),
                Err(why) => problems.push(format!("authorization policy {name:?} skipped: {why}")),
            }
        }
        // A value that names no default is reported and the stricter
        // reading (deny) is pushed: a typo must not open the mesh.
        let default_authorization = match &self.default_authorization {
            None => DefaultAuthorization::AllAuthenticated,
            Some((revision, value)) => match keys::default_authorization(value) {
                Ok("deny") => DefaultAuthorization::Deny,
                Ok(_) => DefaultAuthorization::AllAuthenticated,
                Err(why) => {
                    problems.push(format!("{why} (revision {revision}): deny is pushed"));
                    DefaultAuthorization::Deny
                }
            },
        };
        let mut request_authentications = Vec::new();
        let mut jwks = BTreeMap::new();
        for (name, parsed) in &self.request_authentications {
            match parsed {
                Ok(authn) => {
                    request_authentications.push(authn.clone());
                    match self.jwks.get(name) {
                        Some(keys) => {
                            jwks.insert(name.clone(), keys.clone());
                        }
                        None => problems.push(format!(
                            "request authentication {name:?}: no key set fetched yet; its tokens are refused"
                        )),
                    }
                }
                Err(why) => {
                    problems.push(format!("request authentication {name:?} skipped: {why}"))
                }
            }
        }
        let table = Bootstrap {
            endpoints,
            routes,
            authorization_policies,
            default_authorization,
            request_authentications,
            jwks,
        };
        let catalog = Catalog::build(
            &table,
            trust_bundle.as_deref(),
            &self.renew_issuer,
            mtls_mode == "permissive",
            &descriptor_sets,
        );
        Published {
            revision: self.revision,
            table,
            catalog: Arc::new(catalog),
            trust_bundle,
            mtls_mode,
            problems,
        }
    }
}

fn parse_document<D: crate::documents::Document>(name: &str, value: &[u8]) -> Result<D, String> {
    let document: D =
        serde_json::from_slice(value).map_err(|e| format!("not a {}: {e}", D::NOUN))?;
    document.validate().map_err(|e| e.to_string())?;
    if document.name() != name {
        return Err(format!(
            "metadata.name {:?} does not match its key",
            document.name()
        ));
    }
    Ok(document)
}

fn parse_registration(service: &str, instance: &str, value: &[u8]) -> Result<Registration, String> {
    let registration: Registration =
        serde_json::from_slice(value).map_err(|e| format!("not a registration: {e}"))?;
    registration
        .endpoint
        .validate()
        .map_err(|e| e.to_string())?;
    if registration.endpoint.service != service || registration.endpoint.instance != instance {
        return Err("service/instance do not match its key".into());
    }
    Ok(registration)
}

#[cfg(test)]
mod tests;
