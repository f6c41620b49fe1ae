//! The events a run emits, in the engine's own terms (no protobuf here: the gRPC layer translates).
//!
//! The engine hands each event to a sink; the sink (the run registry's event log) gives it its `seq` and
//! timestamp. Emitting never blocks and never fails: the log is append-only and readers catch up at their own pace,
//! so a slow reader can never stall a step. Only step code's own writes wait, and only for the store
//! ([`EventSink::ready`]), never for readers.

use std::{future::Future, pin::Pin, sync::Arc, time::SystemTime};

use serde_json::Value;

use super::agent_event::{AgentChunk, NetworkEvent};

/// Who produced an event (Mastra's `from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSource {
    /// The workflow engine: lifecycle and step events.
    Workflow,
    /// Step code: writer output and custom data.
    User,
    /// An agent's chunks.
    Agent,
    /// An agent network's routing events.
    Network,
    /// runstream itself.
    System,
}

/// Lifecycle state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RunStatus {
    /// Created, not yet executing.
    Pending,
    /// A phase is executing steps.
    Running,
    /// A step suspended; the run waits for a resume. Not terminal.
    Suspended,
    /// A sleep step waits for its wake-up time. Not terminal.
    Waiting,
    /// Terminal: the workflow returned a result (a bailed step also ends the run with success).
    Success,
    /// Terminal: a step failed after its retries.
    Failed,
    /// Terminal: the run was canceled.
    Canceled,
    /// Terminal: a guardrail (tripwire) stopped an agent.
    Tripwire,
    /// The run stopped after one step in per-step mode (no RPC asks for that mode yet). Not terminal.
    Paused,
}

impl RunStatus {
    /// True for the states a run never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Canceled | Self::Tripwire)
    }

    /// Lower-case name, as Mastra spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Suspended => "suspended",
            Self::Waiting => "waiting",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Tripwire => "tripwire",
            Self::Paused => "paused",
        }
    }
}

/// Why a step waits (`StepWaiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// A sleep step, until its `wake_at`.
    Sleep,
    /// A remote step whose task type no connected worker serves.
    NoWorker,
    /// A remote step whose workers are all at their `max_in_flight`.
    WorkersBusy,
    /// The delay before a step's next attempt.
    RetryBackoff,
}

/// Outcome of one step or one foreach iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StepStatus {
    /// Started, not finished.
    Running,
    /// Returned an output.
    Success,
    /// Failed after its retries.
    Failed,
    /// Suspended, waiting for a resume.
    Suspended,
    /// A sleep step waiting for its wake-up time.
    Waiting,
    /// Called bail: the run ends successfully with the bail value as its result.
    Bailed,
    /// Stopped because the run was canceled.
    Canceled,
    /// Stopped after this step in per-step mode (no RPC asks for that mode yet).
    Paused,
    /// Not run (Mastra's `skipped`; runstream does not report it yet).
    Skipped,
}

/// A serialized error (Mastra's SerializedError).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    /// Error class, e.g. "StepError".
    pub name: String,
    /// Human-readable message.
    pub message: String,
    /// Structured details (for example the failing step id or the attempt count).
    pub details: Option<Value>,
}

impl ErrorInfo {
    /// An error of class `name` without details.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self { name: name.into(), message: message.into(), details: None }
    }
}

