//! The sidecar's side of discovery: register with a control-plane replica,
//! apply every pushed table (ACK) or refuse it and keep the last good one
//! (NACK), and move to another replica with backoff when the stream breaks.
//! While no replica answers, the last table keeps serving (static
//! stability).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::model::Bootstrap;
use mesh::proto::mesh::v1::discovery_client::DiscoveryClient;
use mesh::proto::mesh::v1::sidecar_message::Message;
use mesh::proto::mesh::v1::{Ack, Hello, Nack, Node, SidecarMessage, TableSnapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::app_descriptors;
use crate::backoff::Backoff;
use crate::mesh_reflection::MeshReflection;
use crate::table::LiveTable;

/// How long reading the app's reflection may take.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a control plane to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps this proxy registered and its table current.
pub struct Subscriber {
    /// Control-plane replicas, tried in turn.
    pub control_planes: Vec<String>,
    /// Who this proxy is (descriptors filled in from the app).
    pub node: Node,
    /// The local app, whose reflection says what it serves (sidecar mode).
    pub app: Option<SocketAddr>,
    /// Where pushed tables go.
    pub table: Arc<LiveTable>,
    /// Where pushed descriptors go (gateway mode).
    pub reflection: Option<Arc<MeshReflection>>,
}

enum SessionEnd {
    /// Shutdown: the stream was closed by us, which deregisters.
    Stopped,
    /// The stream broke; `applied` says whether it delivered any table.
    Broken { error: String, applied: bool },
}

impl Subscriber {
    /// Runs until `stop`; closing the stream on stop deregisters this node.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Start at a random replica so sidecars spread over them.
        let mut next = rand::random_range(0..self.control_planes.len());
        loop {
            if let Some(app) = self.app {
                match app_descriptors::read(app, REFLECTION_TIMEOUT).await {
                    Ok(found) => {
                        self.node.grpc_services = found.grpc_services;
                        self.node.file_descriptor_set = found.file_descriptor_set;
                    }
                    Err(error) => {
                        tracing::info!(%error, "waiting for the app's reflection before registering");
                        if sleep_or_stop(backoff.next(), &stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let address = self.control_planes[next % self.control_planes.len()].clone();
            next += 1;
            match self.session(&address, &stop).await {
                SessionEnd::Stopped => return,
                SessionEnd::Broken { error, applied } => {
                    tracing::warn!(
                        control_plane = %address,
                        %error,
                        "discovery stream ended; serving the last table meanwhile"
                    );
                    if applied {
                        backoff.reset();
                    }
                }
            }
            if sleep_or_stop(backoff.next(), &stop).await {
                return;
            }
        }
    }

    async fn session(&self, address: &str, stop: &CancellationToken) -> SessionEnd {
        let broken = |error: String, applied| SessionEnd::Broken { error, applied };
        let endpoint = match tonic::transport::Endpoint::from_shared(address.to_owned()) {
            Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT),
            Err(e) => return broken(e.to_string(), false),
        };
        let channel = tokio::select! {
            connected = endpoint.connect() => match connected {
                Ok(channel) => channel,
                Err(e) => return broken(format!("connect: {e}"), false),
            },
            () = stop.cancelled() => return SessionEnd::Stopped,
        };
        let (tx, rx) = mpsc::channel(4);
        let current_version = if self.table.is_loaded() {
            self.table.load().version().parse().unwrap_or(0)
        } else {
            0
        };
        let hello = SidecarMessage {
            message: Some(Message::Hello(Hello {
                node: Some(self.node.clone()),
                current_version,
            })),
        };
        if tx.send(hello).await.is_err() {
            return broken("stream closed".into(), false);
        }
        let mut client = DiscoveryClient::new(channel);
        let mut snapshots = tokio::select! {
            opened = client.subscribe(ReceiverStream::new(rx)) => match opened {
                Ok(response) => response.into_inner(),
                Err(status) => return broken(format!("subscribe: {}", status.message()), false),
            },
            () = stop.cancelled() => return SessionEnd::Stopped,
        };
        tracing::info!(control_plane = %address, "registered");
        let mut applied = false;
        loop {
            let snapshot = tokio::select! {
                next = snapshots.message() => next,
                () = stop.cancelled() => {
                    // Closing our half ends the stream: the control plane
                    // revokes our registration now rather than at lease expiry.
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Ok(Some(_)) = snapshots.message().await {}
                    })
                    .await;
                    tracing::info!(control_plane = %address, "deregistered");
                    return SessionEnd::Stopped;
                }
            };
            let snapshot = match snapshot {
                Ok(Some(snapshot)) => snapshot,
                Ok(None) => return broken("closed by the control plane".into(), applied),
                Err(status) => return broken(status.message().to_owned(), applied),
            };
            let version = snapshot.version;
            let reply = match self.apply(snapshot) {
                Ok(()) => {
                    applied = true;
                    Message::Ack(Ack { version })
                }
                Err(reason) => {
                    tracing::warn!(version, %reason, "table refused (NACK); keeping the last good one");
                    Message::Nack(Nack { version, reason })
                }
            };
            if tx
                .send(SidecarMessage {
                    message: Some(reply),
                })
                .await
                .is_err()
            {
                return broken("stream closed".into(), applied);
            }
        }
    }

    /// Applies a push whole or not at all.
    fn apply(&self, snapshot: TableSnapshot) -> Result<(), String> {
        let source: Bootstrap =
            serde_json::from_str(&snapshot.table_json).map_err(|e| format!("table_json: {e}"))?;
        let reflection = match &self.reflection {
            Some(_) => Some(
                MeshReflection::build(&snapshot.file_descriptor_sets, &snapshot.grpc_services)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        self.table
            .apply(source, snapshot.version.to_string())
            .map_err(|e| e.to_string())?;
        if let (Some(target), Some(built)) = (&self.reflection, reflection) {
            target.store(built);
        }
        Ok(())
    }
}

/// Sleeps for `wait`; true if `stop` fired meanwhile.
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}
