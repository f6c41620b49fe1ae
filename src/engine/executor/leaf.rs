//! Runs one invocation of a step function (a plain step, a loop iteration, a foreach item): schema checks,
//! attempts with retries, panics caught, cancellation, a write refused for its size, then the result or the
//! suspension, with its event and step record.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use futures_util::FutureExt;
use serde_json::{Value, json};

use super::{Decision, Exec, Flow, Scope, check_schema, output_too_large, panic_message, split_path, step_error_info};
use crate::engine::{
    event::{ErrorInfo, Event, EventKind, EventSource, StepStatus, WaitReason},
    snapshot::{StepRecord, SuspendedStep},
    step::{ContextShared, RetrySpec, Step, StepContext, StepError, StepOutcome, Writer},
};

/// How one invocation of a step's function ended.
pub(super) enum LeafResult {
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

/// One step invocation, as the executor prepares it.
pub(super) struct Call<'a> {
    pub(super) step: &'a Step,
    pub(super) path: Arc<str>,
    pub(super) input: Value,
    pub(super) default_retry: &'a RetrySpec,
    /// 1-based loop iteration, 0 outside loops.
    pub(super) iteration: u32,
    pub(super) for_each_index: Option<u32>,
    /// Inside a foreach: no step events and no step record (the foreach reports for its iterations).
    pub(super) hidden: bool,
    pub(super) resume_data: Option<Value>,
}

impl Exec {
    pub(super) async fn run_step(&self, scope: Scope<'_>, step: &Step, input: Value, replay: bool) -> Flow {
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

    /// Runs one invocation of a step function: start event, schema checks, attempts with retries raced against
    /// cancellation, then the result or suspended event and the step record.
    pub(super) async fn run_leaf(&self, call: Call<'_>) -> LeafResult {
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
            tenant: Arc::clone(&self.tenant),
            workflow_id: Arc::clone(&self.workflow_id),
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
            writer: Writer::new(
                Arc::clone(&self.sink),
                Arc::clone(&path),
                Arc::clone(&self.usage),
                self.cancel.clone(),
            ),
            cancel: self.cancel.clone(),
            clock: Arc::clone(&self.clock),
            shown_attempt: AtomicU32::new(1),
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
                    // Numbered after any redelivery of a remote step, so a step call's attempts only grow.
                    let next = shared.shown_attempt.fetch_add(1, Ordering::AcqRel) + 1;
                    if !delay.is_zero() {
                        if !hidden {
                            let wake_at = Some(self.clock.now() + delay);
                            shared.emit_waiting(WaitReason::RetryBackoff, wake_at, None, next);
                        }
                        tokio::select! {
                            biased;
                            _ = self.cancel.cancelled() => break None,
                            _ = self.clock.sleep(delay) => {}
                        }
                    }
                    if !hidden {
                        shared.emit_start(next);
                    }
                }
                other => break Some(other),
            }
        };
        let attempts = shared.shown_attempt.load(Ordering::Acquire);
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

fn with_index(mut error: ErrorInfo, for_each_index: Option<u32>) -> ErrorInfo {
    if let (Some(i), Some(Value::Object(details))) = (for_each_index, error.details.as_mut()) {
        details.insert("forEachIndex".to_owned(), json!(i));
    }
    error
}

/// Where a suspended step's private state ([`StepContext::save_state`]) is kept in `snapshot.control`.
fn saved_state_key(path: &str) -> String {
    format!("state:{path}")
}
