//! The control-flow nodes other than foreach: parallel and branch, loops, sleep, map and nested workflows.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::future::join_all;
use serde_json::{Map, Value, json};

use super::{Call, Decision, Exec, Flow, LeafResult, Scope, check_schema, new_call_id, panic_message, step_error_info};
use crate::engine::{
    event::{EventKind, StepStatus, WaitReason},
    snapshot::StepRecord,
    step::{Step, StepError},
    workflow::{LoopCond, LoopKind, MapFn, Wait, Workflow},
};

impl Exec {
    /// Runs `steps` concurrently on `input`; the output is an object keyed by step id.
    pub(super) async fn run_parallel<'s>(
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

    pub(super) async fn run_loop(
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

    pub(super) async fn run_sleep(&self, path: Arc<str>, wait: &Wait, input: Value, replay: bool) -> Flow {
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
            attempt: 0,
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

    pub(super) fn run_map(&self, path: Arc<str>, f: &MapFn, input: Value, replay: bool) -> Flow {
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

    pub(super) async fn run_nested(&self, scope: Scope<'_>, child: &Workflow, input: Value, replay: bool) -> Flow {
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
}

/// `t + d`, without the panic on overflow (durations can come from run input).
fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}
