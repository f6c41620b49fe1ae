//! Runs one phase of a run: walks the workflow graph, emits events, returns the outcome and the updated snapshot.
//!
//! A phase is one future, driven by whoever calls [`execute_phase`]. Concurrent branches (parallel, branch,
//! foreach) are polled inside that future rather than spawned, so that the whole phase stays one cancellable unit
//! and nothing outlives it. Shared bookkeeping sits behind a `std` mutex that is never held across an await.
//!
//! Resumes re-walk the graph from the start with the previous phase's snapshot (see [`RunSnapshot`]): in *replay*
//! mode a step recorded as successful is skipped silently and yields its recorded output, a step still suspended
//! stays suspended, and the resume target runs with its resume data. Loops and foreach keep what they need to
//! re-enter in the right place in `snapshot.control`.
//!
//! Recovery after a crash ([`Phase::recovering`]) is the same replay without a resume target: the registry hands in
//! the last stored snapshot with the steps the interrupted phase completed added ([`recovered_snapshot`]), so those
//! are skipped and the step that was running when the process died runs again.

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use futures_util::{FutureExt, StreamExt, future::join_all, stream::FuturesUnordered};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    event::{ErrorInfo, Event, EventKind, EventSink, EventSource, EventTooLarge, RunStatus, StepStatus, WaitReason},
    schema::Schema,
    snapshot::{PathMap, ResumeTarget, RunSnapshot, StepRecord, SuspendedStep},
    step::{ContextShared, RetrySpec, Step, StepContext, StepError, StepOutcome, UsageMeter, Writer},
    workflow::{Concurrency, LoopCond, LoopKind, MapFn, Node, Wait, Workflow},
};
use crate::clock::Clock;

/// The reason reported in `WorkflowCanceled`: the cancel token is only ever fired by the CancelRun RPC.
pub const CANCEL_REASON: &str = "canceled by CancelRun";

/// Everything one phase needs.
pub struct Phase {
    pub run_id: Arc<str>,
    pub workflow: Arc<Workflow>,
    /// The run input (already schema-checked).
    pub input: Value,
    pub request_context: Arc<Map<String, Value>>,
    /// 1 = first execution, 2.. = resumes.
    pub phase: u32,
    /// From the previous phase (default for phase 1).
    pub snapshot: RunSnapshot,
    /// Some for a resume phase.
    pub resume: Option<ResumeTarget>,
    /// True when this phase continues one a crash interrupted: replay `snapshot` (skip what it records as done)
    /// even without a resume target.
    pub recovering: bool,
    pub sink: Arc<dyn EventSink>,
    pub clock: Arc<dyn Clock>,
    pub cancel: CancellationToken,
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseOutcome {
    /// Success, Failed, Suspended or Canceled.
    pub status: RunStatus,
    /// Success: the workflow result (the bail value if a step bailed).
    pub result: Option<Value>,
    /// Failed: the failing step's error, with `details.stepId`.
    pub error: Option<ErrorInfo>,
    /// Updated records; `suspended` is filled iff `status == Suspended`.
    pub snapshot: RunSnapshot,
}

/// Runs one phase: emits `WorkflowStart`, the steps' events and, if canceled, `WorkflowCanceled` (never
/// `WorkflowFinish`, which the registry emits from the returned outcome). Step errors and panics fail the run;
/// they never escape.
pub async fn execute_phase(phase: Phase) -> PhaseOutcome {
    let Phase { run_id, workflow, input, request_context, phase, snapshot, resume, recovering, sink, clock, cancel } =
        phase;
    let mut state = State {
        steps: snapshot.steps.clone(),
        suspended: snapshot.suspended.clone(),
        control: snapshot.control.clone(),
    };
    if let Some(target) = &resume {
        state.suspended.remove(&target.step_id);
    }
    let exec = Exec {
        run_id,
        run_input: Arc::new(input),
        request_context,
        sink,
        clock,
        cancel,
        resume,
        recovering,
        prev: snapshot,
        state: Mutex::new(state),
        usage: Arc::default(),
    };
    exec.emit(EventKind::WorkflowStart {
        workflow_id: Arc::clone(workflow.id()),
        phase,
        resumed: exec.resume.is_some(),
    });
    tracing::debug!(run_id = %exec.run_id, workflow = %workflow.id(), phase, "phase started");

    let flow = match exec.check_resume_target() {
        Err(error) => Flow::Failed(error),
        Ok(()) => {
            let scope = Scope { workflow: &workflow, prefix: None };
            let replay = exec.resume.is_some() || exec.recovering;
            let flow = exec.run_sequence(scope, (*exec.run_input).clone(), replay).await;
            match flow {
                Flow::Done(result) => match check_schema(workflow.output_schema.as_ref(), &result, "output", None) {
                    Ok(()) => Flow::Done(result),
                    Err(error) => Flow::Failed(error),
                },
                other => other,
            }
        }
    };

    let (status, result, error) = match flow {
        Flow::Done(v) | Flow::Bailed(v) => (RunStatus::Success, Some(v), None),
        Flow::Suspended => (RunStatus::Suspended, None, None),
        // A guardrail's verdict is not a malfunction: the run ends as TRIPWIRE (Mastra's status), not FAILED.
        Flow::Failed(e) if e.name == TRIPWIRE_ERROR => (RunStatus::Tripwire, None, Some(e)),
        Flow::Failed(e) => (RunStatus::Failed, None, Some(e)),
        Flow::Canceled => {
            exec.emit(EventKind::WorkflowCanceled { reason: CANCEL_REASON.to_owned() });
            (RunStatus::Canceled, None, None)
        }
    };
    tracing::debug!(run_id = %exec.run_id, status = status.as_str(), "phase ended");
    let mut usage = exec.prev.usage;
    usage.add(&exec.usage.total());
    let State { mut steps, mut suspended, mut control } = exec.state.into_inner().unwrap_or_else(|e| e.into_inner());
    if status != RunStatus::Suspended {
        // Nothing can be resumed any more: drop what only a resume would need.
        suspended.clear();
        control.clear();
    }
    // The snapshot lives as long as the run.
    steps.shrink_to_fit();
    suspended.shrink_to_fit();
    PhaseOutcome { status, result, error, snapshot: RunSnapshot { steps, suspended, control, usage } }
}

/// The snapshot to continue a run from after a crash: `stored` (the snapshot as of the last phase end) with the
/// steps the interrupted phase completed (`completed`: dotted path → record, from its `StepResult` events) added as
/// successes, so that a replay skips them.
///
/// Steps inside a loop or foreach are left out: a loop's record holds its latest iteration, not whether the loop
/// is over, and foreach items keep no records, so such a node runs again from its start. A completed step that was
/// suspended (the resume target) is no longer suspended.
pub fn recovered_snapshot(
    workflow: &Workflow,
    mut stored: RunSnapshot,
    completed: impl IntoIterator<Item = (String, StepRecord)>,
) -> RunSnapshot {
    let mut repeating = Vec::new();
    repeating_paths(workflow, None, &mut repeating);
    for (path, record) in completed {
        if record.status != StepStatus::Success || repeating.iter().any(|p| p == &path) {
            continue;
        }
        stored.suspended.remove(&path);
        stored.steps.insert(path, record);
    }
    stored
}

/// Dotted paths of the loop and foreach steps of `workflow` and its nested workflows.
fn repeating_paths(workflow: &Workflow, prefix: Option<&str>, out: &mut Vec<String>) {
    let path = |id: &str| prefix.map_or_else(|| id.to_owned(), |p| format!("{p}.{id}"));
    for node in &workflow.nodes {
        match node {
            Node::Loop { step, .. } | Node::Foreach { step, .. } => out.push(path(&step.id)),
            Node::Workflow(child) => repeating_paths(child, Some(&path(child.id())), out),
            _ => {}
        }
    }
}

/// The suspended iterations of foreach step `path`, or `None` when `path` is not a suspended foreach.
pub(crate) fn foreach_suspended_indices(snapshot: &RunSnapshot, path: &str) -> Option<Vec<u32>> {
    if !snapshot.suspended.contains_key(path) {
        return None;
    }
    let items = ForeachState::from_control(snapshot.control.get(path)?)?;
    Some(items.suspended().map(|(i, _, _)| i).collect())
}

/// The suspended iteration of foreach step `path` that registered `label`.
pub(crate) fn foreach_label(snapshot: &RunSnapshot, path: &str, label: &str) -> Option<u32> {
    let items = ForeachState::from_control(snapshot.control.get(path)?)?;
    items.suspended().find(|(_, _, l)| l.as_deref() == Some(label)).map(|(i, _, _)| i)
}

/// Resume labels registered by the suspended iterations of foreach step `path`.
pub(crate) fn foreach_labels(snapshot: &RunSnapshot, path: &str) -> Vec<String> {
    match snapshot.control.get(path).and_then(ForeachState::from_control) {
        Some(items) => items.suspended().filter_map(|(_, _, l)| l).collect(),
        None => Vec::new(),
    }
}

/// How a piece of the graph ended.
#[derive(Debug)]
enum Flow {
    Done(Value),
    /// At least one step is suspended (recorded in the state).
    Suspended,
    Bailed(Value),
    Failed(ErrorInfo),
    Canceled,
}

/// How one invocation of a step's function ended.
enum LeafResult {
    Done(Value),
    Suspended { payload: Value, label: Option<String> },
    Bailed(Value),
    Failed(ErrorInfo),
    Canceled,
}

impl From<LeafResult> for Flow {
    fn from(r: LeafResult) -> Self {
        match r {
            LeafResult::Done(v) => Flow::Done(v),
            LeafResult::Suspended { .. } => Flow::Suspended,
            LeafResult::Bailed(v) => Flow::Bailed(v),
            LeafResult::Failed(e) => Flow::Failed(e),
            LeafResult::Canceled => Flow::Canceled,
        }
    }
}

/// What replay mode decides for a step.
enum Decision {
    /// Succeeded in an earlier phase: reuse the recorded output, emit nothing.
    Skip(Value),
    /// Suspended and not the resume target: stays suspended, emit nothing.
    StaySuspended,
    /// The resume target: run with this resume data.
    Resume(Value),
    /// Run normally.
    Run,
}

/// The mutable part of a phase.
struct State {
    steps: PathMap<StepRecord>,
    suspended: PathMap<SuspendedStep>,
    control: BTreeMap<String, Value>,
}

/// Where in the (possibly nested) graph we are.
#[derive(Clone, Copy)]
struct Scope<'a> {
    workflow: &'a Workflow,
    /// Dotted path of the nesting step, for nested workflows.
    prefix: Option<&'a str>,
}

