//! `meshctl`: the mesh's command-line tool, with kubectl habits.

use clap::{Parser, Subcommand};
use meshctl::cli;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate the mesh")]
struct Cli {
    #[command(flatten)]
    control_plane: cli::ControlPlaneArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the whole demo mesh on this machine (loopback only) until Ctrl-C.
    Up(meshctl::up::UpArgs),
    /// Create or update routes from YAML or JSON files.
    Apply(cli::apply::ApplyArgs),
    /// List routes or endpoints.
    Get(cli::get::GetArgs),
    /// Delete a route.
    Delete(cli::delete::DeleteArgs),
    /// Show the control plane replicas and the sidecars connected to them.
    Status(cli::status::StatusArgs),
    /// Success rate, calls/s, latency, retries and ejections per service,
    /// route or caller -> callee, over a window, from the proxies' metrics.
    Stat(cli::stat::StatArgs),
    /// The busiest gRPC methods across the mesh, live in the terminal
    /// (sortable; q quits).
    Top(cli::top::TopArgs),
    /// The mesh in a browser: service graph, routes, endpoint health and
    /// proxies, served read-only on loopback (opens nothing by itself).
    Dashboard(cli::dashboard::DashboardArgs),
    /// Show where a route's calls go: subsets, endpoints, shares.
    Describe(cli::describe::DescribeArgs),
    /// The mesh's CA files, operator certificates and anchor rotation.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Check certificate expiry, trust bundle versions and the issuer's
    /// expiry; exits 1 with one line per problem.
    Check(cli::check::CheckArgs),
    /// Join tokens: the credential a proxy trades for its certificate.
    #[command(subcommand)]
    Token(cli::identity::TokenCommand),
    /// The mesh-wide mTLS mode: `get`, or `set strict|permissive`.
    #[command(subcommand)]
    Mtls(cli::mtls::MtlsCommand),
    /// Authorization: `can-i` (would a call be allowed, and why) and the
    /// mesh-wide default.
    #[command(subcommand)]
    Auth(cli::auth::AuthCommand),
}

/// `meshctl identity`: the local file commands, and `rotate`, which also
/// talks to the control plane.
#[derive(Debug, Subcommand)]
enum IdentityCommand {
    #[command(flatten)]
    Files(cli::identity::IdentityCommand),
    /// Replace the trust anchor while the mesh serves, in three resumable
    /// phases: add the new anchor, switch to the new issuer (every proxy
    /// renews), remove the old anchor.
    Rotate(cli::rotate::RotateArgs),
    /// Make a service's certificate and key locally from the CA's files
    /// (for proxies that are not the mesh's, e.g. Envoy in the benchmark).
    Issue(cli::identity::IssueArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = mesh::telemetry::init("meshctl", mesh::telemetry::LogFormat::Text, None)?;
    let cp = &cli.control_plane;
    let result = match cli.command {
        Commands::Up(args) => {
            let shutdown = mesh::shutdown::on_signal()?;
            meshctl::up::run(args, shutdown).await
        }
        Commands::Apply(args) => exit_on_error(cli::apply::run(cp, args).await),
        Commands::Get(args) => exit_on_error(cli::get::run(cp, args).await),
        Commands::Delete(args) => exit_on_error(cli::delete::run(cp, args).await),
        Commands::Status(args) => exit_on_error(cli::status::run(cp, args).await),
        Commands::Stat(args) => exit_on_error(cli::stat::run(cp, args).await),
        Commands::Top(args) => exit_on_error(cli::top::run(cp, args).await),
        Commands::Dashboard(args) => exit_on_error(cli::dashboard::run(cp, args).await),
        Commands::Describe(args) => exit_on_error(cli::describe::run(cp, args).await),
        Commands::Identity(IdentityCommand::Files(command)) => {
            exit_on_error(cli::identity::run(command))
        }
        Commands::Identity(IdentityCommand::Rotate(args)) => {
            exit_on_error(cli::rotate::run(cp, args).await)
        }
        Commands::Identity(IdentityCommand::Issue(args)) => {
            exit_on_error(cli::identity::run_issue(&args))
        }
        Commands::Check(args) => exit_on_error(cli::check::run(cp, args).await),
        Commands::Token(command) => exit_on_error(cli::identity::run_token(cp, command).await),
        Commands::Mtls(command) => exit_on_error(cli::mtls::run(cp, command).await),
        Commands::Auth(command) => exit_on_error(cli::auth::run(cp, command).await),
    };
    telemetry.shutdown().await;
    result
}

/// kubectl's way of failing: one `error: ...` line (the whole context
/// chain) and exit code 1, rather than anyhow's multi-line debug report.
fn exit_on_error(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
    Ok(())
}
