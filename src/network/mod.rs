//! Agent networks: a routing agent that, iteration by iteration, delegates a task to agents, workflows and tools
//! until it judges the task complete (Mastra's `agent.network()`), streaming every step as [`NetworkEvent`]s.
//!
//! - [`Network`]: the routing model and instructions, the primitives it may delegate to, its completion checks.
//! - [`run_network`] / [`run_network_with`]: the loop. It emits events through a callback, so that it knows nothing
//!   of the run registry; as a workflow step ([`network_step`]) the callback is the step's
//!   [`Writer::network`](crate::engine::Writer::network).
//! - [`workflow`]: the network as a standalone run, a one-step workflow of the same id.
//! - The built-in networks, `research-network` and `travel-network`, are in [`crate::builtin`].
//!
//! # One iteration
//!
//! `RoutingAgentStart`, the routing model's answer as it streams (`RoutingAgentTextStart`,
//! `RoutingAgentTextDelta`s), then `RoutingAgentEnd` with the decision (a [`Delegation`]) and the call's usage.
//! The routing call asks for JSON, `{"primitive_id", "prompt", "selection_reason"}` with `primitive_id` one of the
//! primitives' ids or `"none"`. The answer is untrusted: one that is not that JSON, or that names no primitive of
//! the network, fails the run with an error saying what the router answered (there is nothing sensible to delegate
//! to). Then the delegation:
//!
//! - agent: `AgentExecutionStart`, its chunks as `AgentExecutionEvent`s, `AgentExecutionEnd` (its text, usage);
//! - workflow: `WorkflowExecutionStart` (a fresh nested run id), the nested run's events from `workflow_start` to
//!   `workflow_finish` as `WorkflowExecutionEvent`s, `WorkflowExecutionEnd` (status, result, usage). The nested
//!   run is a real phase of the engine with the network's clock and cancel token;
//! - tool: `ToolExecutionStart` (its arguments), `ToolExecutionEnd` (its result);
//!
//! and `NetworkStepFinish`. A workflow's or tool's input is the prompt when that is a JSON object; otherwise one
//! more call of the routing model turns the prompt into the input (structured output with the input's schema), so
//! that a router may answer in words. A primitive that fails (agent error, failed workflow, tool error, unusable
//! input) does not stop the network: its result is `{"error": "..."}` and the router reads it and decides, as an
//! agent does with a failed tool call.
//!
//! The router's conversation is: the system message (primitives, answer format), the task as the user's message,
//! then per iteration its decision and the primitive's result, both as assistant messages, so that the last user
//! message stays the task (or the latest completion feedback). The offline model routes on exactly that: it picks
//! each primitive the last user message names once, in the order named, then `"none"`.
//!
//! # Completion
//!
//! `"none"` means the router judges the task complete. The network's [`CompletionCheck`]s then run
//! (`NetworkValidationStart`, `NetworkValidationEnd`); if one fails, the iteration ends incomplete and the router
//! gets another with the reasons as a user message. When they pass: `NetworkStepFinish` (complete), the structured
//! output if one was asked for (`NetworkObject` partials, the schema-checked `NetworkObjectResult`), then
//! `NetworkFinish` ("task complete"). After `max_iterations` without completion: `NetworkFinish` ("max iterations
//! reached", no object). `NetworkFinish` carries the last delegation with the final result (the last primitive's
//! result; the router's own answer, its prompt, when no primitive ran) and the usage of every model call: routing,
//! delegated agents, agents inside delegated workflows, input and structured-output calls.
//!
//! # Cancellation
//!
//! `PrimitiveAbort` names what was running (routing agent, agent, workflow or tool) and nothing follows, also when
//! the loop's future is dropped mid-run (the engine drops a canceled step's future). A delegated agent emits its
//! own `AgentAbort` first; a delegated workflow's nested run ends with a canceled `workflow_finish` first.
//!
//! # Waiting for people
//!
//! A delegated primitive may wait for a person; the network then stops where it is and its step suspends (run
//! status SUSPENDED), as in Mastra:
//!
//! - a delegated agent's tool call needs approval: after the agent's own `ToolCallApproval` chunk,
//!   `AgentExecutionApproval` (the call, the agent's usage so far, the selection reason);
//! - a delegated tool needs approval ([`Tool::with_approval`]): after `ToolExecutionStart`, `ToolExecutionApproval`;
//! - a delegated workflow's nested run suspends: after its suspended `workflow_finish`, `WorkflowExecutionSuspended`
//!   (the nested run id, the suspended step's payload, the nested run's usage so far). When several of its steps
//!   wait, the network waits for the first (in path order); the others follow, one suspension each.
//!
//! The step's suspend payload says what is awaited: `{"reason": "agent-execution-approval", "iteration",
//! "agentId", "toolCallId", "toolName", "args"}`, `{"reason": "tool-execution-approval", "iteration",
//! "toolCallId", "toolName", "args"}` or `{"reason": "workflow-execution-suspended", "iteration",
//! "workflowId", "workflowRunId", "step", "suspendPayload", "forEachIndex"?}`; for a tool that suspended
//! itself, `{"reason": "agent-execution-suspended", "iteration", "agentId", "toolCallId", "toolName",
//! "suspendPayload"}` or `{"reason": "tool-execution-suspended", "iteration", "toolCallId", "toolName",
//! "suspendPayload"}`. Its resume schema is the approval's (`{"approved": bool, "reason"?: string}`), the nested
//! step's or the tool's, so `ResumeStream` refuses data that does not fit. The loop's state (the iteration, the router's conversation, the delegations so far, the usage, and
//! the waiting primitive's own state: the agent loop's, or the nested run's snapshot) goes into the run's snapshot
//! through [`StepContext::save_state`](crate::engine::StepContext::save_state), never into the payload.
//!
//! Resumed, the primitive goes on where it stopped: the agent with the decision (approved, the tool runs; declined,
//! `ToolOutputDenied` and the agent is told), the tool (approved, it runs; declined, its result is
//! `{"declined": true, "reason"}`, an answer rather than an error, so that the router may finish without it), the
//! nested run with the resume data (its next phase, same run id). Then its end event (`AgentExecutionEnd`, ...),
//! the iteration's `NetworkStepFinish`, and the loop goes on with the next iteration. A primitive's end event
//! reports its usage over all phases, and the network counts it then, once.
//!
//! A tool that suspends itself ([`ToolContext::suspend`](crate::agent::ToolContext::suspend)) suspends the network
//! the same way: inside a delegated agent as `AgentExecutionSuspended`, called by the router as
//! `ToolExecutionSuspended`; the resume data goes to the tool, which is called again.
//!
//! Not yet: memory (threads) across network runs.

