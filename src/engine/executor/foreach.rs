//! Runs a foreach step: its items with bounded concurrency and a progress event each, and, when items suspend,
//! the per-item state that lets a resume re-run only what is needed.

use std::{sync::Arc, time::SystemTime};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};

use super::{Call, Decision, Exec, Flow, LeafResult, Scope, split_path};
use crate::engine::{
    event::{ErrorInfo, EventKind, StepStatus},
    snapshot::{ForeachState, ItemState, StepRecord, SuspendedStep},
    step::Step,
    workflow::Concurrency,
};

impl Exec {
    pub(super) async fn run_foreach(
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
