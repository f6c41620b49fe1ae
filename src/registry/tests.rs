//! The registry over a store: readers see only committed events, a registry opened on the same store again finds
//! every run (recovering those in flight), and retention forgets and trims with explicit errors.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use prost::Message;
use serde_json::{Value, json};

use super::*;
use crate::{
    builtin,
    clock::SystemClock,
    engine::{ResumeRequest, Step, StepOutcome, Workflow, WorkflowCatalog},
    pb::{self, run_event::Event as E},
    store::{DefinitionRecord, LoadedRun, MemoryStore, RunStore, StoreError, Write},
};

/// A store whose commits wait while the gate is closed: to see what readers get before a commit.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    open: Mutex<bool>,
    changed: Condvar,
}

impl GatedStore {
    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }
}

impl RunStore for GatedStore {
    fn describe(&self) -> String {
        "gated memory".into()
    }
    fn load(&self) -> Result<Vec<LoadedRun>, StoreError> {
        self.inner.load()
    }
    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.inner.load_definitions()
    }
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
        self.inner.commit(writes)
    }
}

async fn start(registry: &RunRegistry, workflow_id: &str, run_id: &str, input: Value) -> Arc<Run> {
    let request = StartRequest { workflow_id: workflow_id.into(), run_id: run_id.into(), input, ..Default::default() };
    registry.start(request).await.expect("start").0
}

/// Every event after `after_seq` until the reader ends (one phase), decoded.
async fn read(run: &Run, after_seq: u64) -> Vec<(u64, pb::RunEvent)> {
    let mut reader = run.reader(after_seq, ReadUntil::Phase { close_on_suspend: true }).expect("reader");
    let mut events = Vec::new();
    while let Some(entry) = tokio::time::timeout(Duration::from_secs(10), reader.next()).await.expect("no stall") {
        events.push((entry.seq, pb::RunEvent::decode(entry.bytes.clone()).expect("decodes")));
    }
    events
}

fn name(event: &pb::RunEvent) -> String {
    event.event.as_ref().map(|e| format!("{e:?}").split('(').next().unwrap_or_default().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_an_event_only_once_it_is_committed() {
    let store = Arc::new(GatedStore::default());
    let registry = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    let run = start(&registry, "chain", "c1", json!({ "value": 1 })).await;
    // The run finishes in memory, but nothing is committed: readers and the view see nothing yet.
    run.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await;
    assert_eq!(run.last_seq(), 0);
    let mut reader = run.reader(0, ReadUntil::Run { close_on_suspend: true }).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(50), reader.next()).await.is_err(), "nothing visible yet");
    store.set_open(true);
    let first = tokio::time::timeout(Duration::from_secs(10), reader.next()).await.expect("woken by the commit");
    assert_eq!(first.map(|e| e.seq), Some(1));
    registry.flush();
    assert_eq!(run.last_seq(), 8);
    let stored = store.load().unwrap();
    assert_eq!(stored[0].events.len(), 8);
    assert_eq!(stored[0].record.state.status, RunStatus::Success);
}

