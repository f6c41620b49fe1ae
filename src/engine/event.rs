//! The events a run emits, in the engine's own terms (no protobuf here: the gRPC layer translates).
//!
//! The engine hands each event to an [`EventSink`]; the sink (the run registry's event log) gives it its `seq` and
//! timestamp. Emitting never blocks and never fails: the log is append-only and readers catch up at their own pace,
//! so a slow reader can never stall a step.

use std::{sync::Arc, time::SystemTime};

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
    Pending,
    Running,
    Suspended,
    Waiting,
    Success,
    Failed,
    Canceled,
    Tripwire,
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
    Running,
    Success,
    Failed,
    Suspended,
    Waiting,
    Bailed,
    Canceled,
    Paused,
    Skipped,
}

/// A serialized error (Mastra's SerializedError).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    /// Error class, e.g. "StepError".
    pub name: String,
    pub message: String,
    pub details: Option<Value>,
}

impl ErrorInfo {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self { name: name.into(), message: message.into(), details: None }
    }
}

/// Token usage, summed.
///
/// In JSON (an agent's or network's result, and the run store) its keys are camelCase, as proto JSON prints
/// `Usage`: `{"inputTokens", "outputTokens", ...}`. The snake_case names that builds before issue 10 wrote are still
/// read (aliases), so that a store they wrote loads and its runs resume with their usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Usage {
    #[serde(alias = "input_tokens")]
    pub input_tokens: u64,
    #[serde(alias = "output_tokens")]
    pub output_tokens: u64,
    #[serde(alias = "total_tokens")]
    pub total_tokens: u64,
    #[serde(alias = "reasoning_tokens")]
    pub reasoning_tokens: u64,
    #[serde(alias = "cached_input_tokens")]
    pub cached_input_tokens: u64,
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
    pub source: EventSource,
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
        workflow_id: Arc<str>,
        phase: u32,
        resumed: bool,
    },
    StepStart {
        step_id: Arc<str>,
        step_call_id: String,
        input: Value,
        resume_data: Option<Value>,
        /// 1-based loop iteration inside dowhile/dountil, 0 elsewhere.
        iteration_count: u32,
        /// 1 for a step's first delivery; a remote step handed to another worker after a lease ran out emits a
        /// second `StepStart` (same call id) with 2, and so on.
        attempt: u32,
    },
    /// `writer.write(value)`.
    StepOutput {
        step_id: Arc<str>,
        output: Value,
    },
    /// One finished foreach iteration.
    StepProgress {
        step_id: Arc<str>,
        completed_count: u32,
        total_count: u32,
        current_index: u32,
        iteration_status: StepStatus,
        iteration_output: Option<Value>,
    },
    StepSuspended {
        step_id: Arc<str>,
        step_call_id: String,
        suspend_payload: Value,
        resume_schema: Option<Value>,
        resume_label: Option<String>,
        for_each_index: Option<u32>,
    },
    StepWaiting {
        step_id: Arc<str>,
        /// When the step wakes up, if known (a sleep's end; not a wait for a worker).
        wake_at: Option<SystemTime>,
        reason: WaitReason,
        /// The task type a remote step waits for a worker of.
        task_type: Option<Arc<str>>,
    },
    StepResult {
        step_id: Arc<str>,
        step_call_id: String,
        status: StepStatus,
        output: Option<Value>,
        error: Option<ErrorInfo>,
        attempts: u32,
        started_at: SystemTime,
        ended_at: SystemTime,
    },
    WorkflowPaused,
    WorkflowCanceled {
        reason: String,
    },
    /// A phase ends. Emitted by the run registry, never by the executor, so that the run's state and its log change
    /// together.
    WorkflowFinish {
        status: RunStatus,
        result: Option<Value>,
        error: Option<ErrorInfo>,
        usage: Usage,
    },
    /// `writer.custom(...)`: Mastra's `data-*` chunks.
    Custom {
        step_id: Arc<str>,
        kind: String,
        data: Value,
        id: Option<String>,
        transient: bool,
    },
    /// A chunk an agent streams; `step_id` is set when the agent runs as a workflow step.
    Agent {
        step_id: Option<Arc<str>>,
        chunk: AgentChunk,
    },
    /// An event of an agent network; `step_id` is set when the network runs as a workflow step.
    Network {
        step_id: Option<Arc<str>>,
        event: NetworkEvent,
    },
    /// runstream restarted while the run was in flight and continues it (source `System`): the steps the
    /// interrupted phase completed are reused, the one that was running runs again.
    RunRecovered {
        interrupted_phase: u32,
        completed_steps: Vec<String>,
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
pub trait EventSink: Send + Sync + 'static {
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
}

/// An event a sink refused for its size: `size` bytes encoded, over the sink's `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{size} bytes encoded, over the {limit}-byte event limit")]
pub struct EventTooLarge {
    pub size: usize,
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
