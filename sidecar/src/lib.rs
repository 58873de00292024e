//! The mesh's data-plane proxy.
//!
//! A sidecar sits beside one app instance: the app sends every call to the
//! outbound listener, which routes it by gRPC path to an endpoint of the
//! destination service (by the route's balancer); calls from other
//! sidecars arrive at the inbound listener and go to the app. In gateway
//! mode an ingress listener routes external clients' calls like outbound.
//!
//! # Layout
//!
//! - [`settings`]: flags and environment, validated at start.
//! - `table`: the routing table compiled from its source, swapped whole.
//! - `discovery`: registration with the control plane and pushed resources.
//! - `resource_cache`: the pushed resources at their last good versions,
//!   and the table they make.
//! - `on_demand`: subscriptions made by the first call to an undeclared
//!   service.
//! - `identity`: this proxy's SPIFFE identity and TLS state; the task that
//!   gets and renews its certificate from the control plane's CA.
//! - `handshake`: mutual TLS over the write-combining stream, for the
//!   inbound listener and upstream connections.
//! - `app_descriptors`: what the local app serves, from its reflection.
//! - `app_health`: whether the local app is ready (gRPC health, TCP, none).
//! - `mesh_reflection`: the gateway's mesh-wide reflection (public
//!   methods only).
//! - `authn`: bearer tokens (JWT) at the gateway's ingress.
//! - `authz`: who may call the local app (inbound authorization).
//! - `rate_limit`: routes' local rate limits, at the destination's inbound.
//! - `policy`: a route's timeouts, retries, breakers, limits and faults,
//!   compiled.
//! - `replay_body`: request bodies kept (up to a cap) so a retry can resend.
//! - `response_body`: response bodies watched for their gRPC status and
//!   deadline.
//! - `outlier`: per-endpoint circuit breaking (outlier detection).
//! - `outcome`: an attempt in flight and its outcome, fed to the breaker.
//! - `concurrency`: fail-fast caps on calls in flight.
//! - `deadline`: the `grpc-timeout` header.
//! - `debug`: the `x-mesh-debug` response header, for callers that may ask.
//! - `balance`: picking an endpoint: smooth weighted round-robin,
//!   least-request or peak-EWMA (power of two choices).
//! - `route_state`: retry budgets, limits and rotations carried from one
//!   table to the next.
//! - `upstream`: one multiplexed HTTP/2 connection per endpoint.
//! - `proxy`: the forwarding service behind each gRPC listener.
//! - `call`: the per-call path: plan (deadline, per-try, fault), judge
//!   (return, fail or retry), read-ahead of responses, typed proxy errors.
//! - `server`: what the listeners serve (h2c or mutual TLS, the peer's
//!   identity on each request); accepting and limits are `mesh::listen`'s.
//! - `admin`: the admin listener (loopback: `/config`, `/endpoints`,
//!   `/identity`, `/metrics`, `POST`/`DELETE /drain`, `/live`, `/ready`) and
//!   the probe listener (`/live`, `/ready`, `/metrics`, read-only).
//! - `membership`: registered or drained; `/drain` can be undone.
//! - `metrics`: Prometheus counters.
//! - `response_labels`: the bounded labels of finished calls (route,
//!   known method, code).

mod admin;
mod app_descriptors;
mod app_health;
mod authn;
mod authz;
mod balance;
mod call;
mod coalesced_io;
mod concurrency;
mod deadline;
mod debug;
mod discovery;
mod handshake;
mod identity;
mod membership;
mod mesh_reflection;
mod metrics;
mod on_demand;
mod outcome;
mod outlier;
mod policy;
mod proxy;
mod rate_limit;
mod replay_body;
mod resource_cache;
mod response_body;
mod response_labels;
mod route_state;
mod server;
pub mod settings;
mod table;
#[cfg(test)]
mod test_pki;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use mesh::listen::Listener;
use mesh::model::Bootstrap;
use mesh::proto::mesh::v1::Node;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::discovery::Subscriber;
use crate::identity::{ControlPlaneCa, Identity};
use crate::membership::Membership;
use crate::mesh_reflection::MeshReflection;
use crate::metrics::{Direction, Metrics};
use crate::on_demand::OnDemand;
use crate::proxy::{Destination, Proxy};
use crate::replay_body::ReplayBudget;
use crate::resource_cache::ResourceCache;
use crate::settings::{Mode, MtlsMode, Settings};
use crate::table::{LiveTable, UpstreamPool};
use crate::upstream::Upstream;

