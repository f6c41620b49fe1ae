//! Agents: instructions, a model and tools, run in a loop that streams every step as
//! [`AgentChunk`](crate::engine::AgentChunk)s.
//!
//! - [`Agent`] and [`Tool`]: what an agent is. Tools check their arguments against their JSON Schema before they
//!   run, because the arguments come from a model and may be anything.
//! - [`run_agent`]: the loop. It emits chunks through a callback, so that it knows nothing of the engine; run as a
//!   workflow step ([`agent_step`]) the callback is the step's [`Writer::agent`](crate::engine::Writer::agent).
//!
//! # The loop and the chunks it emits
//!
//! `AgentStart`, then per model call ("step"): `AgentStepStart`, the model's response mapped to chunks
//! (`ResponseMetadata`; `TextStart`/`TextDelta`/`TextEnd`; `ReasoningStart`/`ReasoningDelta`/`ReasoningEnd`;
//! `SourceRef` for each URL the model cites, `FileData` for each file it generates; per tool call `ToolCallInputStreamingStart`, `ToolCallDelta`s, and once the response is complete
//! `ToolCallInputStreamingEnd` and `ToolCall` with the parsed arguments), then the tools' `ToolResult`s or
//! `ToolError`s, then `AgentStepFinish`. As in Mastra (and the AI SDK it builds on) a step is a model call *and* the
//! tool executions it asked for, so tool results come before the step's finish. A tool's failure (bad JSON, schema
//! violation, unknown tool, the tool's own error) is reported to the model as that tool's result and the loop goes
//! on: the model may correct itself. The loop ends when a response makes no tool calls (finish reason stop,
//! length, ...) or after `max_steps` model calls, with `AgentFinish` (usage summed over all calls, the last call's
//! text).
//!
//! A text or reasoning part is closed (`TextEnd`/`ReasoningEnd`) when the response switches to another kind of
//! content (a source and a file count as content of their own) or ends, so parts never interleave. A reasoning
//! part's signature (`ReasoningSignature`) comes inside the part, after the reasoning it signs and before its
//! `ReasoningEnd`, which repeats it; a signature that arrives after its part closed names that part. Redacted
//! reasoning (`RedactedReasoning`, the provider's opaque payload) goes in the open reasoning part, or opens one.
//! Source ids count up within the run like part ids (`source-1`, ...).
//!
//! **Retries** ([`ModelChunk::Restart`](crate::model::ModelChunk::Restart), from `RetryingModel`): the chunks
//! already emitted for the failed attempt stay in the log (they were streamed live and cannot be taken back), so
//! the loop closes whatever part is open (`TextEnd`, `ReasoningEnd`, `ToolCallInputStreamingEnd` for calls whose
//! input was streaming), forgets the attempt's text, tool calls, finish and usage, and maps the re-streamed attempt
//! as if it were the first, in fresh parts with new ids. Clients that render text should therefore drop a part
//! that ends without its step's `AgentStepFinish` counting it: the step's `text` is the authoritative answer.
//!
//! **Errors**: a model error (retries spent, or a permanent one) closes what is open (as for a retry) and ends the
//! loop with `AgentError` and a failed [`AgentOutcome`]. **Cancellation** ends it with `AgentAbort`, also when the loop's future is dropped before it
//! ends (the engine drops a canceled step's future), so that the stream always says why the agent stopped.
//!
//! **Approval**: a tool built [`Tool::with_approval`] is not run when the model calls it: the loop emits
//! `ToolCallApproval` and ends with [`AgentEnd::AwaitingApproval`] and its state (the conversation, counters and the
//! queue of calls still to run). As a step, the state goes into the run's snapshot (`StepContext::save_state`), not
//! into the suspend payload callers see, and the step suspends; resumed with `{"approved", "reason"}`, the loop
//! continues from that call: approved, the tool runs; declined, `ToolOutputDenied`, and the model reads that the
//! user declined (so it can answer without it). The step's `AgentStepFinish` comes once all its calls are answered.
//!
//! **Tools that suspend themselves** (Mastra's `suspend()` in a tool): a tool built [`Tool::with_resume_schema`]
//! returns `Err(ctx.suspend(payload))` ([`ToolContext::suspend`]) when it needs data only a person has. The loop
//! emits `ToolCallSuspended` (payload, arguments, the tool's resume schema) and ends with [`AgentEnd::Suspended`],
//! its state saved as for an approval; as a step it suspends with that tool's resume schema, which `ResumeStream`
//! checks the data against (INVALID_ARGUMENT otherwise). Resumed, the tool is called again with the same arguments
//! and the data in [`ToolContext::resume_data`]; what it returns then is the call's `ToolResult` (or it may suspend
//! again).
//!
//! **Guardrails** ([`OutputGuardrail`]): checked on the answer so far before each text delta goes out; one that
//! objects stops the model call (the delta is never emitted), then `Tripwire`, `AgentStepFinish` and `AgentFinish`
//! with reason `Tripwire`; as a step it fails with `StepError::tripwire`, which ends the run as TRIPWIRE.
//!
//! **Structured output** ([`AgentOptions::output_schema`]): every model call is asked for that JSON; text deltas
//! stream as `ObjectPartial` (the growing JSON completed best-effort) instead of text parts, and the final answer is
//! parsed and checked (`ObjectResult`, `AgentFinish.object`) or fails with `AgentError` naming the field.
//!
//! **Tool output**: a tool may stream output while it runs ([`ToolContext::write`]), emitted as `ToolOutput` before
//! its result.
//!
//! Not yet: memory (threads); reasoning signatures and redacted reasoning are streamed but not sent back to the
//! model in later calls.

