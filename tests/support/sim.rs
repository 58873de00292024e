//! A simulated proxy: a real discovery stream (over whatever channel it is
//! given, mTLS in the tests) that says what a proxy would and hands every
//! update to the test, so tests can assert on the stream itself.

use std::time::Duration;

use mesh::proto::mesh::v1::discovery_client::DiscoveryClient;
use mesh::proto::mesh::v1::discovery_request::Message;
use mesh::proto::mesh::v1::{
    DiscoveryRequest, Hello, Node, ResourceAck, ResourceNack, ResourceType, ResourceUpdate,
    ResourceVersion, SchemaVersion, Subscribe,
};
use tokio::sync::mpsc;

/// How long an expected update may take on a loaded 2-core machine (a
/// timeout, not an expected time).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(30);

/// mTLS channels to each control-plane replica of `mesh`, as the workload
/// `tls` proves.
pub async fn channels(
    mesh: &super::TestMesh,
    tls: &std::sync::Arc<mesh::identity::MeshTls>,
) -> Vec<tonic::transport::Channel> {
    use mesh::identity::{SpiffeId, Workload};
    let control_plane =
        SpiffeId::new(tls.trust_domain(), Workload::ControlPlane).expect("a SPIFFE ID");
    let mut channels = Vec::new();
    for uri in &mesh.plan.control_planes {
        channels.push(
            mesh::identity::transport::channel(
                uri,
                tls.clone(),
                control_plane.clone(),
                Duration::from_secs(10),
            )
            .await
            .expect("mTLS to a replica"),
        );
    }
    channels
}

/// A node of service `service` (instance `instance`) at a dead address.
pub fn node(service: &str, instance: &str) -> Node {
    Node {
        service: service.into(),
        instance: instance.into(),
        address: "127.0.0.1:9".into(),
        version: "v1".into(),
        weight: 100,
        ..Node::default()
    }
}

/// A Hello of the current schema.
pub fn hello(node: Node, calls: &[&str], known: Vec<ResourceVersion>) -> Hello {
    Hello {
        schema_version: SchemaVersion::SchemaVersion1 as i32,
        node: Some(node),
        calls: calls.iter().map(|c| c.to_string()).collect(),
        known,
        ..Hello::default()
    }
}

/// One open stream.
pub struct SimProxy {
    outbound: mpsc::Sender<DiscoveryRequest>,
    updates: mpsc::UnboundedReceiver<ResourceUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl SimProxy {
    /// Opens a stream with `hello`; resolves once its first update came
    /// (returned), or with the status that refused it. With `auto_ack`,
    /// every update is acknowledged (no NACK) as it comes; otherwise the
    /// test does it with [`SimProxy::ack`].
    pub async fn open(
        channel: tonic::transport::Channel,
        hello: Hello,
        auto_ack: bool,
    ) -> Result<(Self, ResourceUpdate), tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            message: Some(Message::Hello(hello)),
        })
        .await
        .map_err(|_| tonic::Status::unavailable("stream closed"))?;
        let mut stream = DiscoveryClient::new(channel)
            .resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("stream ended before an update"))?;
        if auto_ack {
            tx.send(ack_of(&first, Vec::new())).await.ok();
        }
        let (updates_tx, updates) = mpsc::unbounded_channel();
        // Weak: dropping the proxy's sender ends the request stream.
        let acks = tx.downgrade();
        let task = tokio::spawn(async move {
            while let Ok(Some(update)) = stream.message().await {
                if auto_ack {
                    let Some(acks) = acks.upgrade() else { break };
                    if acks.send(ack_of(&update, Vec::new())).await.is_err() {
                        break;
                    }
                }
                if updates_tx.send(update).is_err() && !auto_ack {
                    break;
                }
            }
        });
        Ok((
            Self {
                outbound: tx,
                updates,
                task,
            },
            first,
        ))
    }

    /// The next update, within [`UPDATE_TIMEOUT`].
    pub async fn next_update(&mut self) -> ResourceUpdate {
        tokio::time::timeout(UPDATE_TIMEOUT, self.updates.recv())
            .await
            .expect("an update in time")
            .expect("the stream is open")
    }

    /// The next update if one comes within `wait` (to show that none does,
    /// wait on something that proves the replica moved on first).
    pub async fn update_within(&mut self, wait: Duration) -> Option<ResourceUpdate> {
        tokio::time::timeout(wait, self.updates.recv())
            .await
            .ok()
            .flatten()
    }

    /// Answers `update`, refusing `nacks` (type, name, reason).
    pub async fn ack(&self, update: &ResourceUpdate, nacks: &[(ResourceType, &str, &str)]) {
        let nacks = nacks
            .iter()
            .map(|(kind, name, reason)| ResourceNack {
                r#type: *kind as i32,
                name: name.to_string(),
                version: update
                    .resources
                    .iter()
                    .find(|r| r.r#type == *kind as i32 && r.name == *name)
                    .map(|r| r.version.clone())
                    .unwrap_or_default(),
                reason: reason.to_string(),
            })
            .collect();
        self.outbound
            .send(ack_of(update, nacks))
            .await
            .expect("the stream is open");
    }

    /// Subscribes to more gRPC services.
    pub async fn subscribe(&self, id: u64, grpc_services: &[&str]) {
        let subscribe = Subscribe {
            id,
            grpc_services: grpc_services.iter().map(|s| s.to_string()).collect(),
        };
        self.outbound
            .send(DiscoveryRequest {
                message: Some(Message::Subscribe(subscribe)),
            })
            .await
            .expect("the stream is open");
    }

    /// Ends the stream (as a proxy that stops) and waits for it to close.
    pub async fn close(self) {
        drop(self.outbound);
        let _ = tokio::time::timeout(UPDATE_TIMEOUT, self.task).await;
    }

    /// Whether the stream still runs.
    pub fn is_open(&self) -> bool {
        !self.task.is_finished()
    }
}

fn ack_of(update: &ResourceUpdate, nacks: Vec<ResourceNack>) -> DiscoveryRequest {
    DiscoveryRequest {
        message: Some(Message::Ack(ResourceAck {
            nonce: update.nonce,
            revision: update.revision,
            nacks,
        })),
    }
}

/// The (type, name) of every resource of `update`, in order.
pub fn names(update: &ResourceUpdate) -> Vec<(ResourceType, String)> {
    update
        .resources
        .iter()
        .map(|r| {
            (
                ResourceType::try_from(r.r#type).unwrap_or_default(),
                r.name.clone(),
            )
        })
        .collect()
}

/// What `update` brought, as a Hello's `known` (to resume from it).
pub fn versions(update: &ResourceUpdate) -> Vec<ResourceVersion> {
    update.resources.iter().map(|r| r.version_of()).collect()
}