impl Scope<'_> {
    fn path(&self, id: &Arc<str>) -> Arc<str> {
        match self.prefix {
            None => Arc::clone(id),
            Some(prefix) => format!("{prefix}.{id}").into(),
        }
    }
}

/// One step invocation, as the executor prepares it.
struct Call<'a> {
    step: &'a Step,
    path: Arc<str>,
    input: Value,
    default_retry: &'a RetrySpec,
    /// 1-based loop iteration, 0 outside loops.
    iteration: u32,
    for_each_index: Option<u32>,
    /// Inside a foreach: no step events and no step record (the foreach reports for its iterations).
    hidden: bool,
    resume_data: Option<Value>,
}

type BoxFlow<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

struct Exec {
    run_id: Arc<str>,
    run_input: Arc<Value>,
    request_context: Arc<Map<String, Value>>,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    resume: Option<ResumeTarget>,
    /// Continuing a phase a crash interrupted: nested workflows replay too (their completed steps are skipped).
    recovering: bool,
    /// The previous phase's snapshot, read-only: replay decisions are made against it, not against this phase's
    /// records (a loop's second iteration must not be mistaken for an earlier success).
    prev: RunSnapshot,
    state: Mutex<State>,
    /// Token usage of this phase's agent steps.
    usage: Arc<UsageMeter>,
}

impl Exec {
    fn emit(&self, kind: EventKind) {
        self.sink.emit(Event { source: EventSource::Workflow, kind });
    }

    /// Emits an event and hands its kind back, so that the values it carries (a step's output) go on into the
    /// step record or the flow instead of being cloned for the event (`EventSink::emit_ref`).
    fn emit_keep(&self, kind: EventKind) -> EventKind {
        let event = Event { source: EventSource::Workflow, kind };
        self.sink.emit_ref(&event);
        event.kind
    }

