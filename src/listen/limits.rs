//! What one listener allows a client: how many connections, how long a
//! connection may say nothing, live idle or live at all, and the HTTP/2
//! parameters that bound each connection's streams, headers and buffers.
//!
//! Two sets of defaults: [`Limits::mesh`] for listeners only mesh processes
//! reach (sidecar to sidecar, the control plane, an app behind its
//! sidecar), and [`Limits::edge`] for the gateway's ingress, where clients
//! are strangers: fewer streams, smaller headers, shorter patience.

use std::time::Duration;

/// Connection-level limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is accepted and closed at once
    /// (counted), so a flood cannot pin sockets and tasks without bound.
    pub max_connections: usize,
    /// Time a new connection has to send its first request bytes (the
    /// HTTP/2 preface, or an HTTP/1 request line) after it was accepted
    /// (and, with TLS, after its handshake).
    pub preface_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// gracefully (HTTP/2 GOAWAY): idle clients cost nothing for long.
    pub idle_timeout: Duration,
    /// Connections older than this are asked to go away (GOAWAY), so
    /// clients reconnect and spread over new endpoints; `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// After a graceful close starts (age, idle, shutdown), calls still in
    /// flight get this long before the connection is cut.
    pub max_connection_age_grace: Duration,
    /// A response stream that carries nothing for this long ends with
    /// UNAVAILABLE (`x-mesh-error: stream-idle-timeout`); `None`: never.
    pub stream_idle_timeout: Option<Duration>,
    /// HTTP/1 (admin): time to read a request's headers.
    pub header_read_timeout: Duration,
}

/// HTTP/2 parameters of a server connection, in one place so every
/// listener of every binary states them instead of inheriting library
/// defaults (tonic's include no reset cap and unlimited streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams one client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Largest header block a client may send (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// a bigger one (however many CONTINUATION frames it comes in) is refused.
    pub max_header_list_size: u32,
    /// Per-stream receive window: one stream that is not read holds at most this.
    pub initial_stream_window: u32,
    /// Per-connection receive window: the sum over streams.
    pub initial_connection_window: u32,
    /// Bytes buffered per stream toward a client that does not read.
    pub max_send_buf_size: usize,
    /// Streams a client opened and reset before we accepted them (HTTP/2
    /// rapid reset, CVE-2023-44487): beyond this, GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset for a client's protocol errors: beyond this, GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// Interval of keep-alive PINGs to a quiet client.
    pub keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection.
    pub keepalive_timeout: Duration,
}

/// Both halves of a listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections.
    pub connection: ConnectionLimits,
    /// HTTP/2 per connection.
    pub http2: Http2Settings,
}

impl Limits {
    /// Listeners that only mesh processes reach: generous, since every
    /// client proved an identity (or is the local app).
    pub fn mesh() -> Self {
        Self {
            connection: ConnectionLimits {
                max_connections: 10_000,
                preface_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(3600),
                max_connection_age: None,
                max_connection_age_grace: Duration::from_secs(30),
                stream_idle_timeout: Some(Duration::from_secs(3600)),
                header_read_timeout: Duration::from_secs(10),
            },
            http2: Http2Settings {
                max_concurrent_streams: 1024,
                max_header_list_size: 16 << 10,
                // Small stream window, large connection window: one stream
                // whose reader stalls takes 256 KiB of the connection's
                // 16 MiB, never the whole of it.
                initial_stream_window: 256 << 10,
                initial_connection_window: 16 << 20,
                max_send_buf_size: 256 << 10,
                max_pending_accept_reset_streams: 20,
                max_local_error_reset_streams: 1024,
                keepalive_interval: Duration::from_secs(20),
                keepalive_timeout: Duration::from_secs(10),
            },
        }
    }

    /// The gateway's ingress, where anyone on the internet may connect
    /// (Envoy's edge best practices: 100 streams, 5 min idle, 5 min stream
    /// idle, small windows).
    pub fn edge() -> Self {
        let mesh = Self::mesh();
        Self {
            connection: ConnectionLimits {
                max_connections: 5_000,
                preface_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(300),
                max_connection_age: Some(Duration::from_secs(3600)),
                stream_idle_timeout: Some(Duration::from_secs(300)),
                ..mesh.connection
            },
            http2: Http2Settings {
                max_concurrent_streams: 100,
                max_header_list_size: 16 << 10,
                initial_stream_window: 64 << 10,
                initial_connection_window: 1 << 20,
                max_send_buf_size: 64 << 10,
                max_local_error_reset_streams: 100,
                ..mesh.http2
            },
        }
    }

