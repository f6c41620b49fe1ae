//! What workflow authors write: a [`Step`] is an id, some options and an async function of a [`StepContext`].
//!
//! Step code ends in one of three ways ([`StepOutcome`]): it produces an output, it suspends (the run waits for a
//! resume with data), or it bails (the run ends successfully at once). It fails by returning a [`StepError`].
//! While it runs it can stream values through its [`Writer`], whose writes wait only while the store is behind.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    agent_event::{AgentChunk, NetworkEvent},
    event::{Event, EventKind, EventSink, EventSource, Usage, WaitReason},
    schema::Schema,
};
use crate::clock::Clock;

/// The boxed future a step function returns once type-erased.
pub(crate) type StepFuture = Pin<Box<dyn Future<Output = Result<StepOutcome, StepError>> + Send + 'static>>;
pub(crate) type StepFn = Arc<dyn Fn(StepContext) -> StepFuture + Send + Sync + 'static>;
pub(crate) type AttemptsFn = Arc<dyn Fn(&Value) -> u32 + Send + Sync + 'static>;

/// How often a step is tried, and how long to wait between tries.
#[derive(Clone)]
pub(crate) enum RetrySpec {
    /// `attempts` tries in total (at least 1).
    Fixed { attempts: u32, delay: Duration },
    /// Attempts computed from the run input, for steps whose retry budget is a parameter of the run.
    FromInput { attempts: AttemptsFn, delay: Duration },
}

impl RetrySpec {
    /// Total attempts and delay for a run with input `run_input`.
    pub(crate) fn resolve(&self, run_input: &Value) -> (u32, Duration) {
        match self {
            Self::Fixed { attempts, delay } => ((*attempts).max(1), *delay),
            Self::FromInput { attempts, delay } => (attempts(run_input).max(1), *delay),
        }
    }
}

/// A unit of work in a workflow. Cheap to clone: the function and schemas are shared.
#[derive(Clone)]
pub struct Step {
    pub(crate) id: Arc<str>,
    pub(crate) description: String,
    pub(crate) input_schema: Option<Schema>,
    pub(crate) output_schema: Option<Schema>,
    pub(crate) resume_schema: Option<Schema>,
    pub(crate) suspend_schema: Option<Schema>,
    /// `None`: the workflow's default applies.
    pub(crate) retry: Option<RetrySpec>,
    pub(crate) func: StepFn,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Step {
    /// A step with id `id` (unique within its workflow; no dots, which separate nested paths) running `f`.
    ///
    /// # Panics
    /// If `id` is empty or contains a dot: ids are written in code, so this is a programming error.
    pub fn new<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<StepOutcome, StepError>> + Send + 'static,
    {
        let id: String = id.into();
        check_id(&id);
        Self {
            id: id.into(),
            description: String::new(),
            input_schema: None,
            output_schema: None,
            resume_schema: None,
            suspend_schema: None,
            retry: None,
            func: Arc::new(move |ctx| Box::pin(f(ctx))),
        }
    }

    /// The step's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the description (shown by ListWorkflows).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Schema the step's input must satisfy; a violation fails the step with a `SchemaError`.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(Schema::compile_or_panic(schema, &format!("step '{}' input schema", self.id)));
        self
    }

    /// Schema the step's output must satisfy; a violation fails the step with a `SchemaError`.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(Schema::compile_or_panic(schema, &format!("step '{}' output schema", self.id)));
        self
    }

    /// Schema the resume data must satisfy; checked by `Workflow::resolve_resume` before the run is resumed.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn resume_schema(mut self, schema: Value) -> Self {
        self.resume_schema = Some(Schema::compile_or_panic(schema, &format!("step '{}' resume schema", self.id)));
        self
    }

    /// Schema the suspend payload must satisfy; a violation fails the step with a `SchemaError`.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn suspend_schema(mut self, schema: Value) -> Self {
        self.suspend_schema = Some(Schema::compile_or_panic(schema, &format!("step '{}' suspend schema", self.id)));
        self
    }

    /// Try the step up to `attempts` times in total (0 counts as 1), waiting `delay` between tries. Overrides the
    /// workflow's default. Each retry waits in the open (`step_waiting` RETRY_BACKOFF, unless the delay is 0), then
    /// starts again (`step_start` with the next attempt); the step result reports how many tries were made.
    pub fn retries(mut self, attempts: u32, delay: Duration) -> Self {
        self.retry = Some(RetrySpec::Fixed { attempts, delay });
        self
    }

    /// Like [`Step::retries`], but the number of attempts is computed from the run input, for runs whose retry
    /// budget is a parameter.
    pub fn retries_from_input(
        mut self,
        attempts: impl Fn(&Value) -> u32 + Send + Sync + 'static,
        delay: Duration,
    ) -> Self {
        self.retry = Some(RetrySpec::FromInput { attempts: Arc::new(attempts), delay });
        self
    }
}

