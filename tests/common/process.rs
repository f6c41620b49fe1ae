//! `runstream serve` as a child process, as a user runs it: on an ephemeral loopback port, stderr to a log file,
//! its `runstream listening on ADDR` line read from stdout (which is then drained, so the server never blocks on
//! it), killed when dropped.

use std::{
    ffi::OsStr,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Runs `runstream serve --listen 127.0.0.1:0 ARGS...` (in `cwd`, if given) and waits up to `timeout` for its
    /// listening line; panics with the log's tail if it does not come.
    pub fn start(args: &[&OsStr], cwd: Option<&Path>, log: PathBuf, timeout: Duration) -> Self {
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_runstream"));
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).env("NO_COLOR", "1");
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_runstream")));

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
