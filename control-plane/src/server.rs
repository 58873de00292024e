//! One control-plane replica: follow the store, serve Discovery and
//! MeshAdmin (plus health and reflection, for grpcurl), publish the
//! replica's status, and answer `/ready` and `/metrics` on an HTTP admin
//! port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mesh::proto::mesh::v1::mesh_admin_server::MeshAdminServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use mesh::identity::{ClientAuth, Credential, MeshTls, SpiffeId, TrustBundle, Workload};
use mesh::proto::mesh::v1::identity_server::IdentityServer;

use crate::access::Access;
use crate::admin::AdminService;
use crate::discovery::{DiscoveryServer, DiscoveryService, StreamPolicy};
use crate::identity::IdentityService;
use crate::index::Published;
use crate::metrics::Metrics;
use crate::registration_lease;
use crate::replica::{self, Identity};
use crate::sessions::Sessions;
use crate::store::Store;
use crate::watcher;
use mesh_ca::Authority;

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// gRPC listener (Discovery, MeshAdmin).
    pub listen: SocketAddr,
    /// HTTP admin listener (`/live`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    /// TTL of registrations: a dead sidecar is gone within it.
    pub lease_ttl: Duration,
    /// After start, how long sidecars that already have a table wait for
    /// their first push (so others can re-register first).
    pub warmup: Duration,
    /// This replica's id.
    pub id: String,
    /// The certificate authority and trust bundle; `None` runs without
    /// TLS and without any identity check (`--insecure`, on request only).
    pub identity: Option<ReplicaIdentity>,
    /// Limits of the gRPC listener (HTTP/2 parameters; the admin port has
    /// the admin limits).
    pub limits: mesh::listen::Limits,
}

/// What a replica needs to be the mesh's CA and to speak mTLS.
#[derive(Debug, Clone)]
pub struct ReplicaIdentity {
    /// The issuer.
    pub authority: Arc<Authority>,
    /// The anchors from the bundle file: stored as the mesh's bundle when
    /// the store has none yet (after that, the stored one rules, so a
    /// rotation reaches every replica without a restart).
    pub bundle: TrustBundle,
}

/// Why a replica could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The replica's own certificate could not be made.
    #[error("identity: {0}")]
    Identity(String),
}

/// Runs a replica on `store` until `shutdown`.
pub async fn run<S: Store>(
    store: S,
    settings: ReplicaSettings,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let grpc = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let listen = grpc.local_addr().unwrap_or(settings.listen);
    let metrics = Arc::new(Metrics::default());
    let admin = mesh::listen::Listener::bind(
        "admin",
        settings.admin,
        mesh::listen::Limits::admin(),
        metrics.listeners().clone(),
    )
    .await
    .map_err(|source| ServeError::Bind {
        addr: settings.admin,
        source,
    })?;

    let (publish, published) = watch::channel(Arc::new(Published::default()));
    let sessions = Arc::new(Sessions::default());
    let background = CancellationToken::new();
    let watcher = tokio::spawn(watcher::run(
        store.clone(),
        publish,
        background.clone(),
        metrics.clone(),
    ));
    let status = tokio::spawn(replica::run(
        store.clone(),
        Identity {
            id: settings.id.clone(),
            address: listen.to_string(),
        },
        settings.lease_ttl,
        sessions.clone(),
        published.clone(),
        background.clone(),
        metrics.clone(),
    ));
    let (lease_tx, lease) = watch::channel(None);
    let registration_lease = tokio::spawn(registration_lease::run(
        store.clone(),
        settings.lease_ttl,
        lease_tx,
        background.clone(),
        metrics.clone(),
    ));
    let admin_task = tokio::spawn(serve_admin(
        admin,
        published.clone(),
        sessions.clone(),
        metrics.clone(),
        background.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mesh::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("mesh.v1.Discovery")
            .with_service_name("mesh.v1.MeshAdmin")
            .with_service_name("grpc.health.v1.Health")
    };
    let access = if settings.identity.is_some() {
        Access::Enforced
    } else {
        Access::Open
    };
    let trust_domain = settings
        .identity
        .as_ref()
        .map(|i| i.authority.trust_domain().to_owned())
        .unwrap_or_else(|| mesh::identity::DEFAULT_TRUST_DOMAIN.to_owned());
    tracing::info!(replica = %settings.id, %listen, admin = %settings.admin, ?access, "control plane serving");
    let mut admin_service = AdminService::new(
        store.clone(),
        published.clone(),
        access,
        trust_domain,
        metrics.clone(),
    );
    if let Some(identity) = &settings.identity {
        admin_service = admin_service.with_authority(identity.authority.clone());
    }
    // Streams end when `shutdown` fires: sidecars move to another replica
    // and register there before this replica's lease expires.
    let sessions_stop = shutdown.clone();
    // Streams, header size and the cap on reset streams stated, not
    // tonic's defaults (unlimited streams, no reset cap).
    let mut router = settings
        .limits
        .http2
        .tonic(tonic::transport::Server::builder())
        .add_service(DiscoveryServer::new(DiscoveryService::new(
            store.clone(),
            published.clone(),
            StreamPolicy {
                lease,
                warmup: settings.warmup,
                access,
            },
            sessions,
            sessions_stop,
            metrics.clone(),
        )))
        .add_service(MeshAdminServer::new(admin_service))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let result = match &settings.identity {
        None => {
            tokio::spawn(crate::jwks::run(
                store.clone(),
                published.clone(),
                None,
                metrics.clone(),
                background.clone(),
            ));
            // The builder's tcp_nodelay covers only listeners tonic binds
            // itself: without it here, a push could wait for a delayed ACK.
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    shutdown.cancelled(),
                )
                .await
        }
        Some(identity) => {
            let tls = replica_tls(&store, identity, &metrics).await?;
            tokio::spawn(keep_tls_current(
                tls.clone(),
                identity.authority.clone(),
                published.clone(),
                background.clone(),
            ));
            tokio::spawn(crate::jwks::run(
                store.clone(),
                published.clone(),
                Some(tls.clone()),
                metrics.clone(),
                background.clone(),
            ));
            tokio::spawn(follow_issuer_files(
                tls.clone(),
                identity.authority.clone(),
                metrics.clone(),
                background.clone(),
            ));
            router = router.add_service(IdentityServer::new(IdentityService::new(
                store.clone(),
                identity.authority.clone(),
                published.clone(),
                Arc::new(identity.bundle.clone()),
                metrics.clone(),
            )));
            let failures = metrics.clone();
            let incoming =
                mesh::identity::transport::incoming(grpc, tls, shutdown.clone(), move |error| {
                    failures.tls_handshake_failure(error.reason())
                });
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
                .await
        }
    };
    background.cancel();
    let _ = tokio::join!(watcher, status, registration_lease, admin_task);
    tracing::info!(replica = %settings.id, "control plane stopped");
    Ok(result?)
}

