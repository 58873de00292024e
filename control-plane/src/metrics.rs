//! The replica's Prometheus metrics, in text format at the admin port's
//! `/metrics`: connected sidecars, pushes, ACKs and NACKs, store errors,
//! watch resyncs, and the store revision being pushed.
//!
//! Counters are bumped where things happen (discovery, watcher, replica
//! status); the two gauges are read from the replica's state at scrape
//! time, so they cannot drift from it.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which store operation failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Why the watch started over.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What an audited admin call did.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// What a certificate request came to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The metrics of one replica.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connected_sidecars: Gauge,
    published_revision: Gauge,
    pushes: Counter,
    pushed_resources: Counter,
    push_bytes: Counter,
    acks: Counter,
    nacks: Counter,
    store_errors: Family<OperationLabels, Counter>,
    watch_resyncs: Family<ReasonLabels, Counter>,
    audit_events: Family<ActionLabels, Counter>,
    certificates: Family<ResultLabels, Counter>,
    refused_registrations: Counter,
    tls_handshake_failures: Family<ReasonLabels, Counter>,
    issuer_expiry: Gauge,
    jwks_fetches: Family<ResultLabels, Counter>,
    listeners: mesh::listen::ListenerStats,
}

impl Default for Metrics {
    fn default() -> Self {
        let connected_sidecars = Gauge::default();
        let published_revision = Gauge::default();
        let pushes = Counter::default();
        let pushed_resources = Counter::default();
        let push_bytes = Counter::default();
        let acks = Counter::default();
        let nacks = Counter::default();
        let store_errors = Family::<OperationLabels, Counter>::default();
        let watch_resyncs = Family::<ReasonLabels, Counter>::default();
        let audit_events = Family::<ActionLabels, Counter>::default();
        let certificates = Family::<ResultLabels, Counter>::default();
        let refused_registrations = Counter::default();
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        let issuer_expiry = Gauge::default();
        let jwks_fetches = Family::<ResultLabels, Counter>::default();
        let mut registry = Registry::default();
        let listeners = mesh::listen::ListenerStats::default();
        listeners.register(registry.sub_registry_with_prefix("mesh_cp"));
        registry.register(
            "mesh_cp_audit_events",
            "Admin writes (and refused admin calls: action=refused), by action",
            audit_events.clone(),
        );
        registry.register(
            "mesh_cp_certificates",
            "Certificate requests, by result (issued, bad-token, bad-request)",
            certificates.clone(),
        );
        registry.register(
            "mesh_cp_refused_registrations",
            "Discovery streams refused because the node is not the identity its certificate proves",
            refused_registrations.clone(),
        );
        registry.register(
            "mesh_cp_tls_handshake_failures",
            "TLS handshakes that failed on the gRPC listener, by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "mesh_cp_jwks_fetches",
            "Key set fetches for request authentications, by result (changed, unchanged, failed)",
            jwks_fetches.clone(),
        );
        registry.register(
            "mesh_cp_issuer_expiry_seconds",
            "Seconds until the issuer certificate expires",
            issuer_expiry.clone(),
        );
        registry.register(
            "mesh_cp_connected_sidecars",
            "Sidecars and gateways with a discovery stream open to this replica",
            connected_sidecars.clone(),
        );
        registry.register(
            "mesh_cp_published_revision",
            "Store revision of the table this replica pushes",
            published_revision.clone(),
        );
        registry.register(
            "mesh_cp_pushes",
            "Updates pushed to proxies",
            pushes.clone(),
        );
        registry.register(
            "mesh_cp_pushed_resources",
            "Resources sent to proxies (new or changed for the proxy it went to)",
            pushed_resources.clone(),
        );
        registry.register(
            "mesh_cp_push_bytes",
            "Bytes of the updates pushed to proxies (gRPC messages, before HTTP/2 and TLS framing)",
            push_bytes.clone(),
        );
        registry.register(
            "mesh_cp_acks",
            "Updates proxies answered (with or without refused resources)",
            acks.clone(),
        );
        registry.register(
            "mesh_cp_nacks",
            "Resources proxies refused (NACK): each keeps its last good version there",
            nacks.clone(),
        );
        registry.register(
            "mesh_cp_store_errors",
            "Failed calls to the store (etcd), by operation",
            store_errors.clone(),
        );
        registry.register(
            "mesh_cp_watch_resyncs",
            "Times the store watch started over: broken (resumed from the last revision) or compacted (full read)",
            watch_resyncs.clone(),
        );
        Self {
            registry,
            connected_sidecars,
            published_revision,
            pushes,
            pushed_resources,
            push_bytes,
            acks,
            nacks,
            store_errors,
            watch_resyncs,
            audit_events,
            certificates,
            refused_registrations,
            tls_handshake_failures,
            issuer_expiry,
            jwks_fetches,
            listeners,
        }
    }
}

impl Metrics {
    /// What the admin listener did to connections (caps, timeouts).
    pub fn listeners(&self) -> &mesh::listen::ListenerStats {
        &self.listeners
    }

    /// An update of `resources` resources and `bytes` bytes went out to a
    /// proxy: what scoped deltas are for is seen in the bytes per change.
    pub fn pushed(&self, resources: usize, bytes: usize) {
        self.pushes.inc();
        self.pushed_resources.inc_by(resources as u64);
        self.push_bytes.inc_by(bytes as u64);
    }

    /// A proxy answered an update.
    pub fn acked(&self) {
        self.acks.inc();
    }

    /// A proxy refused `resources` resources.
    pub fn nacked(&self, resources: usize) {
        self.nacks.inc_by(resources as u64);
    }

    /// A store call failed; `operation` names it (`watch`, `register`, ...).
    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// The watch starts over, because it `reason` (`broken`, `compacted`).
    pub fn watch_resync(&self, reason: &'static str) {
        self.watch_resyncs
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// An admin write (or a refused admin call, `refused`).
    pub fn audit(&self, action: &'static str) {
        self.audit_events
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// A certificate request ended with `result`.
    pub fn certificate(&self, result: &'static str) {
        self.certificates
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A discovery stream was refused for its identity.
    pub fn refused_registration(&self) {
        self.refused_registrations.inc();
    }

    /// A TLS handshake failed on the gRPC listener.
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A key set fetch ended with `result`.
    pub fn jwks_fetch(&self, result: &'static str) {
        self.jwks_fetches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Seconds the issuer has left.
    pub fn issuer_expiry(&self, seconds: i64) {
        self.issuer_expiry.set(seconds);
    }

    /// The text exposition, with the gauges set to `connected_sidecars`
    /// and `published_revision`.
    pub fn encode(&self, connected_sidecars: usize, published_revision: i64) -> String {
        self.connected_sidecars
            .set(i64::try_from(connected_sidecars).unwrap_or(i64::MAX));
        self.published_revision.set(published_revision);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_gauges_in_text_format() {
        let metrics = Metrics::default();
        metrics.pushed(3, 100);
        metrics.pushed(1, 20);
        metrics.acked();
        metrics.nacked(1);
        metrics.store_error("watch");
        metrics.watch_resync("compacted");
        let text = metrics.encode(3, 42);
        for line in [
            "mesh_cp_connected_sidecars 3",
            "mesh_cp_published_revision 42",
            "mesh_cp_pushes_total 2",
            "mesh_cp_pushed_resources_total 4",
            "mesh_cp_push_bytes_total 120",
            "mesh_cp_acks_total 1",
            "mesh_cp_nacks_total 1",
            "mesh_cp_store_errors_total{operation=\"watch\"} 1",
            "mesh_cp_watch_resyncs_total{reason=\"compacted\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
