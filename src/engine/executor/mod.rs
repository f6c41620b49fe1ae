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
//!
//! This file holds the phase itself, the graph walk and what every kind of step shares (events, records, replay
//! decisions); each kind of node runs in its own file: `leaf.rs` (a step function's invocation), `foreach.rs`,
//! `control.rs` (parallel, branch, loops, sleep, map, nested workflows).

mod control;
mod foreach;
mod leaf;

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use self::leaf::{Call, LeafResult};
use super::{
    event::{ErrorInfo, Event, EventKind, EventSink, EventSource, EventTooLarge, RunStatus, StepStatus},
    schema::Schema,
    snapshot::{PathMap, ResumeTarget, RunSnapshot, StepRecord, SuspendedStep},
    step::{Step, StepError, UsageMeter},
    workflow::{Node, Workflow},
};
use crate::clock::Clock;

/// The reason reported in `WorkflowCanceled`: the cancel token is only ever fired by the CancelRun RPC.
pub const CANCEL_REASON: &str = "canceled by CancelRun";

/// Everything one phase needs.
pub struct Phase {
    pub run_id: Arc<str>,
    /// Who the run belongs to, opaque to the engine: steps that hand work elsewhere (a worker's task) keep it with
    /// the work ([`crate::engine::StepContext::tenant`]).
    pub tenant: Arc<str>,
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
    let Phase {
        run_id,
        tenant,
        workflow,
        input,
        request_context,
        phase,
        snapshot,
        resume,
        recovering,
        sink,
        clock,
        cancel,
    } = phase;
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
        tenant,
        workflow_id: Arc::clone(workflow.id()),
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

type BoxFlow<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

struct Exec {
    run_id: Arc<str>,
    tenant: Arc<str>,
    /// The run's (top-level) workflow.
    workflow_id: Arc<str>,
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
}

fn new_call_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
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

#[cfg(test)]
pub(crate) mod test_support;