mod chunks;
mod partial_json;
mod run;
mod suspend;
#[cfg(test)]
mod tests;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

pub use run::{AgentEnd, AgentInput, AgentOptions, AgentOutcome, run_agent, run_agent_with};
pub(crate) use suspend::APPROVAL_SCHEMA;
pub use suspend::{ApprovalDecision, approval_schema};

use crate::{
    engine::{
        RunKind, RunnableMeta, SchemaViolation, Step, StepError, StepOutcome, ToolMeta, Workflow,
        renamed::{self, RenamedKey},
        schema::Schema,
    },
    model::{Message, ModelProvider, ReasoningEffort, ToolSpec},
};

/// Default bound on model calls per run: enough for a few rounds of tool use, small enough that a model stuck
/// calling tools stops soon.
pub const DEFAULT_MAX_STEPS: u32 = 5;

/// An agent: a model, instructions (sent as the system message) and the tools the model may call. Cheap to share
/// as `Arc<Agent>`.
#[derive(Clone)]
pub struct Agent {
    /// Unique among the agents served; also the id of its runs' workflow and step.
    pub id: Arc<str>,
    /// What the agent does, for callers (ListWorkflows) and for a network's routing agent.
    pub description: String,
    /// The system message.
    pub instructions: String,
    /// The model it calls.
    pub model: Arc<dyn ModelProvider>,
    /// The tools the model may call.
    pub tools: Vec<Tool>,
    /// Checks of the answer as it streams; the first that objects stops the agent with a tripwire.
    pub output_guardrails: Vec<OutputGuardrail>,
    /// Most model calls one run makes (at least 1).
    pub max_steps: u32,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("model", &self.model.model_id())
            .field("tools", &self.tools.iter().map(|t| t.name()).collect::<Vec<_>>())
            .field("max_steps", &self.max_steps)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent without tools, description or guardrails, making at most [`DEFAULT_MAX_STEPS`] model calls a run.
    pub fn new(id: impl Into<String>, instructions: impl Into<String>, model: Arc<dyn ModelProvider>) -> Self {
        Self {
            id: Arc::from(id.into()),
            description: String::new(),
            instructions: instructions.into(),
            model,
            tools: Vec::new(),
            output_guardrails: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
        }
    }

    /// Adds a check of the answer as it streams.
    pub fn output_guardrail(mut self, guardrail: OutputGuardrail) -> Self {
        self.output_guardrails.push(guardrail);
        self
    }

