//! What the listeners did to connections, by listener: accepted, refused
//! at the cap, closed for a silent preface, idleness or age; and how many
//! are open. Cheap to clone (every metric is a shared atomic); each binary
//! registers one in its own registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Something that happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Accepted and served.
    Accepted,
    /// Accepted and closed at once: the listener was at its connection cap.
    RefusedAtLimit,
    /// Closed: no request bytes within the preface timeout.
    PrefaceTimeout,
    /// Closed gracefully: nothing in flight for the idle timeout.
    IdleTimeout,
    /// Closed gracefully: older than the maximum connection age.
    MaxAge,
    /// Cut: calls still in flight when the grace after a close ran out.
    GraceExpired,
    /// `accept` itself failed (out of file descriptors and the like).
    AcceptError,
    /// Cut: the client cancelled most of its calls as soon as it opened
    /// them (HTTP/2 rapid reset).
    RapidReset,
}

impl ConnectionEvent {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::RefusedAtLimit => "refused-at-limit",
            Self::PrefaceTimeout => "preface-timeout",
            Self::IdleTimeout => "idle-timeout",
            Self::MaxAge => "max-age",
            Self::GraceExpired => "grace-expired",
            Self::AcceptError => "accept-error",
            Self::RapidReset => "rapid-reset",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    listener: &'static str,
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Connection counters of every listener of one process.
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    events: Family<EventLabels, Counter>,
    open: Family<ListenerLabel, Gauge>,
}

impl ListenerStats {
    /// Registers `listener_connections` (counter by listener and event) and
    /// `listener_open_connections` (gauge by listener) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "listener_connections",
            "Connections by listener and what happened to them (accepted, refused-at-limit, preface-timeout, idle-timeout, max-age, grace-expired, accept-error, rapid-reset)",
            self.events.clone(),
        );
        registry.register(
            "listener_open_connections",
            "Connections open now, by listener",
            self.open.clone(),
        );
    }

    /// Counts `event` on `listener`.
    pub fn record(&self, listener: &'static str, event: ConnectionEvent) {
        self.events
            .get_or_create(&EventLabels {
                listener,
                event: event.as_str(),
            })
            .inc();
    }

    /// How often `event` happened on `listener`.
    pub fn count(&self, listener: &'static str, event: ConnectionEvent) -> u64 {
        self.events
            .get_or_create(&EventLabels {
                listener,
                event: event.as_str(),
            })
            .get()
    }

    /// Connections open on `listener` now.
    pub fn open(&self, listener: &'static str) -> i64 {
        self.open.get_or_create(&ListenerLabel { listener }).get()
    }

    pub(super) fn opened(&self, listener: &'static str) {
        self.open.get_or_create(&ListenerLabel { listener }).inc();
    }

    pub(super) fn closed(&self, listener: &'static str) {
        self.open.get_or_create(&ListenerLabel { listener }).dec();
    }
}
