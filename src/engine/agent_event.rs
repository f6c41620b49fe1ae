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
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Error,
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
#[derive(Debug, Clone, PartialEq)]
pub enum AgentChunk {
    /// `start`.
    AgentStart { agent_id: Arc<str>, message_id: Arc<str> },
    /// `step-start`: one model call begins.
    AgentStepStart {
        message_id: Arc<str>,
        /// 1-based index of the model call within the agent's loop.
        step_number: u32,
        /// The request sent to the model, when request logging is on.
        request: Option<Value>,
        warnings: Vec<String>,
    },
    /// `response-metadata`.
    ResponseMetadata {
        /// The provider's response id.
        id: Option<String>,
        model_id: Option<String>,
        signature: Option<String>,
    },
    /// `step-finish`: one model call ended.
    AgentStepFinish {
        message_id: Arc<str>,
        step_number: u32,
        reason: FinishReason,
        /// The provider's own finish reason.
        raw_reason: Option<String>,
        /// Usage of this model call.
        usage: Usage,
        /// Text produced in this call.
        text: String,
        /// True when the agent makes another model call (it called tools).
        is_continued: bool,
        warnings: Vec<String>,
    },
    /// `finish`.
    AgentFinish {
        reason: FinishReason,
        /// Summed over all model calls.
        usage: Usage,
        text: String,
        /// Number of model calls made.
        steps: u32,
        /// The structured output, when a schema was asked for.
        object: Option<Value>,
    },
    /// `error`.
    AgentError { error: ErrorInfo },
    /// `abort`: the run was canceled.
    AgentAbort { reason: String },
    /// `tripwire`: a guardrail stopped the agent.
    Tripwire {
        reason: String,
        /// Whether the agent may retry with the guardrail's feedback.
        retry: bool,
        metadata: Option<Value>,
        /// Which processor (guardrail) fired.
        processor_id: Option<String>,
    },
    /// `text-start`: a text part begins; its deltas and end carry the same id.
    TextStart { id: Arc<str> },
    /// `text-delta`.
    TextDelta { id: Arc<str>, text: String },
    /// `text-end`.
    TextEnd { id: Arc<str> },
    /// `reasoning-start`.
    ReasoningStart { id: Arc<str>, signature: Option<String> },
    /// `reasoning-delta`.
    ReasoningDelta { id: Arc<str>, text: String },
    /// `reasoning-end`.
    ReasoningEnd { id: Arc<str>, signature: Option<String> },
    /// `reasoning-signature`.
    ReasoningSignature { id: Arc<str>, signature: String },
    /// `redacted-reasoning`.
    RedactedReasoning { id: Arc<str>, data: String },
    /// `source`: a source the model cited.
    SourceRef {
        id: String,
        /// "url" or "document".
        source_type: String,
        title: String,
        mime_type: Option<String>,
        filename: Option<String>,
        url: Option<String>,
    },
    /// `file`: a file the model produced.
    FileData { data: Vec<u8>, mime_type: String, filename: Option<String> },
    /// `tool-call-input-streaming-start`.
    ToolCallInputStreamingStart {
        tool_call_id: Arc<str>,
        tool_name: Arc<str>,
        provider_executed: bool,
        dynamic: bool,
        title: Option<String>,
    },
    /// `tool-call-delta`: raw text of the argument JSON, to be concatenated.
    ToolCallDelta { tool_call_id: Arc<str>, tool_name: Arc<str>, args_text_delta: String },
    /// `tool-call-input-streaming-end`.
    ToolCallInputStreamingEnd { tool_call_id: Arc<str> },
    /// `tool-call`.
    ToolCall {
        tool_call_id: Arc<str>,
        tool_name: Arc<str>,
        /// The parsed arguments.
        args: Value,
        provider_executed: bool,
        dynamic: bool,
        title: Option<String>,
    },
    /// `tool-call-approval`: the run suspends until the call is approved or declined.
    ToolCallApproval(ToolCallApproval),
    /// `tool-call-suspended`: a tool suspended itself.
    ToolCallSuspended(ToolCallSuspended),
    /// `tool-result`.
    ToolResult {
        tool_call_id: Arc<str>,
        tool_name: Arc<str>,
        result: Value,
        is_error: bool,
        args: Option<Value>,
        provider_executed: bool,
        dynamic: bool,
    },
    /// `tool-error`.
    ToolError {
        tool_call_id: Arc<str>,
        tool_name: Arc<str>,
        args: Option<Value>,
        error: ErrorInfo,
        provider_executed: bool,
    },
    /// `tool-output-denied`: the call was declined at approval.
    ToolOutputDenied {
        tool_call_id: Arc<str>,
        tool_name: Arc<str>,
        args: Option<Value>,
        /// The approval decision's id.
        approval_id: String,
        reason: Option<String>,
    },
    /// `tool-output`: streaming output of a tool (for example a nested agent's chunk).
    ToolOutput { tool_call_id: Arc<str>, tool_name: Arc<str>, output: Value },
    /// `object`: a partial structured output as it is generated.
    ObjectPartial { object: Value },
    /// `object-result`: the final, schema-checked structured output.
    ObjectResult { object: Value },
}

/// A tool call awaiting approval (`tool-call-approval`); also carried by network approval events.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallApproval {
    pub tool_call_id: Arc<str>,
    pub tool_name: Arc<str>,
    pub args: Value,
    /// JSON Schema of the resume data the approval takes.
    pub resume_schema: Option<Value>,
}

