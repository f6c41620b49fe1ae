//! A run whose recovery brings the server down is not recovered again blindly: at the next start it is failed with
//! the reason, and the server starts. The server is this test binary re-run as a process (`crashing_server`), with a
//! workflow whose step aborts the process, on a SQLite data dir; a clean stop in between does not count.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    process::{ServerProcess, fresh_tmp},
    *,
};
use runstream::{
    Server, Store,
    engine::{Step, StepOutcome, Workflow},
    pb::{self, run_event::Event, run_service_client::RunServiceClient},
};
use serde_json::json;

/// Names the data dir of a `crashing_server` process; unset, that "test" does nothing.
const ROLE_ENV: &str = "RUNSTREAM_TEST_CRASHING_SERVER_DATA";
/// While this file (in the data dir's parent) exists, the `crasher`'s step aborts the process when asked to.
const ARMED: &str = "armed";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(60);

/// Not a test: the server the tests below start by re-running this binary with `ROLE_ENV` set. Its `crasher`
/// workflow completes a first step; its second step aborts the process when the input asks for it and the data
/// dir is armed (a file beside it), else waits (a long step). Arming after the run is stored makes the abort come
/// only in a recovery, never before the run's first commit.
#[test]
#[ignore = "a server process for the tests of this file, which start it themselves"]
fn crashing_server() {
    let Ok(data_dir) = std::env::var(ROLE_ENV) else { return };
    let armed = armed_file(Path::new(&data_dir));
    let first = Step::new("prepare", |ctx| async move { Ok(StepOutcome::Done(ctx.input().clone())) });
    let crash = Step::new("crash", move |ctx| {
        let armed = armed.clone();
        async move {
            if ctx.input()["abort"] == json!(true) && armed.exists() {
                // What an out-of-memory abort or a crashing native library does to the process.
                std::process::abort();
            }
            if ctx.input()["abort"] == json!(true) || ctx.input()["hold"] == json!(true) {
                // A long step: in flight for as long as the test needs.
                std::future::pending::<()>().await;
            }
            Ok(StepOutcome::Done(json!({ "survived": true })))
        }
    });
    let crasher = Workflow::builder("crasher").then(first).then(crash).commit();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let server = Server::builder()
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .store(Store::sqlite(data_dir))
            .workflow(crasher)
            .build()
            .expect("build");
        let listening = server.bind().await.expect("bind");
        // On a line of its own: libtest has printed `test crashing_server ... ` without a newline.
        println!("\nrunstream listening on {}", listening.local_addr());
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let term = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! { _ = term.recv() => {}, () = stop => {} }
        };
        listening.serve(term).await.expect("serve");
    });
}

fn armed_file(data: &Path) -> PathBuf {
    data.with_extension(ARMED)
}

fn server_command(data: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command.args(["crashing_server", "--exact", "--ignored", "--nocapture", "--test-threads=1"]).env(ROLE_ENV, data);
    command
}

fn tmp(name: &str) -> PathBuf {
    fresh_tmp("recovery", name)
}

fn serve(data: &Path, log: &str) -> ServerProcess {
    ServerProcess::spawn(server_command(data), tmp(log).with_extension("log"), START_TIMEOUT)
}

