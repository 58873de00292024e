//! Logs and traces for every binary, set up by one [`init`].
//!
//! Logs: `tracing` lines on stderr, filtered by `RUST_LOG` (default
//! `info`), text or JSON, each line inside a traced call carrying its
//! `trace_id`. Traces: `tracing` spans become OpenTelemetry spans
//! (tracing-opentelemetry) exported with OTLP over gRPC to Jaeger or any
//! collector, configured by the standard `OTEL_*` variables:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where spans go (default `http://localhost:4317`); setting one turns export on |
//! | `OTEL_TRACES_EXPORTER` | `otlp` turns export on, `none` off |
//! | `OTEL_SDK_DISABLED` | `true` turns export off |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; the service name defaults to the binary's |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` (default), `parentbased_traceidratio`, `parentbased_always_off`, `always_on`, `always_off`, `traceidratio` |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | the batch processor (queue 2048, 5 s, 512) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS` | the exporter (10 s per export) |
//!
//! A `--otlp-endpoint` flag, where a binary has one, beats the environment.
//! Export never slows a call: finished spans wait in a bounded queue and
//! are dropped, and counted ([`dropped_spans`]), when the collector is
//! missing or slow. Context travels in W3C `traceparent`/`tracestate`
//! ([`rpc`] for gRPC). With export off, services still make spans (not
//! recorded) so trace ids reach their logs and pass on to the next service;
//! proxies ask [`sampling`] first and make none, passing the caller's
//! context on untouched.
//!
//! # Layout
//!
//! - [`config`]: the `OTEL_*` rules, pure.
//! - [`export`]: the bounded, counting way out for finished spans.
//! - [`log_format`]: the log layer and its trace-id-carrying lines.
//! - [`propagation`]: W3C context in and out of HTTP headers.
//! - [`rpc`]: server and client tower layers for gRPC spans.
//! - [`sampling`]: whether a proxied call gets spans at all.

pub mod config;
pub mod export;
pub mod log_format;
pub mod propagation;
pub mod rpc;
pub mod sampling;

use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use config::{SamplerChoice, TraceSettings};
pub use export::{BoundedBatch, CountingExporter, SpanAccounting};
pub use log_format::{current_trace_ids, log_layer, LogFormat, WithTraceId};
pub use propagation::{extract_context, inject_context};
pub use rpc::{ClientSpan, ClientSpanLayer, ServerSpan, ServerSpanLayer};
pub use sampling::{sampling, Sampling};

/// Longest a shutdown waits for the last spans to reach the collector: a
/// dead collector must not hold up a rolling restart.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The instrumentation scope of every span the mesh makes.
const SCOPE: &str = "mesh";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    /// [`init`] reports it as a warning and runs without export.
    #[error("OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The tonic exporter spawns its connection onto the current tokio
    /// runtime, so it must be built inside one.
    #[error("telemetry with OTLP export must be initialised inside a tokio runtime")]
    NoRuntime,
    /// Something installed a global `tracing` subscriber first.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Spans lost on the way to the collector since the process started:
/// refused because the export queue was full, or in a batch the collector
/// never took. What `/metrics` shows as `mesh_trace_spans_dropped_total`.
pub fn dropped_spans() -> u64 {
    export::DROPPED_SPANS.load(Ordering::Relaxed)
}

/// Marks `span` as failed, with a description, in the exported trace (the
/// OpenTelemetry span status): what Jaeger shows in red. For spans a
/// service makes itself; the RPC layers mark their own.
pub fn mark_error(span: &tracing::Span, description: impl Into<String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.set_status(opentelemetry::trace::Status::error(description.into()));
}

/// Installs logging and tracing for the process: the log layer
/// ([`log_layer`]), the OpenTelemetry layer (exporting when the
/// environment or `otlp_endpoint` says so, see the module docs) and the W3C
/// Trace Context propagator. `service` is the binary's name, the default
/// `service.name`. Must run inside a tokio runtime.
///
/// Keep the returned guard for the life of the process and call
/// [`Telemetry::shutdown`] on the way out, so the last spans are sent.
pub fn init(
    service: &str,
    log_format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, TelemetryError> {
    let mut settings =
        TraceSettings::from_env(service, otlp_endpoint, |name| std::env::var(name).ok());
    let exporting = if settings.enabled {
        match exporting_provider(&settings) {
            Ok(provider) => Some(provider),
            // Telemetry must never keep a service from serving: a bad
            // endpoint costs the traces, not the traffic.
            Err(TelemetryError::Exporter(error)) => {
                settings
                    .warnings
                    .push(format!("{error}; not exporting traces"));
                settings.enabled = false;
                None
            }
            Err(error) => return Err(error),
        }
    } else {
        None
    };
    let provider = exporting.unwrap_or_else(|| {
        // No processor: spans are not recorded, only their context is
        // kept. Parent-based so a sampled caller's decision still passes on.
        SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build()
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Spans are traced at info and above whatever RUST_LOG says about logs:
    // quieter logs must not break traces.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(LevelFilter::INFO);
    let installed = tracing_subscriber::registry()
        .with(log_layer(log_format))
        .with(otel)
        .try_init();
    if installed.is_err() {
        let _ = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
        return Err(TelemetryError::AlreadyInstalled);
    }
    for warning in &settings.warnings {
        tracing::warn!("telemetry: {warning}");
    }
    if settings.enabled {
        sampling::exporting_with(settings.sampler);
        tracing::info!(
            endpoint = %settings.endpoint,
            service_name = %settings.service_name,
            sampler = ?settings.sampler,
            queue = settings.queue_size,
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Telemetry {
        provider: Some(provider),
        exporting: settings.enabled,
    })
}

fn exporting_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, TelemetryError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &settings.endpoint_override {
        builder = builder.with_endpoint(endpoint.clone());
    }
    // Fewer, quicker retries than the default: a batch that cannot go out
    // in about a second is better dropped (and counted) than holding up
    // the ones behind it.
    let exporter = builder
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::recommended().with_max_retries(2))
        .build()?;
    let processor = BoundedBatch::new(
        exporter,
        settings.queue_size,
        SpanAccounting::new(&export::DROPPED_SPANS),
    );
    let mut resource = Resource::builder();
    if !settings.service_name_from_env {
        resource = resource.with_service_name(settings.service_name.clone());
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource.build())
        .build())
}

/// The running telemetry of the process. Its [`Telemetry::shutdown`] sends
/// the spans still queued (within [`FLUSH_TIMEOUT`]); dropping it does the
/// same, blocking the dropping thread.
#[derive(Debug)]
#[must_use = "dropping the guard stops tracing at once"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl Telemetry {
    /// Spans lost on the way to the collector (see [`dropped_spans`]).
    pub fn dropped_spans(&self) -> u64 {
        dropped_spans()
    }

    /// Whether spans are being exported (tracing is on).
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes the queued spans and stops exporting, waiting at most
    /// [`FLUSH_TIMEOUT`]. The SDK's shutdown blocks while the export runs on
    /// the runtime, so it runs on a blocking thread.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let flush =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT));
        match tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "spans may be lost: flush at shutdown failed")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("spans may be lost: flush at shutdown did not finish")
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let flush = move || {
            let _ = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
        };
        // Blocking a runtime thread is allowed only through block_in_place
        // (multi-thread runtimes); elsewhere a helper thread does it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush);
            }
            _ => {
                let _ = std::thread::spawn(flush).join();
            }
        }
    }
}