pub use crate::call::error::ERROR_REASON_HEADER;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Flags that do not go together.
    #[error("settings: {0}")]
    Settings(#[from] settings::SettingsError),
    /// The bootstrap file is unreadable or invalid.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] mesh::model::BootstrapError),
    /// The bootstrap parsed but cannot become a table.
    #[error("table: {0}")]
    Table(#[from] table::TableError),
    /// The trust bundle or the static certificate is unusable.
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    /// The ingress's certificate or key is unusable.
    #[error("--ingress-tls-cert/--ingress-tls-key: {0}")]
    IngressTls(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Runs the proxy until `shutdown` fires, then: deregisters (control-plane
/// mode), keeps serving for `settings.deregister_delay()` so peers learn it
/// is gone, stops accepting, and gives in-flight calls `settings.drain()`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    settings.validate()?;
    let metrics = Arc::new(Metrics::default());
    let identity = match settings.mtls {
        MtlsMode::Strict => {
            let identity = Arc::new(Identity::load(&settings, metrics.identity().clone())?);
            tracing::info!(identity = %identity.id(), "mTLS strict");
            Some(identity)
        }
        MtlsMode::Off => {
            tracing::warn!("mTLS is off: every hop between mesh processes is plaintext");
            None
        }
    };
    let routed_direction = match settings.mode {
        Mode::Sidecar => Direction::Outbound,
        Mode::Gateway => Direction::Ingress,
    };
    let table = Arc::new(LiveTable::new(
        UpstreamPool::new(
            settings.connect_timeout(),
            identity
                .as_ref()
                .map(|i| (i.tls().clone(), i.metrics().clone())),
        )
        .with_stream_limits(settings.upstream_stream_limits()),
        metrics.clone(),
        routed_direction,
    ));
    if let Some(path) = &settings.bootstrap {
        table.apply(Bootstrap::load(path)?, "bootstrap".to_owned())?;
    }
    let discovery = !settings.control_plane.is_empty();
    // A sidecar's first call to a service it did not declare subscribes to
    // its routes; a gateway gets every public route from the start.
    let on_demand = (discovery && settings.mode == Mode::Sidecar).then(|| {
        let on_demand = Arc::new(OnDemand::default());
        table.set_on_demand(on_demand.clone());
        on_demand
    });
    let reflection =
        (discovery && settings.mode == Mode::Gateway).then(|| Arc::new(MeshReflection::default()));
    // One replay budget for the process, shared by every routed call.
    let replay_budget = ReplayBudget::new(settings.replay_budget_bytes);
    let routed = Proxy::new(
        routed_direction,
        Destination::Routed(table.clone()),
        reflection.clone(),
        metrics.clone(),
    )
    .with_replay_budget(replay_budget);

    // Listeners stop after deregistration has had time to reach the peers.
    let listeners_stop = CancellationToken::new();
    let delay = if discovery {
        settings.deregister_delay()
    } else {
        Duration::ZERO
    };
    tokio::spawn({
        let shutdown = shutdown.clone();
        let listeners_stop = listeners_stop.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(delay).await;
            listeners_stop.cancel();
        }
    });

    if let (true, Some(identity), Some(token_file)) =
        (discovery, &identity, &settings.identity_token_file)
    {
        let ca = ControlPlaneCa::new(
            settings.control_plane.clone(),
            token_file.clone(),
            identity.control_plane_id().clone(),
        );
        // Renewal stops with the listeners: until then calls need a valid
        // certificate.
        tokio::spawn(identity.clone().run(ca, listeners_stop.clone()));
    }

    // Deregistration comes with shutdown, or earlier through the admin
    // port's POST /drain (a Kubernetes preStop hook: the app is stopped
    // before its native sidecar, so the sidecar must leave the mesh first),
    // which DELETE /drain undoes.
    let membership = Arc::new(Membership::new(shutdown.clone()));
    // The mesh-wide mTLS mode: strict until a push says otherwise.
    let inbound_mode = server::InboundMode::default();
    let tasks = TaskTracker::new();
    let drain = settings.drain();
    let app = match settings.mode {
        Mode::Sidecar => {
            let outbound = bind("outbound", settings.outbound_addr, &settings, &metrics).await?;
            let inbound = bind("inbound", settings.inbound_addr, &settings, &metrics).await?;
            let app = Upstream::new(&settings.app_addr.to_string(), settings.connect_timeout())
                .expect("a socket address is a valid authority")
                .with_stream_limits(settings.upstream_stream_limits());
            let to_app = Proxy::new(
                Direction::Inbound,
                Destination::App {
                    upstream: Arc::new(app),
                    counters: metrics.route_counters(
                        Direction::Inbound,
                        settings.service_name(),
                        "inbound",
                    ),
                    service: settings.service_name().into(),
                },
                None,
                metrics.clone(),
            );
            // Authorization needs proven identities: with `--mtls off`
            // there are none, and no policy is enforced.
            let to_app = match &identity {
                Some(_) => to_app.with_authorizer(authz::Authorizer::new(
                    settings.service_name().into(),
                    table.clone(),
                    inbound_mode.clone(),
                    metrics.authz().clone(),
                )),
                None => {
                    tracing::warn!("--mtls off: authorization policies are not enforced (no identities to check)");
                    to_app
                }
            };
            let to_app = to_app.with_rate_limits(rate_limit::InboundLimits::new(
                settings.service_name().into(),
                table.clone(),
                metrics.rate_limits().clone(),
            ));
            let stop = listeners_stop.clone();
            let inbound_tls = identity.clone().map(|identity| {
                server::ListenerTls::Mesh(server::InboundTls {
                    identity,
                    mode: inbound_mode.clone(),
                })
            });
            tasks.spawn(server::serve_grpc(
                outbound,
                routed,
                None,
                stop.clone(),
                drain,
            ));
            tasks.spawn(server::serve_grpc(
                inbound,
                to_app,
                inbound_tls,
                stop,
                drain,
            ));
            Some(settings.app_addr)
        }
        Mode::Gateway => {
            let ingress = bind("ingress", settings.ingress_addr, &settings, &metrics).await?;
            let edge = match (&settings.ingress_tls_cert, &settings.ingress_tls_key) {
                (Some(cert), Some(key)) => Some(server::ListenerTls::Edge(ingress_tls(cert, key)?)),
                _ => None,
            };
            tasks.spawn(server::serve_grpc(
                ingress,
                routed,
                edge,
                listeners_stop.clone(),
                drain,
            ));
            None
        }
    };
    if discovery {
        let gateway = settings.mode == Mode::Gateway;
        let node = Node {
            service: settings.service_name().to_owned(),
            instance: settings.instance_id(),
            address: if gateway {
                String::new()
            } else {
                settings.advertised_addr().to_string()
            },
            version: settings.version_label.clone(),
            weight: settings.weight,
            gateway,
            admin_address: settings.advertised_admin_addr().to_string(),
            ..Node::default()
        };
        // A fresh subscriber (and discovery stream) per period in the
        // mesh: the first, and one after each DELETE /drain.
        let subscriber = {
            let control_planes = settings.control_plane.clone();
            let table = table.clone();
            let identity = identity.clone();
            let inbound_mode = inbound_mode.clone();
            let calls = settings.calls.clone();
            let on_demand = on_demand.clone();
            move || Subscriber {
                control_planes: control_planes.clone(),
                node: node.clone(),
                calls: calls.clone(),
                on_demand: on_demand.clone(),
                cache: ResourceCache::default(),
                app,
                table: table.clone(),
                reflection: reflection.clone(),
                identity: identity.clone(),
                inbound_mode: inbound_mode.clone(),
            }
        };
        let membership = membership.clone();
        tasks.spawn(async move {
            membership
                .keep_registered(|stop| subscriber().run(stop))
                .await;
        });
    }
    let admin_listener = bind("admin", settings.admin_addr, &settings, &metrics).await?;
    let probe_listener = match settings.probe_addr() {
        (addr, true) => Some(bind("probe", addr, &settings, &metrics).await?),
        (addr, false) => match bind("probe", addr, &settings, &metrics).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                // Several proxies on one host (meshctl up) share the
                // default; one pod has one proxy, which gets it.
                tracing::warn!(
                    %addr,
                    %error,
                    "no probe listener (give --probe-addr to require one); /live, /ready and /metrics stay on the admin port"
                );
                None
            }
        },
    };
    let app_health = app.map(|addr| {
        app_health::AppHealth::new(settings.app_health, addr, admin::APP_HEALTH_TIMEOUT)
    });
    let admin = admin::Admin::new(
        table,
        metrics,
        app_health,
        admin::Drain { membership, delay },
        identity,
        inbound_mode,
    );
    // Admin and probes outlive the data listeners' drain so probes and
    // scrapes keep answering while calls finish.
    let admin_shutdown = CancellationToken::new();
    let probe_task = probe_listener.map(|listener| {
        tokio::spawn(server::serve_http(
            listener,
            admin.probes(),
            admin_shutdown.clone(),
        ))
    });
    let admin_task = tokio::spawn(server::serve_http(
        admin_listener,
        admin,
        admin_shutdown.clone(),
    ));
    tracing::info!(
        mode = ?settings.mode,
        service = settings.service_name(),
        instance = %settings.instance_id(),
        "proxy started"
    );

    tasks.close();
    tasks.wait().await;
    admin_shutdown.cancel();
    let _ = admin_task.await;
    if let Some(task) = probe_task {
        let _ = task.await;
    }
    tracing::info!("proxy stopped");
    Ok(())
}

/// The ingress's TLS from the operator's certificate and key files.
fn ingress_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| StartError::IngressTls(format!("{}: {e}", path.display())))
    };
    mesh::identity::tls::edge_server_config(&read(cert)?, &read(key)?)
        .map_err(|e| StartError::IngressTls(e.to_string()))
}

/// Binds the listener called `what`, with its limits: the admin ones for
/// admin and probes, the edge ones for the ingress, the mesh ones else.
async fn bind(
    what: &'static str,
    addr: std::net::SocketAddr,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Listener, StartError> {
    let limits = match what {
        "admin" | "probe" => mesh::listen::Limits::admin(),
        _ => settings.listener_limits(what),
    };
    let listener = Listener::bind(what, addr, limits, metrics.listeners().clone())
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    tracing::info!(listener = what, addr = %listener.local_addr().unwrap_or(addr), "listening");
    Ok(listener)
}
