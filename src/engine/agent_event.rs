//! What agents and agent networks emit, in the engine's own terms (the gRPC layer translates; see
//! `grpc/convert_agent.rs`).
//!
//! Each variant is named after its proto message (proto/runstream/v1/agent.proto and network.proto), which names the
//! Mastra chunk type it corresponds to. They reach the log as [`EventKind::Agent`] and [`EventKind::Network`].
//!
//! Ids that many chunks repeat (text and reasoning part ids, tool call ids and names, message ids, agent ids) are
//! `Arc<str>`, cloned per chunk, not re-allocated. Optional texts are `Option<String>`; on the wire `None` and an
//! empty string are both the empty string.
//!
//! Large, rare payloads (delegations, approvals) are boxed so that neither enum makes `EventKind`, which every log
//! entry holds, any larger than `StepResult` already does (192 bytes on 64-bit targets).

use std::sync::Arc;

use serde_json::Value;

use super::event::{ErrorInfo, EventKind, RunStatus, Usage};

/// Why a model call stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The model hit its output token limit.
    Length,
    /// The provider's content filter stopped the answer.
    ContentFilter,
    /// The model called tools (the agent makes another call with their results).
    ToolCalls,
    /// The call failed.
    Error,
    /// Any other reason the provider gave (see the raw reason).
    Other,
    /// A guardrail stopped the agent.
    Tripwire,
    /// The run was canceled.
    Aborted,
}

impl FinishReason {
    /// Mastra's (the AI SDK's) word for it: `stop`, `length`, `content-filter`, `tool-calls`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content-filter",
            Self::ToolCalls => "tool-calls",
            Self::Error => "error",
            Self::Other => "other",
            Self::Tripwire => "tripwire",
            Self::Aborted => "aborted",
        }
    }
}

