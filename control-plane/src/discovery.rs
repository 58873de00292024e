//! The control plane's side of discovery: one stream per sidecar. Register
//! the node under a lease kept alive while the stream lives, push a table
//! whenever the sidecar's table changes, record its ACKs and NACKs, and
//! revoke the lease when the stream ends (so a sidecar that leaves is gone
//! at once, and one that dies is gone within the TTL).
//!
//! A stream costs the replica little: a session task, the version of what
//! it last pushed (not a copy of it), and pushes that are buffers shared by
//! every stream (see [`crate::push`]). That is why the gRPC edge is written
//! by hand ([`DiscoveryServer`]): tonic's generated one would encode every
//! push again into a buffer per stream, and keep that buffer.

mod body;
mod server;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh::identity::{SpiffeId, Workload};
use mesh::model::Endpoint;
use mesh::proto::mesh::v1::sidecar_message::Message;
use mesh::proto::mesh::v1::{Node, SidecarMessage};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use self::body::PushBody;
pub use self::server::DiscoveryServer;
use crate::access::Access;
use crate::index::Published;
use crate::keys;
use crate::metrics::Metrics;
use crate::registration::{Registration, SidecarStatus};
use crate::sessions::Sessions;
use crate::store::{LeaseId, Precondition, Revision, Store, StoreError};

/// How long a new stream may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a replica treats discovery streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamPolicy {
    /// Registrations live this long without keep-alives.
    pub lease_ttl: Duration,
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
    lease_ttl: Duration,
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
            lease_ttl: policy.lease_ttl,
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
    Ok(Registration {
        endpoint,
        grpc_services: node.grpc_services.clone(),
    })
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

/// Writes a node's keys under a fresh lease.
async fn register<S: Store>(
    store: &S,
    ttl: Duration,
    registration: &Registration,
    descriptors: &[u8],
) -> Result<LeaseId, StoreError> {
    let lease = store.grant_lease(ttl).await?;
    let endpoint = &registration.endpoint;
    let value = serde_json::to_vec(registration).unwrap_or_default();
    store
        .put(
            &keys::endpoint(&endpoint.service, &endpoint.instance),
            value,
            Precondition::Any,
            Some(lease),
        )
        .await?;
    store
        .put(
            &keys::descriptors(&endpoint.service, &endpoint.instance),
            descriptors.to_vec(),
            Precondition::Any,
            Some(lease),
        )
        .await?;
    Ok(lease)
}

impl<S: Store> DiscoveryService<S> {
    /// Opens a stream: checks the Hello, registers the node, starts its
    /// session. The body is what the sidecar is sent.
    async fn subscribe(
        &self,
        mut inbound: Streaming<SidecarMessage>,
        peer: Option<SpiffeId>,
    ) -> Result<PushBody, Status> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("stream closed before its Hello"))?;
        let (node, current_version) = match first.message {
            Some(Message::Hello(hello)) => (
                hello
                    .node
                    .ok_or_else(|| Status::invalid_argument("hello.node: required"))?,
                hello.current_version,
            ),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ))
            }
        };
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
            let lease = register(
                &self.store,
                self.lease_ttl,
                &registration,
                &node.file_descriptor_set,
            )
            .await
            .map_err(|e| {
                self.metrics.store_error("register");
                Status::unavailable(format!("cannot register: {e}"))
            })?;
            Some((registration, lease))
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
        // The latest push only: one the stream has not taken yet is
        // superseded by a newer one, never queued behind it.
        let (tx, rx) = watch::channel(Bytes::new());
        let session = Session {
            id,
            store: self.store.clone(),
            lease_ttl: self.lease_ttl,
            sessions: self.sessions.clone(),
            node,
            registered,
            table_sent: None,
            services_sent: None,
            metrics: self.metrics.clone(),
        };
        // A sidecar that has a table keeps it until this replica has seen the
        // others re-register (after a control-plane outage, the store has
        // lost their leases).
        let hold = if current_version > 0 {
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
    lease_ttl: Duration,
    sessions: Arc<Sessions>,
    node: Node,
    registered: Option<(Registration, LeaseId)>,
    /// The `table_revision` of the last push, to push only what changed
    /// for this node.
    table_sent: Option<Revision>,
    /// The `services_revision` of the last push (gateways).
    services_sent: Option<Revision>,
    metrics: Arc<Metrics>,
}

