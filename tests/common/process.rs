//! `runstream serve` as a child process, as a user runs it: on an ephemeral loopback port, stderr to a log file,
//! its `runstream listening on ADDR` line read from stdout (which is then drained, so the server never blocks on
//! it), killed when dropped. Also: running any command with a deadline, and building an example.

use std::{
    ffi::OsStr,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// The variables that choose the server's model. A child server does not inherit them from whoever runs the tests
/// (it would leave the offline model the tests expect); a test that wants them sets them.
const MODEL_VARIABLES: [&str; 3] = ["RUNSTREAM_MODEL", "RUNSTREAM_MODEL_BASE_URL", "RUNSTREAM_MODEL_API_KEY"];

/// The `runstream` binary with `args`, its model settings cleared from the environment and colors off.
pub fn runstream_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
    command.args(args).env("NO_COLOR", "1");
    for name in MODEL_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// `<target tmp>/<prefix>-<name>-<pid>`, removed first if an earlier run left it: a path of one test's own.
pub fn fresh_tmp(prefix: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    path
}

pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Runs `runstream serve --listen 127.0.0.1:0 ARGS...` (in `cwd`, if given) and waits up to `timeout` for its
    /// listening line; panics with the log's tail if it does not come.
    pub fn start(args: &[&OsStr], cwd: Option<&Path>, log: PathBuf, timeout: Duration) -> Self {
        Self::start_with_env(args, &[], cwd, log, timeout)
    }

    /// [`start`](Self::start) with environment variables `env` set for the server.
    pub fn start_with_env(
        args: &[&OsStr],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
        log: PathBuf,
        timeout: Duration,
    ) -> Self {
        let mut command = runstream_command(["serve", "--listen", "127.0.0.1:0"]);
        command.args(args).envs(env.iter().copied());
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        Self::spawn(command, log, timeout)
    }

    /// Runs `program ARGS...`, another server that prints `runstream listening on ADDR` (an example, say), as
    /// [`start`](Self::start) does.
    pub fn start_program(program: &Path, args: &[&OsStr], log: PathBuf, timeout: Duration) -> Self {
        let mut command = Command::new(program);
        command.args(args).env("NO_COLOR", "1");
        Self::spawn(command, log, timeout)
    }

    /// Runs `command`, a server that prints `runstream listening on ADDR`, as [`start`](Self::start) does.
    pub fn spawn(mut command: Command, log: PathBuf, timeout: Duration) -> Self {
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<Result<String, Vec<String>>>();
        thread::spawn(move || {
            let mut tx = Some(tx);
            let mut before = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.trim().strip_prefix("runstream listening on ") {
                    Some(addr) if tx.is_some() => {
                        let _ = tx.take().map(|tx| tx.send(Ok(addr.trim().to_owned())));
                    }
                    _ if tx.is_some() => before.push(line),
                    _ => {}
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(before));
            }
        });

        let mut server = Self { child, addr: String::new(), log };
        match rx.recv_timeout(timeout) {
            Ok(Ok(addr)) => {
                assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "unexpected listening address {addr:?}");
                server.addr = addr;
                server
            }
            Ok(Err(stdout)) => {
                let status = server.child.wait().ok();
                panic!("the server did not start (stdout: {stdout:?}); exit status {status:?}\n{}", server.log_tail())
            }
            Err(_) => panic!("no `runstream listening on ADDR` line within {timeout:?}\n{}", server.log_tail()),
        }
    }

    /// The last 40 lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- last lines of {}:\n{}", self.log.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` with stdin closed and stdout and stderr captured; kills it and panics (with what it printed)
/// if it has not finished after `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {timeout:?}\n--- stdout\n{out}\n--- stderr\n{err}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Builds `examples/NAME.rs` with the cargo that runs the tests, so the binary is never older than the code, and
/// returns its path (`<target>/<profile>/examples/NAME`, beside the test binary's `deps/`).
pub fn example_binary(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo build --example {name}: {e}"));
    assert!(status.success(), "cargo build --example {name} failed");
    let deps = std::env::current_exe().expect("test path");
    let profile = deps.parent().and_then(|d| d.parent()).expect("the profile directory above deps/");
    let binary = profile.join("examples").join(name);
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}
