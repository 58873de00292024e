//! The way out for finished spans: the SDK's batch processor behind a queue
//! bound of our own, and an exporter wrapper, so that every span that never
//! reaches the collector is counted. A missing or slow Jaeger costs spans,
//! never latency: `on_end` never blocks and never waits for the network.
//!
//! Why not the SDK's bound alone: `BatchSpanProcessor` drops spans when its
//! channel is full but keeps the count private, and a batch the exporter
//! fails is just logged. Here [`BoundedBatch`] admits a span only while fewer
//! than `capacity` are queued or being exported (so the SDK's own channel of
//! the same size can never be full), and [`CountingExporter`] counts failed
//! batches and releases their places.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

/// Spans lost on the way to the collector, process-wide: the one number
/// `/metrics` shows as `mesh_trace_spans_dropped_total`.
pub(crate) static DROPPED_SPANS: AtomicU64 = AtomicU64::new(0);

/// The counters shared by [`BoundedBatch`] and its [`CountingExporter`].
#[derive(Debug, Clone)]
pub struct SpanAccounting {
    /// Spans admitted and not yet exported (or failed).
    pending: Arc<AtomicUsize>,
    dropped: &'static AtomicU64,
}

impl SpanAccounting {
    /// Counts into `dropped` (normally the process-wide counter; tests pass
    /// their own).
    pub fn new(dropped: &'static AtomicU64) -> Self {
        Self {
            pending: Arc::new(AtomicUsize::new(0)),
            dropped,
        }
    }

    /// Spans dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn release(&self, spans: usize) {
        // Saturating: a span refused by the SDK after shutdown never comes back.
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(spans))
            });
    }
}

/// Wraps an exporter to count the spans of every batch it fails to deliver
/// (after the exporter's own retries), and to say so in the log once per
/// outage rather than once per batch.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    accounting: SpanAccounting,
    failing: AtomicBool,
}

impl<E> CountingExporter<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, accounting: SpanAccounting) -> Self {
        Self {
            inner,
            accounting,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.accounting.release(spans);
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("span export works again");
                }
            }
            Err(error) => {
                self.accounting
                    .dropped
                    .fetch_add(spans as u64, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, spans, "span export failed; spans dropped (counted in mesh_trace_spans_dropped_total) until it works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The SDK's batch span processor behind a counted bound of `capacity`
/// spans.
#[derive(Debug)]
pub struct BoundedBatch {
    inner: BatchSpanProcessor,
    accounting: SpanAccounting,
    capacity: usize,
}

impl BoundedBatch {
    /// A batch processor exporting through `exporter` with at most
    /// `capacity` spans queued. The `OTEL_BSP_*` variables (delay, batch
    /// size) apply; the queue size is `capacity`, whatever they say.
    pub fn new<E>(exporter: E, capacity: usize, accounting: SpanAccounting) -> Self
    where
        E: SpanExporter + Send + 'static,
    {
        let capacity = capacity.max(1);
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build();
        let exporter = CountingExporter::new(exporter, accounting.clone());
        Self {
            inner: BatchSpanProcessor::new(exporter, config),
            accounting,
            capacity,
        }
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .accounting
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < self.capacity).then_some(p + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.accounting.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Mutex;

    use opentelemetry::trace::{Tracer, TracerProvider};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// An exporter that fails every batch, or holds each export until told.
    #[derive(Debug)]
    struct FakeExporter {
        fail: bool,
        gate: Option<Mutex<mpsc::Receiver<()>>>,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for FakeExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(gate) = &self.gate {
                // The batch processor runs exports on its own thread.
                let _ = gate.lock().map(|g| g.recv());
            }
            if self.fail {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            self.exported.fetch_add(batch.len(), Ordering::Relaxed);
            Ok(())
        }
    }

    fn provider(processor: BoundedBatch) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build()
    }

    fn spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for _ in 0..n {
            tracer.in_span("work", |_| {});
        }
    }

    #[test]
    fn failed_batches_are_counted() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let accounting = SpanAccounting::new(&DROPPED);
        let exporter = FakeExporter {
            fail: true,
            gate: None,
            exported: Arc::default(),
        };
        let provider = provider(BoundedBatch::new(exporter, 16, accounting.clone()));
        spans(&provider, 5);
        assert!(provider.force_flush().is_err());
        assert_eq!(accounting.dropped(), 5);
        spans(&provider, 3);
        let _ = provider.shutdown();
        assert_eq!(accounting.dropped(), 8);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let accounting = SpanAccounting::new(&DROPPED);
        let (open, gate) = mpsc::channel();
        let exported = Arc::new(AtomicUsize::new(0));
        let exporter = FakeExporter {
            fail: false,
            gate: Some(Mutex::new(gate)),
            exported: exported.clone(),
        };
        let provider = provider(BoundedBatch::new(exporter, 4, accounting.clone()));
        // The exporter is stuck (a slow collector): past 4 spans, every one
        // is refused at once.
        spans(&provider, 10);
        assert_eq!(accounting.dropped(), 6);
        for _ in 0..10 {
            let _ = open.send(());
        }
        let _ = provider.shutdown();
        assert_eq!(exported.load(Ordering::Relaxed), 4);
        assert_eq!(accounting.dropped(), 6);
    }

    #[test]
    fn delivered_spans_free_their_places() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let accounting = SpanAccounting::new(&DROPPED);
        let exported = Arc::new(AtomicUsize::new(0));
        let exporter = FakeExporter {
            fail: false,
            gate: None,
            exported: exported.clone(),
        };
        let provider = provider(BoundedBatch::new(exporter, 4, accounting.clone()));
        for _ in 0..5 {
            spans(&provider, 4);
            assert!(provider.force_flush().is_ok());
        }
        let _ = provider.shutdown();
        assert_eq!(exported.load(Ordering::Relaxed), 20);
        assert_eq!(accounting.dropped(), 0);
    }
}
