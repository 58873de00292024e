use clap::Parser;
use sidecar::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let _telemetry = mesh::telemetry::init("sidecar", settings.log_format, None)?;
    let shutdown = mesh::shutdown::on_signal()?;
    sidecar::run(settings, shutdown).await?;
    Ok(())
}
