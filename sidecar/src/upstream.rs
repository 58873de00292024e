//! One multiplexed HTTP/2 connection to one upstream address, reconnected
//! with exponential backoff when it breaks.
//!
//! Every call to the endpoint shares the connection (gRPC multiplexes
//! streams; a connection per call would cost a handshake each and defeat
//! per-request balancing). The connection is made on first use, so an
//! endpoint nobody calls costs nothing.
//!
//! With mTLS, the connection is TLS over TCP, and the handshake fails
//! unless the endpoint proves the identity of the service the table says
//! it belongs to: one handshake per pooled connection, not per call.
//!
//! Streams on the connection are counted here ([`StreamLimits`]): a call
//! takes a stream slot before it opens a stream and holds it until its
//! response ends. Beyond the limit calls wait, at most `max_waiting` of
//! them and never past their deadline; then they fail `upstream-queue-full`.
//! HTTP/2 itself would queue streams past the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` without bound, invisibly; with this
//! count that queue holds at most the difference between our limit and a
//! peer's smaller one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use serde::Serialize;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use mesh::identity::{MeshTls, SpiffeId};

use crate::call::error::ProxyError;
use crate::coalesced_io::CoalescedIo;
use crate::metrics::IdentityMetrics;
use crate::outlier::{Breaker, BreakerView};
use crate::replay_body::RequestBody;

/// Backoff after the first failed connect; doubles per failure up to
/// [`MAX_BACKOFF`]. Short at first so a restarted app is found again fast.
const BASE_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between connect attempts to a dead endpoint.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// HTTP/2 flow control toward upstreams (RFC 9113 §5.2). Every call to an
/// endpoint shares one connection, so its connection window is shared too:
/// a client that stops reading a response leaves up to one *stream* window
/// of that response buffered here, charged to the *connection* window until
/// it is read. With a small stream window and a large connection window it
/// takes connection / stream = 128 stalled streams before the other calls
/// on the connection stall, instead of 4 (1 MiB of 4 MiB before). 128 KiB
/// per stream still carries ~250 MB/s at a 0.5 ms round trip; the
/// connection window also bounds what one connection can buffer (16 MiB).
pub const UPSTREAM_STREAM_WINDOW: u32 = 128 << 10;
/// See [`UPSTREAM_STREAM_WINDOW`].
pub const UPSTREAM_CONNECTION_WINDOW: u32 = 16 << 20;

/// Bounds on the streams of one upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams open at once on the connection.
    pub max_streams: usize,
    /// Calls waiting for a stream slot; beyond, calls fail at once.
    pub max_waiting: usize,
}

impl StreamLimits {
    /// Default streams in flight per endpoint connection.
    pub const DEFAULT_MAX_STREAMS: usize = 1000;
    /// Default calls waiting for a slot per endpoint.
    pub const DEFAULT_MAX_WAITING: usize = 1000;
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: Self::DEFAULT_MAX_STREAMS,
            max_waiting: Self::DEFAULT_MAX_WAITING,
        }
    }
}

/// One stream's place on an upstream connection, held until the response
/// ends (or the attempt fails).
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

/// Counts a waiting call until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no connection could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The connect itself failed (refused, unreachable, handshake).
    #[error("{0}")]
    Failed(String),
    /// The endpoint answered with a valid certificate of someone else: it
    /// is not the service the table says (a stale address reused, or an
    /// impostor), so no call may go there.
    #[error("{0}")]
    PeerIdentityMismatch(String),
    /// A recent connect failed and the backoff has not passed yet.
    #[error("backing off after: {last_error} (next attempt in {retry_in:?})")]
    BackingOff {
        /// What the last attempt said.
        last_error: String,
        /// Whether the last attempt met the wrong identity.
        identity_mismatch: bool,
        /// Time until the next attempt is allowed.
        retry_in: Duration,
    },
}

impl ConnectError {
    /// True when the endpoint proved (or, backing off, last proved) another
    /// identity than expected.
    pub fn is_identity_mismatch(&self) -> bool {
        matches!(
            self,
            Self::PeerIdentityMismatch(_)
                | Self::BackingOff {
                    identity_mismatch: true,
                    ..
                }
        )
    }
}

/// Who an upstream must prove to be, and the TLS state this proxy proves
/// its own identity with.
#[derive(Clone)]
pub struct UpstreamPeer {
    /// This proxy's live TLS state.
    pub tls: Arc<MeshTls>,
    /// The identity the endpoint must present.
    pub id: SpiffeId,
    /// Where failed handshakes are counted.
    pub metrics: IdentityMetrics,
}

