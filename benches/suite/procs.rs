//! Server processes under test: runstream itself and the raw-ceiling server (this binary re-executed with
//! `--raw-server`), each its own process, so the load generator and the server are separated the same way for both.
//! Also reads a server's memory and CPU time from /proc.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A server the suite talks to: a child process it started, or a running server given by `--addr`.
pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// The durable server's data dir, removed with the server.
    data_dir: Option<std::path::PathBuf>,
}

impl Server {
    /// Starts `program args...`, which must print `... listening on ADDR` on its first stdout line.
    fn spawn(mut command: Command, what: &str) -> Self {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start the {what} server: {e}"));
        let stdout = child.stdout.take().expect("the server's stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the {what} server's stdout: {e}"));
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the {what} server printed {line:?}, not `... listening on ADDR`"));
        Self { addr, child: Some(child), data_dir: None }
    }

    /// A fresh `runstream serve --listen 127.0.0.1:0 --store memory` (release build, logs at warn so logging
    /// costs nothing); `program` overrides the binary (`--server-bin`, e.g. a saved build to compare against).
    pub fn runstream(program: Option<&std::path::Path>) -> Self {
        let program = program.unwrap_or(std::path::Path::new(env!("CARGO_BIN_EXE_runstream")));
        let mut command = Command::new(program);
        command.args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"]).env("RUST_LOG", "warn");
        offline_model(&mut command);
        Self::spawn(command, "runstream")
    }

    /// The same in durable mode: the default SQLite store, on a fresh data dir under target/bench.
    pub fn runstream_durable(program: Option<&std::path::Path>) -> Self {
        let program = program.unwrap_or(std::path::Path::new(env!("CARGO_BIN_EXE_runstream")));
        let data_dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut command = Command::new(program);
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data_dir).env("RUST_LOG", "warn");
        offline_model(&mut command);
        let mut server = Self::spawn(command, "runstream (durable)");
        server.data_dir = Some(data_dir);
        server
    }

    /// `runstream serve` in durable mode on `data_dir`, which is kept when the server goes (the `restart`
    /// scenario starts several servers on one store). Returns when the server printed its listening line, that is
    /// once it loaded its store and bound its port.
    pub fn runstream_on(program: Option<&std::path::Path>, data_dir: &std::path::Path) -> Self {
        let program = program.unwrap_or(std::path::Path::new(env!("CARGO_BIN_EXE_runstream")));
        let mut command = Command::new(program);
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).env("RUST_LOG", "warn");
        offline_model(&mut command);
        Self::spawn(command, "runstream (durable)")
    }

    /// No server: for scenarios that start their own (`restart`).
    pub fn none() -> Self {
        Self { addr: SocketAddr::from(([127, 0, 0, 1], 0)), child: None, data_dir: None }
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to exit; returns how long that took, or
    /// `None` if it did not exit within `deadline` (it is then killed).
    pub fn terminate(&mut self, deadline: Duration) -> Option<Duration> {
        let child = self.child.as_mut()?;
        let start = std::time::Instant::now();
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(sent.as_ref().is_ok_and(|s| s.success()), "cannot send SIGTERM to the server: {sent:?}");
        while start.elapsed() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Stops the server uncleanly (SIGKILL, as the OOM killer or a crash would) and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The raw tonic ceiling server: this very binary with `--raw-server`.
    pub fn raw() -> Self {
        let exe = std::env::current_exe().expect("the bench binary's own path");
        let mut command = Command::new(exe);
        command.arg("--raw-server");
        Self::spawn(command, "raw ceiling")
    }

    /// The `workers` scenario's server: this very binary with `--workers-server`.
    pub fn workers() -> Self {
        let exe = std::env::current_exe().expect("the bench binary's own path");
        let mut command = Command::new(exe);
        command.arg("--workers-server");
        Self::spawn(command, "workers")
    }

    /// A server someone else runs; its memory and CPU cannot be read.
    pub fn external(addr: SocketAddr) -> Self {
        Self { addr, child: None, data_dir: None }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<f64> {
        status_kb(self.pid()?, "VmHWM:").map(|kb| kb * 1024.0)
    }

    /// Current resident set size (VmRSS), in bytes.
    pub fn rss(&self) -> Option<f64> {
        rss_of(self.pid()?)
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name (which may contain spaces) start at field 3 (state); utime and stime are
        // fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / clock_ticks())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The current resident set size (VmRSS) of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> Option<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024.0)
}

fn status_kb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`, 100 on Linux in practice).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Gives a just-started server's runtime a moment to settle (threads spawned, listener polled).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Clears the model settings a benchmark server would otherwise inherit: the built-in agents stay on the offline
/// model, and a stray `RUNSTREAM_MODEL_BASE_URL` cannot stop the server at start.
fn offline_model(command: &mut Command) {
    for name in ["RUNSTREAM_MODEL", "RUNSTREAM_MODEL_BASE_URL", "RUNSTREAM_MODEL_API_KEY"] {
        command.env_remove(name);
    }
}
