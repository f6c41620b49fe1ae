//! Crash tests: the real `runstream` binary on its SQLite store, killed with SIGKILL at chosen points and started
//! again on the same data dir.
//!
//! Kill points are found by streaming, never by sleeping: a test reads a run's stream until it shows the point it
//! wants (a step started, some foreach items done, a resume begun, thousands of writer outputs) and kills the
//! server there. An event a client has seen is committed, so after the restart every seq the client saw must still
//! decode to the very same event, numbering must continue after the last committed event, and the run must end as
//! it would have without the crash: finished runs unchanged, suspended runs resumable, runs in flight recovered
//! (`run_recovered`, then a phase that skips the steps already completed and runs the interrupted one again).
//!
//! Each test has its own directory under `CARGO_TARGET_TMPDIR/durability/`: the data dir and one log per server
//! start (`server-N.log`, the server's stderr), which panics point to.
//!
//! The last test is in-process: it replays, commit by commit, what a registry stored, and checks that a crash after
//! any commit leaves a store whose states agree with its logs.
#![cfg(unix)]

mod common;

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{process::ServerProcess, *};
use prost::Message;
use runstream::{
    engine::{ResumeRequest, RunStatus, WorkflowCatalog, recovered_snapshot},
    pb::{self, run_event::Event, run_service_client::RunServiceClient},
    registry::{RunRegistry, StartRequest},
    store::{DefinitionRecord, LoadedRun, MemoryStore, RunStore, StoreError, Write},
};
use serde_json::{Value, json};
use tonic::{Code, Streaming};

/// How long a server may take to print its listening line (or to exit, when it must fail).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any single wait for an event or a result may take: generous, for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(120);

// ---- the server as a child process ----

/// One test's directory: the data dir every server of the test shares, and the servers' logs.
struct Scenario {
    root: PathBuf,
    data_dir: PathBuf,
    starts: usize,
}

impl Scenario {
    /// A fresh directory (whatever an earlier run of the test left is removed).
    fn new(name: &str) -> Self {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durability").join(name);
        let _ = fs::remove_dir_all(&root);
        let data_dir = root.join("data");
        fs::create_dir_all(&data_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
        Self { root, data_dir, starts: 0 }
    }

    fn store_file(&self) -> PathBuf {
        self.data_dir.join("runstream.db")
    }

    /// Spawns `runstream serve` on the data dir: stdout piped, stderr to a new log file.
    fn spawn(&mut self) -> (Child, PathBuf) {
        self.starts += 1;
        let log = self.root.join(format!("server-{}.log", self.starts));
        let log_file = fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_runstream"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            // Every run leaves memory as soon as it may: each call after that reads it back from the store, so the
            // checks below also hold for runs served from the store (issue 12: lazy runs).
            .args(["--evict-after", "0s"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_runstream")));
        (child, log)
    }

    /// Starts a server on the data dir and waits for its `runstream listening on ADDR` line.
    async fn start(&mut self) -> Server {
        self.starts += 1;
        let log = self.root.join(format!("server-{}.log", self.starts));
        let args = ["--data-dir".as_ref(), self.data_dir.as_os_str()];
        Server(ServerProcess::start(&args, None, log, START_TIMEOUT))
    }

    /// Runs a server that must fail at start: waits for it to exit and returns its status and its stderr.
    async fn start_failing(&mut self) -> (ExitStatus, String) {
        let (mut child, log) = self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server should have exited at start; it still ran after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stdout = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut stdout);
        }
        assert!(!stdout.contains("listening"), "a server that must fail printed its listening line: {stdout}");
        (status, fs::read_to_string(&log).unwrap_or_default())
    }
}

/// A running `runstream serve`; killed (SIGKILL) when dropped.
struct Server(ServerProcess);

impl Server {
    async fn client(&self) -> Client {
        // The listener is bound before the line is printed, so connecting cannot race the bind.
        RunServiceClient::connect(format!("http://{}", self.0.addr)).await.expect("connect to the server")
    }

