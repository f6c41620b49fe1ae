//! Backups that work, on the real binary and its SQLite store:
//!
//! - a clean stop (SIGTERM) folds the WAL into `runstream.db`, so a copy of that one file holds every run.
//!
//! Each test has its own directory under `CARGO_TARGET_TMPDIR/backup/`, with the servers' logs.
#![cfg(unix)]

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use common::{process::ServerProcess, *};
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A test's fresh directory (what an earlier run left is removed).
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("backup").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `runstream serve --data-dir DATA_DIR`, its stderr in `dir/LOG`.
fn serve(dir: &Path, data_dir: &Path, log: &str) -> ServerProcess {
    ServerProcess::start(&["--data-dir".as_ref(), data_dir.as_os_str()], None, dir.join(log), START_TIMEOUT)
}

async fn client(server: &ServerProcess) -> Client {
    RunServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect to the server")
}

/// Runs `chain` runs `PREFIX-0..n` to their end; their ids and the events each one streamed.
async fn chains(client: &mut Client, prefix: &str, n: usize) -> Vec<(String, Vec<pb::RunEvent>)> {
    let mut runs = Vec::new();
    for i in 0..n {
        let run_id = format!("{prefix}-{i}");
        let events = stream_run(client, stream_request("chain", &run_id, json!({"value": i}))).await;
        assert_eq!(finish_status(events.last().expect("a finish event")), Some(pb::RunStatus::Success), "{run_id}");
        runs.push((run_id, events));
    }
    runs
}

/// Every run is there with its whole log, event for event, and its result.
async fn assert_runs_there(client: &mut Client, runs: &[(String, Vec<pb::RunEvent>)], server: &ServerProcess) {
    for (run_id, events) in runs {
        let request = pb::ObserveStreamRequest { run_id: run_id.clone(), after_seq: 0, close_on_suspend: None };
        let observed = match client.observe_stream(request).await {
            Ok(stream) => collect(stream.into_inner()).await,
            Err(status) => panic!("run {run_id} is not there: {status}\n{}", server.log_tail()),
        };
        assert_eq!(&observed, events, "run {run_id}'s log differs");
        let result = get_result(client, run_id, false).await;
        assert_eq!(status_of(&result), pb::RunStatus::Success, "{run_id}");
    }
}

/// SIGTERM, then waits (polling, up to [`EXIT_TIMEOUT`]) for the exit.
fn terminate(mut server: ServerProcess) -> ExitStatus {
    let pid = server.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wal_of(data_dir: &Path) -> PathBuf {
    data_dir.join("runstream.db-wal")
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

// ---- a clean stop ----

/// SIGTERM folds the WAL into the database: no WAL is left, and a copy of `runstream.db` alone holds every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_every_run_in_the_database_file() {
    let dir = test_dir("clean-stop");
    let data_dir = dir.join("data");
    let server = serve(&dir, &data_dir, "server-1.log");
    let runs = chains(&mut client(&server).await, "run", 40).await;
    assert!(len(&wal_of(&data_dir)) > 0, "a running server writes to its WAL");
    let status = terminate(server);
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(len(&wal_of(&data_dir)), 0, "a clean stop leaves no WAL to lose");

    let copy = dir.join("copy");
    fs::create_dir_all(&copy).expect("create the copy's data dir");
    fs::copy(data_dir.join("runstream.db"), copy.join("runstream.db")).expect("copy runstream.db alone");
    let server = serve(&dir, &copy, "server-2.log");
    assert_runs_there(&mut client(&server).await, &runs, &server).await;
}