    /// Emits a `StepResult`; returns its status, output and error. An output too large for the sink (what clients
    /// can decode) is not streamed: the step fails instead, with an error that says so.
    #[allow(clippy::too_many_arguments)]
    fn emit_step_result(
        &self,
        path: &Arc<str>,
        step_call_id: String,
        status: StepStatus,
        output: Option<Value>,
        error: Option<ErrorInfo>,
        attempts: u32,
        started_at: SystemTime,
        ended_at: SystemTime,
    ) -> (StepStatus, Option<Value>, Option<ErrorInfo>) {
        let step_id = Arc::clone(path);
        let event = Event {
            source: EventSource::Workflow,
            kind: EventKind::StepResult {
                step_id,
                step_call_id: step_call_id.clone(),
                status,
                output,
                error,
                attempts,
                started_at,
                ended_at,
            },
        };
        let refused = if matches!(&event.kind, EventKind::StepResult { output: Some(_), .. }) {
            self.sink.try_emit_ref(&event).err()
        } else {
            self.sink.emit_ref(&event);
            None
        };
        if let Some(too_large) = refused {
            let error = output_too_large(path, too_large);
            self.emit(EventKind::StepResult {
                step_id: Arc::clone(path),
                step_call_id,
                status: StepStatus::Failed,
                output: None,
                error: Some(error.clone()),
                attempts,
                started_at,
                ended_at,
            });
            return (StepStatus::Failed, None, Some(error));
        }
        match event.kind {
            EventKind::StepResult { output, error, .. } => (status, output, error),
            _ => (status, None, None),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the records themselves are still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, path: &str, record: StepRecord) {
        self.state().steps.insert(path.to_owned(), record);
    }

    /// Refuses a resume whose target the snapshot does not show as suspended (the registry resolves requests with
    /// `Workflow::resolve_resume` first, so this only catches misuse).
    fn check_resume_target(&self) -> Result<(), ErrorInfo> {
        match &self.resume {
            Some(target) if !self.prev.suspended.contains_key(&target.step_id) => Err(ErrorInfo {
                name: "ResumeError".to_owned(),
                message: format!("step '{}' is not suspended", target.step_id),
                details: Some(json!({ "stepId": target.step_id })),
            }),
            _ => Ok(()),
        }
    }

    fn is_target(&self, path: &str) -> Option<&ResumeTarget> {
        self.resume.as_ref().filter(|t| t.step_id == path)
    }

    /// The replay decision for a plain step at `path`.
    fn decide(&self, path: &str, replay: bool) -> Decision {
        if !replay {
            return Decision::Run;
        }
        if let Some(target) = self.is_target(path) {
            return Decision::Resume(target.resume_data.clone());
        }
        if self.prev.suspended.contains_key(path) {
            return Decision::StaySuspended;
        }
        match self.prev.steps.get(path) {
            Some(rec) if rec.status == StepStatus::Success => Decision::Skip(rec.output.clone().unwrap_or(Value::Null)),
            _ => Decision::Run,
        }
    }

    fn run_sequence<'a>(&'a self, scope: Scope<'a>, mut input: Value, replay: bool) -> BoxFlow<'a> {
        Box::pin(async move {
            for node in &scope.workflow.nodes {
                if self.cancel.is_cancelled() {
                    return Flow::Canceled;
                }
                match self.run_node(scope, node, input, replay).await {
                    Flow::Done(output) => input = output,
                    other => return other,
                }
            }
            Flow::Done(input)
        })
    }

    async fn run_node(&self, scope: Scope<'_>, node: &Node, input: Value, replay: bool) -> Flow {
        match node {
            Node::Step(step) => self.run_step(scope, step, input, replay).await,
            Node::Workflow(child) => self.run_nested(scope, child, input, replay).await,
            Node::Parallel(steps) => self.run_parallel(scope, steps.iter(), input, replay).await,
            Node::Branch(branches) => {
                let taken: Vec<&Step> = branches.iter().filter(|(cond, _)| cond(&input)).map(|(_, s)| s).collect();
                self.run_parallel(scope, taken.into_iter(), input, replay).await
            }
            Node::Loop { step, cond, kind } => self.run_loop(scope, step, cond, *kind, input, replay).await,
            Node::Foreach { step, concurrency } => self.run_foreach(scope, step, concurrency, input, replay).await,
            Node::Sleep { id, wait } => self.run_sleep(scope.path(id), wait, input, replay).await,
            Node::Map { id, f } => self.run_map(scope.path(id), f, input, replay),
        }
    }

    async fn run_step(&self, scope: Scope<'_>, step: &Step, input: Value, replay: bool) -> Flow {
        let path = scope.path(&step.id);
        let resume_data = match self.decide(&path, replay) {
            Decision::Skip(output) => return Flow::Done(output),
            Decision::StaySuspended => return Flow::Suspended,
            Decision::Resume(data) => Some(data),
            Decision::Run => None,
        };
        let call = Call {
            step,
            path,
            input,
            default_retry: &scope.workflow.retry,
            iteration: 0,
            for_each_index: None,
            hidden: false,
            resume_data,
        };
        self.run_leaf(call).await.into()
    }

    /// Runs `steps` concurrently on `input`; the output is an object keyed by step id.
    async fn run_parallel<'s>(
        &self,
        scope: Scope<'_>,
        steps: impl Iterator<Item = &'s Step>,
        input: Value,
        replay: bool,
    ) -> Flow {
        let steps: Vec<&Step> = steps.collect();
        let flows = join_all(steps.iter().map(|s| self.run_step(scope, s, input.clone(), replay))).await;
        let mut outputs = Map::new();
        let (mut failed, mut bailed, mut suspended, mut canceled) = (None, None, false, false);
        for (step, flow) in steps.iter().zip(flows) {
            match flow {
                Flow::Done(v) => {
                    outputs.insert(step.id.to_string(), v);
                }
                Flow::Suspended => suspended = true,
                Flow::Bailed(v) => {
                    bailed.get_or_insert(v);
                }
                Flow::Failed(e) => {
                    failed.get_or_insert(e);
                }
                Flow::Canceled => canceled = true,
            }
        }
        // A cancel ends everything; a failure fails the run; a bail ends it successfully even if a sibling waits.
        if canceled {
            Flow::Canceled
        } else if let Some(e) = failed {
            Flow::Failed(e)
        } else if let Some(v) = bailed {
            Flow::Bailed(v)
        } else if suspended {
            Flow::Suspended
        } else {
            Flow::Done(Value::Object(outputs))
        }
    }

    async fn run_loop(
        &self,
        scope: Scope<'_>,
        step: &Step,
        cond: &LoopCond,
        kind: LoopKind,
        input: Value,
        replay: bool,
    ) -> Flow {
        let path = scope.path(&step.id);
        let (mut iteration, mut input, mut resume_data) = (1u32, input, None);
        if replay {
            let suspended_at = self.prev.control.get(&*path).and_then(|c| c.get("iteration")).and_then(Value::as_u64);
            match suspended_at {
                Some(k) => match self.is_target(&path) {
                    // Re-enter the iteration that suspended, with the input it had.
                    Some(target) => {
                        iteration = u32::try_from(k).unwrap_or(u32::MAX);
                        input = self.prev.steps.get(&*path).map(|r| r.input.clone()).unwrap_or(input);
                        resume_data = Some(target.resume_data.clone());
                    }
                    None => return Flow::Suspended,
                },
                None => match self.decide(&path, true) {
                    Decision::Skip(output) => return Flow::Done(output),
                    Decision::StaySuspended => return Flow::Suspended,
                    Decision::Resume(data) => resume_data = Some(data),
                    Decision::Run => {}
                },
            }
        }
        loop {
            let call = Call {
                step,
                path: Arc::clone(&path),
                input,
                default_retry: &scope.workflow.retry,
                iteration,
                for_each_index: None,
                hidden: false,
                resume_data: resume_data.take(),
            };
            match self.run_leaf(call).await {
                LeafResult::Done(output) => {
                    let again = match kind {
                        LoopKind::While => cond(&output, iteration),
                        LoopKind::Until => !cond(&output, iteration),
                    };
                    if !again {
                        self.state().control.remove(&*path);
                        return Flow::Done(output);
                    }
                    if self.cancel.is_cancelled() {
                        return Flow::Canceled;
                    }
                    input = output;
                    iteration = iteration.saturating_add(1);
                }
                LeafResult::Suspended { .. } => {
                    self.state().control.insert(path.to_string(), json!({ "kind": "loop", "iteration": iteration }));
                    return Flow::Suspended;
                }
                other => return other.into(),
            }
        }
    }