    /// Local admin and probe ports: a few operators and a kubelet.
    pub fn admin() -> Self {
        let mesh = Self::mesh();
        Self {
            connection: ConnectionLimits {
                max_connections: 256,
                preface_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                stream_idle_timeout: None,
                header_read_timeout: Duration::from_secs(5),
                ..mesh.connection
            },
            http2: Http2Settings {
                max_concurrent_streams: 16,
                ..mesh.http2
            },
        }
    }
}

impl Http2Settings {
    /// A hyper HTTP/2 server builder with these parameters (and a timer,
    /// which keep-alive needs).
    pub fn server_builder(
        &self,
    ) -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
        let mut builder =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        self.configure(&mut builder);
        builder
    }

    /// Applies these parameters to `builder`.
    pub fn configure<E>(&self, builder: &mut hyper::server::conn::http2::Builder<E>) {
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .initial_stream_window_size(self.initial_stream_window)
            .initial_connection_window_size(self.initial_connection_window)
            .max_send_buf_size(self.max_send_buf_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout);
    }

    /// A tonic server with these parameters, for the control plane and the
    /// shop's apps (tonic's defaults: unlimited streams, no cap on locally
    /// reset streams, hyper's header size).
    pub fn tonic(&self, server: tonic::transport::Server) -> tonic::transport::Server {
        server
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_header_list_size(self.max_header_list_size)
            .initial_stream_window_size(self.initial_stream_window)
            .initial_connection_window_size(self.initial_connection_window)
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
    }
}

/// Flags (and `MESH_*` environment variables) that override a listener's
/// defaults; flatten into a binary's arguments. Durations read like route
/// timeouts: `500ms`, `10s`, `5m`; `0s` turns an optional limit off.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Connections one listener holds at once (more are closed at accept).
    #[arg(long, env = "MESH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time a new connection has to send its first request bytes.
    #[arg(long, env = "MESH_PREFACE_TIMEOUT", value_parser = duration)]
    pub preface_timeout: Option<Duration>,
    /// Close connections with no call in flight for this long.
    #[arg(long, env = "MESH_IDLE_TIMEOUT", value_parser = duration)]
    pub idle_timeout: Option<Duration>,
    /// Ask connections older than this to reconnect (GOAWAY); 0s: never.
    #[arg(long, env = "MESH_MAX_CONNECTION_AGE", value_parser = duration)]
    pub max_connection_age: Option<Duration>,
    /// End response streams silent for this long; 0s: never.
    #[arg(long, env = "MESH_STREAM_IDLE_TIMEOUT", value_parser = duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// HTTP/2 streams one client may have open at once.
    #[arg(long, env = "MESH_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Largest request header block, in bytes.
    #[arg(long, env = "MESH_MAX_HEADER_LIST_SIZE")]
    pub max_header_list_size: Option<u32>,
}

impl LimitArgs {
    /// `base` with the limits given on the command line.
    pub fn apply(&self, mut base: Limits) -> Limits {
        let c = &mut base.connection;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        if let Some(v) = self.max_connections {
            c.max_connections = v.max(1);
        }
        if let Some(v) = self.preface_timeout {
            c.preface_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            c.idle_timeout = v;
        }
        if let Some(v) = self.max_connection_age {
            c.max_connection_age = nonzero(v);
        }
        if let Some(v) = self.stream_idle_timeout {
            c.stream_idle_timeout = nonzero(v);
        }
        if let Some(v) = self.max_concurrent_streams {
            base.http2.max_concurrent_streams = v.max(1);
        }
        if let Some(v) = self.max_header_list_size {
            base.http2.max_header_list_size = v;
        }
        base
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::model::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_is_stricter_than_the_mesh() {
        let (mesh, edge) = (Limits::mesh(), Limits::edge());
        assert!(edge.http2.max_concurrent_streams < mesh.http2.max_concurrent_streams);
        assert!(edge.connection.idle_timeout < mesh.connection.idle_timeout);
        assert!(edge.http2.initial_stream_window <= mesh.http2.initial_stream_window);
        assert_eq!(mesh.http2.max_header_list_size, 16 << 10);
    }

    #[test]
    fn flags_override_and_zero_turns_optional_limits_off() {
        let args = LimitArgs {
            max_connections: Some(3),
            max_connection_age: Some(Duration::ZERO),
            stream_idle_timeout: Some(Duration::from_secs(7)),
            ..LimitArgs::default()
        };
        let limits = args.apply(Limits::edge());
        assert_eq!(limits.connection.max_connections, 3);
        assert_eq!(limits.connection.max_connection_age, None);
        assert_eq!(
            limits.connection.stream_idle_timeout,
            Some(Duration::from_secs(7))
        );
        assert_eq!(limits.http2, Limits::edge().http2);
    }
}
