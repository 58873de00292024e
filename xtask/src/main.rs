//! `cargo xtask up [meshctl up flags]`: installs what the demo needs and is
//! missing (etcd, grpcurl: `.ci/setup demo`), builds the workspace and runs
//! the demo mesh (`meshctl up`). `cargo xtask test [cargo test flags]`:
//! installs what the tests need (`.ci/setup`: etcd, grpcurl, kubectl,
//! kubernetes-validate) and runs every test (`cargo test --workspace`).
//!
//! Both are idempotent: the set-up only installs what is missing. People
//! who have the tools can keep using `cargo build` and `cargo test`.
//!
//! The set-up stays a shell script (it drives apt and pip, and puts what
//! pip installed on `PATH` for the commands that follow); this is the one
//! entry point, so a newcomer types `cargo xtask up` and nothing else.

use std::process::{Command, ExitCode};

const USAGE: &str =
    "usage: cargo xtask up [meshctl up flags] | cargo xtask test [cargo test flags]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let script = match args.next().as_deref() {
        // Only the demo's tools, then a build, then the mesh (in the
        // foreground: Ctrl-C stops it).
        Some("up") => {
            r#"SETUP_FOR=demo source .ci/setup && "$CARGO" build --workspace && exec "${CARGO_TARGET_DIR:-target}/debug/meshctl" up "$@""#
        }
        Some("test") => r#"source .ci/setup && exec "$CARGO" test --workspace "$@""#,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("xtask")
        .args(args)
        .current_dir(root)
        .env("CARGO", cargo)
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(error) => {
            eprintln!("xtask: cannot run bash: {error}");
            ExitCode::FAILURE
        }
    }
}