    async fn run_foreach(
        &self,
        scope: Scope<'_>,
        step: &Step,
        concurrency: &Concurrency,
        input: Value,
        replay: bool,
    ) -> Flow {
        let path = scope.path(&step.id);
        // Which items to run, and with what resume data.
        let mut resumed: Option<(u32, Value)> = None;
        let mut prior: Option<ForeachState> = None;
        if replay {
            match self.prev.control.get(&*path).and_then(ForeachState::from_control) {
                Some(items) => match self.is_target(&path) {
                    Some(target) => {
                        let index =
                            target.for_each_index.or_else(|| items.suspended().next().map(|(i, _, _)| i)).unwrap_or(0);
                        resumed = Some((index, target.resume_data.clone()));
                        prior = Some(items);
                    }
                    None => return Flow::Suspended,
                },
                None => match self.decide(&path, true) {
                    Decision::Skip(output) => return Flow::Done(output),
                    Decision::StaySuspended => return Flow::Suspended,
                    Decision::Resume(_) | Decision::Run => {}
                },
            }
        }

        let (started_at, call_id) = self.start_step(&path, &input, resumed.as_ref().map(|(_, d)| d.clone()), 0);
        let Some(items) = input.as_array() else {
            let error = ErrorInfo {
                name: "StepError".to_owned(),
                message: format!("foreach step '{path}' needs an array as input, got {}", json_type(&input)),
                details: Some(json!({ "stepId": &*path })),
            };
            return self.finish_foreach_failed(&path, call_id, input.clone(), started_at, error);
        };

        let total = items.len();
        let mut states = match prior {
            Some(p) if p.items.len() == total => p,
            _ => ForeachState { items: vec![ItemState::Pending; total] },
        };
        // Fresh runs take every item; a resume takes the resumed item and anything never started.
        let mut queue: Vec<usize> = Vec::new();
        if let Some((i, _)) = &resumed {
            let i = *i as usize;
            if i < total {
                queue.push(i);
            }
        }
        let first = queue.first().copied();
        queue.extend(
            states
                .items
                .iter()
                .enumerate()
                .filter(|(i, s)| matches!(s, ItemState::Pending) && Some(*i) != first)
                .map(|(i, _)| i),
        );
        let limit = concurrency.resolve(&self.run_input);
        let mut completed = states.items.iter().filter(|s| matches!(s, ItemState::Done(_))).count() as u32;

        let mut running = FuturesUnordered::new();
        let mut next = 0;
        let (mut failure, mut bail, mut canceled) = (None::<ErrorInfo>, None::<Value>, false);
        loop {
            while failure.is_none() && bail.is_none() && !canceled && running.len() < limit && next < queue.len() {
                if self.cancel.is_cancelled() {
                    canceled = true;
                    break;
                }
                let index = queue[next];
                next += 1;
                let resume_data = match &resumed {
                    Some((i, data)) if *i as usize == index => Some(data.clone()),
                    _ => None,
                };
                let call = Call {
                    step,
                    path: Arc::clone(&path),
                    input: items[index].clone(),
                    default_retry: &scope.workflow.retry,
                    iteration: 0,
                    for_each_index: Some(index as u32),
                    hidden: true,
                    resume_data,
                };
                running.push(self.run_leaf(call).map(move |r| (index, r)));
            }
            let Some((index, result)) = running.next().await else { break };
            let (status, output) = match result {
                LeafResult::Done(v) => {
                    completed += 1;
                    (StepStatus::Success, Some(v))
                }
                LeafResult::Suspended { payload, label } => {
                    states.items[index] = ItemState::Suspended { payload, label };
                    (StepStatus::Suspended, None)
                }
                LeafResult::Failed(e) => {
                    completed += 1;
                    failure.get_or_insert(e);
                    (StepStatus::Failed, None)
                }
                LeafResult::Bailed(v) => {
                    bail.get_or_insert(v);
                    (StepStatus::Bailed, None)
                }
                LeafResult::Canceled => {
                    canceled = true;
                    continue;
                }
            };
            let progress = self.emit_keep(EventKind::StepProgress {
                step_id: Arc::clone(&path),
                completed_count: completed,
                total_count: total as u32,
                current_index: index as u32,
                iteration_status: status,
                iteration_output: output,
            });
            // Only a finished item has an output: it goes on into the foreach's state.
            if let EventKind::StepProgress { iteration_output: Some(v), .. } = progress {
                states.items[index] = ItemState::Done(v);
            }
        }
        canceled |= self.cancel.is_cancelled() && states.items.iter().any(|s| matches!(s, ItemState::Pending));
        drop(running);
        let input = input.clone();

        if canceled {
            self.finish_plain(&path, call_id, input, started_at, StepStatus::Canceled, None, None);
            return Flow::Canceled;
        }
        if let Some(error) = failure {
            return self.finish_foreach_failed(&path, call_id, input, started_at, error);
        }
        if let Some(value) = bail {
            if let Some(error) =
                self.finish_plain(&path, call_id, input, started_at, StepStatus::Bailed, Some(value.clone()), None)
            {
                return Flow::Failed(error);
            }
            return Flow::Bailed(value);
        }
        if states.suspended().next().is_some() {
            let now = self.clock.now();
            let resume_schema = step.resume_schema.clone();
            let mut first: Option<SuspendedStep> = None;
            for (index, payload, label) in states.suspended() {
                self.emit(EventKind::StepSuspended {
                    step_id: Arc::clone(&path),
                    step_call_id: call_id.clone(),
                    suspend_payload: payload.clone(),
                    resume_schema: resume_schema.as_ref().map(|s| s.raw().clone()),
                    resume_label: label.clone(),
                    for_each_index: Some(index),
                });
                first.get_or_insert(SuspendedStep {
                    path: split_path(&path),
                    suspend_payload: payload,
                    resume_schema: resume_schema.clone(),
                    resume_label: label,
                    for_each_index: Some(index),
                });
            }
            let mut st = self.state();
            if let Some(first) = first {
                st.steps.insert(
                    path.to_string(),
                    StepRecord {
                        status: StepStatus::Suspended,
                        input,
                        output: None,
                        error: None,
                        suspend_payload: Some(first.suspend_payload.clone()),
                        resume_data: None,
                        attempts: 1,
                        started_at,
                        ended_at: None,
                        suspended_at: Some(now),
                        resumed_at: None,
                    },
                );
                // The snapshot keeps one entry per path; the full list of suspended items is in `control`.
                st.suspended.insert(path.to_string(), first);
            }
            st.control.insert(path.to_string(), states.to_control());
            return Flow::Suspended;
        }
        let outputs: Vec<Value> = states
            .items
            .into_iter()
            .map(|s| match s {
                ItemState::Done(v) => v,
                _ => Value::Null,
            })
            .collect();
        let output = Value::Array(outputs);
        self.state().control.remove(&*path);
        self.done_unless_refused(&path, call_id, input, started_at, output)
    }