    /// Whether some tool of this agent waits for a person's approval (its runs can then suspend).
    pub fn needs_approvals(&self) -> bool {
        self.tools.iter().any(Tool::requires_approval)
    }

    /// Whether its runs can suspend: a tool needs approval or may suspend itself.
    pub fn can_suspend(&self) -> bool {
        self.tools.iter().any(|t| t.requires_approval() || t.resume_schema.is_some())
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Sets the most model calls one run makes (at least 1).
    pub fn max_steps(mut self, max_steps: u32) -> Self {
        self.max_steps = max_steps.max(1);
        self
    }

    /// The tool named `name`, if the agent has it.
    pub fn find_tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name() == name)
    }
}

/// What a tool sees besides its arguments.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The agent whose model called the tool.
    pub agent_id: Arc<str>,
    /// The call's id, as the model assigned it.
    pub tool_call_id: Arc<str>,
    /// Fired when the run is canceled; long-running tools should stop then (the loop also stops waiting).
    pub cancel: CancellationToken,
    /// Where [`ToolContext::write`] sends output; `None` where nobody streams it.
    pub output: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    /// The run the call belongs to, when the agent runs as a step of one; `None` elsewhere. With `step_id`,
    /// `step_number` and `tool_call_id` it names the call: `run_id/step_id/step_number/tool_call_id`, an
    /// idempotency key for a side effect that holds across a worker's redelivery and an approval's resume (a run
    /// recovered after a crash asks the model again, which may call other tools, or the same with other ids).
    pub run_id: Option<Arc<str>>,
    /// The path of the agent's step in that run, with `/<index>` inside a foreach.
    pub step_id: Option<Arc<str>>,
    /// Which of the agent's model calls made this tool call: 1 for the first (`AgentStepStart.step_number`).
    pub step_number: u32,
    /// The request context the run was started with (empty outside a run).
    pub request_context: Arc<Map<String, Value>>,
    /// The tenant of the run (`""` outside a run, or without authentication): a worker's task keeps it.
    pub tenant: Arc<str>,
    /// What the call was resumed with, after it suspended itself; see [`ToolContext::resume_data`].
    pub(crate) resume: Option<Value>,
}

impl ToolContext {
    /// A context for one call (no output stream, no resume data), e.g. to call a [`Tool`] directly.
    pub fn new(agent_id: Arc<str>, tool_call_id: Arc<str>, cancel: CancellationToken) -> Self {
        Self {
            agent_id,
            tool_call_id,
            cancel,
            output: None,
            run_id: None,
            step_id: None,
            step_number: 0,
            request_context: Arc::default(),
            tenant: Arc::default(),
            resume: None,
        }
    }

    /// Suspends the call, Mastra's `suspend(payload)`: `return Err(ctx.suspend(payload))`. The agent emits
    /// `ToolCallSuspended` (with `payload`, the arguments and the tool's resume schema) and its run suspends;
    /// `ResumeStream` with data that satisfies [`Tool::with_resume_schema`]'s schema calls the tool again, with the
    /// same arguments and that data in [`resume_data`](Self::resume_data). Only a tool built with a resume schema
    /// can suspend: elsewhere (another tool, or any tool called outside an agent's loop) the returned error is the
    /// call's failure.
    pub fn suspend(&self, payload: Value) -> ToolError {
        ToolError {
            name: "ToolSuspended".to_owned(),
            message: format!("tool call {} suspended itself to wait for resume data", self.tool_call_id),
            suspend_payload: Some(Box::new(payload)),
        }
    }

    /// The resume data, when this invocation continues a call that suspended itself; `None` on the first one.
    pub fn resume_data(&self) -> Option<&Value> {
        self.resume.as_ref()
    }

    /// Streams a piece of output while the tool runs (progress, partial results): the agent emits it as a
    /// `ToolOutput` chunk at once, before the tool's result. Never blocks.
    pub fn write(&self, output: Value) {
        if let Some(tx) = &self.output {
            // The loop stopped listening only if the run is over; the output has nowhere to go then.
            let _ = tx.send(output);
        }
    }
}

