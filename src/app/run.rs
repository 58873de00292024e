//! The life of a shop service's process, written once for every `main`:
//! telemetry first (so start-up is logged), signals watched, the service
//! built and served until SIGTERM or Ctrl-C, then the app's own background
//! work finished, then spans flushed, even when serving failed (they may
//! say why).

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use super::{serve, AppArgs, ServeError};
use crate::telemetry::{self, TelemetryError};

/// Work an app finishes after it stopped serving (sagas to settle, a
/// timer task to join), before its spans are flushed.
pub type Finish = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an app serves, and what it finishes after serving.
pub struct App {
    /// The gRPC services it serves (for health and reflection).
    pub service_names: Vec<&'static str>,
    /// Its services.
    pub routes: Routes,
    /// Run after serving ended, before the spans are flushed.
    pub finish: Option<Finish>,
}

impl App {
    /// Serves `routes`, whose gRPC services are `service_names`.
    pub fn new(service_names: &[&'static str], routes: Routes) -> Self {
        Self {
            service_names: service_names.to_vec(),
            routes,
            finish: None,
        }
    }

    /// The same, running `finish` once serving ended.
    pub fn finishing(mut self, finish: impl Future<Output = ()> + Send + 'static) -> Self {
        self.finish = Some(Box::pin(finish));
        self
    }
}

/// Why an app's process ended in error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Logging or tracing could not start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// Signal handlers could not be installed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    /// The app could not be built from its flags.
    #[error("{0}")]
    Build(Box<dyn std::error::Error + Send + Sync>),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the app `service` with `args`: `build` gets the shutdown token
/// (fired by SIGTERM or Ctrl-C; tasks that must end with the app watch it)
/// and makes the [`App`].
pub async fn run<B, F, E>(service: &str, args: &AppArgs, build: B) -> Result<(), RunError>
where
    B: FnOnce(CancellationToken) -> F,
    F: Future<Output = Result<App, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let telemetry = telemetry::init(service, args.log_format, args.otlp_endpoint.as_deref())?;
    let served = async {
        let shutdown = crate::shutdown::on_signal().map_err(RunError::Signals)?;
        let app = build(shutdown.clone())
            .await
            .map_err(|e| RunError::Build(e.into()))?;
        let served = serve(
            service,
            args,
            &app.service_names,
            app.routes,
            shutdown.clone(),
        )
        .await;
        // Background work ends with the shutdown signal; after a serve
        // error (a taken port) that signal has not fired yet.
        shutdown.cancel();
        if let Some(finish) = app.finish {
            finish.await;
        }
        served.map_err(RunError::from)
    }
    .await;
    telemetry.shutdown().await;
    served
}
