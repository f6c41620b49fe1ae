//! Back-pressure (issue 12): a step that writes faster than the store commits waits in `Writer::write`, so on a
//! durable server a flood runs at the disk's pace, holds bounded memory, cancels promptly and leaves other runs
//! alone. The real `runstream` binary on its SQLite store, driven over gRPC; the server's memory is its `VmRSS`.
#![cfg(target_os = "linux")]

mod common;

use std::{
    ffi::OsStr,
    path::Path,
    time::{Duration, Instant},
};

use common::{process::ServerProcess, *};
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the flood runs while the server's memory is watched: long enough that an unbounded queue shows (before
/// back-pressure the server grew by 190-240 MB a second under this flood), short for the test's time.
const FLOOD_WINDOW: Duration = Duration::from_secs(2);
/// What the flood may add to the server's RSS during the window. With back-pressure the store's queue holds at most
/// about a thousand of the flood's events, and the run keeps only a window of its log in memory (the stalled
/// reader's events are read back from the store): nothing grows with the flood. Measured: +16 MB (allocator and
/// SQLite page cache warming up) for 190,000 events; the bound is 100 MB for 3,000,000.
const RSS_MARGIN_KB: u64 = 100 * 1024;
/// CancelRun of the flood must answer within this (the issue asks for a second; generous for a loaded machine).
const CANCEL_BOUND: Duration = Duration::from_secs(5);

/// A durable server (`--data-dir`, the default SQLite store) on a fresh directory of the test's own.
fn durable_server(name: &str) -> ServerProcess {
    let dir = process::fresh_tmp("backpressure", name);
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
    ServerProcess::start(&[OsStr::new("--data-dir"), data_dir.as_os_str()], None, dir.join("server.log"), START_TIMEOUT)
}

async fn connect(server: &ServerProcess) -> Client {
    RunServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect to the server")
}

/// The process's resident set size in kB, from `/proc/PID/status`.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_else(|e| panic!("cannot read the server's /proc status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in the server's /proc status:\n{status}"))
}

async fn start_flood(client: &mut Client, run_id: &str) {
    let request = pb::StartRunRequest {
        workflow_id: "writer-flood".into(),
        run_id: run_id.into(),
        // The most a flood may ask for: far more than the store commits in the window.
        input: Some(pb_value(json!({ "count": 10_000_000u64 }))),
        ..Default::default()
    };
    client.start_run(request).await.expect("StartRun writer-flood");
}

