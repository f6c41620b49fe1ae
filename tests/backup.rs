//! Backups that work, on the real binary and its SQLite store:
//!
//! - a clean stop (SIGTERM) folds the WAL into `runstream.db`, so a copy of that one file holds every run;
//! - `runstream backup` copies a running, writing server's store into one file a server can start on, holding
//!   every run finished before it began; it refuses what it cannot do with a message saying what to do instead;
//!   README's backup commands are run as written;
//! - start-time checks: a WAL without its database, a damaged WAL and an emptied database each stop the server at
//!   start (nonzero exit) saying what is wrong and what to do, leaving the files untouched;
//! - a damaged database after an unclean stop is found by the check of the whole file that runs once the server is
//!   up: from then on it refuses writes (UNAVAILABLE, health NOT_SERVING) saying what is wrong and what to do, and
//!   leaves the files untouched.
//!
//! Each test has its own directory under `CARGO_TARGET_TMPDIR/backup/`, with the servers' logs.
#![cfg(unix)]

mod common;

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    process::{ServerProcess, run_with_timeout, runstream_command},
    *,
};
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM, or a command to finish.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite's default page size, which the store keeps: WAL frames are a 24-byte header and one page.
const PAGE: usize = 4096;

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

/// SIGKILL: the store is closed by nothing but the process's death, its WAL left as it was.
fn kill(mut server: ServerProcess) {
    server.child.kill().expect("SIGKILL the server");
    let status = server.child.wait().expect("reap the server");
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// `runstream ARGS...` to its end (in `cwd`), its output captured.
fn runstream(args: &[&str], cwd: &Path) -> Output {
    let mut command = runstream_command(args);
    command.current_dir(cwd);
    run_with_timeout(command, EXIT_TIMEOUT, &format!("runstream {}", args.join(" ")))
}

/// A server that must fail at start on `data_dir`: its exit status and stderr.
fn serve_failing(dir: &Path, data_dir: &Path) -> (ExitStatus, String) {
    let mut command = runstream_command(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(data_dir);
    let out = run_with_timeout(command, START_TIMEOUT, "a server that must fail at start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "a server that must fail printed its listening line: {stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = fs::write(dir.join("failed-start.log"), &stderr);
    (out.status, stderr)
}

fn wal_of(data_dir: &Path) -> PathBuf {
    data_dir.join("runstream.db-wal")
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// A store whose last server was killed: `runs` finished runs, some of them only in its non-empty WAL.
async fn killed_store(dir: &Path, runs: usize) -> PathBuf {
    let data_dir = dir.join("data");
    let server = serve(dir, &data_dir, "server-1.log");
    chains(&mut client(&server).await, "run", runs).await;
    kill(server);
    assert!(len(&wal_of(&data_dir)) > 0, "a killed server leaves its WAL");
    data_dir
}

/// The server stopped with a nonzero exit code (not a signal), its message naming `needles`; the files are as
/// they were.
fn assert_refused(dir: &Path, data_dir: &Path, needles: &[&str]) -> String {
    let before = snapshot(data_dir);
    let (status, stderr) = serve_failing(dir, data_dir);
    assert!(status.code().is_some_and(|code| code != 0), "exit status {status:?}\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "the message should say {needle:?}:\n{stderr}");
    }
    assert_eq!(snapshot(data_dir), before, "a refused start must leave the files as they were");
    stderr
}

/// The data dir's files and their contents.
fn snapshot(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(data_dir)
        .expect("list the data dir")
        .map(|entry| {
            let entry = entry.expect("entry");
            (entry.file_name().to_string_lossy().into_owned(), fs::read(entry.path()).expect("read"))
        })
        // Not the store: the WAL's shared memory is SQLite's scratch space (rebuilt from the WAL), and each start
        // writes the lock file to take its lock.
        .filter(|(name, _)| !name.ends_with("-shm") && name != "runstream.lock")
        .collect();
    files.sort();
    files
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

// ---- runstream backup ----

/// A backup taken while the server runs and writes holds every run finished before it began, complete; a server
/// started on a data dir holding only the backup serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_busy_server_holds_every_finished_run() {
    let dir = test_dir("busy");
    let data_dir = dir.join("data");
    let server = serve(&dir, &data_dir, "server-1.log");
    let mut first = client(&server).await;
    let finished = chains(&mut first, "before", 30).await;

    // Writers that keep going through the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (stop, mut client) = (Arc::clone(&stop), first.clone());
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                let run_id = format!("during-{w}-{done}");
                stream_run(&mut client, stream_request("chain", &run_id, json!({"value": done}))).await;
                done += 1;
            }
            done
        }));
    }
    // A writer has finished a run: the backup certainly runs while others are being written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_result_opt(&mut first, "during-0-1").await.is_none() {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let target = dir.join("backup.db");
    let (dir_for_backup, target_arg) = (dir.clone(), target.display().to_string());
    let data_arg = data_dir.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        runstream(&["backup", "--data-dir", &data_arg, "--to", &target_arg], &dir_for_backup)
    })
    .await
    .expect("backup task");
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "runstream backup failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(written > 2, "the writers wrote only {written} runs");
    let copied: u64 = stdout
        .strip_prefix("backed up ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the backup should say how many runs it copied: {stdout}"));
    assert!(copied >= finished.len() as u64, "{stdout}");
    assert!(stdout.contains(" bytes) from ") && stdout.contains("backup.db"), "{stdout}");
    assert!(!dir.join("backup.db.partial").exists(), "no partial file is left");
    assert!(!dir.join("backup.db-wal").exists(), "the backup is one file");

    // The original server keeps serving; a second one starts on the backup alone.
    chains(&mut first, "after", 1).await;
    let restored = dir.join("restored");
    fs::create_dir_all(&restored).expect("create the restored data dir");
    fs::copy(&target, restored.join("runstream.db")).expect("put the backup in place");
    let second = serve(&dir, &restored, "server-2.log");
    let mut client = client(&second).await;
    assert_runs_there(&mut client, &finished, &second).await;
    let missing = client.get_run(pb::GetRunRequest { run_id: "after-0".into() }).await;
    assert!(missing.is_err(), "a run started after the backup must not be in it");
}