/// A tool's failure. Reported to the model as the tool's result (so it can correct itself) and streamed as
/// `ToolError`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    /// Error class for the `ToolError` chunk, e.g. `ToolError`, `ToolArgsError`.
    pub name: String,
    /// What went wrong; the model is shown it.
    pub message: String,
    /// Set by [`ToolContext::suspend`]: not a failure but a suspension, with this payload.
    suspend_payload: Option<Box<Value>>,
}

impl ToolError {
    /// The tool failed (class `ToolError`).
    pub fn new(message: impl Into<String>) -> Self {
        Self { name: "ToolError".to_owned(), message: message.into(), suspend_payload: None }
    }

    /// The arguments are unusable (invalid JSON, schema violation): the model's mistake, not the tool's.
    pub fn args(message: impl Into<String>) -> Self {
        Self { name: "ToolArgsError".to_owned(), message: message.into(), suspend_payload: None }
    }

    /// The payload, when this is a suspension ([`ToolContext::suspend`]) rather than a failure.
    pub fn suspend_payload(&self) -> Option<&Value> {
        self.suspend_payload.as_deref()
    }
}

impl From<String> for ToolError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ToolError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// The boxed future a tool function returns.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<Value, ToolError>> + Send + 'static>>;
type ToolFn = Arc<dyn Fn(ToolContext, Value) -> ToolFuture + Send + Sync + 'static>;

/// A function the model may call, with a JSON Schema for its arguments. Cheap to clone.
#[derive(Clone)]
pub struct Tool {
    name: Arc<str>,
    description: String,
    parameters: Schema,
    func: ToolFn,
    requires_approval: bool,
    /// Set when the tool may suspend itself: what its resume data must satisfy.
    resume_schema: Option<Schema>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool named `name` (OpenAI accepts `^[a-zA-Z0-9_-]{1,64}$`) whose arguments satisfy `parameters`.
    ///
    /// # Panics
    /// If `parameters` is not a valid JSON Schema: tools are defined in code, so this is a programming error.
    pub fn new<F, Fut>(name: impl Into<String>, description: impl Into<String>, parameters: Value, f: F) -> Self
    where
        F: Fn(ToolContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ToolError>> + Send + 'static,
    {
        let name: String = name.into();
        let parameters = Schema::compile_or_panic(parameters, &format!("tool '{name}' parameters"));
        Self::with_schema(name, description, parameters, f)
    }

    /// [`Tool::new`] with its parameters' schema already compiled (a definition's, checked when registered).
    pub(crate) fn with_schema<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Schema,
        f: F,
    ) -> Self
    where
        F: Fn(ToolContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ToolError>> + Send + 'static,
    {
        let name: String = name.into();
        Self {
            name: Arc::from(name),
            description: description.into(),
            parameters,
            func: Arc::new(move |ctx, args| Box::pin(f(ctx, args))),
            requires_approval: false,
            resume_schema: None,
        }
    }

    /// The tool may suspend itself ([`ToolContext::suspend`]) to wait for data only a person (or another system)
    /// has; `schema` is what that resume data must satisfy, checked before the run is resumed.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn with_resume_schema(mut self, schema: Value) -> Self {
        self.resume_schema = Some(Schema::compile_or_panic(schema, &format!("tool '{}' resume schema", self.name)));
        self
    }

    /// JSON Schema of the resume data, for a tool that may suspend itself.
    pub fn resume_schema(&self) -> Option<&Value> {
        self.resume_schema.as_ref().map(Schema::raw)
    }

    /// [`resume_schema`](Self::resume_schema), compiled (as a suspension names it).
    pub(crate) fn compiled_resume_schema(&self) -> Option<&Schema> {
        self.resume_schema.as_ref()
    }

    /// Calls wait for a person: the agent emits `ToolCallApproval` and its run suspends until `ResumeStream` brings
    /// `{"approved": bool, "reason"?: string}` (declined: `ToolOutputDenied`, and the model is told).
    pub fn with_approval(mut self) -> Self {
        self.requires_approval = true;
        self
    }

