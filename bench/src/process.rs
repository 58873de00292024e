//! The processes of one measurement. Each writes its output to a log file in
//! a temporary directory of the group; the whole group is SIGKILLed and
//! reaped when it is dropped (at the end of a measurement, on an error, or
//! when a signal drops the benchmark), and the directory goes with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long one process may take to answer its readiness check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the programs the benchmark starts are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// This executable: `bench echo-server` is the workload's server.
    pub bench: PathBuf,
    /// The directory holding `sidecar` and `control-plane`.
    pub bin_dir: PathBuf,
    /// `etcd`, if found.
    pub etcd: Option<PathBuf>,
    /// `envoy`, if found.
    pub envoy: Option<PathBuf>,
    /// `nginx`, if found.
    pub nginx: Option<PathBuf>,
}

impl Programs {
    /// Finds the programs: the mesh's binaries in `bin_dir` (default: beside
    /// this executable), the peers at the given paths or on `PATH`.
    pub fn find(
        bin_dir: Option<PathBuf>,
        envoy: Option<PathBuf>,
        nginx: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let bench = std::env::current_exe().context("path of this executable")?;
        let bin_dir = match bin_dir {
            Some(dir) => dir,
            None => bench
                .parent()
                .context("this executable has no directory")?
                .to_owned(),
        };
        Ok(Self {
            bench,
            bin_dir,
            etcd: on_path("etcd"),
            envoy: envoy.or_else(|| on_path("envoy")),
            nginx: nginx.or_else(|| on_path("nginx")),
        })
    }

    /// A binary of the workspace, which must exist.
    pub fn mesh_binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p sidecar -p control-plane -p meshctl` \
                 (or point --bin-dir at the directory that has it)",
                path.display()
            );
        }
        Ok(path)
    }

    /// etcd, which must exist.
    pub fn etcd(&self) -> anyhow::Result<&Path> {
        self.etcd
            .as_deref()
            .context("etcd is not on PATH (Debian: apt-get install etcd-server)")
    }
}

/// `program` in a directory of `PATH`, if it is there.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

struct Running {
    name: String,
    child: Child,
}

/// Processes that live and die together.
pub struct ProcessGroup {
    running: Vec<Running>,
    dir: tempfile::TempDir,
}

impl ProcessGroup {
    /// An empty group with a fresh temporary directory.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            running: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("mesh-bench-")
                .tempdir()
                .context("temporary directory")?,
        })
    }

    /// The group's directory: configuration files, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `program` as `name` (unique in the group), output to
    /// `<dir>/<name>.log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log_path(name))
            .with_context(|| format!("log file of {name}"))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        let pid = child.id();
        self.running.push(Running {
            name: name.to_owned(),
            child,
        });
        Ok(pid)
    }

    /// The pid of a started process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.child.id())
    }

    /// Waits until `GET http://<admin><path>` answers 200, failing early if
    /// any process of the group has exited.
    pub async fn wait_ready(
        &mut self,
        name: &str,
        admin: SocketAddr,
        path: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let path = path.to_owned();
        loop {
            self.check_alive()?;
            let answered = meshctl::demo::admin_call(admin, http::Method::GET, &path).await;
            if matches!(answered, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready at http://{admin}{path} within {READY_TIMEOUT:?}; its log ends with:\n{}",
                    self.log_tail(name, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, quoting its log, if a process of the group has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut exited = None;
        for running in &mut self.running {
            if let Ok(Some(status)) = running.child.try_wait() {
                exited = Some((running.name.clone(), status));
                break;
            }
        }
        if let Some((name, status)) = exited {
            bail!(
                "{name} exited ({status}); its log ends with:\n{}",
                self.log_tail(&name, 20)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of a process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Proxies and apps first, the store they talk to last.
        for running in self.running.iter_mut().rev() {
            let children = crate::proc_stats::descendants(running.child.id());
            if !children.is_empty() {
                // A master with workers (nginx) stops them itself on SIGTERM
                // and reaps them, so their CPU time is accounted to us.
                let _ = Command::new("kill")
                    .args(["-TERM", &running.child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && matches!(running.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Whatever is left: the process, and workers that outlived it.
            let _ = running.child.kill();
            let _ = running.child.wait();
            if !children.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(children.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // For a look at the processes' own traces (with BENCH_MESH_LOG):
        // the logs outlive the temporary directory.
        if let Some(keep) = std::env::var_os("BENCH_KEEP_LOGS") {
            let to = Path::new(&keep).join(self.dir.path().file_name().unwrap_or_default());
            if std::fs::create_dir_all(&to).is_ok() {
                for running in &self.running {
                    let log = format!("{}.log", running.name);
                    let _ = std::fs::copy(self.dir.path().join(&log), to.join(&log));
                }
            }
        }
    }
}
