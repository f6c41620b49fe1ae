//! The Python SDK (`sdk/python`, `import runstream`) with real processes: the package installed into the venv of
//! `scripts/test-deps.sh` (which reinstalls it when its files change), a real server, real Python worker processes.
//!
//! - `python_sdk_stubs_match_the_protos`: the committed stubs in `sdk/python/runstream/v1` are what
//!   `sdk/python/gen_stubs.py` makes from `proto/` now.
//! - `python_sdk_client_against_the_builtin_demos`: `tests/python/sdk/test_client.py` against `runstream serve`.
//! - `python_sdk_workers_against_the_workers_example`: `tests/python/sdk/test_workers.py` (no worker then one,
//!   max_in_flight, SIGKILL and redelivery, a cut connection restored within the lease, cancel, suspend and
//!   resume, a late result rejected, an oversized output, a non-retryable error) against `examples/workers.rs`.
//! - `python_sdk_worker_survives_a_server_kill_9`: `tests/python/sdk/test_server_restart.py`, the example server
//!   killed with SIGKILL while a Python worker holds tasks and restarted: the run completes, each step result once.
//! - `python_sdk_registered_workflow_on_runstream_serve`: `tests/python/sdk/test_registered.py`, a workflow
//!   registered with `Client.register_workflow` (step, foreach at concurrency 4, sleep, parallel, map) run on
//!   `runstream serve` by a Python worker process: its stream, the foreach's bound, versions.
//! - `python_readme_five_minutes`: README's Python walkthrough, its register.py, worker.py and stream.py as written
//!   there, against `runstream serve`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::process::{ServerProcess, example_binary, run_with_timeout};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PYTHON_TIMEOUT: Duration = Duration::from_secs(300);
/// The example server's lease: short, so that redelivery scenarios take seconds; long enough for a loaded machine's
/// heartbeats (every quarter of it) to keep a lease.
const LEASE_MS: &str = "3000";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the tests keep their servers' data and logs.
fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// The venv's python, with the SDK installed (`scripts/test-deps.sh`, once per test process), running
/// `script ARGS...` in `cwd`: unbuffered, so that a log has its lines as they come, and writing no bytecode beside
/// the scripts.
fn python(cwd: &Path, script: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(&common::tools::tools().python);
    cmd.arg(script).args(args).current_dir(cwd).env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// `runstream serve` on an ephemeral port over a fresh data directory, `TMP/NAME-data`, logging to
/// `TMP/NAME-server.log`.
fn serve_fresh(name: &str) -> ServerProcess {
    let data_dir = tmp().join(format!("{name}-data"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let log = tmp().join(format!("{name}-server.log"));
    ServerProcess::start(&["--data-dir".as_ref(), data_dir.as_os_str()], Some(repo()), log, STARTUP_TIMEOUT)
}

/// Runs `tests/python/sdk/SCRIPT ARGS...` with the venv's python; panics with its output (and the server's log
/// tail) unless it exits 0.
fn run_python(script: &str, args: &[&str], server: Option<&ServerProcess>) {
    let cmd = python(repo(), repo().join("tests/python/sdk").join(script), args);
    let out = run_with_timeout(cmd, PYTHON_TIMEOUT, script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !stderr.is_empty() {
        println!("--- stderr\n{stderr}");
    }
    assert!(
        out.status.success(),
        "{script} failed ({})\n{}",
        out.status,
        server.map(|s| s.log_tail()).unwrap_or_default()
    );
}

#[test]
fn python_sdk_stubs_match_the_protos() {
    let cmd = python(repo(), repo().join("sdk/python/gen_stubs.py"), &["--check"]);
    let out = run_with_timeout(cmd, PYTHON_TIMEOUT, "sdk/python/gen_stubs.py --check");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn python_sdk_client_against_the_builtin_demos() {
    let server = serve_fresh("sdk-python-client");
    run_python("test_client.py", &[&server.addr], Some(&server));
}

#[test]
fn python_sdk_registered_workflow_on_runstream_serve() {
    let server = serve_fresh("sdk-python-registered");
    run_python("test_registered.py", &[&server.addr], Some(&server));
}

#[test]
fn python_sdk_workers_against_the_workers_example() {
    let server = ServerProcess::start_program(
        &example_binary("workers"),
        &["--listen", "127.0.0.1:0", "--lease-ms", LEASE_MS].map(OsStr::new),
        tmp().join("sdk-python-workers-server.log"),
        STARTUP_TIMEOUT,
    );
    run_python("test_workers.py", &[&server.addr, LEASE_MS], Some(&server));
}

/// `tests/python/sdk/test_server_restart.py`: the example server killed with SIGKILL while a Python worker holds
/// tasks, restarted on the same address and data directory (the script runs both servers).
#[test]
fn python_sdk_worker_survives_a_server_kill_9() {
    let dir = tmp().join("sdk-python-server-restart");
    let _ = std::fs::remove_dir_all(&dir);
    let binary = example_binary("workers");
    let (binary, dir) = (binary.to_string_lossy(), dir.to_string_lossy());
    run_python("test_server_restart.py", &[&binary, &dir, LEASE_MS], None);
}

/// The ```python block between the markers `<!-- NAME:start -->` and `<!-- NAME:end -->` of README.md.
fn readme_python(readme: &str, name: &str) -> String {
    let (start, end) = (format!("<!-- {name}:start -->"), format!("<!-- {name}:end -->"));
    let from = readme.find(&start).unwrap_or_else(|| panic!("README.md has no {start}"));
    let len = readme[from..].find(&end).unwrap_or_else(|| panic!("README.md has no {end} after {start}"));
    let section = &readme[from + start.len()..from + len];
    let mut lines = section.lines().skip_while(|l| l.trim() != "```python");
    assert!(lines.next().is_some(), "no ```python block between {start} and {end}");
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    assert!(!block.is_empty(), "the ```python block between {start} and {end} is empty or not closed");
    block.join("\n") + "\n"
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// README's "Your own workflow in Python, in five minutes": its register.py, worker.py and stream.py, as written
/// there but for the server's address (an ephemeral port here), against `runstream serve`, with the definition
/// the README has the user copy, `examples/definitions/thumbnails.json`.
#[test]
fn python_readme_five_minutes() {
    let server = serve_fresh("sdk-python-readme");
    // The scripts and the definition, as the README has the user write them.
    let dir = tmp().join("sdk-python-readme");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    std::fs::copy(repo().join("examples/definitions/thumbnails.json"), dir.join("thumbnails.json"))
        .expect("copy thumbnails.json");
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let scripts = [("python-register", "register.py"), ("python-worker", "worker.py"), ("python-stream", "stream.py")];
    for (name, file) in scripts {
        let code = readme_python(&readme, name);
        assert!(code.contains("localhost:50051"), "{file} in README.md does not connect to localhost:50051");
        std::fs::write(dir.join(file), code.replace("localhost:50051", &server.addr)).expect("write the script");
    }
    let out = run_with_timeout(python(&dir, "register.py", &[]), PYTHON_TIMEOUT, "README's register.py");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.trim() == "thumbnails version 1",
        "register.py failed ({}):\n{printed}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.join("worker.log")).expect("create the worker's log");
    let _worker = Child(
        python(&dir, "worker.py", &[])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start worker.py"),
    );
    // stream.py waits for the worker if it is not connected yet (the run shows step_waiting NO_WORKER).
    let out = run_with_timeout(python(&dir, "stream.py", &[]), PYTHON_TIMEOUT, "README's stream.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let worker_log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "stream.py failed ({}):\n{stdout}\n{}\n--- worker.log\n{worker_log}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_tail()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // The result is a dict printed in whatever key order the server's Struct gave.
    let result = lines.last().copied().unwrap_or_default();
    for field in ["'count': 5", "'first': 'thumb-photo-0.jpg'", "'source': 'https://example.com'"] {
        assert!(result.starts_with('{') && result.contains(field), "stream.py's result lacks {field}:\n{stdout}");
    }
    let events = &lines[..lines.len() - 1];
    let seqs: Vec<usize> = events.iter().filter_map(|l| l.split(' ').next()?.parse().ok()).collect();
    assert_eq!(seqs, (1..=events.len()).collect::<Vec<_>>(), "events numbered from 1 without a gap:\n{stdout}");
    let expected =
        ["1 workflowStart", "stepOutput fetch", "custom resize", "stepProgress resize", "stepWaiting settle"];
    for expected in expected.into_iter().chain(["stepResult summary", "workflowFinish"]) {
        assert!(stdout.contains(expected), "stream.py printed no `{expected}`:\n{stdout}");
    }
    assert_eq!(stdout.matches("stepProgress").count(), 5, "a stepProgress per image:\n{stdout}");
}

/// `tests/python/sdk/test_values.py` (the SDK's one value converter against protobuf's json_format) and
/// `tests/python/sdk/test_agents.py`: an agent registered with `Client.register_agent` on `runstream serve
/// --no-builtins` (offline model), its tool run by a Python worker process: the run's stream, the task the worker
/// got, GetAgentDefinition, refused definitions; and a task whose output holds an integer too large for a double
/// fails its run with that message instead of hanging.
#[test]
fn python_sdk_registered_agent_and_values() {
    run_python("test_values.py", &[], None);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let data_dir = tmp.join("sdk-python-agents-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let server = ServerProcess::start(
        &["--data-dir".as_ref(), data_dir.as_os_str(), "--no-builtins".as_ref()],
        Some(repo()),
        tmp.join("sdk-python-agents-server.log"),
        STARTUP_TIMEOUT,
    );
    run_python("test_agents.py", &[&server.addr], Some(&server));
}
