//! The sidecar's side of discovery: register with a control-plane replica,
//! apply every pushed table (ACK) or refuse it and keep the last good one
//! (NACK), and move to another replica with backoff when the stream breaks.
//! While no replica answers, the last table keeps serving (static
//! stability).
//!
//! With mTLS the stream is TLS to a server that proves the control-plane
//! identity, opened only once this proxy has a certificate (the control
//! plane binds the registration to the identity it names). Pushed trust
//! bundles are applied with the table, and the proxy reports its
//! certificate's expiry and bundle version after its first answer and
//! whenever either changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::identity::TrustBundle;
use mesh::model::Bootstrap;
use mesh::proto::mesh::v1::discovery_client::DiscoveryClient;
use mesh::proto::mesh::v1::sidecar_message::Message;
use mesh::proto::mesh::v1::{Ack, Hello, Nack, Node, SidecarMessage, TableSnapshot};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::app_descriptors;
use crate::identity::{error_chain, Identity};
use crate::mesh_reflection::MeshReflection;
use crate::server::InboundMode;
use crate::settings::MeshMtlsMode;
use crate::table::LiveTable;
use mesh::backoff::Backoff;

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
    /// This proxy's identity (mTLS); `None`: plaintext streams.
    pub identity: Option<Arc<Identity>>,
    /// Where the pushed mesh-wide mTLS mode goes (with `identity` only:
    /// a proxy run with `--mtls off` is plaintext whatever is pushed).
    pub inbound_mode: InboundMode,
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
        if let Some(identity) = &self.identity {
            tracing::info!(identity = %identity.id(), "waiting for a certificate before registering");
            if !identity.wait_for_credential(&stop).await {
                return;
            }
        }
        loop {
            if let Some(app) = self.app {
                match app_descriptors::read(app, REFLECTION_TIMEOUT).await {
                    Ok(found) => {
                        self.table
                            .metrics()
                            .learn_app_methods(&found.file_descriptor_set);
                        self.node.grpc_services = found.grpc_services;
                        self.node.file_descriptor_set = found.file_descriptor_set;
                    }
                    // An app that serves no reflection (most existing gRPC
                    // servers) joins without descriptors: routed by path
                    // like any other, only the gateway cannot describe it.
                    Err(app_descriptors::ReflectionError::Status(status))
                        if status.code() == tonic::Code::Unimplemented =>
                    {
                        tracing::info!("the app serves no gRPC reflection: registering without its descriptors (routes work; gateways cannot describe it; method metrics say `other`)");
                    }
                    Err(error) => {
                        tracing::info!(%error, "waiting for the app's reflection before registering");
                        if sleep_or_stop(backoff.next_wait(), &stop).await {
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
            if sleep_or_stop(backoff.next_wait(), &stop).await {
                return;
            }
        }
    }

    async fn session(&self, address: &str, stop: &CancellationToken) -> SessionEnd {
        let broken = |error: String, applied| SessionEnd::Broken { error, applied };
        let connect = async {
            match &self.identity {
                Some(identity) => {
                    mesh::identity::transport::channel(
                        address,
                        identity.tls().clone(),
                        identity.control_plane_id().clone(),
                        CONNECT_TIMEOUT,
                    )
                    .await
                }
                None => {
                    tonic::transport::Endpoint::from_shared(address.to_owned())?
                        .connect_timeout(CONNECT_TIMEOUT)
                        .connect()
                        .await
                }
            }
        };
        let channel = tokio::select! {
            connected = connect => match connected {
                Ok(channel) => channel,
                Err(e) => return broken(format!("connect: {}", error_chain(&e)), false),
            },
            () = stop.cancelled() => return SessionEnd::Stopped,
        };
        // Changes from now on are reported; the state now goes in the
        // first report.
        let mut changes = self.identity.as_ref().map(|i| {
            let mut changes = i.subscribe();
            changes.borrow_and_update();
            changes
        });
        let mut reported = false;
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
                () = next_change(&mut changes) => {
                    if reported && !self.send_report(&tx).await {
                        return broken("stream closed".into(), applied);
                    }
                    continue;
                }
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
            if !reported {
                reported = true;
                if let Some(changes) = &mut changes {
                    changes.borrow_and_update();
                }
                if !self.send_report(&tx).await {
                    return broken("stream closed".into(), applied);
                }
            }
        }
    }

    /// Sends this proxy's certificate expiry and bundle version (mTLS
    /// only); false if the stream is gone.
    async fn send_report(&self, tx: &mpsc::Sender<SidecarMessage>) -> bool {
        let Some(report) = self.identity.as_ref().and_then(|i| i.report()) else {
            return true;
        };
        tx.send(SidecarMessage {
            message: Some(Message::Credentials(report)),
        })
        .await
        .is_ok()
    }

    /// Applies a push whole or not at all: its trust bundle and mTLS mode
    /// (checked before anything is applied) and its table.
    fn apply(&self, snapshot: TableSnapshot) -> Result<(), String> {
        let mode = MeshMtlsMode::from_pushed(&snapshot.mtls_mode)?;
        let bundle = match &self.identity {
            Some(_) if !snapshot.trust_anchors_der.is_empty() => {
                let anchors = snapshot
                    .trust_anchors_der
                    .iter()
                    .map(|der| CertificateDer::from(der.clone()))
                    .collect();
                Some(
                    TrustBundle::new(anchors, snapshot.trust_bundle_version)
                        .map_err(|e| format!("trust bundle: {e}"))?,
                )
            }
            _ => None,
        };
        let source: Bootstrap =
            serde_json::from_str(&snapshot.table_json).map_err(|e| format!("table_json: {e}"))?;
        // Reflection never blocks routing: descriptors that do not build
        // keep the previous reflection, and the table is applied.
        let reflection = match &self.reflection {
            Some(_) => MeshReflection::build(&snapshot.file_descriptor_sets, |service, method| {
                source.is_public(service, method)
            })
            .inspect_err(|error| {
                tracing::warn!(%error, "the pushed descriptors do not build; gateway reflection keeps the previous ones");
            })
            .ok(),
            None => None,
        };
        self.table.learn_descriptors(&snapshot.file_descriptor_sets);
        self.table
            .apply(source, snapshot.version.to_string())
            .map_err(|e| e.to_string())?;
        if let (Some(target), Some(built)) = (&self.reflection, reflection) {
            target.store(built);
        }
        if let (Some(identity), Some(bundle)) = (&self.identity, bundle) {
            identity
                .set_bundle(bundle)
                .map_err(|e| format!("trust bundle: {e}"))?;
        }
        if let Some(identity) = &self.identity {
            identity.renew_unless_issued_by(&snapshot.renew_certificates_not_issued_by);
            self.inbound_mode.set(mode);
        }
        Ok(())
    }
}

/// Waits for the next certificate or bundle change; never, without mTLS.
async fn next_change(changes: &mut Option<watch::Receiver<u64>>) {
    if let Some(changes) = changes {
        if changes.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Sleeps for `wait`; true if `stop` fired meanwhile.
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}