    /// kill -9, and reap the process: its store is closed by nothing but its death.
    fn kill(mut self) {
        self.0.child.kill().expect("SIGKILL the server");
        let status = self.0.child.wait().expect("reap the server");
        assert_eq!(status.signal(), Some(9), "the server should have died of SIGKILL: {status:?}\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        self.0.log_tail()
    }
}

// ---- reading streams and results, with generous timeouts ----

async fn next_event(stream: &mut Streaming<pb::RunEvent>, what: &str) -> Option<pb::RunEvent> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no event within {WAIT:?} ({what})"))
        .unwrap_or_else(|status| panic!("the stream failed ({what}): {status}"))
}

/// Reads events up to and including the first that satisfies `stop`; panics if the stream ends before.
async fn read_until(
    stream: &mut Streaming<pb::RunEvent>,
    what: &str,
    stop: impl Fn(&pb::RunEvent) -> bool,
) -> Vec<pb::RunEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(stream, what).await.unwrap_or_else(|| panic!("the stream ended before {what}"));
        let done = stop(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

async fn read_all(mut stream: Streaming<pb::RunEvent>, what: &str) -> Vec<pb::RunEvent> {
    let mut events = Vec::new();
    while let Some(event) = next_event(&mut stream, what).await {
        events.push(event);
    }
    events
}

async fn observe_stream(client: &mut Client, run_id: &str, after_seq: u64) -> Streaming<pb::RunEvent> {
    let request = pb::ObserveStreamRequest { run_id: run_id.into(), after_seq, close_on_suspend: None };
    client
        .observe_stream(request)
        .await
        .unwrap_or_else(|s| panic!("ObserveStream {run_id} after {after_seq}: {s}"))
        .into_inner()
}

/// ObserveStream from `after_seq` to its end (the run's end, or its current suspension).
async fn observe(client: &mut Client, run_id: &str, after_seq: u64) -> Vec<pb::RunEvent> {
    let stream = observe_stream(client, run_id, after_seq).await;
    read_all(stream, &format!("ObserveStream {run_id} after {after_seq}")).await
}

/// GetResult(wait) until the run ends or suspends (a wait the server cuts short is simply repeated).
async fn wait_result(client: &mut Client, run_id: &str) -> pb::RunResult {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = tokio::time::timeout(WAIT, get_result(client, run_id, true))
            .await
            .unwrap_or_else(|_| panic!("GetResult({run_id}, wait) did not answer within {WAIT:?}"));
        if !result.wait_expired {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{run_id} did not end within {WAIT:?}; last status {:?}",
            status_of(&result)
        );
    }
}

async fn get_run(client: &mut Client, run_id: &str) -> pb::RunInfo {
    client.get_run(pb::GetRunRequest { run_id: run_id.into() }).await.expect("GetRun").into_inner()
}

// ---- looking at events ----

fn is_step_start(event: &pb::RunEvent, step: &str) -> bool {
    matches!(&event.event, Some(Event::StepStart(s)) if s.step_id == step)
}

fn recovered(event: &pb::RunEvent) -> Option<&pb::RunRecovered> {
    match &event.event {
        Some(Event::RunRecovered(r)) => Some(r),
        _ => None,
    }
}

fn workflow_start(event: &pb::RunEvent) -> &pb::WorkflowStart {
    match &event.event {
        Some(Event::WorkflowStart(start)) => start,
        other => panic!("expected workflow_start at seq {}, got {other:?}", event.seq),
    }
}

fn step_output(event: &pb::RunEvent) -> Value {
    match &event.event {
        Some(Event::StepResult(result)) => json(&result.output),
        other => panic!("expected step_result at seq {}, got {other:?}", event.seq),
    }
}

/// `kind step` for step events, `kind` for the others: for order assertions.
fn describe(events: &[pb::RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| if e.step_id.is_empty() { kind(e).to_owned() } else { format!("{} {}", kind(e), e.step_id) })
        .collect()
}

/// The index of the one `run_recovered` in `log`; checks it is a SYSTEM event.
fn recovered_at(log: &[pb::RunEvent]) -> usize {
    let at: Vec<usize> = log.iter().enumerate().filter(|(_, e)| recovered(e).is_some()).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "exactly one run_recovered expected: {:?}", describe(log));
    assert_eq!(log[at[0]].source, pb::EventSource::System as i32, "run_recovered comes from SYSTEM");
    at[0]
}

/// Every event a client saw before the kill is in `log` under the same seq, decoding to the same event and
/// encoding to the same bytes.
fn assert_unchanged(seen: &[pb::RunEvent], log: &[pb::RunEvent]) {
    assert!(!seen.is_empty(), "nothing was seen before the kill");
    for event in seen {
        let index = usize::try_from(event.seq).expect("seq") - 1;
        let replayed = log.get(index).unwrap_or_else(|| panic!("seq {} is gone after the restart", event.seq));
        assert_eq!(replayed.seq, event.seq);
        assert_eq!(replayed, event, "seq {} changed across the restart", event.seq);
        assert_eq!(replayed.encode_to_vec(), event.encode_to_vec(), "seq {} encodes differently", event.seq);
    }
}

/// The `step_result` steps of `events` (what a recovery may skip).
fn completed_steps(events: &[pb::RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepResult(r)) if r.status == pb::StepStatus::Success as i32 => Some(r.step_id.clone()),
            _ => None,
        })
        .collect()
}

/// Checks the `run_recovered` at `log[at]` and the `workflow_start` after it: what was interrupted, and that the
/// steps it lists as completed are exactly those whose results the interrupted phase committed.
fn assert_recovery(log: &[pb::RunEvent], at: usize, interrupted_phase: u32, phase_start: usize, resumed: bool) {
    let r = recovered(&log[at]).expect("run_recovered");
    assert_eq!(r.interrupted_phase, interrupted_phase, "interrupted phase");
    let (mut listed, mut committed) = (r.completed_steps.clone(), completed_steps(&log[phase_start..at]));
    listed.sort();
    committed.sort();
    assert_eq!(listed, committed, "the completed steps are those whose results were committed");
    assert!(!r.reason.is_empty(), "run_recovered says why");
    let start = workflow_start(&log[at + 1]);
    assert_eq!((start.phase, start.resumed), (interrupted_phase + 1, resumed), "the recovery phase's workflow_start");
}

// ---- 1. killed mid-step ----