enum State {
    Idle,
    Ready(SendRequest<RequestBody>),
    BackingOff {
        until: Instant,
        failures: u32,
        last_error: String,
        identity_mismatch: bool,
    },
}

/// A connection slot for one upstream address.
pub struct Upstream {
    addr: String,
    authority: Authority,
    connect_timeout: Duration,
    /// `Some` for mTLS: whom the endpoint must prove to be.
    peer: Option<UpstreamPeer>,
    state: Mutex<State>,
    /// Single flight: one connect at a time; callers that arrive meanwhile
    /// wait for its outcome instead of opening connections of their own.
    connecting: tokio::sync::Mutex<()>,
    /// Bounds on the connection's streams.
    limits: StreamLimits,
    /// Stream slots of the connection (`limits.max_streams`).
    streams: Arc<Semaphore>,
    /// Calls waiting for a slot now.
    waiting: AtomicUsize,
    /// Circuit breaking state; survives table changes with the slot.
    breaker: Breaker,
    /// Attempts in flight here now.
    in_flight: AtomicUsize,
    /// Round-trip time estimate for the peak-EWMA balancer; survives
    /// table changes with the slot.
    rtt: crate::balance::RttEstimate,
}

/// What `/endpoints` shows of one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    /// `host:port`.
    pub address: String,
    /// The identity it must prove (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `connected`, `idle` or `backing-off`.
    pub connection: &'static str,
    /// Attempts in flight now.
    pub in_flight: usize,
    /// Circuit breaking state.
    #[serde(flatten)]
    pub breaker: BreakerView,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("peer", &self.peer.as_ref().map(|p| p.id.to_string()))
            .finish()
    }
}

