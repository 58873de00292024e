//! The shop's payments service: charges and refunds, with failure and
//! latency injection for resilience drills.
//!
//! # Layout
//!
//! - [`drill`]: the injected latency and failures (`--latency-ms`,
//!   `--failure-rate`).
//! - [`ledger`]: the payments recorded, idempotency keys included. No I/O.
//! - [`service`]: the gRPC edge (`shop.payments.v1.PaymentsService`).

mod drill;
mod ledger;
mod service;

use std::time::Duration;

use clap::Parser;
use mesh::proto::shop::payments::v1::payments_service_server::PaymentsServiceServer;

/// Command line of the payments service.
#[derive(Debug, Parser)]
#[command(version, about = "The shop's payments service")]
struct Args {
    #[command(flatten)]
    app: mesh::app::AppArgs,
    /// Probability (0.0 to 1.0) that a Charge or Refund fails with
    /// UNAVAILABLE before recording anything: a drill for retries and the
    /// orders saga's compensation.
    #[arg(long, env = "PAYMENTS_FAILURE_RATE", default_value_t = 0.0, value_parser = drill::parse_failure_rate)]
    failure_rate: f64,
    /// Milliseconds every Charge and Refund waits before doing anything: a
    /// drill for timeouts and deadline propagation.
    #[arg(long, env = "PAYMENTS_LATENCY_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=drill::MAX_LATENCY_MS))]
    latency_ms: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh::app::run("payments", &args.app, |_shutdown| async {
        let drill = drill::Drill::new(args.failure_rate, Duration::from_millis(args.latency_ms))?;
        if drill.is_active() {
            tracing::warn!(
                failure_rate = args.failure_rate,
                latency_ms = args.latency_ms,
                "drill active: charges and refunds are slowed or failed on purpose"
            );
        }
        let server =
            PaymentsServiceServer::new(service::Payments::new(ledger::Ledger::default(), drill));
        Ok::<_, drill::BadFailureRate>(mesh::app::App::new(
            &[<PaymentsServiceServer<service::Payments> as tonic::server::NamedService>::NAME],
            tonic::service::Routes::new(server),
        ))
    })
    .await?;
    Ok(())
}