/// Rejects ids the engine cannot address: empty ones and dotted ones (dots separate nested paths).
pub(crate) fn check_id(id: &str) {
    assert!(!id.is_empty(), "step id must not be empty");
    assert!(!id.contains('.'), "step id '{id}' must not contain '.', which separates nested step paths");
}

/// How a step invocation ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The step's output, the next step's input.
    Done(Value),
    /// Wait for a resume. `payload` tells the resumer what is needed; `resume_label` lets it resume by label;
    /// `resume_schema`, when set, is what the resume data must satisfy this time, instead of the step's own
    /// [`Step::resume_schema`] (for a step whose suspensions wait for different things, such as an agent's tools).
    Suspend {
        /// What the resumer needs to decide (streamed in `StepSuspended`).
        payload: Value,
        /// A label to resume by, instead of the step's path.
        resume_label: Option<String>,
        /// What the resume data must satisfy this time.
        resume_schema: Option<Schema>,
    },
    /// End the run now, successfully, with this value as its result.
    Bail(Value),
}

impl StepOutcome {
    /// [`StepOutcome::Done`].
    pub fn done(output: Value) -> Self {
        Self::Done(output)
    }

    /// [`StepOutcome::Suspend`] without a label or a schema of its own.
    pub fn suspend(payload: Value) -> Self {
        Self::Suspend { payload, resume_label: None, resume_schema: None }
    }

    /// Attaches a resume label to a `Suspend` (no effect on other outcomes).
    pub fn with_label(self, label: impl Into<String>) -> Self {
        match self {
            Self::Suspend { payload, resume_schema, .. } => {
                Self::Suspend { payload, resume_label: Some(label.into()), resume_schema }
            }
            other => other,
        }
    }

    /// Attaches the schema this suspension's resume data must satisfy to a `Suspend` (no effect on other
    /// outcomes). It replaces the step's own resume schema for this suspension: in its `StepSuspended` event and
    /// when `ResumeStream` checks the data. Ignored inside a foreach, whose iterations share the step's schema.
    pub fn with_resume_schema(self, schema: Schema) -> Self {
        match self {
            Self::Suspend { payload, resume_label, .. } => {
                Self::Suspend { payload, resume_label, resume_schema: Some(schema) }
            }
            other => other,
        }
    }

    /// [`StepOutcome::Bail`].
    pub fn bail(value: Value) -> Self {
        Self::Bail(value)
    }
}

impl From<Value> for StepOutcome {
    fn from(output: Value) -> Self {
        Self::Done(output)
    }
}

/// A step failure. Retryable by default; mark it [`StepError::non_retryable`] when trying again cannot help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    message: String,
    details: Option<Value>,
    retryable: bool,
    tripwire: bool,
}

