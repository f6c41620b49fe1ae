//! Remote steps over `runstream.v1.WorkerService`, against an in-process server, with a small worker written here
//! on the generated client: delivery, leases, redelivery, fencing, reconnects, cancel, suspend/resume, waiting
//! reasons, slots, ListWorkers. Short leases (600 ms) keep the redelivery tests quick; every wait has a deadline.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    worker::{self, Session, hello},
    *,
};
use runstream::{
    Server,
    engine::{Step, StepOutcome, Workflow},
    pb::{
        self, run_event::Event, run_service_client::RunServiceClient, server_message::Msg as Out,
        worker_message::Msg as In, worker_service_client::WorkerServiceClient,
    },
    worker::{WorkerHub, WorkerSettings},
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

const DEADLINE: Duration = Duration::from_secs(15);
const LEASE: Duration = Duration::from_millis(600);

struct Harness {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), runstream::ServeError>>>,
}

impl Harness {
    /// A server of `workflows`, built by `define` from the hub it serves workers with.
    async fn start(define: impl FnOnce(&Arc<WorkerHub>) -> Vec<Arc<Workflow>>) -> Self {
        let hub = WorkerHub::new(WorkerSettings {
            heartbeat_interval: Duration::from_millis(100),
            lease_duration: LEASE,
            ..WorkerSettings::default()
        });
        let mut builder = Server::builder().listen("127.0.0.1:0".parse().expect("addr"));
        for workflow in define(&hub) {
            builder = builder.workflow(workflow);
        }
        let listening = builder.workers(hub).build().expect("build").bind().await.expect("bind");
        let addr = listening.local_addr().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(listening.serve(async move {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), serving: Some(serving) }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    async fn client(&self) -> Client {
        RunServiceClient::new(self.channel().await)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            let served = tokio::time::timeout(DEADLINE, serving).await.expect("drains").expect("task");
            served.expect("served");
        }
    }
}

/// One Connect stream, driven by the test.
struct TestWorker {
    tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    rx: Streaming<pb::ServerMessage>,
    welcome: pb::Welcome,
    /// The attempts the heartbeat task renews.
    held: Arc<Mutex<Vec<pb::TaskRef>>>,
    heartbeats: Option<JoinHandle<()>>,
}

impl TestWorker {
    async fn connect(channel: Channel, hello: pb::Hello) -> Result<Self, tonic::Status> {
        let Session { tx, rx, welcome } = worker::connect(channel, hello).await?;
        Ok(Self { tx, rx, welcome, held: Arc::default(), heartbeats: None })
    }

