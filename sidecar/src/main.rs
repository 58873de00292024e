use clap::Parser;
use sidecar::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let telemetry = mesh::telemetry::init("sidecar", settings.log_format, None)?;
    let shutdown = mesh::shutdown::on_signal()?;
    let result = sidecar::run(settings, shutdown).await;
    // Spans of the last calls go out before the process does.
    telemetry.shutdown().await;
    Ok(result?)
}