    /// Whether calls wait for a person's approval ([`Tool::with_approval`]).
    pub fn requires_approval(&self) -> bool {
        self.requires_approval
    }

    /// How callers are shown the tool (ListWorkflows).
    pub fn meta(&self) -> ToolMeta {
        ToolMeta {
            name: self.name.to_string(),
            description: self.description.clone(),
            parameters: self.parameters.raw().clone(),
            requires_approval: self.requires_approval,
            resume_schema: self.resume_schema().cloned(),
        }
    }

    /// The name the model calls it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tool does, as the model is told.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// JSON Schema of the arguments.
    pub fn parameters(&self) -> &Value {
        self.parameters.raw()
    }

    /// How the tool is offered to a model.
    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.to_string(),
            description: self.description.clone(),
            parameters: self.parameters.raw().clone(),
        }
    }

    /// Checks `args` against the schema, then runs the tool.
    pub async fn call(&self, ctx: ToolContext, args: Value) -> Result<Value, ToolError> {
        self.parameters
            .validate(&args, "args")
            .map_err(|v| ToolError::args(format!("invalid arguments for tool '{}': {v}", self.name)))?;
        (self.func)(ctx, args).await
    }
}

type GuardrailFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An output guardrail (Mastra's output processor that aborts): sees the answer so far each time the model streams
/// more text, and returns a reason to stop the agent. The text that trips it is not emitted; the agent emits
/// `Tripwire`, and its run ends as TRIPWIRE.
#[derive(Clone)]
pub struct OutputGuardrail {
    id: Arc<str>,
    check: GuardrailFn,
}

impl fmt::Debug for OutputGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputGuardrail").field("id", &self.id).finish_non_exhaustive()
    }
}

impl OutputGuardrail {
    /// A guardrail named `id` (reported as the tripwire's processor id); `check` returns why the text must not go
    /// out, or `None`.
    pub fn new(id: impl Into<String>, check: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { id: Arc::from(id.into()), check: Arc::new(check) }
    }

    /// The guardrail's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Why the text must not go out, if it must not.
    pub fn check(&self, text: &str) -> Option<String> {
        (self.check)(text)
    }
}

/// A workflow step that runs `agent` on the prompt `prompt` builds from the step's input.
///
/// Every chunk goes to the run's log through the step's writer (source `Agent`, tagged with the step path). The
/// step's output is `{"text": final text, "usage": {...}}`. A failed agent fails the step with the agent's error
/// message; a canceled one returns an error that the executor, seeing the cancel, reports as a canceled step.
pub fn agent_step(
    id: impl Into<String>,
    agent: Arc<Agent>,
    prompt: impl Fn(&Value) -> String + Send + Sync + 'static,
) -> Step {
    let description = format!("Runs agent '{}'.", agent.id);
    let step = agent_step_with(id, agent.clone(), move |input| {
        Ok((vec![Message::user(prompt(input))], AgentOptions::default()))
    });
    with_resume_schemas(step, &agent).description(description)
}

/// What an agent step makes of its input: the conversation to start and the run's options.
type AgentStepInput = dyn Fn(&Value) -> Result<(Vec<Message>, AgentOptions), StepError> + Send + Sync;

