//! Lazy runs (issue 12): memory follows live work, not history. The real `runstream` binary on its SQLite store with
//! `--evict-after 0s`, so that a run leaves memory as soon as it is finished or suspended, all of it is stored and
//! nobody reads it; every call on it then reads it back from the store.
//!
//! That a call was served from the store is read from the server's own log: with `runstream::registry=debug` it
//! says `loaded a run from the store` with the run's id each time it reads a run back in.
#![cfg(unix)]

mod common;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    process::{ServerProcess, fresh_tmp},
    *,
};
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;

/// Generous, for a loaded CI machine: how long a server may take to start, or a poll to see what it waits for.
const WAIT: Duration = Duration::from_secs(60);

const LOADED: &str = "loaded a run from the store";

/// `runstream serve` on `data_dir`, evicting at once, its log (with the registry's loads) in `dir/LOG`.
fn serve(dir: &Path, data_dir: &Path, log: &str) -> ServerProcess {
    let args: [&OsStr; 4] = ["--data-dir".as_ref(), data_dir.as_os_str(), "--evict-after".as_ref(), "0s".as_ref()];
    let env = [("RUST_LOG", "info,runstream::registry=debug"), ("NO_COLOR", "1")];
    ServerProcess::start_with_env(&args, &env, None, dir.join(log), WAIT)
}