    /// Sends a heartbeat with every held attempt every 100 ms.
    fn heartbeat(&mut self) {
        let (tx, held) = (self.tx.clone(), Arc::clone(&self.held));
        self.heartbeats = Some(tokio::spawn(async move {
            loop {
                let in_flight = held.lock().unwrap().clone();
                if tx.send(pb::WorkerMessage { msg: Some(In::Heartbeat(pb::Heartbeat { in_flight })) }).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    fn stop_heartbeats(&mut self) {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
    }

    fn send(&self, msg: In) {
        self.tx.send(pb::WorkerMessage { msg: Some(msg) }).expect("stream open");
    }

    /// The next server message other than a Ping (sent when the stream is idle).
    async fn next(&mut self) -> Out {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.rx.message())
                .await
                .expect("a server message in time")
                .expect("stream ok")
                .expect("stream open");
            match message.msg.expect("a message") {
                Out::Ping(_) => {}
                other => return other,
            }
        }
    }

    /// What the server sends within `wait` other than Pings, if anything.
    async fn within(&mut self, wait: Duration) -> Option<Out> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }

    /// The next Assign, which the worker then holds (and heartbeats) and acks.
    async fn assigned(&mut self) -> pb::Assign {
        match self.next().await {
            Out::Assign(assign) => {
                let r = assign.r#ref.clone().expect("ref");
                self.held.lock().unwrap().push(r.clone());
                self.send(In::Ack(pb::Ack { r#ref: Some(r) }));
                assign
            }
            other => panic!("expected an assign, got {other:?}"),
        }
    }

    fn release(&self, r: &pb::TaskRef) {
        self.held.lock().unwrap().retain(|h| h != r);
    }

    fn write(&self, r: &pb::TaskRef, chunk_seq: u64, value: Value) {
        self.send(In::Output(pb::TaskOutput {
            r#ref: Some(r.clone()),
            chunk_seq,
            chunk: Some(pb::task_output::Chunk::Write(pb_value(value))),
        }));
    }

    fn complete(&self, r: &pb::TaskRef, output: Value) {
        self.release(r);
        self.send(In::Complete(pb::Complete {
            r#ref: Some(r.clone()),
            output: Some(pb_value(output)),
            last_chunk_seq: 0,
        }));
    }

    /// Completes `r` and expects its ResultAck.
    async fn complete_acked(&mut self, r: &pb::TaskRef, output: Value) {
        self.complete(r, output);
        match self.next().await {
            Out::ResultAck(ack) => assert_eq!(ack.r#ref.as_ref(), Some(r)),
            other => panic!("expected a result ack, got {other:?}"),
        }
    }
}

fn task_ref(assign: &pb::Assign) -> pb::TaskRef {
    assign.r#ref.clone().expect("ref")
}

fn run_in_background(mut client: Client, request: pb::StreamRunRequest) -> JoinHandle<Vec<pb::RunEvent>> {
    tokio::spawn(async move { stream_run(&mut client, request).await })
}

async fn events_of(run: JoinHandle<Vec<pb::RunEvent>>) -> Vec<pb::RunEvent> {
    tokio::time::timeout(DEADLINE, run).await.expect("run ends in time").expect("run task")
}

fn step_starts(events: &[pb::RunEvent]) -> Vec<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepStart(s)) => Some((s.step_id.clone(), s.attempt)),
            _ => None,
        })
        .collect()
}

async fn run_status(client: &mut Client, run_id: &str) -> pb::RunStatus {
    let info = client.get_run(pb::GetRunRequest { run_id: run_id.into() }).await.expect("get run").into_inner();
    pb::RunStatus::try_from(info.status).expect("a known status")
}

/// Polls GetRun until the run has `status` (the status follows the hub's events on the run's own task).
async fn status_becomes(client: &mut Client, run_id: &str, status: pb::RunStatus) {
    let polled = tokio::time::timeout(DEADLINE, async {
        loop {
            if run_status(client, run_id).await == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "run {run_id} never became {status:?} (it is {:?})", run_status(client, run_id).await);
}

fn one_step(hub: &Arc<WorkerHub>, workflow: &str, task_type: &str) -> Vec<Arc<Workflow>> {
    vec![Workflow::builder(workflow).then(hub.step("work", task_type)).commit()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_steps_and_a_foreach_of_ten_stream_in_order_within_max_in_flight() {
    let server = Harness::start(|hub| {
        vec![
            Workflow::builder("gallery")
                .then(hub.step("list", "list-images"))
                .foreach(hub.step("resize", "resize-image"), 10)
                .then(Step::new("count", |ctx| async move {
                    Ok(StepOutcome::Done(json!({ "resized": ctx.input().as_array().map_or(0, Vec::len) })))
                }))
                .commit(),
        ]
    })
    .await;
    let mut worker =
        TestWorker::connect(server.channel().await, hello("w1", &["list-images", "resize-image"], 3)).await.unwrap();
    worker.heartbeat();
    assert_eq!(worker.welcome.lease_duration, Some(LEASE.try_into().unwrap()));
    let run = run_in_background(server.client().await, stream_request("gallery", "g-1", json!({ "n": 12 })));

    // The list step: two writes, then its output (the foreach's items).
    let list = worker.assigned().await;
    assert_eq!(list.task_type, "list-images");
    assert_eq!(list.workflow_id, "gallery");
    assert_eq!(list.idempotency_key, "g-1/list");
    assert_eq!(json(&list.input), json!({ "n": 12 }));
    let r = task_ref(&list);
    worker.write(&r, 1, json!({ "found": 6 }));
    worker.write(&r, 1, json!("a duplicate chunk, ignored"));
    worker.send(In::Output(pb::TaskOutput {
        r#ref: Some(r.clone()),
        chunk_seq: 2,
        chunk: Some(pb::task_output::Chunk::Progress(pb::Progress {
            current: 12,
            total: 12,
            message: "listed".into(),
        })),
    }));
    worker.complete_acked(&r, json!((0..12).collect::<Vec<u32>>())).await;

    // The foreach: 12 items at concurrency 10, but the worker takes 3 at once.
    let mut open: HashMap<String, pb::Assign> = HashMap::new();
    let mut keys = Vec::new();
    let mut done = 0;
    while done < 12 {
        while open.len() < 3 && done + open.len() < 12 {
            let assign = worker.assigned().await;
            keys.push(assign.idempotency_key.clone());
            open.insert(assign.r#ref.as_ref().unwrap().task_id.clone(), assign);
        }
        // No fourth task arrives while three are held.
        let extra = worker.within(Duration::from_millis(150)).await;
        assert!(extra.is_none(), "a fourth task was assigned: {extra:?}");
        let (_, assign) = open.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
        open.remove(&assign.r#ref.as_ref().unwrap().task_id);
        let index = assign.for_each_index.expect("a foreach index");
        worker.complete_acked(&task_ref(&assign), json!({ "thumb": index })).await;
        done += 1;
    }
    keys.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("g-1/resize/{i}")).collect();
    want.sort();
    assert_eq!(keys, want);

    let events = events_of(run).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(finish_result(events.last().unwrap()), json!({ "resized": 12 }));
    let list_events: Vec<&str> = events.iter().filter(|e| e.step_id == "list").map(kind).collect();
    assert_eq!(list_events, ["step_start", "step_output", "custom", "step_result"]);
    let output = events.iter().find_map(|e| match &e.event {
        Some(Event::StepOutput(o)) => Some(json(&o.output)),
        _ => None,
    });
    assert_eq!(output, Some(json!({ "found": 6 })));
    let progress = events.iter().find_map(|e| match &e.event {
        Some(Event::Custom(c)) => Some((c.r#type.clone(), json(&c.data))),
        _ => None,
    });
    assert_eq!(progress, Some(("data-progress".into(), json!({ "current": 12, "total": 12, "message": "listed" }))));
    let progress_count = events.iter().filter(|e| kind(e) == "step_progress").count();
    assert_eq!(progress_count, 12, "one step_progress per foreach item");
    assert_eq!(step_starts(&events), [("list".to_owned(), 1), ("resize".to_owned(), 1), ("count".to_owned(), 1)]);

    // ListWorkers: the session, what it serves, idle again.
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(server.channel().await);
    let listed = workers.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].worker_id, "w1");
    assert_eq!(listed[0].session_id, worker.welcome.session_id);
    assert_eq!(listed[0].task_types, ["list-images", "resize-image"]);
    assert_eq!((listed[0].max_in_flight, listed[0].in_flight), (3, 0));
    assert!(listed[0].last_heartbeat_at.is_some());
    let none =
        workers.list_workers(pb::ListWorkersRequest { task_type: "other".into() }).await.unwrap().into_inner().workers;
    assert!(none.is_empty());
    drop(worker);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_has_its_task_redelivered_after_the_lease() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut first = TestWorker::connect(server.channel().await, hello("w-a", &["crunch"], 1)).await.unwrap();
    first.heartbeat();
    let run = run_in_background(server.client().await, stream_request("job", "d-1", json!({ "x": 1 })));
    let one = first.assigned().await;
    assert_eq!(one.r#ref.as_ref().unwrap().attempt, 1);
    // The worker dies: no more heartbeats, its stream gone.
    first.stop_heartbeats();
    drop(first);

    let mut second = TestWorker::connect(server.channel().await, hello("w-b", &["crunch"], 1)).await.unwrap();
    second.heartbeat();
    let two = second.assigned().await;
    let (r1, r2) = (task_ref(&one), task_ref(&two));
    assert_eq!(r2.task_id, r1.task_id);
    assert_eq!(r2.attempt, 2);
    assert_ne!(r2.lease_token, r1.lease_token);
    assert_eq!(two.idempotency_key, one.idempotency_key);
    assert_eq!(two.idempotency_key, "d-1/work");
    second.complete_acked(&r2, json!({ "by": "w-b" })).await;

    let events = events_of(run).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(finish_result(events.last().unwrap()), json!({ "by": "w-b" }));
    assert_eq!(step_starts(&events), [("work".to_owned(), 1), ("work".to_owned(), 2)]);
    let results = events.iter().filter(|e| kind(e) == "step_result").count();
    assert_eq!(results, 1, "one result");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_remote_step_waits_its_retry_delay_then_its_next_attempt_runs() {
    const DELAY: Duration = Duration::from_millis(300);
    let server = Harness::start(|hub| {
        vec![Workflow::builder("job").then(hub.step("work", "crunch").retries(3, DELAY)).commit()]
    })
    .await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-retry", &["crunch"], 1)).await.unwrap();
    worker.heartbeat();
    let mut client = server.client().await;
    let run = run_in_background(client.clone(), stream_request("job", "retry-1", json!({ "x": 1 })));
    let one = worker.assigned().await;
    let r1 = task_ref(&one);
    assert_eq!((r1.attempt, one.workflow_id.as_str()), (1, "job"));
    worker.release(&r1);
    worker.send(In::Fail(pb::Fail {
        r#ref: Some(r1.clone()),
        error: Some(pb::ErrorInfo { name: "Flaky".into(), message: "try again".into(), details: None }),
        non_retryable: false,
        last_chunk_seq: 0,
    }));
    match worker.next().await {
        Out::ResultAck(ack) => assert_eq!(ack.r#ref.as_ref(), Some(&r1)),
        other => panic!("expected a result ack, got {other:?}"),
    }
    // During the delay the run waits (and says so); no task is offered before the delay is over.
    status_becomes(&mut client, "retry-1", pb::RunStatus::Waiting).await;
    let two = worker.assigned().await;
    let r2 = task_ref(&two);
    assert_eq!(r2.attempt, 2, "the retry's task carries the step's attempt");
    assert_ne!(r2.task_id, r1.task_id);
    assert_eq!(two.idempotency_key, one.idempotency_key);
    status_becomes(&mut client, "retry-1", pb::RunStatus::Running).await;
    worker.complete_acked(&r2, json!("second time")).await;

    let events = events_of(run).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(
        kinds(&events),
        ["workflow_start", "step_start", "step_waiting", "step_start", "step_result", "workflow_finish"]
    );
    let Some(Event::StepWaiting(waiting)) = &events[2].event else { panic!("not a step_waiting") };
    assert_eq!(waiting.reason, pb::WaitReason::RetryBackoff as i32);
    assert_eq!((waiting.attempt, waiting.task_type.as_str()), (2, ""));
    let wake_at = std::time::SystemTime::try_from(waiting.wake_at.expect("wake_at")).expect("a time");
    let waited_at = std::time::SystemTime::try_from(events[2].time.expect("time")).expect("a time");
    let delay = wake_at.duration_since(waited_at).expect("wakes after it waits");
    assert!(delay <= DELAY && delay >= DELAY - Duration::from_millis(50), "wake_at is the delay away: {delay:?}");
    assert_eq!(step_starts(&events), [("work".to_owned(), 1), ("work".to_owned(), 2)]);
    let call_ids: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepStart(s)) => Some(s.step_call_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(call_ids[0], call_ids[1], "one step call, two attempts");
    let Some(Event::StepResult(result)) = &events[4].event else { panic!("not a step_result") };
    assert_eq!(result.attempts, 2);
    assert_eq!(finish_result(events.last().unwrap()), json!("second time"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_a_ping_each_heartbeat_interval() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-idle", &["crunch"], 1)).await.unwrap();
    let mut raw = async || {
        let message = tokio::time::timeout(DEADLINE, worker.rx.message()).await.expect("in time");
        let message = message.expect("stream ok").expect("stream open");
        (std::time::Instant::now(), message.msg)
    };
    let (first, message) = raw().await;
    assert!(matches!(message, Some(Out::Ping(_))), "{message:?}");
    let (second, message) = raw().await;
    assert!(matches!(message, Some(Out::Ping(_))), "{message:?}");
    // One per interval of silence (100 ms here), not a flood.
    assert!(second - first >= Duration::from_millis(90), "pings {:?} apart", second - first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_of_an_abandoned_attempt_is_rejected() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut slow = TestWorker::connect(server.channel().await, hello("w-slow", &["crunch"], 1)).await.unwrap();
    let run = run_in_background(server.client().await, stream_request("job", "late-1", json!(1)));
    // No heartbeats: the lease runs out while the stream stays open.
    let one = slow.assigned().await;
    let r1 = task_ref(&one);
    let mut fresh = TestWorker::connect(server.channel().await, hello("w-fresh", &["crunch"], 1)).await.unwrap();
    fresh.heartbeat();
    match slow.next().await {
        Out::Cancel(cancel) => {
            assert_eq!(cancel.r#ref.as_ref(), Some(&r1));
            assert_eq!(cancel.reason, pb::CancelReason::LeaseLost as i32);
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    let two = fresh.assigned().await;
    assert_eq!(two.r#ref.as_ref().unwrap().attempt, 2);

    // The slow worker's result comes late: rejected, not applied.
    slow.complete(&r1, json!("stale"));
    match slow.next().await {
        Out::Reject(reject) => {
            assert_eq!(reject.code, pb::RejectCode::StaleAttempt as i32);
            assert_eq!(reject.r#ref.as_ref(), Some(&r1));
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    fresh.complete_acked(&task_ref(&two), json!("fresh")).await;
    let events = events_of(run).await;
    assert_eq!(finish_result(events.last().unwrap()), json!("fresh"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_reconnects_within_its_lease_keeps_its_task() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-r", &["crunch"], 1)).await.unwrap();
    worker.heartbeat();
    let run = run_in_background(server.client().await, stream_request("job", "r-1", json!(1)));
    let assign = worker.assigned().await;
    let r = task_ref(&assign);
    worker.stop_heartbeats();
    drop(worker);

    let mut again = hello("w-r", &["crunch"], 1);
    again.held = vec![r.clone(), pb::TaskRef { task_id: "never-heard-of".into(), attempt: 1, lease_token: "x".into() }];
    let mut worker = TestWorker::connect(server.channel().await, again).await.unwrap();
    assert_eq!(worker.welcome.resumed, std::slice::from_ref(&r));
    assert_eq!(worker.welcome.revoked.len(), 1);
    assert_eq!(worker.welcome.revoked[0].task_id, "never-heard-of");
    worker.held.lock().unwrap().push(r.clone());
    worker.heartbeat();
    // Well past the lease: the heartbeats keep it.
    tokio::time::sleep(LEASE * 2).await;
    worker.write(&r, 1, json!("still mine"));
    worker.complete_acked(&r, json!("kept")).await;

    let events = events_of(run).await;
    assert_eq!(finish_result(events.last().unwrap()), json!("kept"));
    assert_eq!(step_starts(&events), [("work".to_owned(), 1)], "no redelivery");
    assert!(kinds(&events).contains(&"step_output"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_a_worker_waits_then_runs_when_one_connects() {
    let server = Harness::start(|hub| one_step(hub, "job", "render")).await;
    let mut client = server.client().await;
    let run = run_in_background(client.clone(), stream_request("job", "nw-1", json!(1)));
    // step_waiting{NO_WORKER}, seen by an observer, before any worker exists.
    let mut observed = client
        .observe_stream(pb::ObserveStreamRequest { run_id: "nw-1".into(), after_seq: 0, ..Default::default() })
        .await;
    while observed.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
        tokio::task::yield_now().await;
        observed = client
            .observe_stream(pb::ObserveStreamRequest { run_id: "nw-1".into(), after_seq: 0, ..Default::default() })
            .await;
    }
    let mut observed = observed.expect("observe").into_inner();
    let waiting = tokio::time::timeout(DEADLINE, async {
        loop {
            let event = observed.message().await.expect("ok").expect("open");
            if let Some(Event::StepWaiting(w)) = event.event {
                return w;
            }
        }
    })
    .await
    .expect("step_waiting in time");
    assert_eq!(waiting.reason, pb::WaitReason::NoWorker as i32);
    assert_eq!(waiting.task_type, "render");
    assert_eq!(waiting.wake_at, None);

    assert_eq!(run_status(&mut client, "nw-1").await, pb::RunStatus::Waiting);

    let mut worker = TestWorker::connect(server.channel().await, hello("w-late", &["render"], 1)).await.unwrap();
    worker.heartbeat();
    let assign = worker.assigned().await;
    // A worker took the task: the run is RUNNING again, in GetRun and in ListRuns, while the worker holds it.
    status_becomes(&mut client, "nw-1", pb::RunStatus::Running).await;
    let listed = client
        .list_runs(pb::ListRunsRequest { workflow_id: "job".into(), ..Default::default() })
        .await
        .expect("list runs")
        .into_inner()
        .runs;
    assert_eq!(
        listed.iter().map(|r| (r.run_id.as_str(), r.status)).collect::<Vec<_>>(),
        [("nw-1", pb::RunStatus::Running as i32)]
    );
    worker.complete_acked(&task_ref(&assign), json!("rendered")).await;
    let events = events_of(run).await;
    assert_eq!(kinds(&events), ["workflow_start", "step_start", "step_waiting", "step_result", "workflow_finish"]);
    assert_eq!(finish_result(events.last().unwrap()), json!("rendered"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_workers_are_all_busy_waits_with_that_reason() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-1", &["crunch"], 1)).await.unwrap();
    worker.heartbeat();
    let first = run_in_background(server.client().await, stream_request("job", "b-1", json!(1)));
    let one = worker.assigned().await;
    assert_eq!(one.run_id, "b-1");
    let second = run_in_background(server.client().await, stream_request("job", "b-2", json!(2)));
    // The only slot is taken: b-2 waits until it frees.
    let extra = worker.within(Duration::from_millis(200)).await;
    assert!(extra.is_none(), "a second task was assigned beyond max_in_flight: {extra:?}");
    worker.complete_acked(&task_ref(&one), json!("one")).await;
    let two = worker.assigned().await;
    assert_eq!(two.run_id, "b-2");
    worker.complete_acked(&task_ref(&two), json!("two")).await;

    let first = events_of(first).await;
    assert_eq!(finish_result(first.last().unwrap()), json!("one"));
    assert!(!kinds(&first).contains(&"step_waiting"));
    let second = events_of(second).await;
    assert_eq!(kinds(&second), ["workflow_start", "step_start", "step_waiting", "step_result", "workflow_finish"]);
    let Some(Event::StepWaiting(waiting)) = &second[2].event else { panic!("not a step_waiting") };
    assert_eq!(waiting.reason, pb::WaitReason::WorkersBusy as i32);
    assert_eq!(waiting.task_type, "crunch");
    assert_eq!(finish_result(second.last().unwrap()), json!("two"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_run_pushes_cancel_to_the_worker() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-c", &["crunch"], 1)).await.unwrap();
    worker.heartbeat();
    let mut client = server.client().await;
    let run = run_in_background(client.clone(), stream_request("job", "c-1", json!(1)));
    let assign = worker.assigned().await;
    let r = task_ref(&assign);
    client.cancel_run(pb::CancelRunRequest { run_id: "c-1".into() }).await.expect("cancel");
    match worker.next().await {
        Out::Cancel(cancel) => {
            assert_eq!(cancel.r#ref.as_ref(), Some(&r));
            assert_eq!(cancel.reason, pb::CancelReason::RunCanceled as i32);
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    worker.release(&r);
    worker.send(In::Canceled(pb::Canceled { r#ref: Some(r.clone()) }));
    match worker.next().await {
        Out::ResultAck(ack) => assert_eq!(ack.r#ref, Some(r)),
        other => panic!("expected a result ack, got {other:?}"),
    }
    let events = events_of(run).await;
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Canceled));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_suspends_its_step_and_the_resume_data_goes_to_the_next_worker() {
    let server = Harness::start(|hub| one_step(hub, "approve", "ask-human")).await;
    let mut worker = TestWorker::connect(server.channel().await, hello("w-s", &["ask-human"], 1)).await.unwrap();
    worker.heartbeat();
    let mut client = server.client().await;
    let run = run_in_background(client.clone(), stream_request("approve", "s-1", json!({ "doc": 7 })));
    let assign = worker.assigned().await;
    let r = task_ref(&assign);
    assert_eq!(assign.resume_data, None);
    worker.release(&r);
    worker.send(In::Suspend(pb::Suspend {
        r#ref: Some(r.clone()),
        payload: Some(pb_value(json!({ "question": "ship doc 7?" }))),
        last_chunk_seq: 0,
    }));
    match worker.next().await {
        Out::ResultAck(ack) => assert_eq!(ack.r#ref, Some(r)),
        other => panic!("expected a result ack, got {other:?}"),
    }
    let events = events_of(run).await;
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Suspended));
    let suspended = events.iter().find_map(|e| match &e.event {
        Some(Event::StepSuspended(s)) => Some(json(&s.suspend_payload)),
        _ => None,
    });
    assert_eq!(suspended, Some(json!({ "question": "ship doc 7?" })));

    let resumed = client.resume_stream(resume_request("s-1", json!({ "yes": true }))).await.expect("resume");
    let resumed = tokio::spawn(collect(resumed.into_inner()));
    let again = worker.assigned().await;
    assert_eq!(json(&again.resume_data), json!({ "yes": true }));
    assert_eq!(json(&again.suspend_payload), json!({ "question": "ship doc 7?" }));
    assert_eq!(json(&again.input), json!({ "doc": 7 }));
    assert_eq!(again.idempotency_key, "s-1/work/r1");
    worker.complete_acked(&task_ref(&again), json!({ "shipped": true })).await;
    let resumed = events_of(resumed).await;
    assert_seqs(&resumed, events.len() as u64 + 1, events.len() as u64 + resumed.len() as u64);
    assert_eq!(finish_result(resumed.last().unwrap()), json!({ "shipped": true }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_hello_is_invalid_argument_naming_the_field() {
    let server = Harness::start(|hub| one_step(hub, "job", "crunch")).await;
    let cases: [(pb::Hello, &str); 3] = [
        (hello("", &["crunch"], 1), "hello.worker_id"),
        (hello("w", &[], 1), "hello.task_types"),
        (hello("w", &["crunch"], 0), "hello.max_in_flight"),
    ];
    for (bad, field) in cases {
        let refused = TestWorker::connect(server.channel().await, bad).await.map(|_| ());
        assert_status(refused, Code::InvalidArgument, &[field]);
    }
    // A stream that does not start with a hello.
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(pb::WorkerMessage { msg: Some(In::SetCapacity(pb::SetCapacity { max_in_flight: 1 })) }).unwrap();
    let refused = WorkerServiceClient::new(server.channel().await).connect(UnboundedReceiverStream::new(rx)).await;
    assert_status(refused.map(|_| ()), Code::InvalidArgument, &["hello"]);
    // Worker messages larger than the limit.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut huge = hello("w", &["crunch"], 1);
    huge.worker_name = "x".repeat(5 * 1024 * 1024);
    tx.send(pb::WorkerMessage { msg: Some(In::Hello(huge)) }).unwrap();
    let refused = WorkerServiceClient::new(server.channel().await)
        .max_encoding_message_size(64 * 1024 * 1024)
        .connect(UnboundedReceiverStream::new(rx))
        .await;
    let code = match refused {
        Ok(response) => response.into_inner().message().await.map(|_| ()).expect_err("refused").code(),
        Err(status) => status.code(),
    };
    assert_eq!(code, Code::ResourceExhausted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_worker_holds_tasks_loses_nothing() {
    use common::process::{ServerProcess, example_binary};
    let binary = example_binary("workers");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("workers-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    let start = |log: &str| {
        let args: [&std::ffi::OsStr; 6] = [
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--lease-ms".as_ref(),
            "600".as_ref(),
        ];
        ServerProcess::start_program(&binary, &args, dir.join(log), Duration::from_secs(60))
    };
    let channel = |addr: &str| Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    let types = ["list-images", "resize-image"];

    let first = start("first.log");
    let mut worker = TestWorker::connect(channel(&first.addr), hello("w-k", &types, 20)).await.unwrap();
    worker.heartbeat();
    let mut client = RunServiceClient::new(channel(&first.addr));
    client
        .start_run(pb::StartRunRequest {
            workflow_id: "thumbnails".into(),
            run_id: "k-1".into(),
            input: Some(pb_value(json!({}))),
            ..Default::default()
        })
        .await
        .expect("StartRun");
    let list = worker.assigned().await;
    assert_eq!(list.idempotency_key, "k-1/list");
    worker.complete_acked(&task_ref(&list), json!([0, 1, 2])).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let assign = worker.assigned().await;
        assert_eq!(assign.task_type, "resize-image");
        held.push(task_ref(&assign));
    }

    // kill -9 while the worker holds three tasks.
    drop(first);
    worker.stop_heartbeats();
    drop(worker);
    let second = start("second.log");
    let mut again = hello("w-k", &types, 20);
    again.held = held.clone();
    let mut worker = TestWorker::connect(channel(&second.addr), again).await.unwrap();
    assert!(worker.welcome.resumed.is_empty());
    assert_eq!(worker.welcome.revoked, held, "the restarted server does not know the old attempts");
    worker.heartbeat();

    // The recovered run queues its tasks again, with the same keys; the worker runs whatever comes.
    let mut client = RunServiceClient::new(channel(&second.addr));
    let mut waiter = client.clone();
    let result = tokio::spawn(async move { get_result(&mut waiter, "k-1", true).await });
    let mut keys = Vec::new();
    while keys.iter().filter(|k: &&String| k.starts_with("k-1/resize/")).count() < 3 {
        // Several tasks may be in flight: assignments and acks interleave.
        let Out::Assign(assign) = worker.next().await else { continue };
        keys.push(assign.idempotency_key.clone());
        let output = match assign.task_type.as_str() {
            "list-images" => json!([0, 1, 2]),
            _ => json!({ "thumb": assign.for_each_index }),
        };
        worker.complete(&task_ref(&assign), output);
    }
    keys.sort();
    keys.retain(|k| k != "k-1/list");
    assert_eq!(keys, ["k-1/resize/0", "k-1/resize/1", "k-1/resize/2"]);
    let result = tokio::time::timeout(DEADLINE, result).await.expect("result in time").expect("task");
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    assert_eq!(json(&result.result), json!({ "thumbnails": 3 }));

    // Each step's result is in the log once.
    let log = client
        .observe_stream(pb::ObserveStreamRequest { run_id: "k-1".into(), after_seq: 0, ..Default::default() })
        .await
        .expect("observe");
    let events = tokio::time::timeout(DEADLINE, collect(log.into_inner())).await.expect("log in time");
    assert_seqs(&events, 1, events.len() as u64);
    let mut results: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepResult(r)) if r.status == pb::StepStatus::Success as i32 => Some(r.step_id.as_str()),
            _ => None,
        })
        .collect();
    results.sort();
    assert_eq!(results, ["list", "report", "resize"]);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `runstream serve` takes the worker timings as flags: unusable ones stop it at start naming the flags; the others
/// reach workers in their Welcome.
#[test]
fn serve_takes_the_worker_timings_as_flags() {
    use common::process::{ServerProcess, run_with_timeout, runstream_command};

    let refused = run_with_timeout(
        runstream_command([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--worker-heartbeat",
            "10s",
            "--worker-lease",
            "5s",
        ]),
        DEADLINE,
        "runstream serve with a lease shorter than the heartbeat",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--worker-lease") && stderr.contains("--worker-heartbeat"), "{stderr}");
    let refused = run_with_timeout(
        runstream_command(["serve", "--store", "memory", "--worker-lease", "30 seconds"]),
        DEADLINE,
        "runstream serve with a malformed lease",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--worker-lease") && stderr.contains("500ms"), "{stderr}");

    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("worker-flags-server.log");
    let args = ["--store", "memory", "--worker-heartbeat", "250ms", "--worker-lease", "2s"];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let args = [&args[..], &["--max-worker-message-bytes".as_ref(), "64KiB".as_ref()]].concat();
    let server = ServerProcess::start(&args, None, log, Duration::from_secs(30));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel =
            Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await.expect("connect");
        let worker = TestWorker::connect(channel, hello("w-flags", &["anything"], 1)).await.expect("welcome");
        assert_eq!(worker.welcome.heartbeat_interval, Some(Duration::from_millis(250).try_into().unwrap()));
        assert_eq!(worker.welcome.lease_duration, Some(Duration::from_secs(2).try_into().unwrap()));
        assert_eq!(worker.welcome.max_message_bytes, 64 * 1024);
    });
}

#[tokio::test]
async fn worker_settings_are_given_once_and_must_work() {
    let hub = WorkerHub::new(WorkerSettings::default());
    let both = Server::builder().workers(hub).worker_settings(WorkerSettings::default()).build();
    let Err(runstream::ServeError::Config(message)) = both else { panic!("both accepted") };
    assert!(message.contains(".worker_settings()"), "{message}");
    let silent = WorkerSettings { heartbeat_interval: Duration::ZERO, ..WorkerSettings::default() };
    let Err(runstream::ServeError::Config(message)) = Server::builder().worker_settings(silent).build() else {
        panic!("a zero heartbeat accepted")
    };
    assert!(message.contains("--worker-heartbeat"), "{message}");
    let tiny = WorkerSettings { max_message_bytes: 10, ..WorkerSettings::default() };
    let Err(runstream::ServeError::Config(message)) = Server::builder().worker_settings(tiny).build() else {
        panic!("a 10-byte message limit accepted")
    };
    assert!(message.contains("--max-worker-message-bytes"), "{message}");
    let quick = WorkerSettings { heartbeat_interval: Duration::from_millis(50), ..WorkerSettings::default() };
    assert!(Server::builder().worker_settings(quick).build().is_ok());
}