    fn finish_foreach_failed(
        &self,
        path: &Arc<str>,
        call_id: String,
        input: Value,
        started_at: SystemTime,
        error: ErrorInfo,
    ) -> Flow {
        self.finish_plain(path, call_id, input, started_at, StepStatus::Failed, None, Some(error.clone()));
        Flow::Failed(error)
    }

    /// Finishes a step the executor runs itself with its output: done, or failed if the output was too large to
    /// stream.
    fn done_unless_refused(
        &self,
        path: &Arc<str>,
        call_id: String,
        input: Value,
        started_at: SystemTime,
        output: Value,
    ) -> Flow {
        match self.finish_plain(path, call_id, input, started_at, StepStatus::Success, Some(output.clone()), None) {
            Some(error) => Flow::Failed(error),
            None => Flow::Done(output),
        }
    }

    /// Emits the `StepResult` of a step the executor runs itself (foreach, map, sleep, nested workflow) and
    /// records it.
    #[allow(clippy::too_many_arguments)]
    fn finish_plain(
        &self,
        path: &Arc<str>,
        call_id: String,
        input: Value,
        started_at: SystemTime,
        status: StepStatus,
        output: Option<Value>,
        error: Option<ErrorInfo>,
    ) -> Option<ErrorInfo> {
        let ended_at = self.clock.now();
        let (status, output, error) =
            self.emit_step_result(path, call_id, status, output, error, 1, started_at, ended_at);
        let refused = if status == StepStatus::Failed { error.clone() } else { None };
        self.record(
            path,
            StepRecord {
                status,
                input,
                output,
                error,
                suspend_payload: None,
                resume_data: None,
                attempts: 1,
                started_at,
                ended_at: Some(ended_at),
                suspended_at: None,
                resumed_at: None,
            },
        );
        refused
    }

    async fn run_nested(&self, scope: Scope<'_>, child: &Workflow, input: Value, replay: bool) -> Flow {
        let path = scope.path(&child.id);
        let inner_prefix = format!("{path}.");
        let mut child_replay = self.recovering;
        let mut resume_data = None;
        if replay {
            if let Some(rec) = self.prev.steps.get(&*path).filter(|r| r.status == StepStatus::Success) {
                return Flow::Done(rec.output.clone().unwrap_or(Value::Null));
            }
            let target_inside = self.resume.as_ref().filter(|t| t.step_id.starts_with(&inner_prefix));
            let suspended_inside = self.prev.suspended.keys().any(|k| k.starts_with(&inner_prefix));
            match target_inside {
                Some(target) => {
                    child_replay = true;
                    resume_data = Some(target.resume_data.clone());
                }
                None if suspended_inside => return Flow::Suspended,
                None => {}
            }
        }
        let (started_at, call_id) = self.start_step(&path, &input, resume_data, 0);
        if let Err(error) = check_schema(child.input_schema.as_ref(), &input, "input", Some(&path)) {
            self.finish_plain(&path, call_id, input, started_at, StepStatus::Failed, None, Some(error.clone()));
            return Flow::Failed(error);
        }
        let inner = Scope { workflow: child, prefix: Some(&path) };
        let flow = self.run_sequence(inner, input.clone(), child_replay).await;
        match flow {
            // A bail ends the nested workflow (successfully), not its parent.
            Flow::Done(output) | Flow::Bailed(output) => {
                if let Err(error) = check_schema(child.output_schema.as_ref(), &output, "output", Some(&path)) {
                    self.finish_plain(&path, call_id, input, started_at, StepStatus::Failed, None, Some(error.clone()));
                    return Flow::Failed(error);
                }
                self.done_unless_refused(&path, call_id, input, started_at, output)
            }
            Flow::Failed(error) => {
                self.finish_plain(&path, call_id, input, started_at, StepStatus::Failed, None, Some(error.clone()));
                Flow::Failed(error)
            }
            Flow::Canceled => {
                self.finish_plain(&path, call_id, input, started_at, StepStatus::Canceled, None, None);
                Flow::Canceled
            }
            Flow::Suspended => {
                // The nesting step suspends too (its start needs an end); it reports the first inner suspension.
                let now = self.clock.now();
                let first = {
                    let st = self.state();
                    st.suspended.iter().find(|(k, _)| k.starts_with(&inner_prefix)).map(|(_, s)| s.clone())
                };
                if let Some(first) = &first {
                    self.emit(EventKind::StepSuspended {
                        step_id: Arc::clone(&path),
                        step_call_id: call_id,
                        suspend_payload: first.suspend_payload.clone(),
                        resume_schema: first.resume_schema.as_ref().map(|s| s.raw().clone()),
                        resume_label: first.resume_label.clone(),
                        for_each_index: first.for_each_index,
                    });
                }
                self.record(
                    &path,
                    StepRecord {
                        status: StepStatus::Suspended,
                        input,
                        output: None,
                        error: None,
                        suspend_payload: first.map(|f| f.suspend_payload),
                        resume_data: None,
                        attempts: 1,
                        started_at,
                        ended_at: None,
                        suspended_at: Some(now),
                        resumed_at: None,
                    },
                );
                Flow::Suspended
            }
        }
    }

