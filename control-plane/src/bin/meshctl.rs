//! `meshctl`: the mesh's command-line tool, with kubectl habits.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the whole demo mesh on this machine (loopback only) until Ctrl-C.
    Up(control_plane::up::UpArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    mesh::logging::init(mesh::logging::LogFormat::Text);
    match cli.command {
        Commands::Up(args) => {
            let shutdown = mesh::shutdown::on_signal()?;
            control_plane::up::run(args, shutdown).await
        }
    }
}