/// One chunk an agent streams while it runs (Mastra's AgentChunkType).
///
/// Fields named `tool_call_id` are the id the model gave the call (every chunk of one call carries it),
/// `tool_name` the tool called, `provider_executed` true when the provider ran the tool itself (e.g. a hosted
/// search) and `dynamic` true for tools defined at run time rather than declared with the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentChunk {
    /// `start`: the agent starts.
    AgentStart {
        /// Id of the agent that starts.
        agent_id: Arc<str>,
        /// Id of the assistant message being produced.
        message_id: Arc<str>,
    },
    /// `step-start`: one model call begins.
    AgentStepStart {
        /// Id of the assistant message this model call produces.
        message_id: Arc<str>,
        /// 1-based index of the model call within the agent's loop.
        step_number: u32,
        /// The request sent to the model, when request logging is on.
        request: Option<Value>,
        /// Warnings the provider returned for this call.
        warnings: Vec<String>,
    },
    /// `response-metadata`: metadata of the model's response.
    ResponseMetadata {
        /// The provider's response id.
        id: Option<String>,
        /// The model that answered.
        model_id: Option<String>,
        /// The provider's signature of the response, when it sends one.
        signature: Option<String>,
    },
    /// `step-finish`: one model call ended.
    AgentStepFinish {
        /// Id of the assistant message this model call produced.
        message_id: Arc<str>,
        /// 1-based index of the model call within the agent's loop.
        step_number: u32,
        /// Why the model call stopped.
        reason: FinishReason,
        /// The provider's own finish reason.
        raw_reason: Option<String>,
        /// Usage of this model call.
        usage: Usage,
        /// Text produced in this call.
        text: String,
        /// True when the agent makes another model call (it called tools).
        is_continued: bool,
        /// Warnings the provider returned for this call.
        warnings: Vec<String>,
    },
    /// `finish`: the agent finished.
    AgentFinish {
        /// Why the agent stopped (the last model call's reason, or tripwire / aborted).
        reason: FinishReason,
        /// Summed over all model calls.
        usage: Usage,
        /// The final text.
        text: String,
        /// Number of model calls made.
        steps: u32,
        /// The structured output, when a schema was asked for.
        object: Option<Value>,
    },
    /// `error`: the agent failed.
    AgentError {
        /// What failed, e.g. the model server's answer after the retries were spent.
        error: ErrorInfo,
    },
    /// `abort`: the run was canceled.
    AgentAbort {
        /// Why, e.g. "canceled by CancelRun".
        reason: String,
    },
    /// `tripwire`: a guardrail stopped the agent.
    Tripwire {
        /// Why the guardrail stopped the agent.
        reason: String,
        /// Whether the agent may retry with the guardrail's feedback.
        retry: bool,
        /// Guardrail-specific details.
        metadata: Option<Value>,
        /// Which processor (guardrail) fired.
        processor_id: Option<String>,
    },
    /// `text-start`: a text part begins; its deltas and end carry the same id.
    TextStart {
        /// Id of the text part.
        id: Arc<str>,
    },
    /// `text-delta`: text as the model produces it.
    TextDelta {
        /// Id of the text part.
        id: Arc<str>,
        /// The text produced since the previous delta.
        text: String,
    },
    /// `text-end`: a text part ends.
    TextEnd {
        /// Id of the text part.
        id: Arc<str>,
    },
    /// `reasoning-start`: the model begins reasoning; its deltas and end carry the same id.
    ReasoningStart {
        /// Id of the reasoning part.
        id: Arc<str>,
        /// The provider's signature of the reasoning, when it signs it.
        signature: Option<String>,
    },
    /// `reasoning-delta`: reasoning text as the model produces it.
    ReasoningDelta {
        /// Id of the reasoning part.
        id: Arc<str>,
        /// Reasoning text produced since the previous delta.
        text: String,
    },
    /// `reasoning-end`: reasoning ends.
    ReasoningEnd {
        /// Id of the reasoning part.
        id: Arc<str>,
        /// The provider's signature of the reasoning, when it signs it.
        signature: Option<String>,
    },
    /// `reasoning-signature`: the signature of a reasoning part.
    ReasoningSignature {
        /// Id of the reasoning part.
        id: Arc<str>,
        /// The provider's signature of that part.
        signature: String,
    },
    /// `redacted-reasoning`: reasoning the provider redacted.
    RedactedReasoning {
        /// Id of the reasoning part.
        id: Arc<str>,
        /// The provider's opaque redacted payload.
        data: String,
    },
    /// `source`: a source the model cited.
    SourceRef {
        /// Id of the source.
        id: String,
        /// "url" or "document".
        source_type: String,
        /// Display title.
        title: String,
        /// MIME type, e.g. "application/pdf".
        mime_type: Option<String>,
        /// File name, when known.
        filename: Option<String>,
        /// URL of the source, for url sources.
        url: Option<String>,
    },
    /// `file`: a file the model produced.
    FileData {
        /// The file's bytes.
        data: Vec<u8>,
        /// MIME type, e.g. "application/pdf".
        mime_type: String,
        /// File name, when known.
        filename: Option<String>,
    },
    /// `tool-call-input-streaming-start`: the model begins streaming a tool call's arguments.
    ToolCallInputStreamingStart {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// True when the provider runs the tool itself.
        provider_executed: bool,
        /// True for a tool defined at run time.
        dynamic: bool,
        /// Display title.
        title: Option<String>,
    },
    /// `tool-call-delta`: a piece of a tool call's JSON arguments.
    ToolCallDelta {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// Raw text of the argument JSON, to be concatenated.
        args_text_delta: String,
    },
    /// `tool-call-input-streaming-end`: a tool call's arguments are complete.
    ToolCallInputStreamingEnd {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
    },
    /// `tool-call`: the model called a tool.
    ToolCall {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// The parsed arguments.
        args: Value,
        /// True when the provider runs the tool itself.
        provider_executed: bool,
        /// True for a tool defined at run time.
        dynamic: bool,
        /// Display title.
        title: Option<String>,
    },
    /// `tool-call-approval`: the run suspends until the call is approved or declined.
    ToolCallApproval(ToolCallApproval),
    /// `tool-call-suspended`: a tool suspended itself.
    ToolCallSuspended(ToolCallSuspended),
    /// `tool-result`: a tool returned.
    ToolResult {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// What the tool returned.
        result: Value,
        /// True when the result reports a failure the tool returned as data.
        is_error: bool,
        /// The arguments the tool was called with.
        args: Option<Value>,
        /// True when the provider ran the tool itself.
        provider_executed: bool,
        /// True for a tool defined at run time.
        dynamic: bool,
    },
    /// `tool-error`: a tool failed.
    ToolError {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// The arguments the tool was called with.
        args: Option<Value>,
        /// What failed: invalid arguments, an unknown tool, or the tool's own error.
        error: ErrorInfo,
        /// True when the provider ran the tool itself.
        provider_executed: bool,
    },
    /// `tool-output-denied`: the call was declined at approval.
    ToolOutputDenied {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// The arguments of the declined call.
        args: Option<Value>,
        /// The approval decision's id.
        approval_id: String,
        /// Why it was declined, if the approver said.
        reason: Option<String>,
    },
    /// `tool-output`: streaming output of a tool (for example a nested agent's chunk).
    ToolOutput {
        /// Id of the tool call.
        tool_call_id: Arc<str>,
        /// Name of the tool called.
        tool_name: Arc<str>,
        /// The streamed output chunk.
        output: Value,
    },
    /// `object`: a partial structured output as it is generated.
    ObjectPartial {
        /// The object so far; later chunks supersede earlier ones.
        object: Value,
    },
    /// `object-result`: the final, schema-checked structured output.
    ObjectResult {
        /// The final object.
        object: Value,
    },
}