/// The replica's TLS: the stored trust bundle (seeded from the bundle file
/// if the store has none) and a certificate for the control-plane identity,
/// made here with a key that never leaves the process.
async fn replica_tls<S: Store>(
    store: &S,
    identity: &ReplicaIdentity,
    metrics: &Metrics,
) -> Result<Arc<MeshTls>, ServeError> {
    let pem = mesh::identity::certificate::certificates_to_pem(identity.bundle.anchors());
    match store
        .put(
            crate::keys::TRUST_BUNDLE,
            pem.into_bytes(),
            crate::store::Precondition::Absent,
            None,
        )
        .await
    {
        Ok(_) => tracing::info!("trust bundle stored from the bundle file"),
        Err(crate::store::StoreError::Conflict { .. }) => {}
        Err(error) => {
            metrics.store_error("trust-bundle");
            tracing::warn!(%error, "cannot store the trust bundle; using the file's until the store answers");
        }
    }
    let tls = MeshTls::new(
        identity.authority.trust_domain(),
        identity.bundle.clone(),
        ClientAuth::Optional,
    )
    .map_err(|e| ServeError::Identity(e.to_string()))?;
    let credential = own_credential(&identity.authority)?;
    tls.set_credential(credential);
    Ok(Arc::new(tls))
}

fn own_credential(authority: &Authority) -> Result<Credential, ServeError> {
    let id = SpiffeId::new(authority.trust_domain(), Workload::ControlPlane)
        .map_err(|e| ServeError::Identity(e.to_string()))?;
    let (chain, key_pem) = authority
        .issue_with_new_key(&id, &[], authority.lifetime())
        .map_err(|e| ServeError::Identity(e.to_string()))?;
    Credential::from_pem(
        &mesh::identity::certificate::certificates_to_pem(&chain),
        &key_pem,
    )
    .map_err(|e| ServeError::Identity(e.to_string()))
}