/// `chain` with a delay per step, killed while step-2 runs: after the restart the run ends with the right result;
/// its log keeps what the client saw, then `run_recovered` (step-1 completed), then phase 2, which runs step-2
/// again and step-3, and never starts step-1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_step_the_run_recovers_from_the_running_step() {
    let mut scenario = Scenario::new("mid-step");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let input = json!({"value": 1, "delayMs": 1500});
    let mut stream =
        client.stream_run(stream_request("chain", "mid-step", input)).await.expect("StreamRun").into_inner();
    let seen = read_until(&mut stream, "step-2 starts", |e| is_step_start(e, "step-2")).await;
    server.kill();
    assert_eq!(describe(&seen), ["workflow_start", "step_start step-1", "step_result step-1", "step_start step-2"]);

    let server = scenario.start().await;
    let mut client = server.client().await;
    let result = wait_result(&mut client, "mid-step").await;
    assert_eq!(status_of(&result), pb::RunStatus::Success, "{result:?}");
    assert_eq!(json(&result.result), json!({"value": 4}));
    let log = observe(&mut client, "mid-step", 0).await;
    assert_seqs(&log, 1, log.len() as u64);
    assert_unchanged(&seen, &log);

    let at = recovered_at(&log);
    eprintln!("phase 1 before the kill: {:?}", describe(&log[..at]));
    assert!(at >= seen.len(), "run_recovered comes after every event the client saw");
    assert_recovery(&log, at, 1, 0, false);
    let completed = &recovered(&log[at]).expect("run_recovered").completed_steps;
    assert!(completed.contains(&"step-1".to_owned()), "step-1 completed before the kill: {completed:?}");
    // Phase 2 starts exactly the steps phase 1 did not complete (step-2, unless the kill came late), in order.
    let expected: Vec<String> = ["step-2", "step-3"]
        .iter()
        .filter(|s| !completed.iter().any(|c| c == *s))
        .flat_map(|s| [format!("step_start {s}"), format!("step_result {s}")])
        .chain(["workflow_finish".to_owned()])
        .collect();
    assert_eq!(describe(&log[at + 2..]), expected, "phase 2 after run_recovered");
    assert!(!log[at..].iter().any(|e| is_step_start(e, "step-1")), "step-1 must not run again");
    assert_eq!(step_output(&log[log.len() - 2]), json!({"value": 4}));
    assert_eq!(finish_status(log.last().expect("finish")), Some(pb::RunStatus::Success));
    assert_eq!(finish_result(log.last().expect("finish")), json!({"value": 4}));

    let info = get_run(&mut client, "mid-step").await;
    assert_eq!((info.phase, info.last_seq), (2, log.len() as u64));
    // Every step has its record: step-1's from before the kill, the others from phase 2.
    let request =
        pb::GetResultRequest { run_id: "mid-step".into(), fields: vec!["steps.output".into()], ..Default::default() };
    let result = client.get_result(request).await.expect("GetResult").into_inner();
    for (step, value) in [("step-1", 2), ("step-2", 3), ("step-3", 4)] {
        let record = result.steps.get(step).unwrap_or_else(|| panic!("no record of {step}: {:?}", result.steps));
        assert_eq!(record.status, pb::StepStatus::Success as i32, "{step}");
        assert_eq!(json(&record.output), json!({"value": value}), "{step}");
    }
    server.kill();
}

/// The same run killed twice: mid-step in phase 1, then again mid-step in the phase that recovered it. Each
/// restart recovers what the last phase left: the second `run_recovered` lists only what phase 2 completed (step-1
/// was in the snapshot already), and the run ends once, with the right result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_run_killed_again_is_recovered_again() {
    let mut scenario = Scenario::new("killed-twice");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let input = json!({"value": 1, "delayMs": 1500});
    let mut stream = client.stream_run(stream_request("chain", "twice", input)).await.expect("StreamRun").into_inner();
    let mut seen = read_until(&mut stream, "step-2 starts", |e| is_step_start(e, "step-2")).await;
    server.kill();

    let server = scenario.start().await;
    let mut client = server.client().await;
    let mut following = observe_stream(&mut client, "twice", seen.len() as u64).await;
    seen.extend(read_until(&mut following, "step-3 starts in phase 2", |e| is_step_start(e, "step-3")).await);
    server.kill();

    let server = scenario.start().await;
    let mut client = server.client().await;
    let result = wait_result(&mut client, "twice").await;
    assert_eq!(json(&result.result), json!({"value": 4}), "{result:?}");
    let log = observe(&mut client, "twice", 0).await;
    assert_seqs(&log, 1, log.len() as u64);
    assert_unchanged(&seen, &log);
    let at: Vec<usize> = log.iter().enumerate().filter(|(_, e)| recovered(e).is_some()).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 2, "two recoveries: {:?}", describe(&log));
    assert_recovery(&log, at[0], 1, 0, false);
    assert_recovery(&log, at[1], 2, at[0] + 1, false);
    let first = &recovered(&log[at[0]]).expect("run_recovered").completed_steps;
    let second = &recovered(&log[at[1]]).expect("run_recovered").completed_steps;
    assert!(first.contains(&"step-1".to_owned()) && second.contains(&"step-2".to_owned()), "{first:?} {second:?}");
    for (i, step) in ["step-1", "step-2", "step-3"].iter().enumerate() {
        let starts = log.iter().filter(|e| is_step_start(e, step)).count();
        let results = log.iter().filter(|e| kind(e) == "step_result" && e.step_id == *step).count();
        assert_eq!(results, 1, "{step} completes exactly once: {:?}", describe(&log));
        // step-1 started once; step-2 in phases 1 and 2; step-3 in phases 2 and 3 (unless a kill came late).
        assert!(starts >= 1 && starts <= i.min(1) + 1, "{step} started {starts} times: {:?}", describe(&log));
    }
    assert_eq!(get_run(&mut client, "twice").await.phase, 3);
    server.kill();
}

// ---- 2. killed mid-foreach ----

