//! The control plane's side of discovery: one stream per proxy. Register
//! the node under the replica's registration lease (one for all its
//! sidecars, see [`crate::registration_lease`]), send the resources of its
//! scope as they change ([`crate::delta`]), record its ACKs and per-resource
//! NACKs, take its on-demand subscriptions, and delete the registration
//! when the stream ends (so a sidecar that leaves or dies is gone at once;
//! only a replica that dies leaves keys behind, for at most the lease's
//! TTL, while its sidecars register with another replica).
//!
//! A stream costs the replica little: a session task, the versions of the
//! few resources in its scope (not copies of them), and updates assembled
//! from resources encoded once per change (see [`crate::catalog`]). That is
//! why the gRPC edge is written by hand ([`DiscoveryServer`]): tonic's
//! generated one would encode every resource again for every stream.

mod body;
mod server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh::backoff::Backoff;
use mesh::identity::{SpiffeId, Workload};
use mesh::model::Endpoint;
use mesh::proto::mesh::v1::discovery_request::Message;
use mesh::proto::mesh::v1::{DiscoveryRequest, Hello, Node, ResourceType, SchemaVersion};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use self::body::PushBody;
pub use self::server::DiscoveryServer;
use crate::access::Access;
use crate::catalog::{ResourceKey, Scope};
use crate::delta::StreamState;
use crate::index::Published;
use crate::keys;
use crate::metrics::Metrics;
use crate::registration::{Registration, SidecarStatus};
use crate::sessions::Sessions;
use crate::store::{LeaseId, Precondition, Revision, Store, StoreError};

/// How long a new stream may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a registration waits for the replica's lease (the store is
/// unreachable, or the replica has just started).
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most gRPC services one stream may subscribe to: a proxy's scope is
/// the services its app calls, tens; the bound keeps a hostile proxy from
/// growing the replica's memory.
const MAX_SUBSCRIPTIONS: usize = 1024;

/// The most resources a Hello may say the proxy has: a gateway of a large
/// mesh holds a few thousand; the bound keeps a hostile Hello from costing
/// the replica more than that.
const MAX_KNOWN: usize = 50_000;

/// The longest refusal reason kept per resource, and for all of a proxy's
/// refusals together (what `meshctl status` and `/syncz` show).
const MAX_REASON: usize = 512;
/// See [`MAX_REASON`].
const MAX_STATUS_REASON: usize = 4096;

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// How a replica treats discovery streams.
#[derive(Debug, Clone)]
pub struct StreamPolicy {
    /// The replica's registration lease (none while it has none).
    pub lease: watch::Receiver<Option<LeaseId>>,
    /// For this long after start, sidecars that already have a table get
    /// their first push only when it ends.
    pub warmup: Duration,
    /// Whether a registration must match the caller's certificate.
    pub access: Access,
}

/// The Discovery gRPC service of one replica.
pub struct DiscoveryService<S> {
    store: S,
    published: watch::Receiver<Arc<Published>>,
    lease: watch::Receiver<Option<LeaseId>>,
    sessions: Arc<Sessions>,
    stop: CancellationToken,
    started: std::time::Instant,
    warmup: Duration,
    metrics: Arc<Metrics>,
    access: Access,
}

impl<S: Store> DiscoveryService<S> {
    /// A service registering nodes in `store` as `policy` says, pushing
    /// what `published` holds. Pushes, ACKs, NACKs and store errors are
    /// counted in `metrics`.
    pub fn new(
        store: S,
        published: watch::Receiver<Arc<Published>>,
        policy: StreamPolicy,
        sessions: Arc<Sessions>,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            access: policy.access,
            store,
            published,
            lease: policy.lease,
            sessions,
            stop,
            started: std::time::Instant::now(),
            warmup: policy.warmup,
            metrics,
        }
    }
}

/// Checks a node's identity; the error names the field.
fn registration(node: &Node) -> Result<Registration, Status> {
    let endpoint = Endpoint {
        service: node.service.clone(),
        instance: node.instance.clone(),
        address: node.address.clone(),
        version: node.version.clone(),
        weight: node.weight,
    };
    endpoint
        .validate()
        .map_err(|e| Status::invalid_argument(format!("hello.node.{e}")))?;
    // Checked here, once, so a bad set never reaches a gateway.
    if !node.file_descriptor_set.is_empty() {
        <prost_types::FileDescriptorSet as prost::Message>::decode(
            node.file_descriptor_set.as_slice(),
        )
        .map_err(|e| {
            Status::invalid_argument(format!(
                "hello.node.file_descriptor_set: not a google.protobuf.FileDescriptorSet: {e}"
            ))
        })?;
    }
    Ok(Registration {
        endpoint,
        grpc_services: node.grpc_services.clone(),
    })
}

