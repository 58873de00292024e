use clap::Parser;
use sidecar::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    mesh::logging::init(settings.log_format);
    let shutdown = mesh::shutdown::on_signal()?;
    sidecar::run(settings, shutdown).await?;
    Ok(())
}