/// `batch-foreach` with a delay per item, killed after a few `step_progress` events: after the restart the map
/// step before it is skipped, the foreach runs again from its start (all items, progress 1..=n) and the result
/// is complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_foreach_the_foreach_runs_again_from_its_start() {
    const COUNT: u64 = 12;
    let mut scenario = Scenario::new("mid-foreach");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let input = json!({"count": COUNT, "concurrency": 2, "delayMs": 400});
    let mut stream =
        client.stream_run(stream_request("batch-foreach", "mid-foreach", input)).await.expect("StreamRun").into_inner();
    let seen = read_until(
        &mut stream,
        "two items done",
        |e| matches!(&e.event, Some(Event::StepProgress(p)) if p.completed_count == 2),
    )
    .await;
    server.kill();
    assert_eq!(
        describe(&seen),
        [
            "workflow_start",
            "step_start items",
            "step_result items",
            "step_start square",
            "step_progress square",
            "step_progress square"
        ]
    );

    let server = scenario.start().await;
    let mut client = server.client().await;
    let expected: Vec<Value> = (0..COUNT).map(|k| json!({"i": k, "square": k * k})).collect();
    let result = wait_result(&mut client, "mid-foreach").await;
    assert_eq!(status_of(&result), pb::RunStatus::Success, "{result:?}");
    assert_eq!(json(&result.result), Value::Array(expected.clone()));
    let log = observe(&mut client, "mid-foreach", 0).await;
    assert_seqs(&log, 1, log.len() as u64);
    assert_unchanged(&seen, &log);

    let at = recovered_at(&log);
    eprintln!("phase 1 before the kill: {:?}", describe(&log[..at]));
    assert_recovery(&log, at, 1, 0, false);
    // The foreach never completes more than some of its items before the kill: it is not among the completed.
    assert_eq!(recovered(&log[at]).expect("run_recovered").completed_steps, ["items"]);
    let phase2 = &log[at + 2..];
    let mut expected_kinds = vec!["step_start square".to_owned()];
    expected_kinds.extend((0..COUNT).map(|_| "step_progress square".to_owned()));
    expected_kinds.extend(["step_result square".to_owned(), "workflow_finish".to_owned()]);
    assert_eq!(describe(phase2), expected_kinds, "phase 2: the foreach from its start, not the map before it");
    let counts: Vec<u32> = phase2
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepProgress(p)) => {
                assert_eq!(p.total_count as u64, COUNT);
                Some(p.completed_count)
            }
            _ => None,
        })
        .collect();
    assert_eq!(counts, (1..=COUNT as u32).collect::<Vec<_>>(), "progress counts restart at 1");
    assert_eq!(step_output(&phase2[phase2.len() - 2]), Value::Array(expected.clone()));
    assert_eq!(finish_result(log.last().expect("finish")), Value::Array(expected));
    server.kill();
}

// ---- 3. killed while suspended, and while a resume runs ----