/// Service names a proxy declares or subscribes to: at most
/// [`MAX_SUBSCRIPTIONS`] of them (more is refused, naming the field); a
/// name that is no service name ([`mesh::model::is_subscription_name`]) is
/// left out with a warning, never a reason to refuse the stream: nothing
/// serves it, and a proxy refused for it would never register again.
fn checked_names(field: &str, names: Vec<String>) -> Result<BTreeSet<String>, Status> {
    if names.len() > MAX_SUBSCRIPTIONS {
        return Err(Status::invalid_argument(format!(
            "{field}: more than {MAX_SUBSCRIPTIONS} names"
        )));
    }
    Ok(names
        .into_iter()
        .filter(|name| {
            let valid = mesh::model::is_subscription_name(name);
            if !valid {
                tracing::warn!(field, name = %name.escape_debug(), "not a service name; ignored");
            }
            valid
        })
        .collect())
}

/// A proxy registers only as what its certificate proves: a sidecar of
/// service S needs `/svc/S`, a gateway named G needs `/gateway/G`. So no
/// one can register as `payments` (and take its calls) without a
/// `payments` credential, nor take over another service's instance ids.
fn bound_to_identity(node: &Node, peer: Option<&SpiffeId>) -> Result<(), Status> {
    let Some(peer) = peer else {
        return Err(Status::unauthenticated(
            "a proxy certificate is required to register (mesh.v1.Identity/Certify)",
        ));
    };
    let allowed = match peer.workload() {
        Workload::Service(name) => !node.gateway && *name == node.service,
        Workload::Gateway(name) => node.gateway && *name == node.service,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        let claimed = if node.gateway { "gateway" } else { "service" };
        Err(Status::permission_denied(format!(
            "{peer} may not register as {claimed} {:?}",
            node.service
        )))
    }
}

/// A node's keys as this stream wrote them: deleted when the stream ends
/// only if no one (another replica, a newer stream) wrote them since.
#[derive(Debug, Clone)]
struct Registered {
    registration: Registration,
    lease: LeaseId,
    endpoint_revision: Revision,
    descriptors_revision: Revision,
}

/// Writes a node's keys under `lease`.
async fn register<S: Store>(
    store: &S,
    lease: LeaseId,
    registration: Registration,
    descriptors: &[u8],
) -> Result<Registered, StoreError> {
    let endpoint = &registration.endpoint;
    let value = serde_json::to_vec(&registration).unwrap_or_default();
    let descriptors_revision = store
        .put(
            &keys::descriptors(&endpoint.service, &endpoint.instance),
            descriptors.to_vec(),
            Precondition::Any,
            Some(lease),
        )
        .await?;
    // The endpoint last: once it is routable, its descriptors are there.
    let endpoint_revision = store
        .put(
            &keys::endpoint(&endpoint.service, &endpoint.instance),
            value,
            Precondition::Any,
            Some(lease),
        )
        .await?;
    Ok(Registered {
        registration,
        lease,
        endpoint_revision,
        descriptors_revision,
    })
}