mod delegate;
mod routing;
mod run;
#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

pub use run::{NetworkStart, ROUTING_AGENT_ID, run_network, run_network_with};

use crate::{
    agent::{Agent, Tool},
    clock::{Clock, SystemClock},
    engine::{
        Delegation, ErrorInfo, NetworkEvent, PrimitiveType, RunKind, RunnableMeta, SchemaViolation, Step, StepError,
        StepOutcome, Usage, Workflow,
        renamed::{self, Given, RenamedKey},
        schema::Schema,
    },
    model::ModelProvider,
};

/// Default bound on iterations (routing decisions) per run: room for a handful of delegations and a retry or two
/// after failed completion checks, small enough that a router going in circles stops soon.
pub const DEFAULT_MAX_ITERATIONS: u32 = 10;

/// The primitive id that means "the task is complete"; no primitive may use it.
pub const NONE_ID: &str = "none";

/// An agent network: a routing model with instructions, and the agents, workflows and tools it delegates to.
/// Primitive ids are one namespace (the router names a primitive by id alone). Cheap to share as `Arc<Network>`.
#[derive(Clone)]
pub struct Network {
    /// Unique among the runnables served; also the id of its runs' workflow and step.
    pub id: Arc<str>,
    /// What the network does, for callers (ListWorkflows).
    pub description: String,
    /// Added to the routing agent's system message.
    pub instructions: String,
    /// The routing agent's model; it also turns prompts into workflow and tool inputs, and writes structured output.
    pub model: Arc<dyn ModelProvider>,
    /// The agents it may delegate to.
    pub agents: Vec<Arc<Agent>>,
    /// The workflows it may delegate to (each runs as a nested run).
    pub workflows: Vec<Arc<Workflow>>,
    /// The tools it may call.
    pub tools: Vec<Tool>,
    /// Most iterations one run makes (at least 1).
    pub max_iterations: u32,
    /// Checked when the router says the task is complete (default: [`CompletionCheck::defaults`]).
    pub completion_checks: Vec<CompletionCheck>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("id", &self.id)
            .field("model", &self.model.model_id())
            .field("primitives", &self.primitive_ids())
            .field("max_iterations", &self.max_iterations)
            .finish_non_exhaustive()
    }
}