/// Two `order-approval` runs suspended, then a kill. After the restart both are still suspended with their logs;
/// one is approved (numbering continues at 8); the other's resume is killed as soon as its first event shows. After
/// the second restart that resume is carried out again, with the same resume data, and the run ends approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_runs_survive_kills_and_an_interrupted_resume_runs_again() {
    let mut scenario = Scenario::new("suspended");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let suspended_a = stream_run(&mut client, stream_request("order-approval", "order-a", order_input())).await;
    let input_b = json!({"orderId": "B-200", "amount": 75, "delayMs": 1500});
    let suspended_b = stream_run(&mut client, stream_request("order-approval", "order-b", input_b)).await;
    for events in [&suspended_a, &suspended_b] {
        assert_seqs(events, 1, 7);
        assert_eq!(finish_status(&events[6]), Some(pb::RunStatus::Suspended));
    }
    server.kill();

    // Restart 1: still suspended, same logs; approving A continues its numbering.
    let server = scenario.start().await;
    let mut client = server.client().await;
    for (run_id, seen) in [("order-a", &suspended_a), ("order-b", &suspended_b)] {
        let info = get_run(&mut client, run_id).await;
        assert_eq!(pb::RunStatus::try_from(info.status), Ok(pb::RunStatus::Suspended), "{run_id}");
        assert_eq!((info.phase, info.last_seq), (1, 7), "{run_id}");
        let paths: Vec<&str> = info.suspended.iter().flat_map(|p| p.segments.iter().map(String::as_str)).collect();
        assert_eq!(paths, ["approve"], "{run_id}");
        let log = observe(&mut client, run_id, 0).await;
        assert_eq!(log.len(), 7, "{run_id}: no event added by the restart");
        assert_unchanged(seen, &log);
    }
    let resumed_a = client.resume_stream(resume_request("order-a", approval(true, "ada"))).await.expect("resume A");
    let resumed_a = read_all(resumed_a.into_inner(), "resume A").await;
    assert_seqs(&resumed_a, 8, 13);
    assert_eq!(
        describe(&resumed_a),
        [
            "workflow_start",
            "step_start approve",
            "step_result approve",
            "step_start finalize",
            "step_result finalize",
            "workflow_finish"
        ]
    );
    assert_eq!((workflow_start(&resumed_a[0]).phase, workflow_start(&resumed_a[0]).resumed), (2, true));
    assert_eq!(finish_result(&resumed_a[5]), json!({"status": "approved by ada"}));

    // Resume B, and kill as soon as its resumed phase shows (the resumed `approve` waits 1.5 s).
    let mut resuming_b =
        client.resume_stream(resume_request("order-b", approval(true, "bob"))).await.expect("resume B").into_inner();
    let seen_b = read_until(&mut resuming_b, "B's resumed phase starts", |_| true).await;
    server.kill();
    assert_eq!(seen_b[0].seq, 8);
    assert_eq!((workflow_start(&seen_b[0]).phase, workflow_start(&seen_b[0]).resumed), (2, true));

    // Restart 2: A is unchanged; B's interrupted resume runs again with bob's decision.
    let server = scenario.start().await;
    let mut client = server.client().await;
    let log_a = observe(&mut client, "order-a", 0).await;
    assert_seqs(&log_a, 1, 13);
    assert_unchanged(&suspended_a, &log_a);
    assert_unchanged(&resumed_a, &log_a);
    assert!(log_a.iter().all(|e| recovered(e).is_none()), "a finished run is not recovered");

    let result = wait_result(&mut client, "order-b").await;
    assert_eq!(status_of(&result), pb::RunStatus::Success, "{result:?}");
    assert_eq!(json(&result.result), json!({"status": "approved by bob"}));
    let log_b = observe(&mut client, "order-b", 0).await;
    assert_seqs(&log_b, 1, log_b.len() as u64);
    assert_unchanged(&suspended_b, &log_b);
    assert_unchanged(&seen_b, &log_b);
    let at = recovered_at(&log_b);
    let before_kill = describe(&log_b[7..at]);
    if before_kill.iter().any(|d| d == "step_result approve") {
        // Only a client stalled for the whole 1.5 s of the resumed `approve` gets here: the resume was done, and
        // phase 3 only finalizes.
        eprintln!("the resumed approve completed before the kill: {before_kill:?}");
        assert_recovery(&log_b, at, 2, 7, false);
        assert_eq!(describe(&log_b[at + 2..]), ["step_start finalize", "step_result finalize", "workflow_finish"]);
    } else {
        assert_recovery(&log_b, at, 2, 7, true);
        assert!(recovered(&log_b[at]).expect("run_recovered").completed_steps.is_empty(), "approve had not completed");
        assert!(
            before_kill.iter().all(|d| d == "workflow_start" || d == "step_start approve"),
            "phase 2 before the kill: {before_kill:?}"
        );
        let phase3 = &log_b[at + 2..];
        assert_eq!(
            describe(phase3),
            [
                "step_start approve",
                "step_result approve",
                "step_start finalize",
                "step_result finalize",
                "workflow_finish"
            ]
        );
        match &phase3[0].event {
            Some(Event::StepStart(start)) => {
                assert_eq!(json(&start.resume_data), approval(true, "bob"), "the resume runs again with the same data")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(step_output(&phase3[1]), json!({"orderId": "B-200", "approved": true, "approver": "bob"}));
    }
    assert_eq!(get_run(&mut client, "order-b").await.phase, 3);
    server.kill();
}

// ---- 4. killed while a client streams ----

/// `writer-flood` streamed by a client, killed after some thousands of events: after the restart the client
/// re-attaches with the last seq it saw and gets exactly the next seq, then everything to the recovered run's end;
/// every seq it saw before still decodes to the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_a_client_streams_it_reattaches_without_gap_or_duplicate() {
    const COUNT: u64 = 200_000;
    const KILL_AFTER: u64 = 5_000;
    let mut scenario = Scenario::new("streaming");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let mut stream = client
        .stream_run(stream_request("writer-flood", "flood", json!({"count": COUNT})))
        .await
        .expect("StreamRun")
        .into_inner();
    let seen = read_until(&mut stream, "some thousands of outputs", |e| e.seq >= KILL_AFTER).await;
    server.kill();
    assert_seqs(&seen, 1, KILL_AFTER);
    // The client's cursor: the last seq it saw.
    let cursor = seen.last().expect("seen").seq;

    let server = scenario.start().await;
    let mut client = server.client().await;
    let rest = observe(&mut client, "flood", cursor).await;
    assert_eq!(rest.first().map(|e| e.seq), Some(cursor + 1), "the stream continues with exactly the next seq");
    assert_seqs(&rest, cursor + 1, cursor + rest.len() as u64);
    let last = rest.last().expect("finish");
    assert_eq!(finish_status(last), Some(pb::RunStatus::Success), "the recovered run ends");
    assert_eq!(finish_result(last), json!({"written": COUNT}));

    let mut replaying = observe_stream(&mut client, "flood", 0).await;
    let replay = read_until(&mut replaying, "the replay of the seen events", |e| e.seq == cursor).await;
    assert_unchanged(&seen, &replay);

    // The log after the cursor: the rest of phase 1 that was committed (outputs {"i": seq - 3}), then the
    // recovery and a whole second flood.
    for event in seen.iter().skip(2).chain(rest.iter().take_while(|e| kind(e) == "step_output")) {
        match &event.event {
            Some(Event::StepOutput(out)) => {
                assert_eq!(json(&out.output), json!({"i": event.seq - 3}), "seq {}", event.seq)
            }
            other => panic!("seq {}: {other:?}", event.seq),
        }
    }
    if !rest.iter().any(|e| recovered(e).is_some()) {
        // Only a client starved for seconds gets here: the whole flood was committed before the kill, so there was
        // nothing to recover; the stream still continued without gap to the run's one finish.
        assert_eq!(cursor + rest.len() as u64, COUNT + 4, "workflow_start, step_start, the outputs, result, finish");
        eprintln!("the flood ended before the kill; the recovery was not exercised");
        server.kill();
        return;
    }
    let at = recovered_at(&rest);
    eprintln!("killed with seq {cursor} seen; phase 1 had committed {} events", cursor as usize + at);
    assert!(rest[..at].iter().all(|e| kind(e) == "step_output"), "phase 1 was still flooding at the kill");
    assert_recovery(&rest, at, 1, at, false);
    let phase2 = &rest[at + 2..];
    assert_eq!(phase2.len() as u64, 1 + COUNT + 1 + 1, "step_start, the outputs, result, finish");
    assert_eq!(kind(&phase2[0]), "step_start");
    for (k, event) in phase2[1..=COUNT as usize].iter().enumerate() {
        match &event.event {
            Some(Event::StepOutput(out)) => assert_eq!(json(&out.output), json!({"i": k}), "seq {}", event.seq),
            other => panic!("seq {}: {other:?}", event.seq),
        }
    }
    assert_eq!(step_output(&phase2[phase2.len() - 2]), json!({"written": COUNT}));
    server.kill();
}

