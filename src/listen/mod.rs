//! Every accept loop of the mesh, in one place: the sidecar's outbound,
//! inbound and ingress listeners, admin and probe ports, and the control
//! plane's admin port all take connections through a [`Listener`], so each
//! one has the same bounds:
//!
//! - a connection cap: one more connection is accepted and closed at once
//!   (counted), never left to pin a socket and a task;
//! - a preface timeout: a connection that says nothing is closed;
//! - an idle timeout and a maximum age, both graceful (HTTP/2 GOAWAY,
//!   calls in flight get a grace period);
//! - a stream idle timeout on responses;
//! - HTTP/2 parameters stated ([`Http2Settings`]): streams, header size,
//!   windows, send buffer, caps on reset streams (rapid reset);
//! - an HTTP/1 header-read timeout on admin ports;
//! - backoff when `accept` fails (out of file descriptors), instead of a
//!   hot loop;
//! - shutdown: stop accepting, GOAWAY every connection, give calls the
//!   drain period, then cut what is left.
//!
//! TLS plugs in per connection: the handler given to [`Listener::serve`]
//! gets the TCP stream, runs its handshake in the connection's own task,
//! and hands whatever stream it ends up with to [`Connection::serve_h2`].

mod activity;
mod limits;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use activity::{Activity, Tracked, Watched};

pub use activity::TrackedBody;
pub use limits::{ConnectionLimits, Http2Settings, LimitArgs, Limits};
pub use stats::{ConnectionEvent, ListenerStats};

/// Shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// A bound TCP listener with its limits.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    name: &'static str,
    limits: Limits,
    stats: ListenerStats,
}

/// One accepted connection: its stream, and the handle that serves it
/// under the listener's limits (and holds its place under the cap).
#[derive(Debug)]
pub struct Accepted {
    /// The client's TCP stream (no delay set).
    pub stream: TcpStream,
    /// Its address.
    pub peer: SocketAddr,
    /// Serves it.
    pub connection: Connection,
}

/// Serves one connection under its listener's limits; dropping it frees
/// the connection's place under the cap.
#[derive(Debug)]
pub struct Connection {
    name: &'static str,
    limits: Limits,
    stats: ListenerStats,
    shutdown: CancellationToken,
    cut: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Listener {
    /// Binds `addr` for the listener called `name` (its metrics label).
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        limits: Limits,
        stats: ListenerStats,
    ) -> std::io::Result<Self> {
        Ok(Self::new(
            name,
            TcpListener::bind(addr).await?,
            limits,
            stats,
        ))
    }

    /// Takes over a bound `tcp` listener.
    pub fn new(name: &'static str, tcp: TcpListener, limits: Limits, stats: ListenerStats) -> Self {
        Self {
            tcp,
            name,
            limits,
            stats,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The limits connections are served under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Accepts until `shutdown`, running `handle` in a task of its own for
    /// each connection; then asks every connection to go away and waits up
    /// to `drain` for them, cutting what is left.
    pub async fn serve<F, Fut>(self, shutdown: CancellationToken, drain: Duration, mut handle: F)
    where
        F: FnMut(Accepted) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(self.limits.connection.max_connections));
        let tasks = TaskTracker::new();
        let cut = CancellationToken::new();
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => {
                        backoff = ACCEPT_BACKOFF.0;
                        accepted
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: pause, so
                        // the error does not become a hot loop, and retry.
                        self.stats.record(self.name, ConnectionEvent::AcceptError);
                        tracing::warn!(listener = self.name, %error, ?backoff, "accept failed");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.stats
                    .record(self.name, ConnectionEvent::RefusedAtLimit);
                tracing::debug!(listener = self.name, %peer, "connection refused: at the connection limit");
                drop(stream);
                continue;
            };
            self.stats.record(self.name, ConnectionEvent::Accepted);
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                name: self.name,
                limits: self.limits,
                stats: self.stats.clone(),
                shutdown: shutdown.clone(),
                cut: cut.clone(),
                _slot: slot,
            };
            tasks.spawn(handle(Accepted {
                stream,
                peer,
                connection,
            }));
        }
        drop(self.tcp);
        tasks.close();
        let open = tasks.len();
        if open > 0 {
            tracing::info!(listener = self.name, open, ?drain, "draining connections");
        }
        if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
            tracing::warn!(
                listener = self.name,
                "drain period over; closing remaining connections"
            );
            cut.cancel();
            tasks.wait().await;
        }
    }
}

