//! A delegated workflow: a nested run (a real engine phase with the network's clock and cancel token) whose events
//! are wrapped in `WorkflowExecutionEvent`s, and the network's suspension when that run suspends.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    engine::{
        Delegation, Event, EventKind, EventSink, NetworkEvent, Phase, PrimitiveType, ResumeTarget, RunSnapshot,
        RunStatus, Usage, Workflow, execute_phase,
    },
    network::{
        error_result,
        run::{AbortGuard, Emit, NetworkRun, Stop, Suspension, Waiting},
    },
};

/// A nested run of a delegated workflow: its first phase, or a resume.
pub(super) struct NestedRun {
    pub(super) workflow_run_id: Arc<str>,
    pub(super) input: Value,
    pub(super) phase: u32,
    pub(super) snapshot: RunSnapshot,
    pub(super) resume: Option<ResumeTarget>,
}

impl NetworkRun<'_> {
    pub(super) async fn run_workflow(
        &mut self,
        workflow: &Arc<Workflow>,
        delegation: Delegation,
    ) -> Result<Delegation, Stop> {
        let workflow_id = Arc::clone(workflow.id());
        let guard = AbortGuard::new(&self.emit, PrimitiveType::Workflow, &workflow_id);
        let input = self
            .input_for("workflow", &workflow_id, workflow.input_schema(), &delegation.prompt)
            .await?
            .and_then(|input| match workflow.validate_input(&input) {
                Ok(()) => Ok(input),
                Err(violation) => Err(format!("its input does not fit its schema: {violation}")),
            });
        let workflow_run_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        self.emit(NetworkEvent::WorkflowExecutionStart {
            workflow_id: Arc::clone(&workflow_id),
            workflow_run_id: Arc::clone(&workflow_run_id),
            delegation: Box::new(delegation.clone()),
        });
        // `run_nested` guards the nested run itself; nothing awaits in between.
        guard.disarm();
        match input {
            Err(problem) => Ok(self.end_workflow(
                workflow_id,
                workflow_run_id,
                delegation,
                RunStatus::Failed,
                error_result(problem),
                Usage::default(),
            )),
            Ok(input) => {
                let nested =
                    NestedRun { workflow_run_id, input, phase: 1, snapshot: RunSnapshot::default(), resume: None };
                self.run_nested(workflow, delegation, nested).await
            }
        }
    }

    /// Runs one phase of a delegated workflow's nested run: its events wrapped, then `WorkflowExecutionEnd`, or,
    /// when it suspends, `WorkflowExecutionSuspended` and the network suspends with the nested run's snapshot.
    pub(super) async fn run_nested(
        &mut self,
        workflow: &Arc<Workflow>,
        delegation: Delegation,
        nested: NestedRun,
    ) -> Result<Delegation, Stop> {
        let workflow_id = Arc::clone(workflow.id());
        let mut guard = AbortGuard::new(&self.emit, PrimitiveType::Workflow, &workflow_id);
        // Whichever way the nested run is cut short, its stream still ends with a finish.
        guard.before_abort(nested_event(&workflow_id, canceled_finish()));
        let NestedRun { workflow_run_id, input, phase, snapshot, resume } = nested;
        let sink = NestedSink { workflow_id: Arc::clone(&workflow_id), emit: Arc::clone(&self.emit) };
        let outcome = execute_phase(Phase {
            run_id: Arc::clone(&workflow_run_id),
            tenant: Arc::clone(&self.env.tenant),
            workflow: Arc::clone(workflow),
            input: input.clone(),
            request_context: Arc::clone(&self.env.request_context),
            phase,
            snapshot,
            resume,
            recovering: false,
            sink: Arc::new(sink),
            clock: Arc::clone(&self.env.clock),
            cancel: self.env.cancel.clone(),
        })
        .await;
        if outcome.status == RunStatus::Canceled || self.env.cancel.is_cancelled() {
            return Err(Stop::Aborted);
        }
        // Over all of the nested run's phases.
        let usage = outcome.snapshot.usage;
        self.emit(nested_event(
            &workflow_id,
            EventKind::WorkflowFinish {
                status: outcome.status,
                result: outcome.result.clone(),
                error: outcome.error.clone(),
                usage,
            },
        ));
        guard.disarm();
        // The network waits for the first suspended step (in path order); if others wait too, the nested run
        // suspends again once that one resumes, and the network with it.
        let waiting_step = outcome.snapshot.suspended.iter().next().map(|(path, s)| (path.clone(), s.clone()));
        let result = match (outcome.status, waiting_step) {
            (RunStatus::Suspended, Some((step, suspended))) => {
                self.emit(NetworkEvent::WorkflowExecutionSuspended {
                    workflow_id: Arc::clone(&workflow_id),
                    workflow_run_id: Arc::clone(&workflow_run_id),
                    suspend_payload: suspended.suspend_payload.clone(),
                    usage,
                    selection_reason: delegation.selection_reason.clone(),
                });
                let mut payload = json!({
                    "reason": "workflow-execution-suspended",
                    "iteration": delegation.iteration,
                    "workflowId": &*workflow_id,
                    "workflowRunId": &*workflow_run_id,
                    "step": &step,
                    "suspendPayload": suspended.suspend_payload,
                });
                if let Some(index) = suspended.for_each_index {
                    payload["forEachIndex"] = json!(index);
                }
                let waiting = Waiting::Workflow {
                    delegation,
                    workflow_run_id: workflow_run_id.to_string(),
                    input,
                    phase,
                    snapshot: outcome.snapshot,
                    step,
                    for_each_index: suspended.for_each_index,
                };
                return Err(Stop::Suspended(Box::new(Suspension {
                    waiting,
                    payload,
                    resume_schema: suspended.resume_schema.clone(),
                })));
            }
            (RunStatus::Success, _) => outcome.result.unwrap_or(Value::Null),
            _ => error_result(outcome.error.map_or_else(|| outcome.status.as_str().to_owned(), |e| e.message)),
        };
        Ok(self.end_workflow(workflow_id, workflow_run_id, delegation, outcome.status, result, usage))
    }

    fn end_workflow(
        &mut self,
        workflow_id: Arc<str>,
        workflow_run_id: Arc<str>,
        mut delegation: Delegation,
        status: RunStatus,
        result: Value,
        usage: Usage,
    ) -> Delegation {
        self.usage.add(&usage);
        delegation.result = Some(result);
        self.emit(NetworkEvent::WorkflowExecutionEnd {
            workflow_id,
            workflow_run_id,
            delegation: Box::new(delegation.clone()),
            status,
            usage,
        });
        delegation
    }
}

/// Wraps a nested workflow run's events as `WorkflowExecutionEvent`s.
struct NestedSink {
    workflow_id: Arc<str>,
    emit: Emit,
}

impl EventSink for NestedSink {
    fn emit(&self, event: Event) {
        (self.emit)(nested_event(&self.workflow_id, event.kind));
    }
}

fn nested_event(workflow_id: &Arc<str>, event: EventKind) -> NetworkEvent {
    NetworkEvent::WorkflowExecutionEvent { workflow_id: Arc::clone(workflow_id), event: Box::new(event) }
}

/// The finish of a nested run that was canceled (the registry's job for top-level runs).
fn canceled_finish() -> EventKind {
    EventKind::WorkflowFinish { status: RunStatus::Canceled, result: None, error: None, usage: Usage::default() }
}