impl Upstream {
    /// A slot for `addr` (`host:port`); nothing is connected yet.
    pub fn new(addr: &str, connect_timeout: Duration) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            authority: addr.parse()?,
            addr: addr.to_owned(),
            connect_timeout,
            peer: None,
            state: Mutex::new(State::Idle),
            connecting: tokio::sync::Mutex::new(()),
            limits: StreamLimits::default(),
            streams: Arc::new(Semaphore::new(StreamLimits::DEFAULT_MAX_STREAMS)),
            waiting: AtomicUsize::new(0),
            breaker: Breaker::default(),
            in_flight: AtomicUsize::new(0),
            rtt: crate::balance::RttEstimate::default(),
        })
    }

    /// The same slot with other stream limits than the defaults.
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        self.streams = Arc::new(Semaphore::new(
            limits.max_streams.min(Semaphore::MAX_PERMITS),
        ));
        self.limits = limits;
        self
    }

    /// Calls waiting for a stream slot now.
    #[cfg(test)]
    pub fn waiting_for_streams(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A stream slot on the connection: at once if one is free, else
    /// after waiting at most `wait` (`None`: until one frees) behind at
    /// most `max_waiting` other calls. Fails `upstream-queue-full`.
    pub async fn stream_slot(&self, wait: Option<Duration>) -> Result<StreamSlot, ProxyError> {
        if let Ok(permit) = self.streams.clone().try_acquire_owned() {
            return Ok(StreamSlot { _permit: permit });
        }
        let full = |detail: String| {
            ProxyError::upstream_queue_full(&self.addr, self.limits.max_streams, detail)
        };
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if waiting >= self.limits.max_waiting {
            return Err(full(format!(
                "{} calls already wait for one",
                self.limits.max_waiting
            )));
        }
        let acquire = self.streams.clone().acquire_owned();
        let permit = match wait {
            Some(wait) => tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| full(format!("none freed within the call's {wait:?}")))?,
            None => acquire.await,
        };
        // The semaphore is never closed.
        permit
            .map(|permit| StreamSlot { _permit: permit })
            .map_err(|_| full("the slot is gone".to_owned()))
    }

    /// The same slot over mTLS: connections must reach `peer`.
    pub fn with_peer(mut self, peer: UpstreamPeer) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The endpoint's breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Attempts in flight here now (what least-request compares).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The endpoint's round-trip time estimate (peak EWMA).
    pub fn rtt(&self) -> &crate::balance::RttEstimate {
        &self.rtt
    }

    /// For `/endpoints`.
    pub fn view(&self) -> UpstreamView {
        let connection = match &*self.lock() {
            State::Ready(s) if !s.is_closed() => "connected",
            State::BackingOff { .. } => "backing-off",
            _ => "idle",
        };
        UpstreamView {
            address: self.addr.clone(),
            identity: self.peer.as_ref().map(|p| p.id.to_string()),
            connection,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            breaker: self.breaker.view(Instant::now()),
        }
    }

    /// The live sender without waiting, if there is one.
    pub fn ready_now(&self) -> Option<SendRequest<RequestBody>> {
        self.ready_sender().ok().flatten()
    }

    /// `host:port` of the upstream.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The `:authority` requests to this upstream carry.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// A handle to send requests on the live connection, connecting first if
    /// there is none. Fails fast while backing off after a failed connect.
    pub async fn sender(&self) -> Result<SendRequest<RequestBody>, ConnectError> {
        if let Some(sender) = self.ready_sender()? {
            return Ok(sender);
        }
        let _single_flight = self.connecting.lock().await;
        // Someone else may have connected (or failed) while we waited.
        if let Some(sender) = self.ready_sender()? {
            return Ok(sender);
        }
        match self.connect().await {
            Ok(sender) => {
                *self.lock() = State::Ready(sender.clone());
                Ok(sender)
            }
            Err(error) => {
                let mut state = self.lock();
                let failures = match &*state {
                    State::BackingOff { failures, .. } => failures + 1,
                    _ => 1,
                };
                // Half the ceiling at least (a dead app is not retried by
                // every call), the other half jittered.
                let ceiling = mesh::backoff::exponential(BASE_BACKOFF, MAX_BACKOFF, failures);
                let wait =
                    ceiling / 2 + mesh::backoff::jittered(ceiling / 2, rand::random::<f64>());
                tracing::warn!(upstream = %self.addr, %error, ?wait, "connect failed");
                *state = State::BackingOff {
                    until: Instant::now() + wait,
                    failures,
                    last_error: error.to_string(),
                    identity_mismatch: error.is_identity_mismatch(),
                };
                Err(error)
            }
        }
    }

    /// The live sender, `None` if a connect should be tried, or the backoff
    /// error if it is too early to try.
    fn ready_sender(&self) -> Result<Option<SendRequest<RequestBody>>, ConnectError> {
        let mut state = self.lock();
        match &*state {
            State::Ready(sender) if !sender.is_closed() => Ok(Some(sender.clone())),
            State::Ready(_) => {
                *state = State::Idle;
                Ok(None)
            }
            State::Idle => Ok(None),
            State::BackingOff {
                until,
                last_error,
                identity_mismatch,
                ..
            } => {
                let now = Instant::now();
                if now < *until {
                    Err(ConnectError::BackingOff {
                        last_error: last_error.clone(),
                        identity_mismatch: *identity_mismatch,
                        retry_in: *until - now,
                    })
                } else {
                    Ok(None)
                }
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, ConnectError> {
        let failed = ConnectError::Failed;
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .map_err(|_| {
            failed(format!(
                "connect timed out after {:?}",
                self.connect_timeout
            ))
        })?
        .map_err(|e| failed(e.to_string()))?;
        // gRPC messages are small and latency-bound: never wait to coalesce.
        let _ = tcp.set_nodelay(true);
        let io = CoalescedIo::new(tcp);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
            .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let h2_failed = |e: hyper::Error| failed(format!("HTTP/2 handshake: {e}"));
        let sender = match &self.peer {
            None => {
                let (sender, connection) = builder
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(h2_failed)?;
                self.spawn_connection(connection);
                sender
            }
            Some(peer) => {
                // The same bound as the TCP connect: a peer that accepts
                // and then stalls is as useless as one that never answers.
                let tls =
                    crate::handshake::connect(&peer.tls, io, peer.id.clone(), self.connect_timeout)
                        .await
                        .map_err(|e| {
                            peer.metrics
                                .record_handshake_failure("upstream", e.reason());
                            let message = format!("TLS handshake: {e}");
                            if crate::handshake::is_identity_mismatch(&e) {
                                ConnectError::PeerIdentityMismatch(message)
                            } else {
                                failed(message)
                            }
                        })?;
                let (sender, connection) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(h2_failed)?;
                self.spawn_connection(connection);
                sender
            }
        };
        tracing::debug!(upstream = %self.addr, "connected");
        Ok(sender)
    }

    fn spawn_connection<F>(&self, connection: F)
    where
        F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let addr = self.addr.clone();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!(upstream = %addr, "connection closed"),
                Err(error) => tracing::info!(upstream = %addr, %error, "connection lost"),
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