impl StepError {
    /// A retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), details: None, retryable: true, tripwire: false }
    }

    /// A guardrail stopped the step (an agent's tripwire): not retried, and the run ends as TRIPWIRE rather than
    /// FAILED.
    pub fn tripwire(message: impl Into<String>) -> Self {
        Self { message: message.into(), details: None, retryable: false, tripwire: true }
    }

    /// Whether this is a guardrail's stop ([`StepError::tripwire`]).
    pub fn is_tripwire(&self) -> bool {
        self.tripwire
    }

    /// Structured details, reported with the error (under `details.details`).
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Skip the remaining attempts (Mastra's `MastraNonRetryableError`).
    pub fn non_retryable(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured details, if any ([`StepError::with_details`]).
    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// Whether the remaining attempts are tried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Everything one step invocation sees. Owned and cheap to clone (one `Arc`), so step code can move it into
/// spawned tasks.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) shared: Arc<ContextShared>,
    pub(crate) attempt: u32,
}

/// The part of a [`StepContext`] that does not change between attempts.
pub(crate) struct ContextShared {
    pub(crate) run_id: Arc<str>,
    pub(crate) tenant: Arc<str>,
    /// The run's workflow (the top-level one, also for a step of a nested workflow).
    pub(crate) workflow_id: Arc<str>,
    pub(crate) step_id: Arc<str>,
    /// The call id of this invocation's `step_start` (empty inside a foreach, whose iterations have none).
    pub(crate) step_call_id: String,
    pub(crate) input: Value,
    pub(crate) run_input: Arc<Value>,
    pub(crate) resume_data: Option<Value>,
    /// What the step saved with [`StepContext::save_state`] when it last suspended (on resume only).
    pub(crate) saved_state: Option<Value>,
    pub(crate) state_to_save: std::sync::Mutex<Option<Value>>,
    pub(crate) request_context: Arc<Map<String, Value>>,
    pub(crate) for_each_index: Option<u32>,
    pub(crate) iteration: u32,
    pub(crate) writer: Writer,
    pub(crate) cancel: CancellationToken,
    pub(crate) clock: Arc<dyn Clock>,
    /// The attempt the stream shows (`step_start.attempt`, 1 for the first): retries and a remote step's
    /// redeliveries both count, so the numbers of one step call only grow.
    pub(crate) shown_attempt: AtomicU32,
}

impl ContextShared {
    /// Emits `step_waiting` for this step call. The one construction of it for a step's own waits (a retry's
    /// backoff, a remote step waiting for a worker); whether the step shows events at all is the caller's to say.
    pub(crate) fn emit_waiting(
        &self,
        reason: WaitReason,
        wake_at: Option<SystemTime>,
        task_type: Option<Arc<str>>,
        attempt: u32,
    ) {
        self.emit(EventKind::StepWaiting { step_id: Arc::clone(&self.step_id), wake_at, reason, task_type, attempt });
    }

    /// Emits another `step_start` of this step call (same call id and input) for `attempt`: a retry, or a remote
    /// step's redelivery. Whether the step shows events at all is the caller's to say.
    pub(crate) fn emit_start(&self, attempt: u32) {
        self.emit(EventKind::StepStart {
            step_id: Arc::clone(&self.step_id),
            step_call_id: self.step_call_id.clone(),
            input: self.input.clone(),
            resume_data: self.resume_data.clone(),
            iteration_count: self.iteration,
            attempt,
        });
    }

    fn emit(&self, kind: EventKind) {
        self.writer.sink.emit(Event { source: EventSource::Workflow, kind });
    }
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("run_id", &self.shared.run_id)
            .field("step_id", &self.shared.step_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The tenant the run belongs to (`""` on a server without authentication): work the step hands elsewhere
    /// keeps it, so that only that tenant's workers get it.
    pub fn tenant(&self) -> &Arc<str> {
        &self.shared.tenant
    }

    /// The id of the run's workflow (the top-level one, also for a step of a nested workflow).
    pub fn workflow_id(&self) -> &str {
        &self.shared.workflow_id
    }

    /// Dotted path of the step (`child.step` inside nested workflow `child`).
    pub fn step_id(&self) -> &str {
        &self.shared.step_id
    }

    /// The step's input: the previous step's output (the run input for the first step, the item in a foreach).
    pub fn input(&self) -> &Value {
        &self.shared.input
    }

    /// The run's input, whatever step this is.
    pub fn run_input(&self) -> &Value {
        &self.shared.run_input
    }

    /// The resume data, only when this invocation resumes the step after it suspended.
    pub fn resume_data(&self) -> Option<&Value> {
        self.shared.resume_data.as_ref()
    }

    /// The state this step saved with [`StepContext::save_state`] before it suspended; `Some` only when it is
    /// being resumed.
    pub fn saved_state(&self) -> Option<&Value> {
        self.shared.saved_state.as_ref()
    }

    /// Keeps `state` for the resume if the step then returns [`StepOutcome::Suspend`]: private bookkeeping (an
    /// agent's conversation, say) that the suspend payload, which callers see, should not carry. It lives in the
    /// run's snapshot (so it is stored with the run) and is handed back by [`StepContext::saved_state`]. Ignored
    /// when the step does not suspend, and inside a foreach.
    pub fn save_state(&self, state: Value) {
        *self.shared.state_to_save.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// 0-based attempt number (retries).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The run's key/value request context, handed to every step.
    pub fn request_context(&self) -> &Map<String, Value> {
        &self.shared.request_context
    }

    /// [`request_context`](Self::request_context), shared rather than copied (an agent hands it to every tool call).
    pub(crate) fn request_context_shared(&self) -> &Arc<Map<String, Value>> {
        &self.shared.request_context
    }

    /// The item's index when the step runs inside a foreach.
    pub fn for_each_index(&self) -> Option<u32> {
        self.shared.for_each_index
    }

    /// 1-based iteration inside dowhile/dountil, 0 elsewhere.
    pub fn iteration(&self) -> u32 {
        self.shared.iteration
    }

    /// Streams values and custom data to the run's event log.
    pub fn writer(&self) -> &Writer {
        &self.shared.writer
    }

    /// True once the run is canceled. Long synchronous loops should check it.
    pub fn is_canceled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Completes when the run is canceled (the engine also drops the step's future then).
    pub async fn cancelled(&self) {
        self.shared.cancel.cancelled().await
    }

    /// The run's cancellation token, for step code that spawns its own tasks.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.shared.cancel
    }

    /// The run's clock (injectable; tests use a manual one).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The current time on the run's clock.
    pub fn now(&self) -> SystemTime {
        self.shared.clock.now()
    }

    /// Emits `step_waiting` for this step (a remote step waiting for a worker). Not inside a foreach, whose
    /// iterations have no step events of their own.
    pub(crate) fn report_waiting(&self, reason: WaitReason, wake_at: Option<SystemTime>, task_type: Option<Arc<str>>) {
        if self.shared.for_each_index.is_some() {
            return;
        }
        self.shared.emit_waiting(reason, wake_at, task_type, 0);
    }

    /// The step waited (it emitted `step_waiting`) and now runs without an event saying so (a remote step's task
    /// was taken by a worker): the run is no longer waiting.
    pub(crate) fn report_running(&self) {
        if self.shared.for_each_index.is_none() {
            self.shared.writer.sink.step_running();
        }
    }

    /// The attempt the stream shows now (`step_start.attempt`): 1, then one more per retry or redelivery.
    pub(crate) fn shown_attempt(&self) -> u32 {
        self.shared.shown_attempt.load(Ordering::Acquire)
    }

    /// Emits another `step_start` (same call id) for delivery `attempt` (2, 3, ...) of a remote step handed to a
    /// new worker. Not inside a foreach.
    pub(crate) fn report_redelivery(&self, attempt: u32) {
        self.shared.shown_attempt.fetch_max(attempt, Ordering::AcqRel);
        if self.shared.for_each_index.is_some() || self.shared.step_call_id.is_empty() {
            return;
        }
        self.shared.emit_start(attempt);
    }
}

/// Streams step output into the run's event log. Cheap to clone.
///
/// [`write`](Self::write), [`custom`](Self::custom) and [`custom_with`](Self::custom_with) are `async`: with a
/// store, a write waits while the run has more events waiting to be stored than one commit takes (a few thousand),
/// so a step that writes faster than the disk slows itself instead of growing the server's memory and delaying
/// other runs. Readers never make a write wait. Without a store a write never waits. A write that waited and found
/// the run canceled returns an error and streams nothing. (Since issue 12: before, these were plain functions.)
///
/// Every writer, wherever its step runs (nested workflow, loop, foreach, parallel), writes to the one sink of the
/// run, tagged with the step's full dotted path.
///
/// An event larger than the run's event limit (what clients can decode) is refused, never streamed: the write
/// returns the error, and the step fails with it when it returns, whatever it returns.
#[derive(Clone)]
pub struct Writer {
    sink: Arc<dyn EventSink>,
    step_id: Arc<str>,
    /// The phase's token count: agent steps report each model call's usage here, so that the run's usage
    /// (workflow_finish, GetResult) adds up every agent it ran.
    usage: Arc<UsageMeter>,
    /// The first write the sink refused for its size, which fails the step.
    refused: Arc<std::sync::OnceLock<StepError>>,
    /// The run's cancel: it ends a write's wait for the store.
    cancel: CancellationToken,
}

/// Token usage summed over a phase, shared by every writer of that phase.
#[derive(Debug, Default)]
pub(crate) struct UsageMeter(std::sync::Mutex<Usage>);

impl UsageMeter {
    pub(crate) fn add(&self, usage: &Usage) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).add(usage);
    }

    pub(crate) fn total(&self) -> Usage {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("step_id", &self.step_id).finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(
        sink: Arc<dyn EventSink>,
        step_id: Arc<str>,
        usage: Arc<UsageMeter>,
        cancel: CancellationToken,
    ) -> Self {
        Self { sink, step_id, usage, refused: Arc::default(), cancel }
    }

    /// Waits until the sink takes more writes ([`EventSink::ready`]). Fails when the run was canceled meanwhile: a
    /// canceled run's writer must not stay parked, nor (in a loop that ignores the cancel) fill the store again.
    async fn room(&self) -> Result<(), StepError> {
        // The fast path is one atomic load: no allocation, no lock, no cancel check per write.
        let Some(ready) = self.sink.ready() else { return Ok(()) };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {}
            () = ready => {}
        }
        if self.cancel.is_cancelled() {
            return Err(StepError::new(format!("step '{}': the run was canceled", self.step_id)).non_retryable());
        }
        Ok(())
    }

    /// Emits `event` unless the sink refuses it for its size; a refusal is kept to fail the step.
    fn send(&self, what: &str, event: Event) -> Result<(), StepError> {
        match self.sink.try_emit_ref(&event) {
            Ok(()) => Ok(()),
            Err(too_large) => {
                let error = StepError::new(format!(
                    "step '{}': a {what} event was refused and not streamed: it is {too_large}; write smaller \
                     pieces, or raise the server's --max-event-bytes (clients must accept messages that large too)",
                    self.step_id
                ))
                .non_retryable()
                .with_details(serde_json::json!({ "eventBytes": too_large.size, "limitBytes": too_large.limit }));
                Err(self.refused.get_or_init(|| error).clone())
            }
        }
    }

    /// The first write refused for its size, if any: the step fails with it.
    pub(crate) fn refused(&self) -> Option<StepError> {
        self.refused.get().cloned()
    }

    /// Emits a `StepOutput` event carrying `output` (Mastra's `writer.write`), after waiting while the store is
    /// behind (see [`Writer`]). Fails (and the step with it) when the event is larger than the run's event limit;
    /// nothing is streamed then. Fails without streaming when the run was canceled while the write waited.
    #[inline]
    pub async fn write(&self, output: Value) -> Result<(), StepError> {
        self.room().await?;
        self.send(
            "step_output",
            Event {
                source: EventSource::User,
                kind: EventKind::StepOutput { step_id: Arc::clone(&self.step_id), output },
            },
        )
    }

    /// Emits a `Custom` event (Mastra's `data-*` chunk). `kind` is prefixed with `data-` unless it already is.
    /// Waits and fails like [`Writer::write`].
    pub async fn custom(&self, kind: impl Into<String>, data: Value) -> Result<(), StepError> {
        self.custom_with(kind, data, None, false).await
    }

    /// [`Writer::custom`] with an id and the transient flag (transient chunks are for live display only).
    pub async fn custom_with(
        &self,
        kind: impl Into<String>,
        data: Value,
        id: Option<String>,
        transient: bool,
    ) -> Result<(), StepError> {
        self.room().await?;
        let mut kind: String = kind.into();
        if !kind.starts_with("data-") {
            kind.insert_str(0, "data-");
        }
        self.send(
            "custom",
            Event {
                source: EventSource::User,
                kind: EventKind::Custom { step_id: Arc::clone(&self.step_id), kind, data, id, transient },
            },
        )
    }

    /// Emits one chunk of an agent running as this step, tagged with the step's path so that clients can tell
    /// which step's agent is talking. Sync and never waits: an agent emits at the pace of its model.
    pub fn agent(&self, chunk: AgentChunk) {
        // Each model call's usage is counted once, at its step finish (the agent's finish repeats the total).
        if let AgentChunk::AgentStepFinish { usage, .. } = &chunk {
            self.usage.add(usage);
        }
        // A refused chunk (a huge tool result) fails the step when it returns; the agent loop need not check.
        let _ = self.send(
            "agent chunk",
            Event {
                source: EventSource::Agent,
                kind: EventKind::Agent { step_id: Some(Arc::clone(&self.step_id)), chunk },
            },
        );
    }

    /// Emits one event of an agent network running as this step (source `Network`, tagged with the step's path).
    /// Like [`Writer::agent`], it counts each model call's usage once: the routing agent's (at `RoutingAgentEnd`)
    /// and every nested agent step's finish, whether the agent was delegated to directly or ran inside a delegated
    /// workflow.
    pub fn network(&self, event: NetworkEvent) {
        match &event {
            NetworkEvent::RoutingAgentEnd { usage, .. } => self.usage.add(usage),
            NetworkEvent::AgentExecutionEvent { chunk, .. } => {
                if let AgentChunk::AgentStepFinish { usage, .. } = &**chunk {
                    self.usage.add(usage);
                }
            }
            NetworkEvent::WorkflowExecutionEvent { event, .. } => {
                if let EventKind::Agent { chunk: AgentChunk::AgentStepFinish { usage, .. }, .. } = &**event {
                    self.usage.add(usage);
                }
            }
            _ => {}
        }
        // Like `agent`: a refusal fails the step when it returns.
        let _ = self.send(
            "network",
            Event {
                source: EventSource::Network,
                kind: EventKind::Network { step_id: Some(Arc::clone(&self.step_id)), event },
            },
        );
    }

    /// Adds the usage of model calls that no event reports (a network's calls that turn a prompt into a workflow's
    /// or tool's input, or that produce its structured output) to the run's count, which otherwise adds up only
    /// what [`Writer::agent`] and [`Writer::network`] see.
    pub(crate) fn count_usage(&self, usage: &Usage) {
        self.usage.add(usage);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Event>>);
    impl EventSink for Collect {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[tokio::test]
    async fn custom_kind_gets_data_prefix_once() {
        let sink = Arc::new(Collect::default());
        let w = Writer::new(sink.clone(), Arc::from("s"), Arc::default(), CancellationToken::new());
        w.custom("progress", json!(1)).await.unwrap();
        w.custom("data-progress", json!(2)).await.unwrap();
        let events = sink.0.lock().unwrap();
        for e in events.iter() {
            match &e.kind {
                EventKind::Custom { kind, .. } => assert_eq!(kind, "data-progress"),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(e.source, EventSource::User);
        }
        assert_eq!(events.len(), 2);
    }

    /// A sink that never has room: a write waits until the run is canceled.
    struct Full(Collect);
    impl EventSink for Full {
        fn emit(&self, event: Event) {
            self.0.emit(event);
        }
        fn ready(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
            Some(Box::pin(std::future::pending()))
        }
    }

    #[tokio::test]
    async fn a_waiting_write_ends_with_the_cancel_and_streams_nothing() {
        let sink = Arc::new(Full(Collect::default()));
        let cancel = CancellationToken::new();
        let w = Writer::new(sink.clone(), Arc::from("s"), Arc::default(), cancel.clone());
        let write = tokio::spawn(async move { w.write(json!(1)).await });
        tokio::task::yield_now().await;
        cancel.cancel();
        let error = tokio::time::timeout(std::time::Duration::from_secs(10), write)
            .await
            .expect("the cancel ends the wait")
            .expect("no panic")
            .expect_err("a canceled write fails");
        assert!(error.message().contains("canceled"), "{error}");
        assert!(sink.0.0.lock().unwrap().is_empty());
    }

    #[test]
    fn outcome_constructors() {
        assert_eq!(StepOutcome::from(json!(1)), StepOutcome::Done(json!(1)));
        assert_eq!(
            StepOutcome::suspend(json!({"a": 1})).with_label("l"),
            StepOutcome::Suspend { payload: json!({"a": 1}), resume_label: Some("l".into()), resume_schema: None }
        );
        let schema = Schema::compile(json!({"type": "string"})).unwrap();
        assert_eq!(
            StepOutcome::suspend(json!(1)).with_resume_schema(schema.clone()).with_label("l"),
            StepOutcome::Suspend { payload: json!(1), resume_label: Some("l".into()), resume_schema: Some(schema) }
        );
        assert_eq!(
            StepOutcome::done(json!(3)).with_resume_schema(Schema::compile(json!({})).unwrap()),
            json!(3).into()
        );
        assert_eq!(StepOutcome::bail(json!(2)).with_label("x"), StepOutcome::Bail(json!(2)));
    }

    #[test]
    fn errors_are_retryable_unless_marked() {
        let e: StepError = "boom".into();
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "boom");
        assert!(!StepError::new("x").non_retryable().is_retryable());
    }

    #[test]
    #[should_panic(expected = "must not contain '.'")]
    fn dotted_ids_are_rejected() {
        let _ = Step::new("a.b", |_ctx| async { Ok(StepOutcome::Done(Value::Null)) });
    }
}