/// Deletes what [`register`] wrote, unless it was written again since.
async fn deregister<S: Store>(store: &S, registered: &Registered) -> Result<(), StoreError> {
    let endpoint = &registered.registration.endpoint;
    for (key, revision) in [
        (
            keys::endpoint(&endpoint.service, &endpoint.instance),
            registered.endpoint_revision,
        ),
        (
            keys::descriptors(&endpoint.service, &endpoint.instance),
            registered.descriptors_revision,
        ),
    ] {
        match store.delete(&key, Precondition::Revision(revision)).await {
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

impl<S: Store> DiscoveryService<S> {
    /// Opens a stream: checks the Hello, registers the node, starts its
    /// session. The body is what the sidecar is sent.
    async fn subscribe(
        &self,
        mut inbound: Streaming<DiscoveryRequest>,
        peer: Option<SpiffeId>,
    ) -> Result<PushBody, Status> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("stream closed before its Hello"))?;
        let Some(Message::Hello(hello)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message must be a Hello",
            ));
        };
        if hello.schema_version != SchemaVersion::SchemaVersion1 as i32 {
            return Err(Status::failed_precondition(format!(
                "hello.schema_version: this control plane speaks schema version {}, the proxy {}",
                SchemaVersion::SchemaVersion1 as i32,
                hello.schema_version
            )));
        }
        let Hello {
            node,
            calls,
            subscribed,
            subscribe_id,
            known,
            ..
        } = hello;
        let node = node.ok_or_else(|| Status::invalid_argument("hello.node: required"))?;
        if known.len() > MAX_KNOWN {
            return Err(Status::invalid_argument(format!(
                "hello.known: more than {MAX_KNOWN} resources"
            )));
        }
        let calls = checked_names("hello.calls", calls)?;
        let subscribed = checked_names("hello.subscribed", subscribed)?;
        if node.instance.is_empty() {
            return Err(Status::invalid_argument("hello.node.instance: required"));
        }
        if self.access == Access::Enforced {
            if let Err(status) = bound_to_identity(&node, peer.as_ref()) {
                self.metrics.refused_registration();
                tracing::warn!(
                    target: "audit",
                    service = %node.service,
                    instance = %node.instance,
                    gateway = node.gateway,
                    peer = %peer.as_ref().map(ToString::to_string).unwrap_or_default(),
                    reason = status.message(),
                    "registration refused"
                );
                return Err(status);
            }
        }
        let registered = if node.gateway {
            None
        } else {
            let registration = registration(&node)?;
            let mut lease = self.lease.clone();
            let lease =
                match tokio::time::timeout(LEASE_TIMEOUT, lease.wait_for(Option::is_some)).await {
                    Ok(Ok(lease)) => *lease,
                    _ => None,
                };
            let Some(lease) = lease else {
                return Err(Status::unavailable(
                    "cannot register: this replica has no lease in the store now",
                ));
            };
            let registered = register(&self.store, lease, registration, &node.file_descriptor_set)
                .await
                .map_err(|e| {
                    self.metrics.store_error("register");
                    Status::unavailable(format!("cannot register: {e}"))
                })?;
            Some(registered)
        };
        tracing::info!(
            service = %node.service,
            instance = %node.instance,
            gateway = node.gateway,
            "sidecar connected"
        );
        let id = self.sessions.open(SidecarStatus {
            service: node.service.clone(),
            instance: node.instance.clone(),
            gateway: node.gateway,
            admin_address: node.admin_address.clone(),
            identity: peer.map(|p| p.to_string()).unwrap_or_default(),
            ..SidecarStatus::default()
        });
        // One update at a time: while the stream has not taken it, changes
        // gather into the next.
        let (tx, rx) = mpsc::channel(1);
        let scope = Scope {
            service: node.service.clone(),
            gateway: node.gateway,
            calls,
            grpc_services: subscribed,
        };
        let session = Session {
            id,
            store: self.store.clone(),
            lease: self.lease.clone(),
            sessions: self.sessions.clone(),
            has_resources: !known.is_empty(),
            outstanding: None,
            nacked: Vec::new(),
            state: StreamState::resume(&known),
            node,
            registered,
            scope,
            subscribe_id,
            metrics: self.metrics.clone(),
        };
        // A proxy that has resources keeps them until this replica has seen
        // the others re-register (after a control-plane outage, the store
        // has lost their leases).
        let hold = if session.has_resources {
            self.warmup.saturating_sub(self.started.elapsed())
        } else {
            Duration::ZERO
        };
        tokio::spawn(session.run(inbound, tx, self.published.clone(), hold, self.stop.clone()));
        Ok(PushBody::new(rx))
    }
}

struct Session<S> {
    id: u64,
    store: S,
    /// The replica's registration lease: when it is replaced, the node is
    /// registered again under the new one.
    lease: watch::Receiver<Option<LeaseId>>,
    sessions: Arc<Sessions>,
    node: Node,
    registered: Option<Registered>,
    /// Which resources the proxy gets.
    scope: Scope,
    /// What it has been sent.
    state: StreamState,
    /// The last Subscribe it sent: the next update answers it.
    subscribe_id: u64,
    /// Whether it had resources when it connected (resuming).
    has_resources: bool,
    /// The nonce of the update sent and not acked yet.
    outstanding: Option<u64>,
    /// The refusals the proxy reported last (type, name, version).
    nacked: Vec<(i32, String, String)>,
    metrics: Arc<Metrics>,
}