// ---- 5. finished runs ----

/// Runs that ended (success, failure after too few attempts, CancelRun) keep status, result or error, and every
/// event, across kills: each restart serves the same answers and the same log from any cursor, and a cursor
/// beyond the log is OUT_OF_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_keep_status_result_and_log_across_kills() {
    let mut scenario = Scenario::new("finished");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let ok = stream_run(&mut client, stream_request("chain", "done-ok", json!({"value": 10}))).await;
    assert_eq!(finish_status(ok.last().expect("finish")), Some(pb::RunStatus::Success));
    let failed =
        stream_run(&mut client, stream_request("flaky", "done-failed", json!({"failTimes": 3, "attempts": 2}))).await;
    assert_eq!(finish_status(failed.last().expect("finish")), Some(pb::RunStatus::Failed));
    let mut sleeping =
        client.stream_run(stream_request("timer", "done-canceled", json!({"ms": 600_000}))).await.expect("timer");
    read_until(sleeping.get_mut(), "the timer sleeps", |e| kind(e) == "step_waiting").await;
    let cancel = client.cancel_run(pb::CancelRunRequest { run_id: "done-canceled".into() }).await.expect("cancel");
    assert!(cancel.into_inner().canceled);
    let rest = read_all(sleeping.into_inner(), "the canceled timer").await;
    assert_eq!(finish_status(rest.last().expect("finish")), Some(pb::RunStatus::Canceled));

    let run_ids = ["done-ok", "done-failed", "done-canceled"];
    let mut before = Vec::new();
    for run_id in run_ids {
        let log = observe(&mut client, run_id, 0).await;
        let result = get_result(&mut client, run_id, false).await;
        assert_eq!(result.last_seq, log.len() as u64, "{run_id}");
        before.push((run_id, result, get_run(&mut client, run_id).await, log));
    }
    let list = |runs: pb::ListRunsResponse| -> Vec<(String, i32)> {
        runs.runs.into_iter().map(|r| (r.run_id, r.status)).collect()
    };
    let listed = list(client.list_runs(pb::ListRunsRequest::default()).await.expect("ListRuns").into_inner());
    assert_eq!(
        listed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["done-canceled", "done-failed", "done-ok"]
    );
    server.kill();

    // Twice: a restart must not change a finished run, nor must a restart after a restart.
    for restart in 1..=2 {
        let server = scenario.start().await;
        let mut client = server.client().await;
        for (run_id, result, info, log) in &before {
            let what = format!("{run_id} after restart {restart}");
            let now = get_result(&mut client, run_id, false).await;
            assert_eq!(status_of(&now), status_of(result), "{what}");
            assert_eq!(json(&now.result), json(&result.result), "{what}");
            assert_eq!(now.error, result.error, "{what}");
            assert_eq!(now, *result, "{what}: the whole result");
            assert_eq!(get_run(&mut client, run_id).await, *info, "{what}: the whole run info");
            let last = log.len() as u64;
            let replayed = observe(&mut client, run_id, 0).await;
            assert_eq!(replayed.len(), log.len(), "{what}: nothing added, nothing lost");
            assert_unchanged(log, &replayed);
            let middle = last / 2;
            let tail = observe(&mut client, run_id, middle).await;
            assert_seqs(&tail, middle + 1, last);
            assert_unchanged(&tail, &replayed);
            assert!(observe(&mut client, run_id, last).await.is_empty(), "{what}: nothing after the last seq");
            let beyond =
                pb::ObserveStreamRequest { run_id: (*run_id).into(), after_seq: last + 1, close_on_suspend: None };
            assert_status(client.observe_stream(beyond).await, Code::OutOfRange, &[&(last + 1).to_string()]);
        }
        let error = get_result(&mut client, "done-failed", false).await.error.expect("the failure's error");
        assert!(!error.message.is_empty(), "{error:?}");
        assert_eq!(
            list(client.list_runs(pb::ListRunsRequest::default()).await.expect("ListRuns").into_inner()),
            listed,
            "ListRuns after restart {restart}"
        );
        server.kill();
    }
}

// ---- 6. a store the server cannot use ----

/// Garbage in `runstream.db`: the server exits non-zero before serving, its stderr names the file, and the file
/// keeps its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_store_stops_the_server_and_is_left_untouched() {
    let mut scenario = Scenario::new("corrupted");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let file = scenario.store_file();
    fs::write(&file, &garbage).expect("write garbage");
    let (status, stderr) = scenario.start_failing().await;
    assert!(!status.success(), "exit status {status:?}");
    assert!(status.code().is_some(), "the server exits by itself, not by a signal: {status:?}");
    assert!(stderr.contains(&file.display().to_string()), "stderr must name {}:\n{stderr}", file.display());
    assert_eq!(fs::read(&file).expect("read the store"), garbage, "the store must be left untouched");
    let mut files: Vec<String> = fs::read_dir(&scenario.data_dir)
        .expect("list the data dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["runstream.db"], "nothing is created next to a store that cannot be read");
}