/// One thing a network can delegate to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Primitive<'a> {
    Agent(&'a Arc<Agent>),
    Workflow(&'a Arc<Workflow>),
    Tool(&'a Tool),
}

impl Primitive<'_> {
    pub(crate) fn primitive_type(&self) -> PrimitiveType {
        match self {
            Self::Agent(_) => PrimitiveType::Agent,
            Self::Workflow(_) => PrimitiveType::Workflow,
            Self::Tool(_) => PrimitiveType::Tool,
        }
    }
}

impl Network {
    /// A network with no primitives yet, the default completion checks and [`DEFAULT_MAX_ITERATIONS`].
    pub fn new(id: impl Into<String>, instructions: impl Into<String>, model: Arc<dyn ModelProvider>) -> Self {
        Self {
            id: Arc::from(id.into()),
            description: String::new(),
            instructions: instructions.into(),
            model,
            agents: Vec::new(),
            workflows: Vec::new(),
            tools: Vec::new(),
            max_iterations: DEFAULT_MAX_ITERATIONS,
            completion_checks: CompletionCheck::defaults(),
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds an agent to delegate to.
    ///
    /// # Panics
    /// If the id is taken (ids are written in code, so this is a programming error).
    pub fn agent(mut self, agent: Arc<Agent>) -> Self {
        self.check_new_id(&agent.id);
        self.agents.push(agent);
        self
    }

    /// Adds a workflow to delegate to.
    ///
    /// # Panics
    /// If the id is taken.
    pub fn workflow(mut self, workflow: Arc<Workflow>) -> Self {
        self.check_new_id(workflow.id());
        self.workflows.push(workflow);
        self
    }

    /// Adds a tool to call.
    ///
    /// # Panics
    /// If the name is taken.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.check_new_id(tool.name());
        self.tools.push(tool);
        self
    }

    /// Sets the most iterations one run makes (at least 1).
    pub fn max_iterations(mut self, max_iterations: u32) -> Self {
        self.max_iterations = max_iterations.max(1);
        self
    }

    /// Adds a completion check to the defaults.
    pub fn completion_check(mut self, check: CompletionCheck) -> Self {
        self.completion_checks.push(check);
        self
    }

    fn check_new_id(&self, id: &str) {
        assert!(id != NONE_ID, "network '{}': '{NONE_ID}' is reserved for \"the task is complete\"", self.id);
        assert!(self.primitive(id).is_none(), "network '{}' already has a primitive with id '{id}'", self.id);
    }

    /// The primitive with id `id`.
    pub(crate) fn primitive(&self, id: &str) -> Option<Primitive<'_>> {
        if let Some(agent) = self.agents.iter().find(|a| &*a.id == id) {
            return Some(Primitive::Agent(agent));
        }
        if let Some(workflow) = self.workflows.iter().find(|w| &**w.id() == id) {
            return Some(Primitive::Workflow(workflow));
        }
        self.tools.iter().find(|t| t.name() == id).map(Primitive::Tool)
    }

    /// Every primitive's id: agents, then workflows, then tools, each in the order added.
    pub fn primitive_ids(&self) -> Vec<&str> {
        let agents = self.agents.iter().map(|a| &*a.id);
        let workflows = self.workflows.iter().map(|w| &**w.id());
        agents.chain(workflows).chain(self.tools.iter().map(Tool::name)).collect()
    }
}

/// What a network run is asked to do.
#[derive(Debug, Clone)]
pub struct NetworkInput {
    /// The task, in words.
    pub task: String,
    /// Ask for the final answer as JSON satisfying this schema (`NetworkObject`, `NetworkObjectResult`).
    pub output_schema: Option<Schema>,
}

impl NetworkInput {
    /// The task, without an output schema.
    pub fn new(task: impl Into<String>) -> Self {
        Self { task: task.into(), output_schema: None }
    }
}

/// What a network run gets from whoever runs it, handed on to the workflows it runs.
#[derive(Clone)]
pub struct NetworkEnv {
    /// The clock the delegated workflows read and sleep on.
    pub clock: Arc<dyn Clock>,
    /// The run's request context, seen by the delegated workflows' steps.
    pub request_context: Arc<Map<String, Value>>,
    /// The run's tenant, kept by the delegated workflows and tools (their workers' tasks).
    pub tenant: Arc<str>,
    /// Fired to cancel the run.
    pub cancel: CancellationToken,
}

impl NetworkEnv {
    /// The system clock and an empty request context.
    pub fn new(cancel: CancellationToken) -> Self {
        Self { clock: Arc::new(SystemClock), request_context: Arc::default(), tenant: Arc::default(), cancel }
    }
}

/// How a network run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkEnd {
    /// The router said the task is complete and the completion checks passed.
    Complete,
    /// `max_iterations` iterations ran without completion.
    MaxIterations,
    /// The routing agent failed (its model call, an unusable answer, structured output that fails its schema).
    Failed(ErrorInfo),
    /// Canceled; streamed as `PrimitiveAbort`.
    Aborted,
    /// A delegated primitive waits for a person (see the [module docs](self)). Continue with
    /// [`NetworkStart::Resume`], handing back `state`, with resume data that satisfies `resume_schema`.
    Suspended {
        /// What is awaited, for callers (the step's suspend payload).
        payload: Value,
        /// What the resume data must satisfy, when the waiting primitive says.
        resume_schema: Option<Schema>,
        /// The loop's own state, for the resume only.
        state: Value,
    },
}