impl<S: Store> Session<S> {
    async fn run(
        mut self,
        mut inbound: Streaming<DiscoveryRequest>,
        pushes: mpsc::Sender<Bytes>,
        mut published: watch::Receiver<Arc<Published>>,
        hold: Duration,
        stop: CancellationToken,
    ) {
        let mut stopping = false;
        let held = tokio::time::sleep(hold);
        tokio::pin!(held);
        let mut holding = !hold.is_zero();
        // Whether the proxy may lack something: the first update, a change
        // published, a subscription.
        let mut dirty = true;
        let mut first = true;
        // The latest revision evaluated, and the update not acked yet.
        let mut evaluated = 0;
        loop {
            tokio::select! {
                () = &mut held, if holding => holding = false,
                changed = published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    dirty = true;
                }
                permit = pushes.reserve(), if dirty && !holding => {
                    let Ok(permit) = permit else { break };
                    dirty = false;
                    let current = published.borrow_and_update().clone();
                    if current.revision == 0 {
                        continue; // the store has not been read yet
                    }
                    let revision = current.revision as u64;
                    evaluated = revision;
                    if let Some(update) = self.state.next_update(
                        &current.catalog,
                        &self.scope,
                        revision,
                        self.subscribe_id,
                        first,
                    ) {
                        first = false;
                        self.outstanding = Some(update.nonce);
                        self.metrics.pushed(update.resources, update.frame.len());
                        permit.send(update.frame);
                        self.sessions.update(self.id, |s| s.pushed_version = revision);
                    } else if self.outstanding.is_none() {
                        self.sessions.update(self.id, |s| s.synced_revision = revision);
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        match self.on_message(message, evaluated) {
                            Ok(subscribed) => dirty |= subscribed,
                            Err(status) => {
                                tracing::warn!(instance = %self.node.instance, %status, "closing the stream");
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(instance = %self.node.instance, %status, "stream error");
                        break;
                    }
                },
                // Boxed: the store's futures are large and rare; inline, they
                // would make every idle session as large as they are.
                changed = self.lease.changed(), if self.registered.is_some() => {
                    if changed.is_err() {
                        // The lease task ends only when the replica stops.
                        stopping = true;
                        break;
                    }
                    Box::pin(self.register_again()).await;
                }
                () = pushes.closed() => break,
                () = stop.cancelled() => {
                    stopping = true;
                    break;
                }
            }
        }
        // A replica that stops leaves its sidecars' keys to its lease: they
        // register with another replica before it expires, without a gap.
        self.sessions.close(self.id);
        tracing::info!(service = %self.node.service, instance = %self.node.instance, "sidecar disconnected");
        if let (Some(registered), false) = (&self.registered, stopping) {
            Box::pin(self.deregister_until_done(registered, &stop)).await;
        }
    }

    /// Deletes the registration, retrying while the store is unreachable:
    /// the replica's lease outlives the stream, so a key left behind would
    /// stay routable as long as the replica lives.
    async fn deregister_until_done(&self, registered: &Registered, stop: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let Err(error) = deregister(&self.store, registered).await else {
                return;
            };
            self.metrics.store_error("deregister");
            tracing::warn!(instance = %self.node.instance, %error, "cannot delete the registration yet; retrying");
            let wait = backoff.next_wait();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Stopping: the lease expires and takes the key with it.
                () = stop.cancelled() => return,
            }
        }
    }

    /// Takes one message of the proxy; true when it subscribed to more
    /// (an update answers it); an error ends the stream.
    fn on_message(&mut self, message: DiscoveryRequest, evaluated: u64) -> Result<bool, Status> {
        match message.message {
            Some(Message::Ack(mut ack)) => {
                tracing::debug!(instance = %self.node.instance, nonce = ack.nonce, "ACK");
                if ack.nacks.len() > MAX_KNOWN {
                    return Err(Status::invalid_argument(format!(
                        "ack.nacks: more than {MAX_KNOWN}"
                    )));
                }
                for nack in &mut ack.nacks {
                    truncate(&mut nack.reason, MAX_REASON);
                    truncate(&mut nack.name, MAX_REASON);
                    truncate(&mut nack.version, 64);
                }
                // Acked the last update: in step with all evaluated since.
                let synced = (self.outstanding == Some(ack.nonce)).then(|| {
                    self.outstanding = None;
                    evaluated
                });
                self.metrics.acked();
                // An ACK lists every refusal still standing: each is counted
                // and logged once, when it is new.
                let known: std::collections::HashSet<(i32, &str, &str)> = self
                    .nacked
                    .iter()
                    .map(|(kind, name, version)| (*kind, name.as_str(), version.as_str()))
                    .collect();
                let new_nacks: Vec<_> = ack
                    .nacks
                    .iter()
                    .filter(|n| !known.contains(&(n.r#type, n.name.as_str(), n.version.as_str())))
                    .collect();
                if !new_nacks.is_empty() {
                    self.metrics.nacked(new_nacks.len());
                    for nack in new_nacks {
                        tracing::warn!(
                            instance = %self.node.instance,
                            kind = ?ResourceType::try_from(nack.r#type).unwrap_or_default(),
                            name = %nack.name,
                            version = %nack.version,
                            reason = %nack.reason,
                            "NACK: the proxy refused a resource and keeps its last good version"
                        );
                    }
                }
                self.nacked = ack
                    .nacks
                    .iter()
                    .map(|n| (n.r#type, n.name.clone(), n.version.clone()))
                    .collect();
                // The NACKs an ACK lists are all the proxy refuses now.
                let reason = ack
                    .nacks
                    .iter()
                    .map(|n| {
                        let kind = ResourceType::try_from(n.r#type).unwrap_or_default();
                        let key = ResourceKey::new(kind, &n.name);
                        format!(
                            "{} {}@{}: {}",
                            kind.as_str_name(),
                            key.name,
                            n.version,
                            n.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut reason = reason;
                truncate(&mut reason, MAX_STATUS_REASON);
                self.sessions.update(self.id, |s| {
                    s.acked_version = ack.revision;
                    s.nack_reason = reason;
                    if let Some(synced) = synced {
                        s.synced_revision = synced;
                    }
                });
            }
            Some(Message::Subscribe(subscribe)) => {
                let services = checked_names("subscribe.grpc_services", subscribe.grpc_services)?;
                self.scope.grpc_services.extend(services);
                if self.scope.grpc_services.len() > MAX_SUBSCRIPTIONS {
                    return Err(Status::resource_exhausted(format!(
                        "more than {MAX_SUBSCRIPTIONS} subscriptions on one stream"
                    )));
                }
                tracing::debug!(instance = %self.node.instance, id = subscribe.id, "subscribed");
                self.subscribe_id = self.subscribe_id.max(subscribe.id);
                return Ok(true);
            }
            Some(Message::Credentials(report)) => {
                self.sessions.update(self.id, |s| {
                    s.certificate_not_after_unix = report.certificate_not_after_unix;
                    s.trust_bundle_version = report.trust_bundle_version;
                    s.certificate_not_before_unix = report.certificate_not_before_unix;
                    s.certificate_issuer_fingerprint = report.certificate_issuer_fingerprint;
                });
            }
            Some(Message::Hello(_)) | None => {
                tracing::debug!(instance = %self.node.instance, "ignoring a repeated Hello");
            }
        }
        Ok(false)
    }

    /// Writes the node's keys again under the replica's new lease (the
    /// old one expired: the store dropped them).
    async fn register_again(&mut self) {
        let Some(lease) = *self.lease.borrow_and_update() else {
            return;
        };
        let Some(registered) = &self.registered else {
            return;
        };
        if registered.lease == lease {
            return;
        }
        match register(
            &self.store,
            lease,
            registered.registration.clone(),
            &self.node.file_descriptor_set,
        )
        .await
        {
            Ok(again) => self.registered = Some(again),
            Err(error) => {
                // The lease task replaces a lease that fails again: this
                // runs again then.
                self.metrics.store_error("register");
                tracing::warn!(instance = %self.node.instance, %error, "registering again under the new lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EtcdStore, MemoryStore};

    /// Every connected sidecar holds a session task: it must stay small
    /// (the store's large futures are boxed, the etcd client shared).
    #[tokio::test]
    async fn a_session_costs_little_memory() {
        assert!(std::mem::size_of::<EtcdStore>() <= 64);
        let session = Session {
            id: 0,
            store: MemoryStore::new(),
            lease: watch::channel(None).1,
            sessions: Arc::default(),
            node: Node::default(),
            registered: None,
            scope: Scope::default(),
            state: StreamState::default(),
            subscribe_id: 0,
            has_resources: false,
            outstanding: None,
            nacked: Vec::new(),
            metrics: Arc::default(),
        };
        let inbound = Streaming::new_request(
            tonic_prost::ProstDecoder::<DiscoveryRequest>::default(),
            tonic::body::Body::empty(),
            None,
            None,
        );
        let (pushes, _) = mpsc::channel(1);
        let (_, published) = watch::channel(Arc::new(Published::default()));
        let run = session.run(
            inbound,
            pushes,
            published,
            Duration::ZERO,
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&run);
        assert!(size <= 4096, "a session task is {size} bytes");
    }
}
