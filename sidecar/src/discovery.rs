//! The sidecar's side of discovery: register with a control-plane replica,
//! take the resources of this proxy's scope as they change (each checked
//! on its own: a bad one is refused, NACKed, and its last good version
//! kept; see [`crate::resource_cache`]), send the subscriptions calls make
//! on first use ([`crate::on_demand`]), and move to another replica with
//! backoff when the stream breaks, resuming from the versions held. While
//! no replica answers, the last table keeps serving (static stability).
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

use mesh::proto::mesh::v1::discovery_client::DiscoveryClient;
use mesh::proto::mesh::v1::discovery_request::Message;
use mesh::proto::mesh::v1::{
    DiscoveryRequest, Hello, Node, ResourceAck, ResourceUpdate, ResourceVersion, SchemaVersion,
    Subscribe,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::app_descriptors;
use crate::identity::{error_chain, Identity};
use crate::mesh_reflection::MeshReflection;
use crate::on_demand::OnDemand;
use crate::resource_cache::ResourceCache;
use crate::server::InboundMode;
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
    /// Mesh services the app calls: their routes come from the start.
    pub calls: Vec<String>,
    /// Subscriptions made by calls on first use (sidecars).
    pub on_demand: Option<Arc<OnDemand>>,
    /// The resources held, across streams (a new stream resumes from them).
    pub cache: ResourceCache,
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
            let ended = self.session(&address, &stop).await;
            if let Some(on_demand) = &self.on_demand {
                on_demand.set_connected(false);
            }
            match ended {
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

    async fn session(&mut self, address: &str, stop: &CancellationToken) -> SessionEnd {
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
        let (subscribed, subscribe_id) =
            self.on_demand.as_ref().map(|o| o.all()).unwrap_or_default();
        let hello = DiscoveryRequest {
            message: Some(Message::Hello(Hello {
                schema_version: SchemaVersion::SchemaVersion1 as i32,
                node: Some(self.node.clone()),
                calls: self.calls.clone(),
                subscribed,
                subscribe_id,
                known: self.cache.known(),
            })),
        };
        if tx.send(hello).await.is_err() {
            return broken("stream closed".into(), false);
        }
        let mut client = DiscoveryClient::new(channel);
        let mut updates = tokio::select! {
            opened = client.resources(ReceiverStream::new(rx)) => match opened {
                Ok(response) => response.into_inner(),
                Err(status) => return broken(format!("subscribe: {}", status.message()), false),
            },
            () = stop.cancelled() => return SessionEnd::Stopped,
        };
        tracing::info!(control_plane = %address, "registered");
        if let Some(on_demand) = &self.on_demand {
            on_demand.set_connected(true);
        }
        let mut applied = false;
        let on_demand = self.on_demand.clone();
        loop {
            let update = tokio::select! {
                next = updates.message() => next,
                () = next_change(&mut changes) => {
                    if reported && !self.send_report(&tx).await {
                        return broken("stream closed".into(), applied);
                    }
                    continue;
                }
                () = has_unsent(on_demand.as_deref()) => {
                    let Some((id, grpc_services)) = on_demand.as_ref().and_then(|o| o.take_unsent()) else {
                        continue;
                    };
                    let subscribe = DiscoveryRequest {
                        message: Some(Message::Subscribe(Subscribe { id, grpc_services })),
                    };
                    if tx.send(subscribe).await.is_err() {
                        return broken("stream closed".into(), applied);
                    }
                    continue;
                }
                () = stop.cancelled() => {
                    // Closing our half ends the stream: the control plane
                    // deletes our registration now.
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Ok(Some(_)) = updates.message().await {}
                    })
                    .await;
                    tracing::info!(control_plane = %address, "deregistered");
                    return SessionEnd::Stopped;
                }
            };
            let update = match update {
                Ok(Some(update)) => update,
                Ok(None) => return broken("closed by the control plane".into(), applied),
                Err(status) => return broken(status.message().to_owned(), applied),
            };
            let (nonce, revision, answers) =
                (update.nonce, update.revision, update.answers_subscribe);
            self.apply(update);
            applied = true;
            if let Some(on_demand) = &on_demand {
                on_demand.answered(answers);
            }
            let ack = ResourceAck {
                nonce,
                revision,
                nacks: self.cache.refused(),
            };
            if tx
                .send(DiscoveryRequest {
                    message: Some(Message::Ack(ack)),
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
    async fn send_report(&self, tx: &mpsc::Sender<DiscoveryRequest>) -> bool {
        let Some(report) = self.identity.as_ref().and_then(|i| i.report()) else {
            return true;
        };
        tx.send(DiscoveryRequest {
            message: Some(Message::Credentials(report)),
        })
        .await
        .is_ok()
    }

    /// Takes an update into the cache and applies what it changed: the
    /// table (if it does not build, every resource of the update is refused
    /// and the last good ones stay), the gateway's reflection (never
    /// blocking routing) and the mesh settings.
    fn apply(&mut self, update: ResourceUpdate) {
        let sent: Vec<ResourceVersion> = update.resources.iter().map(|r| r.version_of()).collect();
        if update.schema_version != SchemaVersion::SchemaVersion1 as i32 {
            tracing::warn!(
                schema_version = update.schema_version,
                "an update of another schema version; refusing it"
            );
            self.cache
                .refuse_all(&sent, "schema_version: this proxy speaks 1");
            return;
        }
        let before = self.cache.clone();
        let version = update.revision.to_string();
        let touched = self.cache.apply(update);
        let table = self.cache.table();
        if let Err(error) = self.table.apply(table, version) {
            tracing::warn!(%error, "the updated table does not build; keeping the last good one");
            self.cache = before;
            self.cache.refuse_all(&sent, &error.to_string());
            return;
        }
        if let (Some(target), true) = (&self.reflection, touched.reflection) {
            let sets = self.cache.descriptor_sets();
            let source = self.table.load().source().clone();
            match MeshReflection::build(&sets, |service, method| source.is_public(service, method))
            {
                Ok(built) => target.store(built),
                Err(error) => {
                    tracing::warn!(%error, "the pushed descriptors do not build; gateway reflection keeps the previous ones")
                }
            }
            self.table.learn_descriptors(&sets);
        }
        if touched.settings {
            let Some(identity) = &self.identity else {
                return;
            };
            let Some(settings) = self.cache.settings() else {
                return;
            };
            // The bundle first: settings whose bundle cannot be used are
            // refused whole (their mode and renewal are not applied).
            if let Some(bundle) = &settings.trust_bundle {
                if let Err(error) = identity.set_bundle(bundle.clone()) {
                    tracing::warn!(%error, "the pushed trust bundle cannot be used; settings refused");
                    self.cache
                        .refuse_settings(&before, &format!("trust_anchors_der: {error}"));
                    return;
                }
            }
            identity.renew_unless_issued_by(&settings.renew_unless_issued_by);
            self.inbound_mode.set(settings.mtls_mode);
        }
    }
}

/// Waits until calls made subscriptions to send; never, without on-demand.
async fn has_unsent(on_demand: Option<&OnDemand>) {
    match on_demand {
        Some(on_demand) => on_demand.has_unsent().await,
        None => std::future::pending().await,
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