/// Renews the replica's own certificate at 70 % of its lifetime and trusts
/// each new stored bundle, until `stop`.
async fn keep_tls_current(
    tls: Arc<MeshTls>,
    authority: Arc<Authority>,
    mut published: watch::Receiver<Arc<Published>>,
    stop: CancellationToken,
) {
    loop {
        let renew_in = tls
            .credential()
            .map(|c| c.info().lifetime().mul_f64(0.7))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(renew_in) => match own_credential(&authority) {
                Ok(credential) => {
                    tracing::info!(not_after = ?credential.info().not_after, "own certificate renewed");
                    tls.set_credential(credential);
                }
                Err(error) => tracing::error!(%error, "cannot renew own certificate"),
            },
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                let bundle = published.borrow_and_update().trust_bundle.clone();
                if let Some(bundle) = bundle {
                    if !bundle.same_anchors(&tls.bundle()) || bundle.version() != tls.bundle().version() {
                        match tls.set_bundle((*bundle).clone()) {
                            Ok(()) => tracing::info!(version = bundle.version(), "trust bundle applied"),
                            Err(error) => tracing::error!(%error, "cannot apply the stored trust bundle"),
                        }
                    }
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// How often the issuer files are checked for a change: a rotation waits
/// at most this long for the control plane to sign with the new issuer.
const ISSUER_POLL: Duration = Duration::from_secs(2);

/// Follows the issuer files until `stop`: when they change (an operator's
/// `meshctl identity rotate`, or a Kubernetes Secret update rewriting the
/// mounted files), the authority signs with the new issuer and this
/// replica's own certificate is re-issued under it at once (so proxies
/// and meshctl see the new chain before the old anchor can be removed).
/// Keeps `mesh_cp_issuer_expiry_seconds` current on the way.
async fn follow_issuer_files(
    tls: Arc<MeshTls>,
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(ISSUER_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One warning per distinct problem, not one every poll.
    let mut last_error = String::new();
    loop {
        metrics.issuer_expiry(seconds_left(authority.issuer_not_after()));
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match authority.reload_if_changed() {
            Ok(false) => last_error.clear(),
            Ok(true) => {
                last_error.clear();
                match own_credential(&authority) {
                    Ok(credential) => {
                        tracing::info!(
                            issuer = %authority.issuer_fingerprint(),
                            "own certificate re-issued under the new issuer"
                        );
                        tls.set_credential(credential);
                    }
                    Err(error) => tracing::error!(%error, "cannot re-issue own certificate"),
                }
            }
            Err(error) => {
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!(%error, "the issuer files changed but cannot be used (yet); still signing with the previous issuer");
                    last_error = text;
                }
            }
        }
    }
}

/// Whole seconds from now until `time` (negative once passed).
fn seconds_left(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::SystemTime::now()) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Each proxy connected to this replica and whether it is in step (like
/// istiod's `/debug/syncz`): JSON, `{"revision": R, "proxies": [{"service",
/// "instance", "gateway", "adminAddress", "pushedVersion", "ackedVersion",
/// "syncedRevision", "nacks"}]}`. A proxy is in step at R when the replica
/// had nothing to send it at R and it acknowledged all it was sent (with
/// scoped deltas, a proxy is sent nothing for changes outside its scope,
/// so its own version says nothing about them).
fn syncz(sessions: &Sessions, revision: i64) -> String {
    let proxies: Vec<serde_json::Value> = sessions
        .all()
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "service": s.service,
                "instance": s.instance,
                "gateway": s.gateway,
                "adminAddress": s.admin_address,
                "pushedVersion": s.pushed_version,
                "ackedVersion": s.acked_version,
                "syncedRevision": s.synced_revision,
                "nacks": s.nack_reason,
            })
        })
        .collect();
    serde_json::json!({ "revision": revision, "proxies": proxies }).to_string()
}

/// `/live` always; `/ready` once the store has been read; `/metrics` in
/// Prometheus text format; `/syncz`.
async fn serve_admin(
    admin: mesh::listen::Listener,
    published: watch::Receiver<Arc<Published>>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let revision = published.borrow().revision;
        let ready = revision > 0;
        let (status, body) = match (req.uri().path(), ready) {
            ("/live", _) => (200, Bytes::from_static(b"live\n")),
            ("/ready", true) => (200, Bytes::from_static(b"ready\n")),
            ("/ready", false) => (503, Bytes::from_static(b"not ready: store not read yet\n")),
            ("/metrics", _) => (200, Bytes::from(metrics.encode(sessions.len(), revision))),
            ("/syncz", _) => (200, Bytes::from(syncz(&sessions, revision))),
            _ => (
                404,
                Bytes::from_static(b"not found; try /live, /ready, /metrics, /syncz\n"),
            ),
        };
        let content_type = match req.uri().path() {
            "/metrics" => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "/syncz" => "application/json",
            _ => "text/plain; charset=utf-8",
        };
        async move {
            let mut response = hyper::Response::new(Full::new(body));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            Ok::<_, Infallible>(response)
        }
    });
    admin
        .serve_http(stop, Duration::from_secs(1), service)
        .await;
}