async fn start_run(addr: &str, run_id: &str, abort: bool) {
    let mut client = RunServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    let request = pb::StartRunRequest {
        workflow_id: "crasher".into(),
        run_id: run_id.into(),
        input: Some(pb_value(json!({ "abort": abort }))),
        ..Default::default()
    };
    // The server may abort before it answers.
    let _ = client.start_run(request).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_recovery_crashes_the_server_is_failed_at_the_next_start() {
    let data = tmp("loop-data");
    let _ = std::fs::remove_file(armed_file(&data));
    // 1. The run is stored and in its second step when the server is killed (not a recovery yet).
    let mut first = serve(&data, "loop-1");
    let mut client = RunServiceClient::connect(format!("http://{}", first.addr)).await.expect("connect");
    start_run(&first.addr, "crashes", true).await;
    until_event(&mut client, "crashes", |e| matches!(e, Event::StepStart(s) if s.step_id == "crash")).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    // 2. Armed, each recovery of the run aborts the server, MAX_RECOVERIES (3) times. Whether an abort comes before
    // or after the listening line is a race, so these starts are watched by their exit alone.
    std::fs::write(armed_file(&data), b"").expect("arm");
    for attempt in 1..=3 {
        let log = std::fs::File::create(tmp(&format!("loop-abort-{attempt}")).with_extension("log")).expect("log");
        let mut server = server_command(&data).stdout(Stdio::null()).stderr(log).spawn().expect("spawn");
        let status = tokio::task::spawn_blocking(move || server.wait()).await.expect("join").expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "recovery {attempt} aborted the server");
    }

    // 3. Not recovered a fourth time: failed, with the reason, and the server serves.
    let third = serve(&data, "loop-3");
    let mut client = RunServiceClient::connect(format!("http://{}", third.addr)).await.expect("connect");
    let result = tokio::time::timeout(WAIT, get_result(&mut client, "crashes", true)).await.expect("in time");
    assert_eq!(status_of(&result), pb::RunStatus::Failed);
    let error = result.error.expect("an error");
    assert_eq!(error.name, "RecoveryFailed");
    assert!(error.message.contains("3 time(s) in a row while recovering this run"), "{}", error.message);
    let events = tokio::time::timeout(WAIT, observe_log(&mut client, "crashes")).await.expect("in time");
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Failed));
    // The first step completed before the crashes: its result is in the log and stays completed.
    let prepared = events.iter().filter(|e| matches!(&e.event, Some(Event::StepResult(r)) if r.step_id == "prepare"));
    assert_eq!(prepared.count(), 1);

    // Other runs are served as before.
    start_run(&third.addr, "fine", false).await;
    let fine = tokio::time::timeout(WAIT, get_result(&mut client, "fine", true)).await.expect("in time");
    assert_eq!(status_of(&fine), pb::RunStatus::Success);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(armed_file(&data));
}

/// A clean stop while a recovered run is in flight does not count as a crash of its recovery: after SIGKILL, a
/// start that recovers the run, and a SIGTERM, the next start recovers it again rather than failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_during_a_recovery_does_not_count() {
    let data = tmp("clean-data");
    let mut first = serve(&data, "clean-1");
    let mut client = RunServiceClient::connect(format!("http://{}", first.addr)).await.expect("connect");
    let request = pb::StartRunRequest {
        workflow_id: "crasher".into(),
        run_id: "held".into(),
        input: Some(pb_value(json!({ "hold": true }))),
        ..Default::default()
    };
    client.start_run(request).await.expect("StartRun");
    // In its second step (the first is checkpointed) when the server is killed.
    until_event(&mut client, "held", |e| matches!(e, Event::StepStart(s) if s.step_id == "crash")).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    let mut second = serve(&data, "clean-2");
    let mut client = RunServiceClient::connect(format!("http://{}", second.addr)).await.expect("connect");
    until_event(&mut client, "held", |e| matches!(e, Event::RunRecovered(_))).await;
    let pid = second.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || second.child.wait()).await.expect("join").expect("wait");
    assert!(exited.success(), "a clean stop: {exited:?}");

    let third = serve(&data, "clean-3");
    let mut client = RunServiceClient::connect(format!("http://{}", third.addr)).await.expect("connect");
    let events =
        until_event(&mut client, "held", |e| matches!(e, Event::RunRecovered(r) if r.interrupted_phase == 2)).await;
    assert!(!events.iter().any(|e| matches!(e.event, Some(Event::WorkflowFinish(_)))), "recovered, not failed");
    let run = client.get_run(pb::GetRunRequest { run_id: "held".into() }).await.expect("GetRun").into_inner();
    assert_eq!(run.status, pb::RunStatus::Running as i32);
    let _ = std::fs::remove_dir_all(&data);
}

/// The run's log from seq 1 until an event `stop` accepts (included).
async fn until_event(client: &mut Client, run_id: &str, stop: impl Fn(&Event) -> bool) -> Vec<pb::RunEvent> {
    let request = pb::ObserveStreamRequest { run_id: run_id.into(), after_seq: 0, ..Default::default() };
    let mut stream = client.observe_stream(request).await.expect("ObserveStream").into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("stream ok");
        let event = event.expect("the run goes on");
        let done = event.event.as_ref().is_some_and(&stop);
        events.push(event);
        if done {
            return events;
        }
    }
}