/// Polls `done` every millisecond for up to 10 s.
async fn poll_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_waits_for_the_store_and_is_canceled_while_it_waits() {
    let store = Arc::new(GatedStore::default());
    let registry = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    let run = start(&registry, "writer-flood", "f1", json!({ "count": 10_000_000u64 })).await;
    // Nothing is committed: the flood appends until one more than the limit is waiting, then its writer waits.
    let parked = log::MAX_UNSTORED + 1;
    poll_until("the flood fills its allowance", || run.appended_seq() >= parked).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(run.appended_seq(), parked, "the writer waits for the store");
    // The store takes writes again: the flood goes on.
    store.set_open(true);
    poll_until("the flood goes on", || run.appended_seq() > 3 * parked).await;
    // Stalled again, and canceled while its writer waits.
    store.set_open(false);
    poll_until("the flood waits again", || run.appended_seq() - run.last_seq() > log::MAX_UNSTORED).await;
    let (run, canceled) = registry.cancel("", "f1", Duration::from_secs(10)).await.unwrap();
    assert!(canceled);
    assert_eq!(run.status(), RunStatus::Canceled);
    store.set_open(true);
    registry.flush();
    assert!(run.is_stored());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_registry_serves_finished_and_suspended_runs() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let first = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    let chain = start(&first, "chain", "c1", json!({ "value": 1 })).await;
    let before = read(&chain, 0).await;
    let order = start(&first, "order-approval", "o1", json!({ "orderId": "A-1", "amount": 5 })).await;
    let suspended = read(&order, 0).await;
    first.flush();

    let second = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    let chain = second.get("", "c1").await.unwrap();
    assert_eq!(chain.view().state.result, Some(json!({ "value": 4 })));
    assert_eq!(read(&chain, 0).await, before, "the same events with the same seqs");
    assert_eq!(read(&chain, 5).await, before[5..]);
    let order = second.get("", "o1").await.unwrap();
    assert_eq!(order.status(), RunStatus::Suspended);
    let resume = ResumeRequest { resume_data: json!({ "approved": true, "approver": "ada" }), ..Default::default() };
    let (order, start_seq) = second.resume("", "o1", resume).await.unwrap();
    assert_eq!(start_seq, suspended.len() as u64);
    let resumed = read(&order, start_seq).await;
    assert_eq!(resumed.first().map(|(seq, _)| *seq), Some(start_seq + 1), "numbering continues");
    assert_eq!(order.view().state.result, Some(json!({ "status": "approved by ada" })));
    // New runs of the reopened registry list after the loaded ones.
    let (runs, _) = second.list(&RunFilter::default(), 0, 10).await.expect("list");
    let ids: Vec<&str> = runs.iter().map(|r| &*r.run_id).collect();
    assert_eq!(ids, ["o1", "c1"]);
}

/// `step-1` counts its runs; `step-2` waits for `release` (never, in the registry that "crashes").
fn two_steps(step_one_runs: Arc<AtomicUsize>, release: Arc<tokio::sync::Semaphore>) -> WorkflowCatalog {
    let step_one = Step::new("step-1", move |ctx| {
        let runs = step_one_runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(StepOutcome::Done(json!({ "n": ctx.input()["n"].as_i64().unwrap_or(0) + 1 })))
        }
    });
    let step_two = Step::new("step-2", move |ctx| {
        let release = release.clone();
        async move {
            let _permit = release.acquire().await;
            Ok(StepOutcome::Done(json!({ "n": ctx.input()["n"].as_i64().unwrap_or(0) * 10 })))
        }
    });
    let mut catalog = WorkflowCatalog::new();
    catalog.register(Workflow::builder("two-steps").then(step_one).then(step_two).commit());
    catalog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_is_recovered_from_its_last_completed_step() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let step_one_runs = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(tokio::sync::Semaphore::new(0));
    let first =
        RunRegistry::open(two_steps(step_one_runs.clone(), blocked), Arc::new(SystemClock), store.clone(), wire());
    let run = start(&first.unwrap(), "two-steps", "r1", json!({ "n": 1 })).await;
    // Once a reader sees step-2 start, step-1's result and checkpoint are committed; then the process "dies".
    let mut reader = run.reader(0, ReadUntil::Run { close_on_suspend: true }).unwrap();
    let mut seen = Vec::new();
    while let Some(entry) = reader.next().await {
        let event = pb::RunEvent::decode(entry.bytes.clone()).unwrap();
        let is_step_two = matches!(&event.event, Some(E::StepStart(s)) if s.step_id == "step-2");
        seen.push((entry.seq, event));
        if is_step_two {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "workflow_start, step-1 start/result, step-2 start: {seen:?}");

    let released = Arc::new(tokio::sync::Semaphore::new(100));
    let second =
        RunRegistry::open(two_steps(step_one_runs.clone(), released), Arc::new(SystemClock), store.clone(), wire());
    let run = second.unwrap().get("", "r1").await.unwrap();
    assert!(run.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await);
    assert_eq!(run.view().state.result, Some(json!({ "n": 20 })));
    assert_eq!(step_one_runs.load(Ordering::SeqCst), 1, "the completed step is not run again");
    let all = read(&run, 0).await;
    assert_eq!(all[..seen.len()], seen[..], "what a client saw keeps its seqs");
    let names: Vec<String> = all[seen.len()..].iter().map(|(_, e)| name(e)).collect();
    assert_eq!(names, ["RunRecovered", "WorkflowStart", "StepStart", "StepResult", "WorkflowFinish"]);
    let (seq, recovered) = &all[seen.len()];
    assert_eq!(*seq, seen.len() as u64 + 1, "numbering continues");
    assert_eq!(recovered.source, pb::EventSource::System as i32);
    let Some(E::RunRecovered(recovered)) = &recovered.event else { panic!() };
    assert_eq!((recovered.interrupted_phase, recovered.completed_steps.clone()), (1, vec!["step-1".to_owned()]));
    let Some(E::WorkflowStart(phase)) = &all[seen.len() + 1].1.event else { panic!() };
    assert_eq!(phase.phase, 2);
    let Some(E::StepStart(rerun)) = &all[seen.len() + 2].1.event else { panic!() };
    assert_eq!(rerun.step_id, "step-2", "the step that was running runs again");
}