/// The step function shared by [`agent_step`] and the standalone [`workflow`]: starts the agent on the input's
/// messages, or, resumed after a `ToolCallApproval` or `ToolCallSuspended`, continues it with the resume data (the
/// decision, or the data for the suspended tool).
fn agent_step_with(
    id: impl Into<String>,
    agent: Arc<Agent>,
    input: impl Fn(&Value) -> Result<(Vec<Message>, AgentOptions), StepError> + Send + Sync + 'static,
) -> Step {
    let input: Arc<AgentStepInput> = Arc::new(input);
    Step::new(id, move |ctx| {
        let agent = Arc::clone(&agent);
        let input = Arc::clone(&input);
        async move {
            // The options come from the step input, which a resumed step sees again, unchanged.
            let (messages, mut options) = input(ctx.input())?;
            options.run_id = Some(Arc::from(ctx.run_id()));
            options.request_context = Arc::clone(ctx.request_context_shared());
            options.tenant = Arc::clone(ctx.tenant());
            options.step_id = Some(match ctx.for_each_index() {
                Some(index) => Arc::from(format!("{}/{index}", ctx.step_id())),
                None => Arc::from(ctx.step_id()),
            });
            let start = match (ctx.resume_data(), ctx.saved_state()) {
                (None, _) => AgentInput::Messages(messages),
                (Some(data), Some(state)) => AgentInput::Resume { state: state.clone(), data: data.clone() },
                (Some(_), None) => {
                    return Err(StepError::new(format!(
                        "agent '{}' was resumed but has no tool call waiting for a decision or resume data",
                        agent.id
                    ))
                    .non_retryable());
                }
            };
            let writer = ctx.writer().clone();
            let cancel = ctx.cancellation_token().clone();
            let outcome = run_agent_with(&agent, start, &options, move |chunk| writer.agent(chunk), cancel).await;
            match outcome.end {
                AgentEnd::Finished(reason) => {
                    let mut output = json!({
                        "text": outcome.text,
                        "usage": outcome.usage,
                        "steps": outcome.steps,
                        "finishReason": reason.as_str(),
                    });
                    if let Some(object) = outcome.object {
                        output["object"] = object;
                    }
                    Ok(StepOutcome::Done(output))
                }
                AgentEnd::AwaitingApproval { approval, state } => {
                    ctx.save_state(state);
                    let payload = json!({
                        "reason": "tool-call-approval",
                        "toolCallId": &*approval.tool_call_id,
                        "toolName": &*approval.tool_name,
                        "args": approval.args,
                    });
                    Ok(StepOutcome::suspend(payload).with_resume_schema(APPROVAL_SCHEMA.clone()))
                }
                AgentEnd::Suspended { suspended, state } => {
                    ctx.save_state(state);
                    // Resume data is checked against the tool's own schema before the run resumes.
                    let schema = agent.find_tool(&suspended.tool_name).and_then(|t| t.resume_schema.clone());
                    let payload = json!({
                        "reason": "tool-call-suspended",
                        "toolCallId": &*suspended.tool_call_id,
                        "toolName": &*suspended.tool_name,
                        "args": suspended.args,
                        "suspendPayload": suspended.suspend_payload,
                    });
                    Ok(match schema {
                        Some(schema) => StepOutcome::suspend(payload).with_resume_schema(schema),
                        None => StepOutcome::suspend(payload),
                    })
                }
                AgentEnd::Tripwire { reason, processor_id } => Err(StepError::tripwire(reason)
                    .with_details(json!({ "processorId": processor_id, "agentId": &*agent.id }))),
                // The model client already retried transient failures; running the whole agent again would repeat
                // its streamed chunks and tool calls.
                AgentEnd::Failed(error) => Err(StepError::new(error.message).non_retryable()),
                AgentEnd::Aborted => Err(StepError::new(format!("agent '{}' was canceled", agent.id))),
            }
        }
    })
}

/// The step's own resume schema, for ListWorkflows: what any of its suspensions may take (an approval decision,
/// or a suspending tool's data). Each suspension names the one it takes, which is what resume data is checked
/// against.
fn with_resume_schemas(step: Step, agent: &Agent) -> Step {
    let mut schemas: Vec<Value> = Vec::new();
    if agent.needs_approvals() {
        schemas.push(approval_schema());
    }
    schemas.extend(agent.tools.iter().filter_map(|t| t.resume_schema().cloned()));
    match schemas.len() {
        0 => step,
        1 => step.resume_schema(schemas.remove(0)),
        _ => step.resume_schema(json!({
            "anyOf": schemas,
            "description": "depends on what suspended the run: see the resume_schema of its step_suspended event",
        })),
    }
}