/// A second server on a data dir a running server uses fails at start, naming the file; the first one serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_fails_at_start() {
    let mut scenario = Scenario::new("second-server");
    let server = scenario.start().await;
    let mut client = server.client().await;
    let first = stream_run(&mut client, stream_request("chain", "before", json!({"value": 1}))).await;
    assert_eq!(finish_status(first.last().expect("finish")), Some(pb::RunStatus::Success));

    let (status, stderr) = scenario.start_failing().await;
    assert!(!status.success() && status.code().is_some(), "exit status {status:?}");
    let file = scenario.store_file();
    assert!(stderr.contains(&file.display().to_string()), "stderr must name {}:\n{stderr}", file.display());
    assert!(stderr.contains("another process"), "stderr must say the file is in use:\n{stderr}");

    // The first server is unaffected, and what it stored is there after it dies.
    let after = stream_run(&mut client, stream_request("chain", "after", json!({"value": 2}))).await;
    assert_eq!(finish_result(after.last().expect("finish")), json!({"value": 5}));
    server.kill();
    let server = scenario.start().await;
    let mut client = server.client().await;
    for (run_id, seen) in [("before", &first), ("after", &after)] {
        let log = observe(&mut client, run_id, 0).await;
        assert_unchanged(seen, &log);
    }
    server.kill();
}

// ---- 7. many runs in flight ----

/// Clients start `chain` runs as fast as the server takes them; the server is killed once it has accepted
/// `KILL_AT` of them, whatever each run was doing. After the restart every accepted run ends exactly once, with
/// its right result: a run whose finish was committed is not run again, and a recovered run skips exactly the
/// steps whose results were committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_killed_at_once_each_ends_exactly_once() {
    const CLIENTS: usize = 8;
    const KILL_AT: usize = 1500;
    let mut scenario = Scenario::new("many-runs");
    let server = scenario.start().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = server.client().await;
        let (accepted, enough) = (accepted.clone(), enough.clone());
        clients.spawn(async move {
            let mut runs = Vec::new();
            for i in 0u64.. {
                let run_id = format!("run-{c}-{i}");
                let request = pb::StartRunRequest {
                    workflow_id: "chain".into(),
                    run_id: run_id.clone(),
                    input: Some(pb_value(json!({"value": i, "delayMs": i % 20}))),
                    ..Default::default()
                };
                if client.start_run(request).await.is_err() {
                    break; // the server is gone
                }
                runs.push((run_id, i));
                if accepted.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AT {
                    enough.notify_one();
                }
            }
            runs
        });
    }
    tokio::time::timeout(WAIT, enough.notified()).await.expect("the server accepts runs");
    server.kill();
    let mut runs = Vec::new();
    while let Some(accepted) = clients.join_next().await {
        runs.extend(accepted.expect("client task"));
    }
    assert!(runs.len() >= KILL_AT);

    let server = scenario.start().await;
    let mut client = server.client().await;
    let mut recovered_runs = 0;
    for (run_id, value) in &runs {
        // Every run StartRun accepted exists: it was stored before StartRun answered.
        let log = observe(&mut client, run_id, 0).await;
        assert_seqs(&log, 1, log.len() as u64);
        let finishes: Vec<usize> =
            log.iter().enumerate().filter(|(_, e)| kind(e) == "workflow_finish").map(|(i, _)| i).collect();
        assert_eq!(finishes, [log.len() - 1], "{run_id}: one finish, at the end: {:?}", describe(&log));
        assert_eq!(finish_result(&log[log.len() - 1]), json!({"value": value + 3}), "{run_id}");
        if let Some(at) = log.iter().position(|e| recovered(e).is_some()) {
            recovered_runs += 1;
            assert_recovery(&log, at, 1, 0, false);
            let completed = &recovered(&log[at]).expect("run_recovered").completed_steps;
            for event in &log[at..] {
                if let Some(Event::StepStart(start)) = &event.event {
                    assert!(
                        !completed.contains(&start.step_id),
                        "{run_id}: {} ran again: {:?}",
                        start.step_id,
                        describe(&log)
                    );
                }
            }
        }
    }
    eprintln!("{} runs accepted, {recovered_runs} of them recovered", runs.len());
    server.kill();
}

// ---- 8. every commit is a safe place to die ----

/// Records each batch the registry commits, so a test can look at the store as a crash after any commit leaves it.
#[derive(Default)]
struct RecordingStore {
    batches: Mutex<Vec<Vec<Write>>>,
}

impl RunStore for RecordingStore {
    fn describe(&self) -> String {
        "recording".into()
    }

    fn load(&self) -> Result<Vec<LoadedRun>, StoreError> {
        Ok(Vec::new())
    }

    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        Ok(Vec::new())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.batches.lock().expect("batches").push(writes.to_vec());
        Ok(())
    }
}