    async fn run_sleep(&self, path: Arc<str>, wait: &Wait, input: Value, replay: bool) -> Flow {
        match self.decide(&path, replay) {
            Decision::Skip(output) => return Flow::Done(output),
            Decision::StaySuspended => return Flow::Suspended,
            Decision::Resume(_) | Decision::Run => {}
        }
        let started_at = self.clock.now();
        let wake_at = match wait {
            Wait::For(d) => later(started_at, *d),
            Wait::ForFn(f) => later(started_at, f(&input)),
            Wait::Until(f) => f(&input),
        };
        let call_id = new_call_id();
        self.emit(EventKind::StepWaiting {
            step_id: Arc::clone(&path),
            wake_at: Some(wake_at),
            reason: WaitReason::Sleep,
            task_type: None,
        });
        let woke = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            _ = self.clock.sleep_until(wake_at) => true,
        };
        if woke {
            self.done_unless_refused(&path, call_id, input.clone(), started_at, input)
        } else {
            self.finish_plain(&path, call_id, input, started_at, StepStatus::Canceled, None, None);
            Flow::Canceled
        }
    }

    /// Stamps a step's start, gives the invocation a fresh call id and emits `step_start`.
    fn start_step(
        &self,
        path: &Arc<str>,
        input: &Value,
        resume_data: Option<Value>,
        iteration_count: u32,
    ) -> (SystemTime, String) {
        let started_at = self.clock.now();
        let call_id = new_call_id();
        self.emit(EventKind::StepStart {
            step_id: Arc::clone(path),
            step_call_id: call_id.clone(),
            input: input.clone(),
            resume_data,
            iteration_count,
            attempt: 1,
        });
        (started_at, call_id)
    }

    fn run_map(&self, path: Arc<str>, f: &MapFn, input: Value, replay: bool) -> Flow {
        match self.decide(&path, replay) {
            Decision::Skip(output) => return Flow::Done(output),
            Decision::StaySuspended => return Flow::Suspended,
            Decision::Resume(_) | Decision::Run => {}
        }
        let (started_at, call_id) = self.start_step(&path, &input, None, 0);
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(&input, &self.run_input))) {
            Ok(output) => self.done_unless_refused(&path, call_id, input, started_at, output),
            Err(panic) => {
                let error = step_error_info(&path, &StepError::new(panic_message(&*panic)), 1, None);
                self.finish_plain(&path, call_id, input, started_at, StepStatus::Failed, None, Some(error.clone()));
                Flow::Failed(error)
            }
        }
    }

    /// Runs one invocation of a step function: start event, schema checks, attempts with retries raced against
    /// cancellation, then the result or suspended event and the step record.
    async fn run_leaf(&self, call: Call<'_>) -> LeafResult {
        let Call { step, path, input, default_retry, iteration, for_each_index, hidden, resume_data } = call;
        // Foreach iterations are hidden: no step_start, no call id (Mastra emits none for them either).
        let (started_at, call_id) = if hidden {
            (self.clock.now(), String::new())
        } else {
            self.start_step(&path, &input, resume_data.clone(), iteration)
        };
        let resumed_at = resume_data.as_ref().map(|_| started_at);
        let resume_record = resume_data.clone();
        let finish =
            |status: StepStatus, output: Option<Value>, error: Option<ErrorInfo>, attempts: u32, input: Value| {
                let ended_at = self.clock.now();
                let mut refused = None;
                if !hidden {
                    let call_id = call_id.clone();
                    let (status, output, error) =
                        self.emit_step_result(&path, call_id, status, output, error, attempts, started_at, ended_at);
                    if status == StepStatus::Failed {
                        refused.clone_from(&error);
                    }
                    let suspend_payload = self.prev.steps.get(&*path).and_then(|r| r.suspend_payload.clone());
                    self.record(
                        &path,
                        StepRecord {
                            status,
                            input,
                            output,
                            error,
                            suspend_payload: suspend_payload.filter(|_| resumed_at.is_some()),
                            resume_data: resume_record.clone(),
                            attempts,
                            started_at,
                            ended_at: Some(ended_at),
                            suspended_at: None,
                            resumed_at,
                        },
                    );
                }
                refused
            };

        if let Err(error) = check_schema(step.input_schema.as_ref(), &input, "input", Some(&path)) {
            let error = with_index(error, for_each_index);
            finish(StepStatus::Failed, None, Some(error.clone()), 0, input);
            return LeafResult::Failed(error);
        }

        let (max_attempts, delay) = step.retry.as_ref().unwrap_or(default_retry).resolve(&self.run_input);
        // A resumed step gets back the state it saved when it suspended; it is consumed here, and saved anew if
        // the step suspends again.
        let saved_state = match (&resume_data, hidden) {
            (Some(_), false) => self.state().control.remove(&saved_state_key(&path)),
            _ => None,
        };
        let shared = Arc::new(ContextShared {
            run_id: Arc::clone(&self.run_id),
            step_id: Arc::clone(&path),
            step_call_id: call_id.clone(),
            input,
            run_input: Arc::clone(&self.run_input),
            resume_data,
            saved_state,
            state_to_save: Mutex::default(),
            request_context: Arc::clone(&self.request_context),
            for_each_index,
            iteration,
            writer: Writer::new(Arc::clone(&self.sink), Arc::clone(&path), Arc::clone(&self.usage)),
            cancel: self.cancel.clone(),
            clock: Arc::clone(&self.clock),
        });
        let mut attempt = 0u32;
        let result: Option<Result<StepOutcome, StepError>> = loop {
            let ctx = StepContext { shared: Arc::clone(&shared), attempt };
            let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (step.func)(ctx))) {
                Ok(fut) => {
                    let r = tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => break None,
                        r = AssertUnwindSafe(fut).catch_unwind() => r,
                    };
                    // A step that noticed the cancel and returned early has not really finished: its result
                    // would otherwise race the cancel and could report success for a canceled run.
                    if self.cancel.is_cancelled() {
                        break None;
                    }
                    r
                }
                Err(panic) => Err(panic),
            };
            let outcome = outcome.unwrap_or_else(|panic| Err(StepError::new(panic_message(&*panic)).non_retryable()));
            match outcome {
                Err(e) if e.is_retryable() && attempt + 1 < max_attempts => {
                    attempt += 1;
                    if !delay.is_zero() {
                        tokio::select! {
                            biased;
                            _ = self.cancel.cancelled() => break None,
                            _ = self.clock.sleep(delay) => {}
                        }
                    }
                }
                other => break Some(other),
            }
        };
        let attempts = attempt + 1;
        let input = shared.input.clone();
        let state_to_save = shared.state_to_save.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A write refused for its size fails the step, whatever the step made of the refusal.
        let result = match (shared.writer.refused(), result) {
            (Some(refused), Some(_)) => Some(Err(refused)),
            (_, result) => result,
        };
        drop(shared);

        match result {
            None => {
                finish(StepStatus::Canceled, None, None, attempts, input);
                LeafResult::Canceled
            }
            Some(Err(e)) => {
                let error = step_error_info(&path, &e, attempts, for_each_index);
                finish(StepStatus::Failed, None, Some(error.clone()), attempts, input);
                LeafResult::Failed(error)
            }
            Some(Ok(StepOutcome::Done(output))) => {
                match check_schema(step.output_schema.as_ref(), &output, "output", Some(&path)) {
                    Ok(()) => {
                        // A foreach iteration has no event or record of its own: no copy of its output for them.
                        let recorded = if hidden { None } else { Some(output.clone()) };
                        match finish(StepStatus::Success, recorded, None, attempts, input) {
                            // The output was too large to stream: the step failed instead.
                            Some(error) => LeafResult::Failed(error),
                            None => LeafResult::Done(output),
                        }
                    }
                    Err(error) => {
                        let error = with_index(error, for_each_index);
                        finish(StepStatus::Failed, None, Some(error.clone()), attempts, input);
                        LeafResult::Failed(error)
                    }
                }
            }
            Some(Ok(StepOutcome::Bail(value))) => {
                match finish(StepStatus::Bailed, Some(value.clone()), None, attempts, input) {
                    Some(error) => LeafResult::Failed(error),
                    None => LeafResult::Bailed(value),
                }
            }
            Some(Ok(StepOutcome::Suspend { payload, resume_label, resume_schema })) => {
                if let Err(error) = check_schema(step.suspend_schema.as_ref(), &payload, "suspend_payload", Some(&path))
                {
                    let error = with_index(error, for_each_index);
                    finish(StepStatus::Failed, None, Some(error.clone()), attempts, input);
                    return LeafResult::Failed(error);
                }
                if !hidden {
                    // The schema this suspension names (StepOutcome::with_resume_schema), else the step's own.
                    let resume_schema = resume_schema.or_else(|| step.resume_schema.clone());
                    let now = self.clock.now();
                    let suspended = Event {
                        source: EventSource::Workflow,
                        kind: EventKind::StepSuspended {
                            step_id: Arc::clone(&path),
                            step_call_id: call_id.clone(),
                            suspend_payload: payload.clone(),
                            resume_schema: resume_schema.as_ref().map(|s| s.raw().clone()),
                            resume_label: resume_label.clone(),
                            for_each_index,
                        },
                    };
                    if let Err(too_large) = self.sink.try_emit_ref(&suspended) {
                        // Like an output too large to stream: the step fails instead of suspending.
                        let mut error = output_too_large(&path, too_large);
                        error.message = error.message.replacen("its output", "its suspend payload", 1);
                        finish(StepStatus::Failed, None, Some(error.clone()), attempts, input);
                        return LeafResult::Failed(error);
                    }
                    let mut st = self.state();
                    if let Some(state) = state_to_save {
                        st.control.insert(saved_state_key(&path), state);
                    }
                    st.steps.insert(
                        path.to_string(),
                        StepRecord {
                            status: StepStatus::Suspended,
                            input,
                            output: None,
                            error: None,
                            suspend_payload: Some(payload.clone()),
                            resume_data: resume_record,
                            attempts,
                            started_at,
                            ended_at: None,
                            suspended_at: Some(now),
                            resumed_at,
                        },
                    );
                    st.suspended.insert(
                        path.to_string(),
                        SuspendedStep {
                            path: split_path(&path),
                            suspend_payload: payload.clone(),
                            resume_schema,
                            resume_label: resume_label.clone(),
                            for_each_index,
                        },
                    );
                }
                LeafResult::Suspended { payload, label: resume_label }
            }
        }
    }
}