/// The agent as a runnable: a one-step workflow of the same id, whose step (also named after the agent) runs it.
///
/// Input: `{"prompt": "..."}` or `{"messages": [{"role": "user", "content": "..."}, ...]}` (both: the prompt is
/// appended as a last user message), and optionally `"outputSchema"` (a JSON Schema: structured output) and
/// `"reasoningEffort"` (`low`, `medium`, `high`, or `hidden`: see [`ReasoningEffort::Hidden`]); the old spellings
/// `output_schema` and `reasoning_effort` are still taken until the next release, with a deprecation warning.
/// Result: `{"text", "usage", "steps", "finishReason", "object"?}`.
pub fn workflow(agent: Arc<Agent>) -> Arc<Workflow> {
    let step = agent_step_with(agent.id.to_string(), Arc::clone(&agent), |input| {
        agent_run_input(input).map_err(|e| StepError::new(e.to_string()).non_retryable())
    });
    let step = with_resume_schemas(step, &agent).description(format!("Runs agent '{}'.", agent.id));
    let runnable = format!("agent '{}'", agent.id);
    Workflow::builder(agent.id.to_string())
        .kind(RunKind::Agent)
        .meta(RunnableMeta {
            model: agent.model.model_id().to_owned(),
            tools: agent.tools.iter().map(Tool::meta).collect(),
            members: Vec::new(),
        })
        .description(agent.description.clone())
        .input_schema(agent_input_schema())
        // Checked once per run, when it starts: the place to warn about old spellings once.
        .input_check(move |input| {
            agent_run_input(input)?;
            renamed::warn_deprecated(input, &RENAMED_INPUT_KEYS, &runnable);
            Ok(())
        })
        .then(step)
        .commit()
}

/// Keys of an agent run's input that were snake_case before issue 10 (see [`renamed`]).
const RENAMED_INPUT_KEYS: [RenamedKey; 2] =
    [RenamedKey::new("outputSchema", "output_schema"), RenamedKey::new("reasoningEffort", "reasoning_effort")];

/// JSON Schema of an agent run's input (the old spellings of [`RENAMED_INPUT_KEYS`] as deprecated properties).
fn agent_input_schema() -> Value {
    let schema = json!({
        "type": "object",
        "properties": {
            "prompt": { "type": "string", "minLength": 1, "description": "the user's message" },
            "messages": {
                "type": "array",
                "minItems": 1,
                "description": "the conversation so far, oldest first",
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": { "enum": ["system", "user", "assistant"] },
                        "content": { "type": "string" }
                    },
                    "additionalProperties": false
                }
            },
            "outputSchema": { "type": "object", "description": "JSON Schema of a structured answer" },
            "reasoningEffort": {
                "enum": ["low", "medium", "high", "hidden"],
                "description": "ask the model to reason first; hidden: reason, but stream no readable reasoning"
            }
        },
        "anyOf": [{ "required": ["prompt"] }, { "required": ["messages"] }],
        "additionalProperties": false
    });
    renamed::with_deprecated_spellings(schema, &RENAMED_INPUT_KEYS)
}

/// The messages and options of an agent run's input (already checked against [`agent_input_schema`]).
fn agent_run_input(input: &Value) -> Result<(Vec<Message>, AgentOptions), SchemaViolation> {
    let violation = |path: &str, message: String| SchemaViolation { path: path.to_owned(), message };
    let mut messages: Vec<Message> = match input.get("messages") {
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| violation("input.messages", e.to_string()))?,
        None => Vec::new(),
    };
    if let Some(prompt) = input.get("prompt").and_then(Value::as_str) {
        messages.push(Message::user(prompt));
    }
    let [output_schema_key, reasoning_effort_key] = RENAMED_INPUT_KEYS;
    let output_schema = match output_schema_key.get(input)? {
        Some(given) => Some(
            Schema::compile(given.value.clone())
                .map_err(|e| violation(&given.path(), format!("not a valid JSON Schema: {e}")))?,
        ),
        None => None,
    };
    let reasoning_effort = match reasoning_effort_key.get(input)? {
        Some(given) => Some(
            serde_json::from_value::<ReasoningEffort>(given.value.clone())
                .map_err(|e| violation(&given.path(), e.to_string()))?,
        ),
        None => None,
    };
    Ok((messages, AgentOptions { output_schema, reasoning_effort, ..AgentOptions::default() }))
}
