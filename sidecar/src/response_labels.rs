//! The labels a finished call is counted under, bounded whatever clients
//! send: a label set is a time series the proxy keeps for its lifetime, so
//! a label copied from the request (the path, any status number) would let
//! one client grow the proxy's memory, and every scrape, without bound by
//! calling random method names.
//!
//! - `route`: the route that took the call (its name, from the table;
//!   `inbound` for calls to the local app; `none` when no route did).
//! - `method`: `pkg.Service/Method` only if the method is known: a method
//!   route's own, or one of the destination's registered services (its
//!   descriptors: the local app's for inbound, the mesh-wide ones the
//!   gateway is pushed). Anything else is `other`. Where a service's
//!   descriptors are unknown (a static bootstrap, no registry), the first
//!   [`MAX_UNREGISTERED_METHODS`] methods seen keep their name and the
//!   rest are `other`, so a mesh without descriptors still tells its
//!   methods apart and stays bounded.
//! - `code`: 0 to 16 (the codes gRPC defines), else `other`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use mesh::model::Bootstrap;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::metrics::Direction;

/// Methods of a service without descriptors that keep their own label;
/// later ones are `other`.
pub const MAX_UNREGISTERED_METHODS: usize = 32;

/// The route label of a call no route took.
const NO_ROUTE: &str = "none";
/// The method or code label of anything not known.
const OTHER: &str = "other";
/// The largest gRPC status code (UNAUTHENTICATED).
const MAX_GRPC_CODE: i32 = 16;

/// The labels of a finished call: `direction`, `service`, `route`,
/// `method`, `code` (see the module docs for their bounds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    pub(crate) direction: Direction,
    pub(crate) service: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) method: Arc<str>,
    /// The code, or -1 for `other`.
    pub(crate) code: i32,
}

impl ResponseLabels {
    /// `code` as counted: itself if gRPC defines it, else -1 (`other`).
    pub fn bounded_code(code: i32) -> i32 {
        if (0..=MAX_GRPC_CODE).contains(&code) {
            code
        } else {
            -1
        }
    }
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("service", &*self.service).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("method", &*self.method).encode(encoder.encode_label())?;
        if self.code < 0 {
            ("code", OTHER).encode(encoder.encode_label())
        } else {
            ("code", self.code).encode(encoder.encode_label())
        }
    }
}

/// A call's `route` and `method` labels.
#[derive(Debug, Clone)]
pub struct Label {
    /// The route's name.
    pub route: Arc<str>,
    /// `pkg.Service/Method`, or `other`.
    pub method: Arc<str>,
}

/// A service a route takes as a whole.
#[derive(Debug)]
struct ServiceEntry {
    route: Arc<str>,
    /// Its descriptors are known: a method not among them is `other`.
    registered: bool,
    /// Without descriptors: the methods seen first, up to the cap. Read
    /// on every call without a lock; written at most
    /// [`MAX_UNREGISTERED_METHODS`] times. Shared with the next index of
    /// the same route and service: were it fresh with every table, each
    /// push would admit another batch of random names.
    seen: Arc<ArcSwap<HashMap<String, Arc<str>>>>,
}

impl ServiceEntry {
    /// An entry for `route`, keeping what `previous` (the same route's
    /// entry in the last index, if any) has seen.
    fn new(route: Arc<str>, registered: bool, previous: Option<&ServiceEntry>) -> Self {
        let seen = previous
            .filter(|p| p.route == route)
            .map_or_else(Default::default, |p| p.seen.clone());
        Self {
            route,
            registered,
            seen,
        }
    }

    fn label(&self, path: &str, other: &Arc<str>) -> Label {
        let label = |method: &Arc<str>| Label {
            route: self.route.clone(),
            method: method.clone(),
        };
        if self.registered {
            return label(other);
        }
        let seen = self.seen.load();
        if let Some(method) = seen.get(path) {
            return label(method);
        }
        if seen.len() >= MAX_UNREGISTERED_METHODS {
            return label(other);
        }
        let method: Arc<str> = Arc::from(&path[1..]);
        let mut admitted = true;
        self.seen.rcu(|seen| {
            let mut next = HashMap::clone(seen);
            admitted = next.contains_key(path) || next.len() < MAX_UNREGISTERED_METHODS;
            if admitted {
                next.entry(path.to_owned())
                    .or_insert_with(|| method.clone());
            }
            next
        });
        label(if admitted { &method } else { other })
    }
}