fn test_dir(name: &str) -> PathBuf {
    let dir = fresh_tmp("lazy-runs", name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

async fn client(server: &ServerProcess) -> Client {
    RunServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect to the server")
}

/// How many times the server has read run `run_id` back from the store.
fn loads_of(server: &ServerProcess, run_id: &str) -> usize {
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let quoted = format!("\"{run_id}\"");
    log.lines().filter(|line| line.contains(LOADED) && line.contains(&quoted)).count()
}

/// Calls GetRun on `run_id` until a call has read it from the store: it had left memory.
async fn until_read_from_store(client: &mut Client, server: &ServerProcess, run_id: &str) {
    let before = loads_of(server, run_id);
    let deadline = Instant::now() + WAIT;
    loop {
        client.get_run(pb::GetRunRequest { run_id: run_id.into() }).await.expect("GetRun");
        if loads_of(server, run_id) > before {
            return;
        }
        assert!(Instant::now() < deadline, "run {run_id} never left memory\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn observe(client: &mut Client, run_id: &str, after_seq: u64, close_on_suspend: bool) -> Vec<pb::RunEvent> {
    let request =
        pb::ObserveStreamRequest { run_id: run_id.into(), after_seq, close_on_suspend: Some(close_on_suspend) };
    collect(client.observe_stream(request).await.expect("ObserveStream accepted").into_inner()).await
}

async fn list_all(client: &mut Client, request: pb::ListRunsRequest) -> Vec<pb::RunInfo> {
    let mut runs = Vec::new();
    let mut request = request;
    loop {
        let page = client.list_runs(request.clone()).await.expect("ListRuns").into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        request.page_token = page.next_page_token;
    }
}

/// A finished run that left memory streams its whole log again, from any cursor, byte for byte, and still answers
/// GetResult, GetRun and ListRuns.
#[tokio::test]
async fn an_evicted_finished_run_streams_its_log_from_any_cursor_and_its_result() {
    let dir = test_dir("finished");
    let server = serve(&dir, &dir.join("data"), "server.log");
    let mut client = client(&server).await;
    let events = stream_run(&mut client, stream_request("chain", "done-1", json!({ "value": 3 }))).await;
    let n = events.len() as u64;
    assert_eq!(finish_status(&events[events.len() - 1]), Some(pb::RunStatus::Success));

    for after in [0, 1, n / 2, n - 1, n] {
        until_read_from_store(&mut client, &server, "done-1").await;
        let got = observe(&mut client, "done-1", after, true).await;
        assert_eq!(got, events[after as usize..], "ObserveStream after seq {after} of a run read from the store");
    }
    until_read_from_store(&mut client, &server, "done-1").await;
    let result = get_result(&mut client, "done-1", false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    assert_eq!(json(&result.result), finish_result(&events[events.len() - 1]));

    until_read_from_store(&mut client, &server, "done-1").await;
    let info = client.get_run(pb::GetRunRequest { run_id: "done-1".into() }).await.expect("GetRun").into_inner();
    assert_eq!((info.last_seq, info.status), (n, pb::RunStatus::Success as i32));
    let listed = list_all(&mut client, pb::ListRunsRequest::default()).await;
    let listed: Vec<(&str, u64, i32)> = listed.iter().map(|r| (r.run_id.as_str(), r.last_seq, r.status)).collect();
    assert_eq!(listed, [("done-1", n, pb::RunStatus::Success as i32)]);
    assert_status(
        client.get_run(pb::GetRunRequest { run_id: "never-started".into() }).await,
        tonic::Code::NotFound,
        &["never-started"],
    );
}

/// A suspended run that left memory is resumed from the store: its events continue after the suspension, gapless,
/// and its whole log reads back as one.
#[tokio::test]
async fn a_suspended_run_evicted_to_the_store_resumes() {
    let dir = test_dir("suspended");
    let server = serve(&dir, &dir.join("data"), "server.log");
    let mut client = client(&server).await;
    let first = stream_run(&mut client, stream_request("order-approval", "order-1", order_input())).await;
    assert_eq!(finish_status(&first[first.len() - 1]), Some(pb::RunStatus::Suspended));
    until_read_from_store(&mut client, &server, "order-1").await;
    until_read_from_store(&mut client, &server, "order-1").await;

    let before = loads_of(&server, "order-1");
    let resumed = client.resume_stream(resume_request("order-1", approval(true, "amy"))).await.expect("ResumeStream");
    let resumed = collect(resumed.into_inner()).await;
    assert!(loads_of(&server, "order-1") >= before, "a resume of a run in the store");
    let last = first.len() as u64;
    assert_seqs(&resumed, last + 1, last + resumed.len() as u64);
    assert_eq!(finish_status(&resumed[resumed.len() - 1]), Some(pb::RunStatus::Success));

    until_read_from_store(&mut client, &server, "order-1").await;
    let whole = observe(&mut client, "order-1", 0, true).await;
    assert_eq!(whole, [first, resumed].concat(), "the log as both streams showed it");
}

/// Observers that attach while runs leave memory and are read back in, over and over, each see every event after
/// their cursor exactly once; the ones waiting on a suspended run then follow its resume live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_attached_while_runs_are_evicted_and_loaded_see_every_event_once() {
    let dir = test_dir("observers");
    let server = serve(&dir, &dir.join("data"), "server.log");
    let mut client = client(&server).await;
    let ids: Vec<String> = (0..3).map(|i| format!("order-{i}")).collect();
    let mut suspended = Vec::new();
    for id in &ids {
        suspended.push(stream_run(&mut client, stream_request("order-approval", id, order_input())).await);
    }

    // Short observers, over and over: each attaches to a run that is in memory, leaving it, or only in the store.
    let mut tasks = Vec::new();
    for task in 0..8usize {
        let (mut client, ids, logs) = (client.clone(), ids.clone(), suspended.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..15usize {
                let i = (task + round) % ids.len();
                let after = ((task * 7 + round) % (logs[i].len() + 1)) as u64;
                let got = observe(&mut client, &ids[i], after, true).await;
                assert_eq!(got, logs[i][after as usize..], "{} after {after}", ids[i]);
            }
        }));
    }
    for task in tasks {
        task.await.expect("observer task");
    }
    let loaded: usize = ids.iter().map(|id| loads_of(&server, id)).sum();
    assert!(loaded > 0, "some observers attached to runs read from the store\n{}", server.log_tail());

    // Long observers attached to runs in the store follow their resume live.
    let mut followers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        until_read_from_store(&mut client, &server, id).await;
        for after in [0, suspended[i].len() as u64 - 1] {
            let request =
                pb::ObserveStreamRequest { run_id: id.clone(), after_seq: after, close_on_suspend: Some(false) };
            let stream = client.observe_stream(request).await.expect("ObserveStream").into_inner();
            followers.push((i, after, tokio::spawn(collect(stream))));
        }
    }
    let mut resumed = Vec::new();
    for id in &ids {
        let stream = client.resume_stream(resume_request(id, approval(true, "amy"))).await.expect("ResumeStream");
        resumed.push(collect(stream.into_inner()).await);
    }
    for (i, after, follower) in followers {
        let got = tokio::time::timeout(WAIT, follower).await.expect("the follower ends").expect("follower task");
        let whole = [suspended[i].clone(), resumed[i].clone()].concat();
        assert_eq!(got, whole[after as usize..], "{} followed live after {after}", ids[i]);
        assert_eq!(finish_status(&got[got.len() - 1]), Some(pb::RunStatus::Success));
    }
}

/// A restart on a store of many runs loads only the one in flight (the sleeping timer); finished and suspended runs
/// are read when asked for, ListRuns pages through all of them, and the suspended one still resumes.
#[tokio::test]
async fn a_restart_recovers_only_the_runs_in_flight() {
    let dir = test_dir("restart");
    let data = dir.join("data");
    let mut expected = Vec::new();
    let mut chain_07 = Vec::new();
    {
        let server = serve(&dir, &data, "server-1.log");
        let mut client = client(&server).await;
        for i in 0..30 {
            let id = format!("chain-{i:02}");
            let events = stream_run(&mut client, stream_request("chain", &id, json!({ "value": i }))).await;
            if i == 7 {
                chain_07 = events;
            }
            expected.push(id);
        }
        stream_run(&mut client, stream_request("order-approval", "order", order_input())).await;
        expected.push("order".into());
        let timer = pb::StartRunRequest {
            workflow_id: "timer".into(),
            run_id: "timer".into(),
            input: Some(pb_value(json!({ "ms": 600_000 }))),
            ..Default::default()
        };
        client.start_run(timer).await.expect("StartRun timer");
        expected.push("timer".into());
        let mut server = server;
        server.child.kill().expect("SIGKILL the server");
        server.child.wait().expect("reap the server");
    }

    let server = serve(&dir, &data, "server-2.log");
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let loaded =
        log.lines().find(|line| line.contains("loaded the runs in flight")).expect("the start says what it loaded");
    assert!(loaded.contains("recovering=1"), "only the timer is in flight: {loaded}");
    let mut client = client(&server).await;

    let listed = list_all(&mut client, pb::ListRunsRequest { page_size: 7, ..Default::default() }).await;
    let ids: Vec<&str> = listed.iter().map(|r| r.run_id.as_str()).collect();
    let newest_first: Vec<&str> = expected.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first, "every run once, newest first, across pages");
    let succeeded = pb::ListRunsRequest { status: pb::RunStatus::Success as i32, ..Default::default() };
    assert_eq!(list_all(&mut client, succeeded).await.len(), 30);
    assert_eq!(loads_of(&server, "chain-07"), 0, "listing reads no run into memory");

    let result = get_result(&mut client, "chain-07", false).await;
    let finish = &chain_07[chain_07.len() - 1];
    assert_eq!((status_of(&result), json(&result.result)), (pb::RunStatus::Success, finish_result(finish)));
    assert_eq!(loads_of(&server, "chain-07"), 1, "GetResult read it from the store");
    let resumed = client.resume_stream(resume_request("order", approval(true, "amy"))).await.expect("ResumeStream");
    let resumed = collect(resumed.into_inner()).await;
    assert_eq!(finish_status(&resumed[resumed.len() - 1]), Some(pb::RunStatus::Success));
    let timer = client.get_run(pb::GetRunRequest { run_id: "timer".into() }).await.expect("GetRun").into_inner();
    assert_eq!(timer.status, pb::RunStatus::Waiting as i32, "the timer was recovered and sleeps again");
}