/// Per-item state of a foreach that suspended, kept in `snapshot.control` so that a resume re-runs only what is
/// needed (finished items keep their outputs).
#[derive(Clone, Debug, PartialEq)]
enum ItemState {
    Pending,
    Done(Value),
    Suspended { payload: Value, label: Option<String> },
}

struct ForeachState {
    items: Vec<ItemState>,
}

impl ForeachState {
    fn to_control(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|s| match s {
                ItemState::Pending => json!({ "status": "pending" }),
                ItemState::Done(v) => json!({ "status": "success", "output": v }),
                ItemState::Suspended { payload, label } => {
                    json!({ "status": "suspended", "payload": payload, "label": label })
                }
            })
            .collect();
        json!({ "kind": "foreach", "items": items })
    }

    fn from_control(control: &Value) -> Option<Self> {
        if control.get("kind")?.as_str()? != "foreach" {
            return None;
        }
        let items = control
            .get("items")?
            .as_array()?
            .iter()
            .map(|item| match item.get("status").and_then(Value::as_str) {
                Some("success") => ItemState::Done(item.get("output").cloned().unwrap_or(Value::Null)),
                Some("suspended") => ItemState::Suspended {
                    payload: item.get("payload").cloned().unwrap_or(Value::Null),
                    label: item.get("label").and_then(Value::as_str).map(str::to_owned),
                },
                _ => ItemState::Pending,
            })
            .collect();
        Some(Self { items })
    }

    /// `(index, payload, label)` of each suspended item, in index order.
    fn suspended(&self) -> impl Iterator<Item = (u32, Value, Option<String>)> + '_ {
        self.items.iter().enumerate().filter_map(|(i, s)| match s {
            ItemState::Suspended { payload, label } => Some((i as u32, payload.clone(), label.clone())),
            _ => None,
        })
    }
}