/// A tool call awaiting approval (`tool-call-approval`); also carried by network approval events.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallApproval {
    /// Id of the tool call, as the model assigned it.
    pub tool_call_id: Arc<str>,
    /// Name of the tool called.
    pub tool_name: Arc<str>,
    /// The arguments to approve.
    pub args: Value,
    /// JSON Schema of the resume data the approval takes.
    pub resume_schema: Option<Value>,
}

/// A tool that suspended itself (`tool-call-suspended`); also carried by network suspend events.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallSuspended {
    /// Id of the tool call, as the model assigned it.
    pub tool_call_id: Arc<str>,
    /// Name of the tool called.
    pub tool_name: Arc<str>,
    /// What the tool handed to suspend.
    pub suspend_payload: Value,
    /// The arguments the tool was called with.
    pub args: Value,
    /// JSON Schema of the resume data that continues the call.
    pub resume_schema: Option<Value>,
}

/// Kind of primitive a network delegates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PrimitiveType {
    /// An agent.
    Agent,
    /// A workflow (run as a nested run).
    Workflow,
    /// A tool.
    Tool,
    /// The routing agent itself (in `PrimitiveAbort`).
    RoutingAgent,
    /// The network decided that the task is complete.
    None,
}

/// The delegation a routing agent decided on. Serializable: a suspended network keeps its delegations in its saved
/// state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Delegation {
    /// The task of the network.
    pub task: String,
    /// Id of the chosen agent, workflow or tool.
    pub primitive_id: String,
    /// Whether the primitive is an agent, a workflow or a tool.
    pub primitive_type: PrimitiveType,
    /// The prompt or input given to the primitive.
    pub prompt: String,
    /// The primitive's result (on end events).
    pub result: Option<Value>,
    /// True when the routing agent judged the task complete.
    pub is_complete: bool,
    /// Why the routing agent chose this primitive.
    pub selection_reason: String,
    /// 1-based network iteration.
    pub iteration: u32,
}