impl NetworkEnd {
    /// `NetworkFinish.completion_reason` for the ends that finish.
    pub fn completion_reason(&self) -> Option<&'static str> {
        match self {
            Self::Complete => Some("task complete"),
            Self::MaxIterations => Some("max iterations reached"),
            Self::Failed(_) | Self::Aborted | Self::Suspended { .. } => None,
        }
    }
}

/// How a network run ended, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkOutcome {
    /// How it ended.
    pub end: NetworkEnd,
    /// The last delegation, with its result.
    pub delegation: Option<Delegation>,
    /// The final result (see the [module docs](self)); set when the run finished.
    pub result: Option<Value>,
    /// The structured output, when asked for and the task completed.
    pub object: Option<Value>,
    /// Every model call's usage (as in `NetworkFinish`).
    pub usage: Usage,
    /// The part of `usage` that no event reports (input and structured-output calls, an unusable routing answer):
    /// [`network_step`] adds it to the run's count itself, in the phase that made the calls.
    pub unreported_usage: Usage,
    /// Iterations run.
    pub iterations: u32,
}

/// What a completion check sees.
#[derive(Debug)]
pub struct CheckInput<'a> {
    /// The network checked.
    pub network: &'a Network,
    /// The task of the run.
    pub task: &'a str,
    /// The delegations that ran so far, in order, with their results.
    pub ran: &'a [Delegation],
    /// The result the network would finish with.
    pub result: &'a Value,
}

type CheckFn = Arc<dyn Fn(&CheckInput<'_>) -> Result<String, String> + Send + Sync>;

/// A check the network runs before accepting the router's "task complete": `Ok(why it passed)` or
/// `Err(why it failed)`, which the router gets as feedback.
#[derive(Clone)]
pub struct CompletionCheck {
    id: Arc<str>,
    check: CheckFn,
}

impl fmt::Debug for CompletionCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionCheck").field("id", &self.id).finish_non_exhaustive()
    }
}

