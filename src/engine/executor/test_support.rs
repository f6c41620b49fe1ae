//! Helpers for the engine's and the built-in workflows' unit tests: a sink that collects events, one-call runs and
//! resumes, and a compact text form of events that makes expected sequences readable.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Phase, PhaseOutcome, execute_phase};
use crate::{
    clock::SystemClock,
    engine::{
        Event, EventKind, EventSink, ResumeError, ResumeRequest, RunSnapshot, WaitReason, Workflow,
        snapshot::ResumeTarget,
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
        tenant: Arc::default(),
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
        EventKind::StepStart { step_id, resume_data, iteration_count, attempt, .. } => {
            let mut s = format!("step-start {step_id}");
            if *iteration_count > 0 {
                s.push_str(&format!(" #{iteration_count}"));
            }
            if *attempt > 1 {
                s.push_str(&format!(" attempt {attempt}"));
            }
            if resume_data.is_some() {
                s.push_str(" resumed");
            }
            s
        }
        EventKind::StepOutput { step_id, output } => format!("output {step_id} {output}"),
        EventKind::StepProgress { step_id, completed_count, total_count, current_index, iteration_status, .. } => {
            format!("progress {step_id} {completed_count}/{total_count} @{current_index} {iteration_status:?}")
        }
        EventKind::StepSuspended { step_id, for_each_index, .. } => match for_each_index {
            Some(i) => format!("suspended {step_id} @{i}"),
            None => format!("suspended {step_id}"),
        },
        EventKind::StepWaiting { step_id, reason: WaitReason::RetryBackoff, attempt, .. } => {
            format!("waiting {step_id} retry {attempt}")
        }
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