/// GetResult without waiting, `None` while the run does not exist.
async fn get_result_opt(client: &mut Client, run_id: &str) -> Option<pb::RunResult> {
    let request = pb::GetResultRequest { run_id: run_id.into(), wait: false, max_wait: None, fields: vec![] };
    let result = client.get_result(request).await.ok()?.into_inner();
    (status_of(&result) == pb::RunStatus::Success).then_some(result)
}

/// What `runstream backup` refuses, each with a message that says what to do; nothing is left behind.
#[test]
fn backup_refusals_say_what_to_do() {
    let dir = test_dir("refusals");
    let out = runstream(&["backup", "--data-dir", "nowhere", "--to", "b.db"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no run store in nowhere") && stderr.contains("--data-dir"), "{stderr}");

    // A data dir whose runstream.db is not a store.
    fs::create_dir_all(dir.join("other")).expect("mkdir");
    fs::write(dir.join("other/runstream.db"), b"").expect("write");
    let out = runstream(&["backup", "--data-dir", "other", "--to", "b.db"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a runstream store"), "{stderr}");
    assert!(!dir.join("b.db").exists() && !dir.join("b.db.partial").exists(), "nothing is left behind");

    // A real store: an existing target is replaced only with --force, and the store itself never is.
    let server = serve(&dir, &dir.join("data"), "server.log");
    fs::write(dir.join("b.db"), b"keep me").expect("write");
    let out = runstream(&["backup", "--data-dir", "data", "--to", "b.db"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("b.db already exists") && stderr.contains("--force"), "{stderr}");
    assert_eq!(fs::read(dir.join("b.db")).expect("read"), b"keep me");
    let out = runstream(&["backup", "--data-dir", "data", "--to", "data/runstream.db", "--force"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the store itself"));
    let out = runstream(&["backup", "--data-dir", "data", "--to", "b.db", "--force"], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up 0 runs"));
    drop(server);
}

/// README's backup commands, as written: a backup of a running server, restored into a new data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_backup_commands_work() {
    let dir = test_dir("readme");
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("read README.md");
    let (start, end) = ("<!-- backup:start -->", "<!-- backup:end -->");
    let from = readme.find(start).expect("README.md has the backup:start marker") + start.len();
    let section = &readme[from..from + readme[from..].find(end).expect("README.md has the backup:end marker")];
    let lines: Vec<&str> = section
        .lines()
        .skip_while(|l| l.trim() != "```sh")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "the README's backup block: backup, restore, serve: {lines:?}");

    // The server as the README's set-up runs it: in the directory that holds ./data.
    let server = ServerProcess::start(
        &["--data-dir".as_ref(), "./data".as_ref()],
        Some(&dir),
        dir.join("server-1.log"),
        START_TIMEOUT,
    );
    let runs = chains(&mut client(&server).await, "run", 5).await;
    let mut restored = None;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["runstream", "serve", args @ ..] => {
                let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
                restored = Some(ServerProcess::start(&args, Some(&dir), dir.join("server-2.log"), START_TIMEOUT));
            }
            ["runstream", args @ ..] => {
                let out = runstream(args, &dir);
                assert!(out.status.success(), "`{line}`: {}", String::from_utf8_lossy(&out.stderr));
                assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up 5 runs"), "`{line}`");
            }
            _ => {
                let out = run_with_timeout(
                    {
                        let mut sh = Command::new("sh");
                        sh.args(["-c", line]).current_dir(&dir);
                        sh
                    },
                    EXIT_TIMEOUT,
                    line,
                );
                assert!(out.status.success(), "`{line}`: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    let restored = restored.expect("the block starts a server on the restored data dir");
    assert_runs_there(&mut client(&restored).await, &runs, &restored).await;
    drop(server);
}

// ---- start-time checks ----

/// A WAL without its database (missing, or emptied) is not a store: the server refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_without_its_database_stops_the_server() {
    let dir = test_dir("wal-alone");
    let data_dir = killed_store(&dir, 10).await;
    let db = data_dir.join("runstream.db");

    fs::write(&db, b"").expect("empty the database");
    let needles = ["runstream.db is unreadable", "empty (0 bytes)", "runstream.db-wal", "restore it from a backup"];
    assert_refused(&dir, &data_dir, &needles);

    fs::remove_file(&db).expect("remove the database");
    assert_refused(&dir, &data_dir, &["the database is missing", "runstream.db-wal", "move it away"]);
}

/// A WAL with a damaged frame and commits after it: SQLite would drop them silently; the server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_stops_the_server() {
    let dir = test_dir("damaged-wal");
    let data_dir = killed_store(&dir, 20).await;
    let wal = wal_of(&data_dir);
    let mut bytes = fs::read(&wal).expect("read the WAL");
    let frame = 24 + PAGE;
    let frames = (bytes.len() - 32) / frame;
    assert!(frames >= 4, "the WAL has {frames} frames");
    // Inside the page of the second frame: its checksum no longer matches, and every later frame follows it.
    let at = 32 + frame + 24 + PAGE / 2;
    bytes[at] ^= 0xff;
    fs::write(&wal, &bytes).expect("write the WAL");
    assert_refused(
        &dir,
        &data_dir,
        &["runstream.db-wal beside it is damaged", "frame 2 of", "fails its checksum", "move runstream.db-wal"],
    );
}

/// An empty database where a server has run is a store cut short: refused. An empty database in a data dir no
/// server has used is a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_database_stops_the_server() {
    let dir = test_dir("emptied");
    let data_dir = dir.join("data");
    let server = serve(&dir, &data_dir, "server-1.log");
    chains(&mut client(&server).await, "run", 3).await;
    assert!(terminate(server).success());
    fs::write(data_dir.join("runstream.db"), b"").expect("empty the database");
    assert_refused(&dir, &data_dir, &["empty (0 bytes)", "runstream.lock", "restore it from a backup"]);

    let fresh = dir.join("fresh");
    fs::create_dir_all(&fresh).expect("mkdir");
    fs::write(fresh.join("runstream.db"), b"").expect("an empty file");
    let server = serve(&dir, &fresh, "server-fresh.log");
    chains(&mut client(&server).await, "new", 1).await;
}

/// After an unclean stop the database is checked whole, in the background: the server is up at once, and a damaged
/// page found makes it refuse writes (UNAVAILABLE naming the damage, health NOT_SERVING), its files left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_after_a_crash_refuses_writes_once_found() {
    let dir = test_dir("damaged-db");
    let data_dir = dir.join("data");
    // Many runs folded into the database by a clean stop, then one more left in the WAL by a kill.
    let server = serve(&dir, &data_dir, "server-1.log");
    chains(&mut client(&server).await, "run", 60).await;
    assert!(terminate(server).success());
    // The damage goes where no read of the server goes, so that it is the background check's to find (as damage
    // among old runs a start does not read would be): a table of the test's own in the file, whose leaf pages these
    // are.
    let cold_pages: Vec<u32> = {
        let conn = rusqlite::Connection::open(data_dir.join("runstream.db")).expect("open the store");
        conn.execute_batch(
            "CREATE TABLE cold (x BLOB); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) \
             INSERT INTO cold SELECT zeroblob(1000) FROM n;",
        )
        .expect("add a table");
        let mut stmt = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = 'cold' AND pagetype = 'leaf'")
            .expect("dbstat is built in");
        stmt.query_map([], |row| row.get(0)).expect("query").collect::<Result<_, _>>().expect("page numbers")
    };
    let server = serve(&dir, &data_dir, "server-2.log");
    chains(&mut client(&server).await, "late", 1).await;
    kill(server);

    // A leaf page of that table (the WAL holds no newer copy) gets a page type that does not exist.
    let wal = fs::read(wal_of(&data_dir)).expect("read the WAL");
    let in_wal: Vec<u32> = wal[32..]
        .chunks_exact(24 + PAGE)
        .map(|frame| u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
        .collect();
    let db = data_dir.join("runstream.db");
    let mut bytes = fs::read(&db).expect("read the database");
    let page = (2..=(bytes.len() / PAGE) as u32)
        .rev()
        .find(|p| cold_pages.contains(p) && !in_wal.contains(p) && bytes[(*p as usize - 1) * PAGE] == 0x0d)
        .expect("a leaf page of the table only the database holds");
    bytes[(page as usize - 1) * PAGE] = 0x6b;
    fs::write(&db, &bytes).expect("write the database");
    let before = snapshot(&data_dir);

    let server = serve(&dir, &data_dir, "server-3.log");
    let damage = ["runstream.db is unreadable (SQLite's quick_check", "restore it from a backup"];
    let found = log_line_with(&server, "the store refuses writes from now on", Duration::from_secs(30)).await;
    for needle in damage {
        assert!(found.contains(needle), "the log should say {needle:?}: {found}");
    }
    let mut client = client(&server).await;
    let start = |run_id: &str| pb::StartRunRequest {
        workflow_id: "chain".into(),
        run_id: run_id.into(),
        input: Some(pb_value(json!({ "value": 1 }))),
        ..Default::default()
    };
    assert_status(client.start_run(start("after-damage")).await, tonic::Code::Unavailable, &damage);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = HealthCheckRequest { service: "runstream.v1.RunService".into() };
        let status = health.check(request).await.expect("health").into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "health did not turn NOT_SERVING\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_status(client.start_run(start("later")).await, tonic::Code::Unavailable, &["refuses writes", damage[0]]);
    drop(client);
    terminate(server);
    assert_eq!(snapshot(&data_dir), before, "a store found damaged is left as it was (its WAL not folded in)");
}

/// Polls the server's log (up to `limit`) for a line holding `needle`; returns that line.
async fn log_line_with(server: &ServerProcess, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line with {needle:?} within {limit:?}\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