/// A clock the test moves.
struct ManualClock(Mutex<SystemTime>);

impl crate::clock::Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forgets_finished_runs_and_trims_old_events_with_an_explicit_error() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let start_time = SystemTime::now();
    let clock = Arc::new(ManualClock(Mutex::new(start_time)));
    let registry = RunRegistry::open(builtin::catalog(), clock.clone(), store.clone(), wire()).unwrap();
    let chain = start(&registry, "chain", "c1", json!({ "value": 1 })).await;
    read(&chain, 0).await;
    let order = start(&registry, "order-approval", "o1", json!({ "orderId": "A-1", "amount": 5 })).await;
    let suspended_at = read(&order, 0).await.len() as u64;
    registry.flush();
    let day = Duration::from_secs(86_400);
    assert_eq!(registry.expire(day), (0, 0), "nothing is a day old yet");

    *clock.0.lock().unwrap() = start_time + 2 * day;
    assert_eq!(registry.expire(day), (1, 1), "the finished run goes; the suspended one keeps its newest event");
    assert!(matches!(registry.get("", "c1").await, Err(RegistryError::RunNotFound { .. })));
    let order = registry.get("", "o1").await.unwrap();
    match order.reader(0, ReadUntil::Run { close_on_suspend: true }) {
        Err(RegistryError::CursorExpired { first_seq, .. }) => assert_eq!(first_seq, suspended_at),
        other => panic!("expected CursorExpired, got {other:?}"),
    }
    // The newest event (the suspension's finish) is still replayable, and the run can still be resumed.
    let kept = read(&order, suspended_at - 1).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(name(&kept[0].1), "WorkflowFinish");
    registry.flush();
    let stored = store.load().unwrap();
    assert_eq!(stored.len(), 1, "the store forgot the finished run too");
    assert_eq!(stored[0].events.first().map(|e| e.seq), Some(suspended_at));
    let resume = ResumeRequest { resume_data: json!({ "approved": false, "approver": "bo" }), ..Default::default() };
    registry.resume("", "o1", resume).await.unwrap();
    assert!(order.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_overtaken_by_retention_ends_with_the_earliest_seq_not_a_gap() {
    let clock = Arc::new(ManualClock(Mutex::new(SystemTime::now())));
    let registry = RunRegistry::new(builtin::catalog(), clock.clone(), wire());
    let order = start(&registry, "order-approval", "o1", json!({ "orderId": "A-1", "amount": 5 })).await;
    let last = read(&order, 0).await.len() as u64;
    // A reader created at seq 1 that has read nothing when retention trims the log.
    let mut fresh = order.reader(1, ReadUntil::Run { close_on_suspend: true }).unwrap();
    *clock.0.lock().unwrap() += Duration::from_secs(3 * 86_400);
    registry.expire(Duration::from_secs(86_400));
    assert!(fresh.next().await.is_none());
    assert_eq!(fresh.expired(), Some(last), "the reader says where the log starts now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_is_reported_only_once_it_is_stored() {
    let store = Arc::new(GatedStore::default());
    let registry = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    let run = start(&registry, "chain", "c1", json!({ "value": 1 })).await;
    run.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await;
    // SUCCESS in memory, nothing committed: what GetResult, GetRun and StartRun would report must wait.
    let stored = tokio::spawn({
        let run = run.clone();
        async move { run.stored().await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(50), async {
            while !stored.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err()
    );
    store.set_open(true);
    tokio::time::timeout(Duration::from_secs(10), stored)
        .await
        .expect("stored after the commit")
        .expect("join")
        .expect("stored");
    assert_eq!(store.load().unwrap()[0].record.state.status, RunStatus::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_run_this_build_cannot_serve_keeps_its_id() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let first = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    read(&*start(&first, "chain", "c1", json!({ "value": 1 })).await, 0).await;
    first.flush();

    // A build without `chain`: the run is not served, its id is not given to another run, and the store (whose
    // writer would otherwise be stuck on the duplicate id) goes on storing other runs.
    let mut catalog = WorkflowCatalog::new();
    catalog.register(crate::builtin::timer::workflow());
    let second = RunRegistry::open(catalog, Arc::new(SystemClock), store.clone(), wire()).unwrap();
    assert!(matches!(second.get("", "c1").await, Err(RegistryError::RunNotFound { .. })));
    let request = StartRequest {
        workflow_id: "timer".into(),
        run_id: "c1".into(),
        input: json!({ "ms": 1 }),
        ..Default::default()
    };
    match second.start(request).await {
        Err(RegistryError::RunIdTaken { existing, .. }) => assert_eq!(existing, "chain"),
        other => panic!("expected RunIdTaken, got {other:?}"),
    }
    let timer = start(&second, "timer", "t1", json!({ "ms": 1 })).await;
    assert!(timer.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await);
    timer.stored().await.expect("stored");
    let ids: Vec<String> = store.load().unwrap().into_iter().map(|r| r.record.run_id).collect();
    assert_eq!(ids, ["c1", "t1"]);
}

/// Compiles `{"id", "value"}` into a one-step workflow whose step waits for a permit of `gate`, then outputs
/// `value`: the registry's part of registration, with no definition format.
struct StubCompiler {
    gate: Arc<tokio::sync::Semaphore>,
}

impl DefinitionCompiler for StubCompiler {
    fn compile(
        &self,
        kind: RunKind,
        body: &Value,
        resolve: &dyn Fn(&str) -> Option<Arc<Workflow>>,
    ) -> Result<Arc<Workflow>, InvalidDefinition> {
        assert_eq!(kind, RunKind::Workflow);
        let id = body["id"].as_str().filter(|id| !id.is_empty()).ok_or_else(|| InvalidDefinition {
            path: "id".into(),
            reason: "required".into(),
            missing: false,
        })?;
        if let Some(nested) = body["nests"].as_str()
            && resolve(nested).is_none()
        {
            return Err(InvalidDefinition { path: "nests".into(), reason: "no such workflow".into(), missing: true });
        }
        let (gate, value) = (Arc::clone(&self.gate), body["value"].clone());
        let step = Step::new("only", move |_| {
            let (gate, value) = (Arc::clone(&gate), value.clone());
            async move {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                Ok(StepOutcome::Done(value))
            }
        });
        Ok(Workflow::builder(id).then(step).commit())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_definitions_are_versioned_stored_and_runs_keep_their_version() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let compiler = || Some(Arc::new(StubCompiler { gate: Arc::clone(&gate) }) as Arc<dyn DefinitionCompiler>);
    let first =
        RunRegistry::open_with(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire(), compiler()).unwrap();

    let v1 = first.register_definition("", RunKind::Workflow, json!({ "id": "mine", "value": 1 })).expect("v1");
    assert_eq!((v1.id.as_str(), v1.version), ("mine", 1));
    let held = start(&first, "mine", "on-v1", json!({})).await;
    let v2 = first.register_definition("", RunKind::Workflow, json!({ "id": "mine", "value": 2 })).expect("v2");
    assert_eq!(v2.version, 2);
    gate.add_permits(10);
    assert!(held.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await);
    assert_eq!(held.view().state.result, Some(json!(1)), "the run kept version 1");
    let newer = start(&first, "mine", "on-v2", json!({})).await;
    assert!(newer.wait_for(Duration::from_secs(10), RunStatus::is_terminal).await);
    assert_eq!(newer.view().state.result, Some(json!(2)));
    let listed: Vec<(String, u32)> = first
        .workflows("")
        .iter()
        .filter(|(wf, _)| &**wf.id() == "mine")
        .map(|(wf, v)| (wf.id().to_string(), *v))
        .collect();
    assert_eq!(listed, [("mine".to_owned(), 2)]);

    // Refusals: a built-in id, a bad body, a missing reference; none of them registers anything.
    assert!(matches!(
        first.register_definition("", RunKind::Workflow, json!({ "id": "chain" })),
        Err(RegistryError::DefinitionIdTaken { built_in: true, .. })
    ));
    assert!(matches!(
        first.register_definition("", RunKind::Workflow, json!({})),
        Err(RegistryError::InvalidDefinition { missing: false, .. })
    ));
    assert!(matches!(
        first.register_definition("", RunKind::Workflow, json!({ "id": "x", "nests": "nowhere" })),
        Err(RegistryError::InvalidDefinition { missing: true, .. })
    ));
    assert_eq!(
        first.definition("", RunKind::Workflow, "mine", 1).expect("v1").body,
        json!({ "id": "mine", "value": 1 })
    );
    assert!(matches!(
        first.definition("", RunKind::Workflow, "mine", 3),
        Err(RegistryError::DefinitionNotFound { latest: Some(2), .. })
    ));
    assert!(matches!(first.definition("", RunKind::Agent, "mine", 0), Err(RegistryError::DefinitionNotFound { .. })));
    held.stored().await.expect("stored");
    newer.stored().await.expect("stored");
    first.flush();

    // Reopened: the definitions and each run's version are back, and versions number on.
    let second =
        RunRegistry::open_with(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire(), compiler()).unwrap();
    assert_eq!(second.get("", "on-v1").await.expect("served").view().state.result, Some(json!(1)));
    assert_eq!(second.definition("", RunKind::Workflow, "mine", 0).expect("latest").version, 2);
    let v3 = second.register_definition("", RunKind::Workflow, json!({ "id": "mine", "value": 3 })).expect("v3");
    assert_eq!(v3.version, 3);
    let records: Vec<u32> = store.load().unwrap().iter().map(|r| r.record.workflow_version).collect();
    assert_eq!(records, [1, 2]);

    // A registry that takes no definitions does not serve their runs, and says so when asked to register.
    let third = RunRegistry::open(builtin::catalog(), Arc::new(SystemClock), store.clone(), wire()).unwrap();
    assert!(matches!(third.get("", "on-v1").await, Err(RegistryError::RunNotFound { .. })));
    assert!(matches!(
        third.register_definition("", RunKind::Workflow, json!({ "id": "mine" })),
        Err(RegistryError::DefinitionsUnsupported)
    ));
}

/// The encoder `runstream serve` gives the registry.
fn wire() -> Arc<dyn super::EventEncoder> {
    Arc::new(crate::grpc::wire::WireEncoder::default())
}