impl CompletionCheck {
    /// A check named `id` (reported in `NetworkValidationEnd`'s results).
    pub fn new(
        id: impl Into<String>,
        check: impl Fn(&CheckInput<'_>) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self { id: Arc::from(id.into()), check: Arc::new(check) }
    }

    /// The check's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the check: `Ok(why it passed)` or `Err(why it failed)`.
    pub fn check(&self, input: &CheckInput<'_>) -> Result<String, String> {
        (self.check)(input)
    }

    /// [`Self::named_primitives_ran`] and [`Self::result_usable`].
    pub fn defaults() -> Vec<Self> {
        vec![Self::named_primitives_ran(), Self::result_usable()]
    }

    /// `named-primitives-ran`: every primitive whose id the task mentions (as a whole word, case ignored) has run.
    pub fn named_primitives_ran() -> Self {
        Self::new("named-primitives-ran", |input| {
            let task = input.task.to_lowercase();
            let missing: Vec<&str> = input
                .network
                .primitive_ids()
                .into_iter()
                .filter(|id| mentions(&task, &id.to_lowercase()))
                .filter(|id| !input.ran.iter().any(|d| d.primitive_id == *id))
                .collect();
            match missing.as_slice() {
                [] => Ok("every primitive the task names has run".to_owned()),
                [one] => Err(format!("the task names {one}, which has not run")),
                many => Err(format!("the task names {}, which have not run", many.join(", "))),
            }
        })
    }

    /// `result-usable`: there is a result, it is not empty, and it is not a failed primitive's `{"error": ...}`.
    pub fn result_usable() -> Self {
        Self::new("result-usable", |input| match input.result {
            Value::Null => Err("there is no result yet".to_owned()),
            Value::String(s) if s.trim().is_empty() => Err("the last result is empty".to_owned()),
            result => match error_message(result) {
                Some(message) => Err(format!("the last result is an error: {message}")),
                None => Ok("the last result is usable".to_owned()),
            },
        })
    }
}

/// `{"error": message}`: how a failed primitive's result reads.
pub(crate) fn error_result(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

/// The message of a failed primitive's result.
fn error_message(result: &Value) -> Option<&str> {
    match result {
        Value::Object(map) if map.len() == 1 => map.get("error")?.as_str(),
        _ => None,
    }
}

/// Whether lower-cased `text` holds lower-cased `word` as a whole word (`-` and `_` join words, so that
/// `content` is not mentioned by `content-pipeline`).
fn mentions(text: &str, word: &str) -> bool {
    let joins = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    !word.is_empty()
        && text.match_indices(word).any(|(at, _)| {
            !text[..at].chars().next_back().is_some_and(joins)
                && !text[at + word.len()..].chars().next().is_some_and(joins)
        })
}

/// Keys of a network run's input that were snake_case before issue 10 (see [`renamed`]).
const RENAMED_INPUT_KEYS: [RenamedKey; 1] = [RenamedKey::new("outputSchema", "output_schema")];

/// JSON Schema of a network run's input (the old spelling `output_schema` as a deprecated property).
pub fn input_schema() -> Value {
    let schema = json!({
        "type": "object",
        "required": ["task"],
        "properties": {
            "task": { "type": "string", "minLength": 1, "description": "what the network should get done" },
            "outputSchema": { "type": "object", "description": "JSON Schema of a structured final answer" }
        },
        "additionalProperties": false
    });
    renamed::with_deprecated_spellings(schema, &RENAMED_INPUT_KEYS)
}

/// The [`NetworkInput`] of a run input (see [`input_schema`]). Also checks what the schema cannot: that
/// `outputSchema` (or its deprecated spelling `output_schema`, not both) is itself a valid JSON Schema.
pub fn network_input(input: &Value) -> Result<NetworkInput, SchemaViolation> {
    let violation = |path: &str, message: String| SchemaViolation { path: path.to_owned(), message };
    let task = match input.get("task").and_then(Value::as_str) {
        Some(task) if !task.trim().is_empty() => task.to_owned(),
        _ => return Err(violation("input.task", "must be a non-empty string".to_owned())),
    };
    let [output_schema_key] = RENAMED_INPUT_KEYS;
    let output_schema = match output_schema_key.get(input)? {
        None | Some(Given { value: Value::Null, .. }) => None,
        Some(given) => Some(Schema::compile(given.value.clone()).map_err(|e| violation(&given.path(), e))?),
    };
    Ok(NetworkInput { task, output_schema })
}

/// A workflow step (id: the network's id) that runs `network` on its input (`{"task", "outputSchema"?}`),
/// streaming every network event through the step's writer.
///
/// Output: `{"result", "object"?, "completionReason", "iterations", "usage"}`. A failed network fails the step,
/// and is not retried (a retry would run every delegation again); a canceled one returns an error that the executor,
/// seeing the cancel, reports as a canceled step.
pub fn network_step(network: Arc<Network>) -> Step {
    let description = format!("Runs agent network '{}'.", network.id);
    Step::new(network.id.to_string(), move |ctx| {
        let network = Arc::clone(&network);
        async move {
            let input = network_input(ctx.input()).map_err(|e| StepError::new(e.to_string()).non_retryable())?;
            let env = NetworkEnv {
                clock: Arc::clone(ctx.clock()),
                request_context: Arc::new(ctx.request_context().clone()),
                tenant: Arc::clone(ctx.tenant()),
                cancel: ctx.cancellation_token().clone(),
            };
            let start = match (ctx.resume_data(), ctx.saved_state()) {
                (None, _) => NetworkStart::New,
                (Some(data), Some(state)) => NetworkStart::Resume { state: state.clone(), resume_data: data.clone() },
                (Some(_), None) => {
                    let message = format!("network '{}' was resumed but waits for nothing", network.id);
                    return Err(StepError::new(message).non_retryable());
                }
            };
            let writer = ctx.writer().clone();
            let emit = move |event: NetworkEvent| writer.network(event);
            let outcome = run_network_with(&network, input, start, emit, env).await;
            ctx.writer().count_usage(&outcome.unreported_usage);
            match outcome.end {
                NetworkEnd::Complete | NetworkEnd::MaxIterations => {
                    let mut output = json!({
                        "result": outcome.result,
                        "completionReason": outcome.end.completion_reason(),
                        "iterations": outcome.iterations,
                        "usage": outcome.usage,
                    });
                    if let Some(object) = outcome.object {
                        output["object"] = object;
                    }
                    Ok(StepOutcome::Done(output))
                }
                NetworkEnd::Failed(error) => {
                    let mut failure = StepError::new(error.message).non_retryable();
                    if let Some(details) = error.details {
                        failure = failure.with_details(details);
                    }
                    Err(failure)
                }
                NetworkEnd::Aborted => Err(StepError::new(format!("network '{}' was canceled", network.id))),
                NetworkEnd::Suspended { payload, resume_schema, state } => {
                    // The loop's state goes into the snapshot, not into the payload callers see; what the resume
                    // data must be depends on what waits.
                    ctx.save_state(state);
                    let outcome = StepOutcome::suspend(payload);
                    Ok(match resume_schema {
                        Some(schema) => outcome.with_resume_schema(schema),
                        None => outcome,
                    })
                }
            }
        }
    })
    .description(description)
}

/// The network as a standalone run: a one-step workflow whose id and step id are the network's id, with input
/// `{"task": string, "outputSchema"?: object}` (see [`input_schema`]; `output_schema` is still taken until the next
/// release, with a deprecation warning) and [`network_step`]'s output as result.
pub fn workflow(network: Arc<Network>) -> Arc<Workflow> {
    let meta = RunnableMeta {
        model: network.model.model_id().to_owned(),
        tools: network.tools.iter().map(Tool::meta).collect(),
        members: network
            .agents
            .iter()
            .map(|agent| agent.id.to_string())
            .chain(network.workflows.iter().map(|workflow| workflow.id().to_string()))
            .collect(),
    };
    let runnable = format!("network '{}'", network.id);
    Workflow::builder(network.id.to_string())
        .kind(RunKind::Network)
        .meta(meta)
        .description(network.description.clone())
        .input_schema(input_schema())
        // Checked once per run, when it starts: the place to warn about old spellings once.
        .input_check(move |input| {
            network_input(input)?;
            renamed::warn_deprecated(input, &RENAMED_INPUT_KEYS, &runnable);
            Ok(())
        })
        .then(network_step(network))
        .commit()
}