impl<S: Store> Session<S> {
    async fn run(
        mut self,
        mut inbound: Streaming<SidecarMessage>,
        pushes: watch::Sender<Bytes>,
        mut published: watch::Receiver<Arc<Published>>,
        hold: Duration,
        stop: CancellationToken,
    ) {
        let mut keepalive = tokio::time::interval(self.lease_ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        published.mark_changed();
        let held = tokio::time::sleep(hold);
        tokio::pin!(held);
        let mut holding = !hold.is_zero();
        loop {
            tokio::select! {
                () = &mut held, if holding => {
                    holding = false;
                    published.mark_changed();
                }
                changed = published.changed(), if !holding => {
                    if changed.is_err() {
                        break;
                    }
                    let current = published.borrow_and_update().clone();
                    if let Some((version, push)) = self.push_if_changed(&current) {
                        if pushes.send(push).is_err() {
                            break;
                        }
                        self.metrics.pushed();
                        self.sessions.update(self.id, |s| s.pushed_version = version);
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.on_message(message),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(instance = %self.node.instance, %status, "stream error");
                        break;
                    }
                },
                // Boxed: the store's futures are large and rare; inline, they
                // would make every idle session as large as they are.
                _ = keepalive.tick(), if self.registered.is_some() => Box::pin(self.keep_alive()).await,
                () = pushes.closed() => break,
                () = stop.cancelled() => break,
            }
        }
        if let Some((_, lease)) = &self.registered {
            if let Err(error) = Box::pin(self.store.revoke(*lease)).await {
                self.metrics.store_error("revoke");
                tracing::warn!(instance = %self.node.instance, %error, "cannot revoke lease; it will expire");
            }
        }
        self.sessions.close(self.id);
        tracing::info!(service = %self.node.service, instance = %self.node.instance, "sidecar disconnected");
    }

    /// The push `current` makes for this node, with its version, if what
    /// the node gets changed since its last push.
    fn push_if_changed(&mut self, current: &Published) -> Option<(u64, Bytes)> {
        if current.revision == 0 {
            return None; // the store has not been read yet
        }
        let table_changed = self.table_sent != Some(current.table_revision);
        let services_changed =
            self.node.gateway && self.services_sent != Some(current.services_revision);
        if !table_changed && !services_changed {
            return None;
        }
        self.table_sent = Some(current.table_revision);
        let push = if self.node.gateway {
            self.services_sent = Some(current.services_revision);
            current.gateway_push()
        } else {
            current.sidecar_push()
        };
        Some((current.revision as u64, push))
    }

    fn on_message(&self, message: SidecarMessage) {
        match message.message {
            Some(Message::Ack(ack)) => {
                tracing::debug!(instance = %self.node.instance, version = ack.version, "ACK");
                self.metrics.acked();
                self.sessions.update(self.id, |s| {
                    s.acked_version = ack.version;
                    s.nack_reason.clear();
                });
            }
            Some(Message::Nack(nack)) => {
                tracing::warn!(
                    instance = %self.node.instance,
                    version = nack.version,
                    reason = %nack.reason,
                    "NACK: sidecar refused its table"
                );
                self.metrics.nacked();
                self.sessions.update(self.id, |s| {
                    s.nack_reason = format!("v{}: {}", nack.version, nack.reason)
                });
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
    }

    async fn keep_alive(&mut self) {
        let Some((registration, lease)) = &self.registered else {
            return;
        };
        match self.store.keep_alive(*lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseExpired { .. }) => {
                // The store lost the lease (e.g. we could not reach it for
                // longer than the TTL): register again under a new one.
                tracing::warn!(instance = %self.node.instance, "lease expired; registering again");
                self.metrics.store_error("keep_alive");
                match register(
                    &self.store,
                    self.lease_ttl,
                    registration,
                    &self.node.file_descriptor_set,
                )
                .await
                {
                    Ok(new_lease) => {
                        let registration = registration.clone();
                        self.registered = Some((registration, new_lease));
                    }
                    Err(error) => {
                        self.metrics.store_error("register");
                        tracing::warn!(%error, "re-registration failed; will retry");
                    }
                }
            }
            Err(error) => {
                self.metrics.store_error("keep_alive");
                tracing::warn!(%error, "lease keep-alive failed; will retry");
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
            lease_ttl: Duration::from_secs(3),
            sessions: Arc::default(),
            node: Node::default(),
            registered: None,
            table_sent: None,
            services_sent: None,
            metrics: Arc::default(),
        };
        let inbound = Streaming::new_request(
            tonic_prost::ProstDecoder::<SidecarMessage>::default(),
            tonic::body::Body::empty(),
            None,
            None,
        );
        let (pushes, _) = watch::channel(Bytes::new());
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