/// A finished run whose stored events are damaged no longer stops the server at start (only runs in flight are read
/// then): reading it answers DATA_LOSS naming the run, and every other run is served.
#[tokio::test]
async fn a_damaged_finished_run_fails_alone_when_it_is_read() {
    let dir = test_dir("damaged");
    let data = dir.join("data");
    let mut server = serve(&dir, &data, "server-1.log");
    let mut first = client(&server).await;
    for id in ["good", "bad"] {
        stream_run(&mut first, stream_request("chain", id, json!({ "value": 1 }))).await;
    }
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap the server");
    {
        let db = rusqlite::Connection::open(data.join("runstream.db")).expect("open the store");
        let damaged = db.execute("UPDATE events SET data = x'00' WHERE run_id = 'bad'", []).expect("damage a run");
        assert!(damaged > 0, "the run has stored events");
    }

    let server = serve(&dir, &data, "server-2.log");
    let mut client = client(&server).await;
    assert_status(
        client.get_run(pb::GetRunRequest { run_id: "bad".into() }).await,
        tonic::Code::DataLoss,
        &["run 'bad'", "damaged", "backup"],
    );
    let result = get_result(&mut client, "good", false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
}

/// A long run keeps only a window of its log in memory: a reader that attached at the start and read nothing
/// while the run wrote 60,000 events, one that attaches later from an old cursor, and one that reads the finished
/// run back from the store each get every event once, in order, the old ones from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_behind_a_long_runs_window_read_the_store_and_miss_nothing() {
    const COUNT: u64 = 60_000;
    let dir = test_dir("window");
    let server = serve(&dir, &dir.join("data"), "server.log");
    let mut client = client(&server).await;
    let start = pb::StartRunRequest {
        workflow_id: "writer-flood".into(),
        run_id: "flood".into(),
        input: Some(pb_value(json!({ "count": COUNT }))),
        ..Default::default()
    };
    client.start_run(start).await.expect("StartRun writer-flood");
    // Attached now, read only once the run is over: everything it was owed is far behind the window by then.
    let request = pb::ObserveStreamRequest { run_id: "flood".into(), after_seq: 0, close_on_suspend: Some(true) };
    let stalled = client.observe_stream(request).await.expect("ObserveStream").into_inner();
    let result = client
        .get_result(pb::GetResultRequest { run_id: "flood".into(), wait: true, ..Default::default() })
        .await
        .expect("GetResult")
        .into_inner();
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    let all = collect(stalled).await;
    let last = all.len() as u64;
    assert!(last > COUNT, "every write and the run's own events");
    assert_seqs(&all, 1, last);
    for after in [5, COUNT / 2] {
        let got = observe(&mut client, "flood", after, true).await;
        assert_eq!(got, all[after as usize..], "a late observer after seq {after}");
    }
    until_read_from_store(&mut client, &server, "flood").await;
    // Read back, it holds only its window in memory: the newest events, not the 60,000.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let line = log.lines().rev().find(|line| line.contains(LOADED) && line.contains("\"flood\"")).expect("logged");
    let held: usize = line
        .split("events=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("events held in the log line: {line}"));
    assert!((1..=9_000).contains(&held), "a run read back holds its window of 8,192 events, not {held}");
    for after in [0, 5, COUNT / 2, last - 10, last] {
        let got = observe(&mut client, "flood", after, true).await;
        assert!(got == all[after as usize..], "the run read back from the store streams the same log after {after}");
    }
}
