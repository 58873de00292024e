use clap::Parser;
use sidecar::settings::Settings;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let runtime = match settings.worker_threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n));
            builder
        }
    }
    .enable_all()
    .build()?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let telemetry = mesh::telemetry::init("sidecar", settings.log_format, None)?;
    let shutdown = mesh::shutdown::on_signal()?;
    let result = sidecar::run(settings, shutdown).await;
    // Spans of the last calls go out before the process does.
    telemetry.shutdown().await;
    Ok(result?)
}