/// A tool that suspended itself (`tool-call-suspended`); also carried by network suspend events.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallSuspended {
    pub tool_call_id: Arc<str>,
    pub tool_name: Arc<str>,
    pub suspend_payload: Value,
    pub args: Value,
    pub resume_schema: Option<Value>,
}

/// Kind of primitive a network delegates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PrimitiveType {
    Agent,
    Workflow,
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
    pub primitive_type: PrimitiveType,
    /// The prompt or input given to the primitive.
    pub prompt: String,
    /// The primitive's result (on end events).
    pub result: Option<Value>,
    pub is_complete: bool,
    /// Why the routing agent chose this primitive.
    pub selection_reason: String,
    /// 1-based network iteration.
    pub iteration: u32,
}

/// One event of an agent network (Mastra's NetworkChunkType).
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkEvent {
    /// `routing-agent-start`: the routing agent begins an iteration.
    RoutingAgentStart {
        agent_id: Arc<str>,
        network_id: Arc<str>,
        task: String,
        iteration: u32,
        /// The previous iteration's delegation, when there was one.
        previous: Option<Box<Delegation>>,
    },
    /// `routing-agent-text-start`.
    RoutingAgentTextStart,
    /// `routing-agent-text-delta`.
    RoutingAgentTextDelta { text: String },
    /// `routing-agent-end`: the routing agent chose a primitive.
    RoutingAgentEnd { delegation: Box<Delegation>, usage: Usage },
    /// `agent-execution-start`.
    AgentExecutionStart { agent_id: Arc<str>, delegation: Box<Delegation> },
    /// `agent-execution-end`.
    AgentExecutionEnd { agent_id: Arc<str>, delegation: Box<Delegation>, usage: Usage },
    /// `agent-execution-approval`: a delegated agent's tool call awaits approval.
    AgentExecutionApproval {
        agent_id: Arc<str>,
        approval: Box<ToolCallApproval>,
        usage: Usage,
        selection_reason: String,
    },
    /// `agent-execution-suspended`.
    AgentExecutionSuspended {
        agent_id: Arc<str>,
        suspended: Box<ToolCallSuspended>,
        usage: Usage,
        selection_reason: String,
    },
    /// `agent-execution-event-*`: a chunk of a delegated agent, nested.
    AgentExecutionEvent { agent_id: Arc<str>, chunk: Box<AgentChunk> },
    /// `workflow-execution-start`.
    WorkflowExecutionStart {
        workflow_id: Arc<str>,
        /// The nested run of the workflow.
        workflow_run_id: Arc<str>,
        delegation: Box<Delegation>,
    },
    /// `workflow-execution-end`.
    WorkflowExecutionEnd {
        workflow_id: Arc<str>,
        workflow_run_id: Arc<str>,
        delegation: Box<Delegation>,
        status: RunStatus,
        usage: Usage,
    },
    /// `workflow-execution-suspended`.
    WorkflowExecutionSuspended {
        workflow_id: Arc<str>,
        workflow_run_id: Arc<str>,
        suspend_payload: Value,
        usage: Usage,
        selection_reason: String,
    },
    /// `workflow-execution-event-*`: an event of a delegated workflow, nested. Only workflow events nest (its
    /// [`EventKind::step_id`] is the step path inside the nested workflow); an agent or network event in `event`
    /// goes on the wire as an empty nested event.
    WorkflowExecutionEvent { workflow_id: Arc<str>, event: Box<EventKind> },
    /// `tool-execution-start`.
    ToolExecutionStart { tool_name: Arc<str>, tool_call_id: Arc<str>, args: Option<Value>, selection_reason: String },
    /// `tool-execution-end`.
    ToolExecutionEnd { tool_name: Arc<str>, tool_call_id: Arc<str>, delegation: Box<Delegation> },
    /// `tool-execution-approval`.
    ToolExecutionApproval { approval: Box<ToolCallApproval>, selection_reason: String },
    /// `tool-execution-suspended`.
    ToolExecutionSuspended { suspended: Box<ToolCallSuspended>, selection_reason: String },
    /// `routing-agent-abort`, `agent-execution-abort`, `workflow-execution-abort`, `tool-execution-abort`: the run
    /// was canceled.
    PrimitiveAbort { primitive_type: PrimitiveType, primitive_id: String },
    /// `network-execution-event-step-finish`: a network iteration ended.
    NetworkStepFinish { task: String, result: Option<Value>, is_complete: bool, iteration: u32 },
    /// `network-execution-event-finish`.
    NetworkFinish {
        delegation: Box<Delegation>,
        /// The final structured object, when a schema was asked for.
        object: Option<Value>,
        /// Why the network stopped, e.g. "task complete" or "max iterations reached".
        completion_reason: String,
        /// Summed over the routing agent and every delegated primitive.
        usage: Usage,
    },
    /// `network-validation-start`: completion checks begin.
    NetworkValidationStart { iteration: u32, checks_count: u32 },
    /// `network-validation-end`.
    NetworkValidationEnd {
        iteration: u32,
        passed: bool,
        results: Value,
        duration_ms: u64,
        timed_out: bool,
        reason: Option<String>,
        max_iteration_reached: bool,
    },
    /// `network-object`: a partial structured object.
    NetworkObject { object: Value },
    /// `network-object-result`: the final structured object.
    NetworkObjectResult { object: Value },
}