/// One event of an agent network (Mastra's NetworkChunkType).
///
/// `usage` fields are token usage of the primitive named (so far, on approval and suspend events);
/// `selection_reason` is why the routing agent chose that primitive.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkEvent {
    /// `routing-agent-start`: the routing agent begins an iteration.
    RoutingAgentStart {
        /// Id of the routing agent.
        agent_id: Arc<str>,
        /// Id of the network.
        network_id: Arc<str>,
        /// The task the network works on.
        task: String,
        /// 1-based iteration that begins.
        iteration: u32,
        /// The previous iteration's delegation, when there was one.
        previous: Option<Box<Delegation>>,
    },
    /// `routing-agent-text-start`: the routing agent begins streaming text.
    RoutingAgentTextStart,
    /// `routing-agent-text-delta`: the routing agent's text.
    RoutingAgentTextDelta {
        /// The text since the previous delta.
        text: String,
    },
    /// `routing-agent-end`: the routing agent chose a primitive.
    RoutingAgentEnd {
        /// The primitive chosen, with the prompt and the reason.
        delegation: Box<Delegation>,
        /// Usage of the routing agent's model call.
        usage: Usage,
    },
    /// `agent-execution-start`: a delegated agent starts.
    AgentExecutionStart {
        /// Id of the delegated agent.
        agent_id: Arc<str>,
        /// What the routing agent asked of it.
        delegation: Box<Delegation>,
    },
    /// `agent-execution-end`: a delegated agent ended.
    AgentExecutionEnd {
        /// Id of the delegated agent.
        agent_id: Arc<str>,
        /// The delegation, with the agent's result.
        delegation: Box<Delegation>,
        /// Usage of the delegated agent.
        usage: Usage,
    },
    /// `agent-execution-approval`: a delegated agent's tool call awaits approval.
    AgentExecutionApproval {
        /// Id of the delegated agent.
        agent_id: Arc<str>,
        /// The tool call awaiting approval.
        approval: Box<ToolCallApproval>,
        /// Usage of the delegated agent so far.
        usage: Usage,
        /// Why the routing agent chose the agent.
        selection_reason: String,
    },
    /// `agent-execution-suspended`: a delegated agent suspended.
    AgentExecutionSuspended {
        /// Id of the delegated agent.
        agent_id: Arc<str>,
        /// The suspended tool call.
        suspended: Box<ToolCallSuspended>,
        /// Usage of the delegated agent so far.
        usage: Usage,
        /// Why the routing agent chose the agent.
        selection_reason: String,
    },
    /// `agent-execution-event-*`: a chunk of a delegated agent, nested.
    AgentExecutionEvent {
        /// Id of the delegated agent.
        agent_id: Arc<str>,
        /// The delegated agent's chunk.
        chunk: Box<AgentChunk>,
    },
    /// `workflow-execution-start`: a delegated workflow starts.
    WorkflowExecutionStart {
        /// Id of the delegated workflow.
        workflow_id: Arc<str>,
        /// The nested run of the workflow.
        workflow_run_id: Arc<str>,
        /// What the routing agent asked of it.
        delegation: Box<Delegation>,
    },
    /// `workflow-execution-end`: a delegated workflow ended.
    WorkflowExecutionEnd {
        /// Id of the delegated workflow.
        workflow_id: Arc<str>,
        /// The nested run of the workflow.
        workflow_run_id: Arc<str>,
        /// The delegation, with the workflow's result.
        delegation: Box<Delegation>,
        /// How the nested run ended.
        status: RunStatus,
        /// Usage of the nested run.
        usage: Usage,
    },
    /// `workflow-execution-suspended`: a delegated workflow suspended.
    WorkflowExecutionSuspended {
        /// Id of the delegated workflow.
        workflow_id: Arc<str>,
        /// The nested run of the workflow.
        workflow_run_id: Arc<str>,
        /// What the suspended step handed to suspend.
        suspend_payload: Value,
        /// Usage of the nested run so far.
        usage: Usage,
        /// Why the routing agent chose the workflow.
        selection_reason: String,
    },
    /// `workflow-execution-event-*`: an event of a delegated workflow, nested. Only workflow events nest (its
    /// [`EventKind::step_id`] is the step path inside the nested workflow); an agent or network event in `event`
    /// goes on the wire as an empty nested event.
    WorkflowExecutionEvent {
        /// Id of the delegated workflow.
        workflow_id: Arc<str>,
        /// The delegated workflow's event.
        event: Box<EventKind>,
    },
    /// `tool-execution-start`: a delegated tool starts.
    ToolExecutionStart {
        /// Name of the delegated tool.
        tool_name: Arc<str>,
        /// Id of this execution of the tool.
        tool_call_id: Arc<str>,
        /// The arguments the tool is called with.
        args: Option<Value>,
        /// Why the routing agent chose the tool.
        selection_reason: String,
    },
    /// `tool-execution-end`: a delegated tool ended.
    ToolExecutionEnd {
        /// Name of the delegated tool.
        tool_name: Arc<str>,
        /// Id of this execution of the tool.
        tool_call_id: Arc<str>,
        /// The delegation, with the tool's result.
        delegation: Box<Delegation>,
    },
    /// `tool-execution-approval`: a delegated tool awaits approval.
    ToolExecutionApproval {
        /// The tool call awaiting approval.
        approval: Box<ToolCallApproval>,
        /// Why the routing agent chose the tool.
        selection_reason: String,
    },
    /// `tool-execution-suspended`: a delegated tool suspended.
    ToolExecutionSuspended {
        /// The suspended tool call.
        suspended: Box<ToolCallSuspended>,
        /// Why the routing agent chose the tool.
        selection_reason: String,
    },
    /// `routing-agent-abort`, `agent-execution-abort`, `workflow-execution-abort`, `tool-execution-abort`: the run
    /// was canceled.
    PrimitiveAbort {
        /// Which kind of primitive was aborted ([`PrimitiveType::RoutingAgent`] for the routing agent).
        primitive_type: PrimitiveType,
        /// Id of the aborted primitive.
        primitive_id: String,
    },
    /// `network-execution-event-step-finish`: a network iteration ended.
    NetworkStepFinish {
        /// The task the network works on.
        task: String,
        /// The iteration's result.
        result: Option<Value>,
        /// True when the task is complete after this iteration.
        is_complete: bool,
        /// 1-based iteration that ended.
        iteration: u32,
    },
    /// `network-execution-event-finish`: the network finished.
    NetworkFinish {
        /// The last delegation, with the final result.
        delegation: Box<Delegation>,
        /// The final structured object, when a schema was asked for.
        object: Option<Value>,
        /// Why the network stopped, e.g. "task complete" or "max iterations reached".
        completion_reason: String,
        /// Summed over the routing agent and every delegated primitive.
        usage: Usage,
    },
    /// `network-validation-start`: completion checks begin.
    NetworkValidationStart {
        /// 1-based iteration being checked.
        iteration: u32,
        /// Number of completion checks that run.
        checks_count: u32,
    },
    /// `network-validation-end`: completion checks ended.
    NetworkValidationEnd {
        /// 1-based iteration that was checked.
        iteration: u32,
        /// True when every check passed.
        passed: bool,
        /// Each check's result.
        results: Value,
        /// How long the checks took, in milliseconds.
        duration_ms: u64,
        /// True when the checks hit their time limit.
        timed_out: bool,
        /// Why the checks passed or failed, in words.
        reason: Option<String>,
        /// True when the network stopped at its iteration limit.
        max_iteration_reached: bool,
    },
    /// `network-object`: a partial structured object.
    NetworkObject {
        /// The object so far; later events supersede earlier ones.
        object: Value,
    },
    /// `network-object-result`: the final structured object.
    NetworkObjectResult {
        /// The final object.
        object: Value,
    },
}
