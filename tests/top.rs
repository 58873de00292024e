//! `meshctl top` in a real pseudo-terminal (tmux), as a person runs it over
//! SSH: beside a real secure mesh with calls going through it, it draws the
//! busiest methods, and `q` ends it cleanly.

// Helpers here are test code too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::TestMesh;

/// How long the terminal may take to show what the test waits for on a
/// loaded 2-core machine (a timeout, not an expected time).
const SETTLE: Duration = Duration::from_secs(60);

/// tmux on a socket of the test's own, so nothing else is touched.
fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("run tmux")
}

/// A shell word: `value` in single quotes.
fn quoted(value: &std::ffi::OsStr) -> String {
    format!("'{}'", value.to_string_lossy().replace('\'', r"'\''"))
}

#[test]
fn top_draws_the_busiest_methods_and_quits_on_q() {
    if !support::have_tool("tmux") {
        return;
    }
    let mesh = TestMesh::start(&support::secure_catalog());
    // Calls through the gateway all along.
    let load = support::CatalogLoad::start(mesh.gateway_uri());

    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status");
    let config = mesh.plan.identity.as_ref().map(|i| i.meshconfig());
    let command = mesh.meshctl_command(config.as_deref(), &["top", "--interval", "1s"]);
    let mut line = String::from("env");
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!(" {}={}", key.to_string_lossy(), quoted(value)));
        }
    }
    line.push(' ');
    line.push_str(&quoted(command.get_program()));
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&quoted(arg));
    }
    // The exit status is kept: the pane (and session) ends with meshctl.
    let script = format!("{line}; echo $? > {}", quoted(status_file.as_os_str()));
    let socket = format!("mesh-top-{}", std::process::id());
    let started = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "40",
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(started.status.success(), "{started:?}");

    // The busiest method appears, with its service.
    let deadline = Instant::now() + SETTLE;
    let screen = loop {
        let captured = tmux(&socket, &["capture-pane", "-p", "-t", "top"]);
        let screen = String::from_utf8_lossy(&captured.stdout).into_owned();
        if screen.contains("shop.catalog.v1.CatalogService/ListProducts") {
            break screen;
        }
        assert!(
            Instant::now() < deadline && !status_file.exists(),
            "top never showed ListProducts; screen:\n{screen}\nstatus: {:?}",
            std::fs::read_to_string(&status_file)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        screen.contains("CALLS/S") && screen.contains("catalog"),
        "{screen}"
    );
    assert!(screen.contains("100.0%"), "every call succeeded: {screen}");

    // `s` changes the order in place; `q` quits, with status 0.
    tmux(&socket, &["send-keys", "-t", "top", "s"]);
    let deadline = Instant::now() + SETTLE;
    loop {
        let captured = tmux(&socket, &["capture-pane", "-p", "-t", "top"]);
        if String::from_utf8_lossy(&captured.stdout).contains("sorted by success") {
            break;
        }
        assert!(Instant::now() < deadline, "s did not change the order");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux(&socket, &["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + SETTLE;
    while !status_file.exists() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Written by the shell once meshctl returned: wait for the whole line.
    let status = loop {
        let status = std::fs::read_to_string(&status_file).unwrap();
        if status.ends_with('\n') {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.trim(), "0", "meshctl top exited with {status}");
    tmux(&socket, &["kill-server"]);
    drop(load);
}
