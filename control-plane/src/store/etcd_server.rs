//! A throwaway etcd for tests: the same process `meshctl up` plans
//! ([`meshctl::demo::etcd_process`]), on free loopback ports with a fresh data
//! directory, ready once `/health` answers 200, SIGKILLed on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshctl::demo::{admin_get, etcd_process};

/// How long a fresh etcd may take to answer `/health` (~0.6 s normally;
/// generous for a loaded CI machine).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts with new ports: another process may take a probed port between
/// our probe and etcd's bind.
const ATTEMPTS: usize = 3;

/// A running etcd that dies with this value.
pub(crate) struct EtcdServer {
    child: Child,
    endpoint: String,
    // Held so the data directory outlives the process.
    _dir: tempfile::TempDir,
}

enum NotReady {
    Exited(String),
    TimedOut(String),
}

impl EtcdServer {
    /// Starts one, or says why not and returns `None` when there is no
    /// `etcd` binary, except on CI (`CI=true`), where that is a failure.
    pub(crate) async fn start() -> Option<Self> {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub(crate) fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn start_blocking() -> Option<Self> {
        let mut last_failure = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let (client, peer) = free_ports();
            let spec = etcd_process("test-etcd", client, peer, &dir.path().join("data"));
            let log_path = dir.path().join("etcd.log");
            let log = File::create(&log_path).expect("etcd log file");
            let spawned = Command::new(&spec.program)
                .args(&spec.args)
                .envs(spec.env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
                    assert!(
                        !ci,
                        "etcd binary not found on PATH, and CI=true: install etcd"
                    );
                    eprintln!("skipping: no `etcd` binary on PATH ({error})");
                    return None;
                }
                Err(error) => panic!("cannot start etcd: {error}"),
            };
            let mut server = Self {
                child,
                endpoint: format!("http://{client}"),
                _dir: dir,
            };
            let admin = spec.admin.expect("etcd's plan has a client address");
            match server.wait_ready(admin, spec.ready_path, &log_path) {
                Ok(()) => return Some(server),
                Err(NotReady::Exited(log)) => last_failure = log,
                Err(NotReady::TimedOut(log)) => {
                    panic!("etcd not ready within {READY_TIMEOUT:?}; its log:\n{log}")
                }
            }
        }
        panic!("etcd exited at start-up {ATTEMPTS} times; last log:\n{last_failure}")
    }

    fn wait_ready(&mut self, admin: SocketAddr, path: &str, log: &Path) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NotReady::Exited(format!("{status}\n{}", read_log(log))));
            }
            if matches!(admin_get(admin, path), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut(read_log(log)));
            }
            // Poll interval, not a guess at readiness.
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // `Child::kill` is SIGKILL: nothing to flush, the data dir goes too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct free loopback ports: both listeners are open at once so
/// the OS cannot hand out the same port twice, then released for etcd.
fn free_ports() -> (SocketAddr, SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let (a, b) = (bind(), bind());
    let addr = |listener: &TcpListener| listener.local_addr().expect("local address");
    (addr(&a), addr(&b))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| error.to_string())
}