async fn last_seq(client: &mut Client, run_id: &str) -> u64 {
    let request = pb::GetRunRequest { run_id: run_id.into() };
    client.get_run(request).await.expect("GetRun").into_inner().last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_flood_with_a_stalled_reader_holds_bounded_memory_and_cancels_promptly() {
    let server = durable_server("flood-cancel");
    let pid = server.child.id();
    let mut client = connect(&server).await;
    let run_id = "flood-1";
    start_flood(&mut client, run_id).await;

    // A reader that opens the run's stream and never reads it, on a connection of its own.
    let mut stalled = connect(&server).await;
    let observe = pb::ObserveStreamRequest { run_id: run_id.into(), after_seq: 0, ..Default::default() };
    let _stalled_stream = stalled.observe_stream(observe).await.expect("ObserveStream accepted").into_inner();

    // RSS from the moment the flood is under way (its first events are stored), then sampled through the window.
    let deadline = Instant::now() + START_TIMEOUT;
    while last_seq(&mut client, run_id).await < 2 {
        assert!(Instant::now() < deadline, "the flood wrote nothing within {START_TIMEOUT:?}\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (start_rss, start_seq) = (rss_kb(pid), last_seq(&mut client, run_id).await);
    let mut peak_rss = start_rss;
    let window_end = Instant::now() + FLOOD_WINDOW;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < window_end {
        tick.tick().await;
        peak_rss = peak_rss.max(rss_kb(pid));
    }
    let end_seq = last_seq(&mut client, run_id).await;
    eprintln!(
        "flood: {} events stored in {FLOOD_WINDOW:?}; server RSS {start_rss} kB at start, peak {peak_rss} kB (+{} kB)",
        end_seq - start_seq,
        peak_rss - start_rss
    );
    assert!(end_seq > start_seq, "the flood made no progress: the test would prove nothing");

    let asked = Instant::now();
    let canceled = client
        .cancel_run(pb::CancelRunRequest { run_id: run_id.into() })
        .await
        .expect("CancelRun answers")
        .into_inner();
    let took = asked.elapsed();
    eprintln!("CancelRun of the flood answered in {took:?}");
    // Asserted after the cancel, so that a failure reports both figures.
    assert!(
        peak_rss - start_rss < RSS_MARGIN_KB,
        "the flood grew the server from {start_rss} kB to {peak_rss} kB in {FLOOD_WINDOW:?}"
    );
    assert!(canceled.canceled, "the flood was running: {canceled:?}");
    assert!(took < CANCEL_BOUND, "CancelRun took {took:?}");
    assert_eq!(canceled.run.map(|run| run.status()), Some(pb::RunStatus::Canceled));
    let result = get_result(&mut client, run_id, true).await;
    assert_eq!(status_of(&result), pb::RunStatus::Canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_run_completes_while_a_flood_runs() {
    let server = durable_server("flood-neighbour");
    let mut flooder = connect(&server).await;
    let run_id = "flood-2";
    start_flood(&mut flooder, run_id).await;
    let deadline = Instant::now() + START_TIMEOUT;
    while last_seq(&mut flooder, run_id).await < 2 {
        assert!(Instant::now() < deadline, "the flood wrote nothing within {START_TIMEOUT:?}\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut other = connect(&server).await;
    let events = stream_run(&mut other, stream_request("chain", "chain-1", json!({ "value": 1 }))).await;
    let last = events.last().expect("the chain run streamed events");
    assert_eq!(finish_status(last), Some(pb::RunStatus::Success), "{:?}", kinds(&events));
    assert_eq!(status_of(&get_result(&mut other, "chain-1", false).await), pb::RunStatus::Success);

    // The flood was running all along (no timing asserted: only that it did not end or fail meanwhile).
    let flood = get_result(&mut flooder, run_id, false).await;
    assert_eq!(status_of(&flood), pb::RunStatus::Running);
    flooder.cancel_run(pb::CancelRunRequest { run_id: run_id.into() }).await.expect("CancelRun");
}

/// Many observers behind a flood's window read it back from the store, a few reads at a time: before reads were
/// bounded, each waiting reader held a blocking thread of its own and the memory the allocator keeps per thread
/// (1,000 observers of a 100,000-event flood: 4.3 GB of server RSS; bounded: 321 MB). Here 200 observers, every
/// one of which must get every event once, in order.
#[tokio::test]
async fn many_observers_behind_the_window_hold_bounded_memory() {
    const OBSERVERS: usize = 200;
    const EVENTS: u64 = 20_000;
    let server = durable_server("observers");
    let mut client = connect(&server).await;
    let start_rss = rss_kb(server.child.id());
    let started = client
        .start_run(pb::StartRunRequest {
            workflow_id: "writer-flood".into(),
            input: Some(pb_value(json!({ "count": EVENTS }))),
            ..Default::default()
        })
        .await
        .expect("StartRun writer-flood")
        .into_inner();
    let channels: Vec<tonic::transport::Channel> = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).expect("uri");
            channels.push(endpoint.connect().await.expect("connect"));
        }
        channels
    };
    let mut observers = tokio::task::JoinSet::new();
    for i in 0..OBSERVERS {
        let mut client = RunServiceClient::new(channels[i % channels.len()].clone());
        let run_id = started.run_id.clone();
        observers.spawn(async move {
            let request = pb::ObserveStreamRequest { run_id, after_seq: 0, close_on_suspend: None };
            let mut stream = client.observe_stream(request).await.expect("ObserveStream").into_inner();
            let mut next = 1;
            while let Some(event) = stream.message().await.expect("observer stream") {
                assert_eq!(event.seq, next, "every event once, in order");
                next += 1;
            }
            next - 1
        });
    }
    let pid = server.child.id();
    let mut peak_rss = start_rss;
    let mut done = Vec::new();
    loop {
        tokio::select! {
            finished = observers.join_next() => match finished {
                Some(seen) => done.push(seen.expect("an observer")),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => peak_rss = peak_rss.max(rss_kb(pid)),
        }
    }
    peak_rss = peak_rss.max(rss_kb(pid));
    // The flood's events, plus the start, step start, step result and finish.
    assert!(done.iter().all(|seen| *seen == EVENTS + 4), "every observer saw the whole log: {done:?}");
    let grown_mb = peak_rss.saturating_sub(start_rss) / 1024;
    eprintln!("{OBSERVERS} observers of {EVENTS} events: server RSS {start_rss} kB at start, peak {peak_rss} kB");
    // Measured: +120 MB with reads bounded, +400 MB with a blocking thread per waiting reader (debug build).
    assert!(grown_mb < 250, "the server grew by {grown_mb} MB\n{}", server.log_tail());
}