/// `t + d`, without the panic on overflow (durations can come from run input).
fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn new_call_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A schema check at a step boundary, as the error that fails the step (`path` is the step's path, `None` for the
/// workflow's own output).
fn check_schema(schema: Option<&Schema>, value: &Value, root: &str, path: Option<&str>) -> Result<(), ErrorInfo> {
    let Some(schema) = schema else { return Ok(()) };
    schema.validate(value, root).map_err(|v| {
        let mut details = Map::new();
        if let Some(path) = path {
            details.insert("stepId".to_owned(), Value::String(path.to_owned()));
        }
        details.insert("path".to_owned(), Value::String(v.path.clone()));
        let message = match path {
            Some(step) => format!("step '{step}': {v}"),
            None => format!("workflow {v}"),
        };
        ErrorInfo { name: "SchemaError".to_owned(), message, details: Some(Value::Object(details)) }
    })
}

fn with_index(mut error: ErrorInfo, for_each_index: Option<u32>) -> ErrorInfo {
    if let (Some(i), Some(Value::Object(details))) = (for_each_index, error.details.as_mut()) {
        details.insert("forEachIndex".to_owned(), json!(i));
    }
    error
}

/// The run error for a failed step: the step's message, with where it happened in `details`.
fn step_error_info(path: &str, error: &StepError, attempts: u32, for_each_index: Option<u32>) -> ErrorInfo {
    let mut details = Map::new();
    details.insert("stepId".to_owned(), Value::String(path.to_owned()));
    details.insert("attempts".to_owned(), json!(attempts));
    if let Some(i) = for_each_index {
        details.insert("forEachIndex".to_owned(), json!(i));
    }
    if let Some(d) = error.details() {
        details.insert("details".to_owned(), d.clone());
    }
    ErrorInfo {
        name: if error.is_tripwire() { TRIPWIRE_ERROR } else { "StepError" }.to_owned(),
        message: error.message().to_owned(),
        details: Some(Value::Object(details)),
    }
}

/// The error of a step whose output is too large to stream (`ErrorInfo.name` `StepOutputTooLarge`).
fn output_too_large(path: &str, too_large: EventTooLarge) -> ErrorInfo {
    ErrorInfo {
        name: "StepOutputTooLarge".to_owned(),
        message: format!(
            "step '{path}': its output is {too_large} and was not streamed; return less (e.g. a reference to where \
             the data is), or raise the server's --max-event-bytes (clients must accept messages that large too)"
        ),
        details: Some(json!({ "stepId": path, "eventBytes": too_large.size, "limitBytes": too_large.limit })),
    }
}

/// `ErrorInfo.name` of a step stopped by a guardrail ([`StepError::tripwire`]); such a failure ends the run as
/// TRIPWIRE.
pub const TRIPWIRE_ERROR: &str = "TripwireError";

/// Where a suspended step's private state ([`StepContext::save_state`]) is kept in `snapshot.control`.
fn saved_state_key(path: &str) -> String {
    format!("state:{path}")
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    format!("step panicked: {}", panic_text(panic))
}

/// What a caught panic said (its `&str` or `String` payload).
pub fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests;

/// Helpers for the engine's and the built-in workflows' unit tests: a sink that collects events, one-call runs and
/// resumes, and a compact text form of events that makes expected sequences readable.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};

    use serde_json::{Map, Value};
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::{Phase, PhaseOutcome, execute_phase};
    use crate::{
        clock::SystemClock,
        engine::{
            Event, EventKind, EventSink, ResumeError, ResumeRequest, RunSnapshot, Workflow, snapshot::ResumeTarget,
        },
    };

    /// Collects events; tests can wait for a condition on them without sleeping.
    #[derive(Default)]
    pub(crate) struct Collect {
        events: Mutex<Vec<Event>>,
        changed: Notify,
    }

    impl EventSink for Collect {
        fn emit(&self, event: Event) {
            self.events.lock().unwrap().push(event);
            self.changed.notify_waiters();
        }
    }

    impl Collect {
        pub(crate) fn events(&self) -> Vec<Event> {
            self.events.lock().unwrap().clone()
        }

        /// Completes once `pred` holds for the events collected so far.
        pub(crate) async fn wait_for(&self, pred: impl Fn(&[Event]) -> bool) {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if pred(&self.events.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        }
    }

    pub(crate) fn phase(
        workflow: &Arc<Workflow>,
        input: Value,
        number: u32,
        snapshot: RunSnapshot,
        resume: Option<ResumeTarget>,
    ) -> (Phase, Arc<Collect>, CancellationToken) {
        let sink = Arc::new(Collect::default());
        let cancel = CancellationToken::new();
        let phase = Phase {
            run_id: Arc::from("run-1"),
            workflow: Arc::clone(workflow),
            input,
            request_context: Arc::new(Map::new()),
            phase: number,
            snapshot,
            resume,
            recovering: false,
            sink: sink.clone(),
            clock: Arc::new(SystemClock),
            cancel: cancel.clone(),
        };
        (phase, sink, cancel)
    }

    /// Runs phase 1 to its end.
    pub(crate) async fn run(workflow: &Arc<Workflow>, input: Value) -> (PhaseOutcome, Vec<Event>) {
        let (phase, sink, _cancel) = phase(workflow, input, 1, RunSnapshot::default(), None);
        let outcome = execute_phase(phase).await;
        (outcome, sink.events())
    }

    /// Resolves `req` against the previous outcome's snapshot and runs the resume phase `number`.
    pub(crate) async fn resume(
        workflow: &Arc<Workflow>,
        input: Value,
        previous: &PhaseOutcome,
        req: ResumeRequest,
        number: u32,
    ) -> Result<(PhaseOutcome, Vec<Event>), ResumeError> {
        let target = workflow.resolve_resume(&previous.snapshot, req)?;
        let (phase, sink, _cancel) = phase(workflow, input, number, previous.snapshot.clone(), Some(target));
        let outcome = execute_phase(phase).await;
        Ok((outcome, sink.events()))
    }

    /// A resume request naming a step by path and carrying `data`.
    pub(crate) fn req(step: &str, data: Value) -> ResumeRequest {
        ResumeRequest {
            step: if step.is_empty() { vec![] } else { vec![step.to_owned()] },
            resume_data: data,
            ..ResumeRequest::default()
        }
    }

    /// One line per event, e.g. `result step-1 Success`.
    pub(crate) fn describe(event: &Event) -> String {
        match &event.kind {
            EventKind::WorkflowStart { workflow_id, phase, resumed } => {
                format!("start {workflow_id} {phase}{}", if *resumed { " resumed" } else { "" })
            }
            EventKind::StepStart { step_id, resume_data, iteration_count, .. } => {
                let mut s = format!("step-start {step_id}");
                if *iteration_count > 0 {
                    s.push_str(&format!(" #{iteration_count}"));
                }
                if resume_data.is_some() {
                    s.push_str(" resumed");
                }
                s
            }
            EventKind::StepOutput { step_id, output } => format!("output {step_id} {output}"),
            EventKind::StepProgress {
                step_id, completed_count, total_count, current_index, iteration_status, ..
            } => {
                format!("progress {step_id} {completed_count}/{total_count} @{current_index} {iteration_status:?}")
            }
            EventKind::StepSuspended { step_id, for_each_index, .. } => match for_each_index {
                Some(i) => format!("suspended {step_id} @{i}"),
                None => format!("suspended {step_id}"),
            },
            EventKind::StepWaiting { step_id, .. } => format!("waiting {step_id}"),
            EventKind::StepResult { step_id, status, .. } => format!("result {step_id} {status:?}"),
            EventKind::WorkflowPaused => "paused".to_owned(),
            EventKind::WorkflowCanceled { reason } => format!("canceled {reason}"),
            EventKind::WorkflowFinish { status, .. } => format!("finish {}", status.as_str()),
            EventKind::Custom { step_id, kind, data, .. } => format!("custom {step_id} {kind} {data}"),
            EventKind::Agent { chunk, .. } => format!("agent {chunk:?}"),
            EventKind::Network { event, .. } => format!("network {event:?}"),
            EventKind::RunRecovered { interrupted_phase, .. } => format!("recovered {interrupted_phase}"),
        }
    }

    pub(crate) fn describe_all(events: &[Event]) -> Vec<String> {
        events.iter().map(describe).collect()
    }
}