impl Listener {
    /// [`Listener::serve`] for an HTTP/1.1-or-2 service (admin, probes):
    /// every connection served by a clone of `service`.
    pub async fn serve_http<S, B>(self, shutdown: CancellationToken, drain: Duration, service: S)
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve(shutdown, drain, move |accepted| {
            let service = service.clone();
            async move {
                let _ = accepted
                    .connection
                    .serve_http(accepted.stream, service)
                    .await;
            }
        })
        .await;
    }
}

impl Connection {
    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.name
    }

    /// Serves gRPC (HTTP/2 with prior knowledge) on `io` until the client
    /// goes, or a limit or shutdown closes the connection.
    pub async fn serve_h2<IO, S, B>(self, io: IO, service: S) -> Result<(), hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Activity::new();
        let service = Tracked::new(
            service,
            activity.clone(),
            self.limits.connection.stream_idle_timeout,
        );
        let io = TokioIo::new(Watched::new(io, activity.clone()));
        let connection = self
            .limits
            .http2
            .server_builder()
            .serve_connection(io, service);
        self.supervise(connection, &activity).await
    }

    /// Serves HTTP/1.1 or HTTP/2 (curl, Prometheus, kubelet probes) on
    /// `io`, with the header-read timeout on HTTP/1.
    pub async fn serve_http<IO, S, B>(
        self,
        io: IO,
        service: S,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Activity::new();
        let service = Tracked::new(service, activity.clone(), None);
        let io = TokioIo::new(Watched::new(io, activity.clone()));
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.connection.header_read_timeout);
        let h2 = &self.limits.http2;
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(h2.max_header_list_size)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams);
        let connection = builder.serve_connection(io, service);
        self.supervise(connection, &activity).await
    }

    /// Drives `connection` to its end, closing it when a limit says so.
    async fn supervise<C, E>(self, connection: C, activity: &Activity) -> Result<(), E>
    where
        C: GracefulConnection<Error = E>,
    {
        let limits = self.limits.connection;
        let mut connection = pin!(connection);
        self.stats.opened(self.name);
        let _open = OpenGuard(&self);
        let born = activity.born();
        let max_age = limits.max_connection_age.map(|age| born + jittered(age));
        // Set once a graceful close started: when it must be over.
        let mut closing_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let next = match closing_until {
                Some(until) => until,
                None if !activity.spoke() => born + limits.preface_timeout,
                None => {
                    let idle = activity
                        .idle_since()
                        .map_or(now + limits.idle_timeout, |since| {
                            since + limits.idle_timeout
                        });
                    max_age.map_or(idle, |age| age.min(idle))
                }
            };
            tokio::select! {
                result = connection.as_mut() => return result,
                () = self.cut.cancelled() => return Ok(()),
                () = activity.rapid_resets() => {
                    self.stats.record(self.name, ConnectionEvent::RapidReset);
                    tracing::info!(listener = self.name, "closing a connection that resets most of its calls at once (HTTP/2 rapid reset)");
                    return Ok(());
                }
                () = self.shutdown.cancelled(), if closing_until.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    // The listener's drain bounds this; `cut` ends it.
                    closing_until = Some(Instant::now() + Duration::from_secs(86_400));
                }
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    if let Some(until) = closing_until {
                        if now >= until {
                            self.stats.record(self.name, ConnectionEvent::GraceExpired);
                            return Ok(());
                        }
                        continue;
                    }
                    if !activity.spoke() {
                        if now >= born + limits.preface_timeout {
                            self.stats.record(self.name, ConnectionEvent::PrefaceTimeout);
                            tracing::debug!(listener = self.name, "closed: nothing sent within the preface timeout");
                            return Ok(());
                        }
                        continue;
                    }
                    let event = if max_age.is_some_and(|age| now >= age) {
                        ConnectionEvent::MaxAge
                    } else if activity
                        .idle_since()
                        .is_some_and(|since| now >= since + limits.idle_timeout)
                    {
                        ConnectionEvent::IdleTimeout
                    } else {
                        continue;
                    };
                    self.stats.record(self.name, event);
                    tracing::debug!(listener = self.name, reason = event.as_str(), "closing connection gracefully");
                    connection.as_mut().graceful_shutdown();
                    closing_until = Some(now + limits.max_connection_age_grace);
                }
            }
        }
    }
}

/// Keeps the open-connections gauge true however the connection ends.
struct OpenGuard<'a>(&'a Connection);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.closed(self.0.name);
    }
}

/// `age` less up to 10 %, so connections made together do not all go away
/// together.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(1.0 - rand::random::<f64>() * 0.1)
}

#[cfg(test)]
mod tests;