/// What a restart would make of `run` as stored: `Err` when the stored state contradicts the stored log.
fn check_stored_run(run: &LoadedRun, catalog: &WorkflowCatalog) -> Result<(), String> {
    let status = run.record.state.status;
    if let Some(finish) = run.events.last().and_then(|e| e.finish) {
        // A suspended run whose resume was claimed (stored before the resumed phase's first event) is consistent.
        let resume_claimed = finish == RunStatus::Suspended && run.record.state.resuming.is_some();
        if finish != status && !resume_claimed {
            return Err(format!("the log ends with a {finish:?} finish, the state says {status:?}"));
        }
    }
    if !matches!(status, RunStatus::Pending | RunStatus::Running | RunStatus::Waiting) {
        return Ok(());
    }
    // This run would be recovered: its log must not hold an ending, and each step result the running phase
    // committed must have its checkpoint (else the step runs again after a client may have seen its result).
    if run.events.iter().any(|e| e.finish.is_some_and(RunStatus::is_terminal)) {
        return Err(format!("a terminal finish is stored, yet the state ({status:?}) makes a restart recover the run"));
    }
    let events: Vec<pb::RunEvent> =
        run.events.iter().map(|e| pb::RunEvent::decode(e.body.clone()).expect("a stored event decodes")).collect();
    if events.iter().any(|e| kind(e) == "workflow_canceled") {
        return Err("a workflow_canceled is stored, yet a restart would recover the run".into());
    }
    let workflow = catalog.get(&run.record.workflow_id).expect("a built-in workflow");
    let checkpoints = run.checkpoints.iter().map(|c| (c.path.clone(), c.record.clone()));
    let recovered = recovered_snapshot(&workflow, run.record.state.snapshot.clone(), checkpoints);
    let phase_start = events.iter().rposition(|e| kind(e) == "workflow_start").unwrap_or(0);
    for step in completed_steps(&events[phase_start..]) {
        if !recovered.steps.contains_key(step.as_str()) {
            return Err(format!("the result of {step} is stored, not its checkpoint: a restart would run it again"));
        }
    }
    Ok(())
}

/// Many runs (chains, suspensions, resumes, cancels) on a registry whose store records its batches; then the store
/// as a crash after each commit would leave it is checked: no run's stored state contradicts its stored log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_leaves_a_store_a_restart_reads_right() {
    let recording = Arc::new(RecordingStore::default());
    let registry = RunRegistry::open(
        runstream::builtin::catalog(),
        Arc::new(runstream::clock::SystemClock),
        recording.clone(),
        Arc::new(runstream::grpc::wire::WireEncoder::default()),
    )
    .expect("open");
    let start = |workflow: &str, run_id: String, input: Value| StartRequest {
        workflow_id: workflow.into(),
        run_id,
        input,
        ..Default::default()
    };
    let mut runs = Vec::new();
    for i in 0..200u64 {
        let chain = start("chain", format!("chain-{i}"), json!({"value": i, "delayMs": i % 3}));
        runs.push(registry.start(chain).await.expect("start chain").0);
        if i % 4 == 0 {
            let order = start("order-approval", format!("order-{i}"), order_input());
            runs.push(registry.start(order).await.expect("start order").0);
        }
    }
    // Canceled while they sleep, and canceled while suspended.
    for i in 0..50u64 {
        let timer =
            registry.start(start("timer", format!("timer-{i}"), json!({"ms": 600_000}))).await.expect("timer").0;
        assert!(timer.wait_for(WAIT, |s| s == RunStatus::Waiting).await, "timer-{i} sleeps");
        registry.cancel("", timer.id(), Duration::from_secs(5)).await.expect("cancel a sleeping run");
        runs.push(timer);
        let order = start("order-approval", format!("canceled-order-{i}"), order_input());
        let order = registry.start(order).await.expect("order").0;
        assert!(order.wait_for(WAIT, |s| s == RunStatus::Suspended).await, "canceled-order-{i} suspends");
        registry.cancel("", order.id(), Duration::from_secs(5)).await.expect("cancel a suspended run");
        runs.push(order);
    }
    let settled = |s: RunStatus| s.is_terminal() || s == RunStatus::Suspended;
    for run in &runs {
        assert!(run.wait_for(WAIT, settled).await, "{} settles", run.id());
        if run.status() == RunStatus::Suspended {
            let resume = ResumeRequest {
                resume_data: approval(true, "ada"),
                step: Vec::new(),
                label: None,
                for_each_index: None,
            };
            registry.resume("", run.id(), resume).await.expect("resume");
        }
    }
    for run in &runs {
        assert!(run.wait_for(WAIT, RunStatus::is_terminal).await, "{} ends", run.id());
    }
    let flushing = registry.clone();
    tokio::task::spawn_blocking(move || flushing.flush()).await.expect("flush");

    let batches = std::mem::take(&mut *recording.batches.lock().expect("batches"));
    let catalog = runstream::builtin::catalog();
    let store = MemoryStore::new();
    let mut broken = Vec::new();
    for (n, batch) in batches.iter().enumerate() {
        store.commit(batch).expect("replay a batch");
        // Only the runs this commit wrote to can have changed.
        let touched: HashSet<&str> = batch
            .iter()
            .filter_map(|write| match write {
                Write::CreateRun(record) => Some(record.run_id.as_str()),
                Write::Events { run_id, .. }
                | Write::Step { run_id, .. }
                | Write::State { run_id, .. }
                | Write::DeleteRun { run_id }
                | Write::TrimEvents { run_id, .. } => Some(run_id.as_str()),
                // Registrations touch no run; retention only removes runs.
                Write::Definition(_) | Write::ExpireRuns { .. } => None,
            })
            .collect();
        for run in store.load().expect("load").iter().filter(|run| touched.contains(run.record.run_id.as_str())) {
            if let Err(why) = check_stored_run(run, &catalog) {
                broken.push(format!("after commit {n}: run {}: {why}", run.record.run_id));
            }
        }
    }
    eprintln!("{} commits checked", batches.len());
    assert!(
        broken.is_empty(),
        "{} bad crash points, e.g.:\n{}",
        broken.len(),
        broken[..broken.len().min(10)].join("\n")
    );
}