/// Token usage, summed over every model call that contributed to it.
///
/// In JSON (an agent's or network's result, and the run store) its keys are camelCase, as proto JSON prints
/// `Usage`: `{"inputTokens", "outputTokens", ...}`. The snake_case names that builds before issue 10 wrote are still
/// read (aliases), so that a store they wrote loads and its runs resume with their usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Usage {
    /// Tokens in the prompts (OpenAI's `prompt_tokens`).
    #[serde(alias = "input_tokens")]
    pub input_tokens: u64,
    /// Tokens generated (OpenAI's `completion_tokens`).
    #[serde(alias = "output_tokens")]
    pub output_tokens: u64,
    /// Input plus output tokens, as the provider reported it.
    #[serde(alias = "total_tokens")]
    pub total_tokens: u64,
    /// Of the output tokens, those spent on reasoning.
    #[serde(alias = "reasoning_tokens")]
    pub reasoning_tokens: u64,
    /// Of the input tokens, those served from the provider's prompt cache.
    #[serde(alias = "cached_input_tokens")]
    pub cached_input_tokens: u64,
    /// Of the input tokens, those written to the provider's prompt cache.
    #[serde(alias = "cache_creation_input_tokens")]
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    /// Adds `other`, saturating: the counts come from model servers, which must not be able to overflow them.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(other.cached_input_tokens);
        self.cache_creation_input_tokens =
            self.cache_creation_input_tokens.saturating_add(other.cache_creation_input_tokens);
    }
}

/// One event of a run, before the log numbers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who produced it.
    pub source: EventSource,
    /// What happened.
    pub kind: EventKind,
}

/// What happened. One variant per proto `RunEvent.event` variant; see docs/events.md.
///
/// Step paths (`step_id`) are dotted: a step `s` of nested workflow `child` is `child.s`. They are `Arc<str>` because
/// one step emits many events (a writer can emit millions) and each should not copy the path.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A phase begins: phase 1 is the first execution, each resume starts the next phase.
    WorkflowStart {
        /// The workflow the run executes.
        workflow_id: Arc<str>,
        /// 1 for the first execution, +1 for each resume.
        phase: u32,
        /// True when this phase resumes a suspended run.
        resumed: bool,
    },
    /// A step begins. Earlier steps' outputs are never repeated here.
    StepStart {
        /// Dotted path of the step.
        step_id: Arc<str>,
        /// Unique id of this invocation (a fresh one per attempt series and per loop iteration).
        step_call_id: String,
        /// The step's input.
        input: Value,
        /// The data the step is resumed with, when this start is a resume.
        resume_data: Option<Value>,
        /// 1-based loop iteration inside dowhile/dountil, 0 elsewhere.
        iteration_count: u32,
        /// 1 for a step's first delivery; a remote step handed to another worker after a lease ran out emits a
        /// second `StepStart` (same call id) with 2, and so on.
        attempt: u32,
    },
    /// `writer.write(value)`.
    StepOutput {
        /// Dotted path of the step that wrote.
        step_id: Arc<str>,
        /// The value written.
        output: Value,
    },
    /// One finished foreach iteration.
    StepProgress {
        /// Dotted path of the foreach step.
        step_id: Arc<str>,
        /// Iterations finished so far (successes and failures, not suspensions).
        completed_count: u32,
        /// Number of items.
        total_count: u32,
        /// Index of the item that just finished.
        current_index: u32,
        /// Success, failed or suspended.
        iteration_status: StepStatus,
        /// The iteration's output (on success).
        iteration_output: Option<Value>,
    },
    /// A step suspended; the phase then finishes with [`RunStatus::Suspended`].
    StepSuspended {
        /// Dotted path of the suspended step.
        step_id: Arc<str>,
        /// Id of the invocation that suspended (as in its `StepStart`).
        step_call_id: String,
        /// What the step handed to suspend: what the resumer needs to decide.
        suspend_payload: Value,
        /// JSON Schema the resume data must satisfy, when there is one.
        resume_schema: Option<Value>,
        /// The resume label the step registered, if any.
        resume_label: Option<String>,
        /// The suspended iteration, when the step runs inside a foreach.
        for_each_index: Option<u32>,
    },
    /// A sleep step waits.
    StepWaiting {
        /// Dotted path of the sleep step.
        step_id: Arc<str>,
        /// When the step wakes up, if known (a sleep's end; not a wait for a worker).
        wake_at: Option<SystemTime>,
        /// Why it waits.
        reason: WaitReason,
        /// The task type a remote step waits for a worker of.
        task_type: Option<Arc<str>>,
        /// For [`WaitReason::RetryBackoff`]: the attempt that comes next (2, 3, ...); 0 otherwise.
        attempt: u32,
    },
    /// A step finished without suspending.
    StepResult {
        /// Dotted path of the step.
        step_id: Arc<str>,
        /// Id of the invocation (as in its `StepStart`).
        step_call_id: String,
        /// Success, failed, bailed or canceled.
        status: StepStatus,
        /// The step's output (success) or bail value (bailed).
        output: Option<Value>,
        /// Why the step failed (failed).
        error: Option<ErrorInfo>,
        /// How many attempts the step took (1 without retries).
        attempts: u32,
        /// When the first attempt started.
        started_at: SystemTime,
        /// When the step ended.
        ended_at: SystemTime,
    },
    /// The run paused after one step (per-step mode, which no RPC asks for yet).
    WorkflowPaused,
    /// The run was canceled; the phase then finishes with [`RunStatus::Canceled`].
    WorkflowCanceled {
        /// Why, e.g. "canceled by CancelRun".
        reason: String,
    },
    /// A phase ends. Emitted by the run registry, never by the executor, so that the run's state and its log change
    /// together.
    WorkflowFinish {
        /// How the phase ended: suspended ends a phase; success, failed, canceled and tripwire end the run.
        status: RunStatus,
        /// The workflow's result (success).
        result: Option<Value>,
        /// Why the run failed (failed, tripwire).
        error: Option<ErrorInfo>,
        /// Token usage of the whole run so far.
        usage: Usage,
    },
    /// `writer.custom(...)`: Mastra's `data-*` chunks.
    Custom {
        /// Dotted path of the step that wrote.
        step_id: Arc<str>,
        /// The chunk type, e.g. "data-progress" (always starts with "data-").
        kind: String,
        /// The data written.
        data: Value,
        /// The id the step gave the chunk, if any.
        id: Option<String>,
        /// Meant for live display only (still logged and numbered).
        transient: bool,
    },
    /// A chunk an agent streams; `step_id` is set when the agent runs as a workflow step.
    Agent {
        /// Dotted path of the agent's step, when it runs as one.
        step_id: Option<Arc<str>>,
        /// The chunk.
        chunk: AgentChunk,
    },
    /// An event of an agent network; `step_id` is set when the network runs as a workflow step.
    Network {
        /// Dotted path of the network's step, when it runs as one.
        step_id: Option<Arc<str>>,
        /// The event.
        event: NetworkEvent,
    },
    /// runstream restarted while the run was in flight and continues it (source `System`): the steps the
    /// interrupted phase completed are reused, the one that was running runs again.
    RunRecovered {
        /// The phase the restart interrupted.
        interrupted_phase: u32,
        /// Dotted paths of the steps whose recorded outputs are reused.
        completed_steps: Vec<String>,
        /// Human-readable account, e.g. "the server restarted while the run was in flight".
        reason: String,
    },
}