/// How one listener's calls are labelled: built from its table (routed
/// listeners) or its app's descriptors (inbound), swapped whole.
#[derive(Debug)]
pub struct LabelIndex {
    /// Known methods by path (`/pkg.Service/Method`).
    methods: HashMap<String, Label>,
    /// Services routed as a whole, by name.
    services: HashMap<String, ServiceEntry>,
    /// Any other service (inbound: everything goes to the app).
    fallback: Option<ServiceEntry>,
    none: Arc<str>,
    other: Arc<str>,
}

impl Default for LabelIndex {
    /// No route, nothing known: every call is `none`/`other`.
    fn default() -> Self {
        Self {
            methods: HashMap::new(),
            services: HashMap::new(),
            fallback: None,
            none: Arc::from(NO_ROUTE),
            other: Arc::from(OTHER),
        }
    }
}

impl LabelIndex {
    /// Labels for a routed listener's table: method routes' methods, and
    /// for service routes the registered methods in `known`
    /// (`pkg.Service/Method`). Unregistered methods seen under `previous`
    /// (the listener's last index) keep their places.
    pub fn routed(source: &Bootstrap, known: &HashSet<String>, previous: &LabelIndex) -> Self {
        let mut index = Self::default();
        for route in &source.routes {
            let name: Arc<str> = Arc::from(route.metadata.name.as_str());
            let service = &route.spec.matches.service;
            if route.spec.matches.method.is_some() {
                continue;
            }
            let prefix = format!("{service}/");
            let mut registered = false;
            for method in known.iter().filter(|m| m.starts_with(&prefix)) {
                registered = true;
                index.methods.insert(
                    format!("/{method}"),
                    Label {
                        route: name.clone(),
                        method: Arc::from(method.as_str()),
                    },
                );
            }
            let entry = ServiceEntry::new(name, registered, previous.services.get(service));
            index.services.insert(service.clone(), entry);
        }
        // A method route wins over its service's route, here as in routing.
        for route in source.routes.iter() {
            if let Some(method) = &route.spec.matches.method {
                let method = format!("{}/{method}", route.spec.matches.service);
                index.methods.insert(
                    format!("/{method}"),
                    Label {
                        route: Arc::from(route.metadata.name.as_str()),
                        method: Arc::from(method),
                    },
                );
            }
        }
        index
    }

    /// Labels for calls to the local app, all counted under `route`:
    /// its registered methods in `known` (none known yet: the first seen,
    /// keeping those `previous` saw).
    pub fn app(route: &str, known: &HashSet<String>, previous: Option<&LabelIndex>) -> Self {
        let route: Arc<str> = Arc::from(route);
        let mut index = Self::default();
        for method in known {
            index.methods.insert(
                format!("/{method}"),
                Label {
                    route: route.clone(),
                    method: Arc::from(method.as_str()),
                },
            );
        }
        let before = previous.and_then(|p| p.fallback.as_ref());
        index.fallback = Some(ServiceEntry::new(route, !known.is_empty(), before));
        index
    }

    /// The labels of a call to `path` (a request's `:path`).
    pub fn label(&self, path: &str) -> Label {
        if let Some(label) = self.methods.get(path) {
            return label.clone();
        }
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            .map(|(s, _)| s);
        let entry = service
            .and_then(|s| self.services.get(s))
            .or(self.fallback.as_ref().filter(|_| service.is_some()));
        match entry {
            Some(entry) => entry.label(path, &self.other),
            None => Label {
                route: self.none.clone(),
                method: self.other.clone(),
            },
        }
    }
}

/// Every method (`pkg.Service/Method`) of every service in encoded
/// `FileDescriptorSet`s; sets that do not decode are skipped (they came
/// from a registry that checked them, and a label is not worth failing for).
pub fn methods_of<'a>(sets: impl IntoIterator<Item = &'a [u8]>) -> HashSet<String> {
    let mut methods = HashSet::new();
    for bytes in sets {
        let Ok(set) = FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                let name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    methods.insert(format!("{name}/{}", method.name()));
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests;
