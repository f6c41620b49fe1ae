//! The remote step: an ordinary [`Step`] whose function hands a task to the hub and awaits its outcome.

use std::sync::Arc;

use serde_json::{Value, json};

use super::hub::{Chunk, NewTask, TaskEvent, WorkerHub};
use crate::engine::{Step, StepContext, StepError, StepOutcome};

/// Makes a remote step's task input from the step's input and the run input.
pub(crate) type InputFn = Arc<dyn Fn(&Value, &Value) -> Value + Send + Sync + 'static>;

/// Where a remote step keeps, across a suspension, how often it was resumed and what it suspended with.
const RESUME_COUNT: &str = "resumeCount";
const SUSPEND_PAYLOAD: &str = "suspendPayload";

/// Abandons the task when the step stops waiting for it before it ended (the run was canceled: the engine drops
/// the step's future).
pub(super) struct Abandon {
    pub(super) hub: Arc<WorkerHub>,
    pub(super) task_id: String,
    pub(super) done: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.done {
            self.hub.abandon(&self.task_id);
        }
    }
}

impl WorkerHub {
    /// A step with id `id` that a worker serving `task_type` runs. Its input goes to the worker; the worker's
    /// writes become the step's `step_output` / `custom` events; its Complete is the step's output, its Fail the
    /// step's error (retried by the step's retry policy unless non-retryable), its Suspend suspends the run, and
    /// the resume data goes to whichever worker takes the step next. Chain options as on any [`Step`].
    pub fn step(self: &Arc<Self>, id: impl Into<String>, task_type: impl Into<String>) -> Step {
        self.step_with_input(id, task_type, None)
    }

    /// [`WorkerHub::step`] whose task gets `input(step input, run input)` instead of the step's input (a
    /// definition's input mapping); `None` sends the step's input as it is.
    pub(crate) fn step_with_input(
        self: &Arc<Self>,
        id: impl Into<String>,
        task_type: impl Into<String>,
        input: Option<InputFn>,
    ) -> Step {
        let hub = Arc::clone(self);
        let task_type: Arc<str> = task_type.into().into();
        Step::new(id, move |ctx: StepContext| {
            let hub = Arc::clone(&hub);
            let task_type = Arc::clone(&task_type);
            let input = input.clone();
            async move { hub.run_remote(ctx, task_type, input).await }
        })
    }

    async fn run_remote(
        self: Arc<Self>,
        ctx: StepContext,
        task_type: Arc<str>,
        input: Option<InputFn>,
    ) -> Result<StepOutcome, StepError> {
        let saved = ctx.saved_state();
        let resume_count = saved.and_then(|s| s.get(RESUME_COUNT)).and_then(Value::as_u64).unwrap_or(0);
        let suspend_payload = saved.and_then(|s| s.get(SUSPEND_PAYLOAD)).cloned();
        let mut idempotency_key = format!("{}/{}", ctx.run_id(), ctx.step_id());
        if let Some(index) = ctx.for_each_index() {
            idempotency_key.push_str(&format!("/{index}"));
        }
        if ctx.resume_data().is_some() {
            // Inside a foreach the engine keeps no per-iteration state, so the count is unknown there.
            if resume_count > 0 {
                idempotency_key.push_str(&format!("/r{resume_count}"));
            } else {
                idempotency_key.push_str("/r");
            }
        }
        let (task_id, mut events) = self.enqueue(
            NewTask {
                tenant: Arc::clone(ctx.tenant()),
                task_type: task_type.to_string(),
                run_id: ctx.run_id().to_owned(),
                workflow_id: ctx.workflow_id().to_owned(),
                step_id: ctx.step_id().to_owned(),
                for_each_index: ctx.for_each_index(),
                input: match &input {
                    Some(map) => map(ctx.input(), ctx.run_input()),
                    None => ctx.input().clone(),
                },
                resume_data: ctx.resume_data().cloned(),
                suspend_payload,
                request_context: ctx.request_context().clone(),
                idempotency_key,
            },
            // A retry's task carries the step's attempt number, so the worker and the stream agree on it.
            ctx.shown_attempt(),
        );
        let mut guard = Abandon { hub: Arc::clone(&self), task_id, done: false };
        let writer = ctx.writer();
        loop {
            let Some(event) = events.recv().await else {
                guard.done = true;
                return Err(StepError::new(format!("the task of remote step '{}' was lost", ctx.step_id())));
            };
            match event {
                TaskEvent::Waiting(reason) => ctx.report_waiting(reason, None, Some(Arc::clone(&task_type))),
                TaskEvent::Running => ctx.report_running(),
                TaskEvent::Redelivered(attempt) => ctx.report_redelivery(attempt),
                TaskEvent::Output(chunk) => {
                    // A write refused for its size fails the step when it returns; the worker's result then does
                    // not matter.
                    // The write waits while the store is behind; the worker's further chunks wait in the task's
                    // queue meanwhile (unbounded: a worker that streams faster than the store is not pushed back yet).
                    let _ = match chunk {
                        Chunk::Write(value) => writer.write(value).await,
                        Chunk::Custom { kind, data, id, transient } => {
                            writer.custom_with(kind, data, id, transient).await
                        }
                        Chunk::Progress { current, total, message } => {
                            let progress = json!({ "current": current, "total": total, "message": message });
                            writer.custom("data-progress", progress).await
                        }
                    };
                }
                TaskEvent::Finished(outcome) => {
                    guard.done = true;
                    if let Ok(StepOutcome::Suspend { payload, .. }) = &outcome {
                        ctx.save_state(json!({ RESUME_COUNT: resume_count + 1, SUSPEND_PAYLOAD: payload }));
                    }
                    return outcome;
                }
            }
        }
    }
}