impl EventKind {
    /// The dotted step path this event belongs to, if any.
    pub fn step_id(&self) -> Option<&Arc<str>> {
        match self {
            Self::StepStart { step_id, .. }
            | Self::StepOutput { step_id, .. }
            | Self::StepProgress { step_id, .. }
            | Self::StepSuspended { step_id, .. }
            | Self::StepWaiting { step_id, .. }
            | Self::StepResult { step_id, .. }
            | Self::Custom { step_id, .. } => Some(step_id),
            Self::Agent { step_id, .. } | Self::Network { step_id, .. } => step_id.as_ref(),
            _ => None,
        }
    }
}

/// Where the engine puts the events it emits. Implemented by the run registry's event log.
///
/// `emit` must not block: it is called from step code (the writer), possibly millions of times per run.
pub(crate) trait EventSink: Send + Sync + 'static {
    /// Appends `event` to the run's log.
    fn emit(&self, event: Event);

    /// Emits a copy of `event`. A sink that keeps only an encoding of each event (the run registry's log) does
    /// without the copy, so the executor can keep the values an event carries (a step's output) instead of
    /// cloning them for it.
    fn emit_ref(&self, event: &Event) {
        self.emit(event.clone());
    }

    /// [`emit_ref`](Self::emit_ref), unless the event is larger than the sink takes (what clients can decode):
    /// then nothing is emitted and the caller learns by how much. A sink without a limit takes everything.
    fn try_emit_ref(&self, event: &Event) -> Result<(), EventTooLarge> {
        self.emit_ref(event);
        Ok(())
    }

    /// A step that emitted `step_waiting` runs again with no event to say so (a worker took a remote step's
    /// task): a sink that tracks the run's status moves it from WAITING back to RUNNING.
    fn step_running(&self) {}

    /// `None` when the sink takes more of a step's writes now; otherwise a future that completes once it does.
    /// Step code's writes ([`Writer::write`](super::Writer::write), `custom`) wait on it, so a step that writes
    /// faster than the store commits slows itself instead of queueing without bound. Default: always ready.
    fn ready(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        None
    }
}

/// An event a sink refused for its size: `size` bytes encoded, over the sink's `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{size} bytes encoded, over the {limit}-byte event limit")]
pub struct EventTooLarge {
    /// Size of the encoded event, in bytes.
    pub size: usize,
    /// The largest event the sink takes, in bytes.
    pub limit: usize,
}

/// Test support: `value` with every [`Usage`] key spelled as builds before issue 10 wrote it (`input_tokens`, ...),
/// wherever it is nested: a run snapshot, or the saved state of an agent or network inside one, as such a build
/// stored it. Panics if `value` holds no usage at all (the test would prove nothing).
#[cfg(test)]
pub(crate) fn with_old_usage_keys(value: Value) -> Value {
    const KEYS: [(&str, &str); 6] = [
        ("inputTokens", "input_tokens"),
        ("outputTokens", "output_tokens"),
        ("totalTokens", "total_tokens"),
        ("reasoningTokens", "reasoning_tokens"),
        ("cachedInputTokens", "cached_input_tokens"),
        ("cacheCreationInputTokens", "cache_creation_input_tokens"),
    ];
    fn rename(value: Value, renamed: &mut usize) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(key, value)| {
                        let key = match KEYS.iter().find(|(new, _)| *new == key) {
                            Some((_, old)) => {
                                *renamed += 1;
                                (*old).to_owned()
                            }
                            None => key,
                        };
                        (key, rename(value, renamed))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| rename(v, renamed)).collect()),
            other => other,
        }
    }
    let mut renamed = 0;
    let value = rename(value, &mut renamed);
    assert!(renamed > 0, "no usage to rename in {value}");
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn usage_is_camel_case_json_and_still_reads_the_old_snake_case_names() {
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            total_tokens: 3,
            reasoning_tokens: 4,
            cached_input_tokens: 5,
            cache_creation_input_tokens: 6,
        };
        let camel = json!({
            "inputTokens": 1, "outputTokens": 2, "totalTokens": 3,
            "reasoningTokens": 4, "cachedInputTokens": 5, "cacheCreationInputTokens": 6,
        });
        assert_eq!(serde_json::to_value(usage).unwrap(), camel);
        assert_eq!(serde_json::from_value::<Usage>(camel).unwrap(), usage);
        // As builds before issue 10 stored it.
        let snake = json!({
            "input_tokens": 1, "output_tokens": 2, "total_tokens": 3,
            "reasoning_tokens": 4, "cached_input_tokens": 5, "cache_creation_input_tokens": 6,
        });
        assert_eq!(serde_json::from_value::<Usage>(snake).unwrap(), usage);
        // Missing counters are 0, in either spelling.
        assert_eq!(serde_json::from_value::<Usage>(json!({ "input_tokens": 7 })).unwrap().input_tokens, 7);
        assert_eq!(serde_json::from_value::<Usage>(json!({})).unwrap(), Usage::default());
    }
}
