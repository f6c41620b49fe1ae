//! The agent loop; see the [module docs](super) for the chunks it emits and why.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Agent, ToolContext, ToolError, partial_json::parse_partial};
use crate::{
    engine::{AgentChunk, ErrorInfo, FinishReason, ToolCallApproval, ToolCallSuspended, Usage, schema::Schema},
    model::{self, Message, ModelChunk, ModelError, ModelRequest, ReasoningEffort, ResponseSchema, ToolCall},
};

/// How a run of the loop ended, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    pub end: AgentEnd,
    /// The last model call's text (empty when the agent did not finish). With an output schema, the JSON text.
    pub text: String,
    /// The structured output, when an output schema was asked for and the agent finished.
    pub object: Option<Value>,
    /// Summed over all model calls that completed.
    pub usage: Usage,
    /// Model calls made.
    pub steps: u32,
    /// The conversation, including the model's responses and the tool results.
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEnd {
    /// The agent answered (the last call's finish reason; `ToolCalls` when `max_steps` cut it short).
    Finished(FinishReason),
    /// A model error ended the loop (or the structured output was unusable); also streamed as `AgentError`.
    Failed(ErrorInfo),
    /// The run was canceled; streamed as `AgentAbort`.
    Aborted,
    /// A tool call needs a person's decision; streamed as `ToolCallApproval`. Continue with
    /// [`AgentInput::Resume`], handing back `state` and the decision.
    AwaitingApproval { approval: ToolCallApproval, state: Value },
    /// A tool suspended itself ([`ToolContext::suspend`]); streamed as `ToolCallSuspended`. Continue with
    /// [`AgentInput::Resume`], handing back `state` and data for the tool (its resume schema says what).
    Suspended { suspended: ToolCallSuspended, state: Value },
    /// An output guardrail stopped the agent; streamed as `Tripwire`.
    Tripwire { reason: String, processor_id: String },
}

/// What the loop starts from.
#[derive(Debug, Clone)]
pub enum AgentInput {
    /// A new conversation (the instructions are prepended as the system message).
    Messages(Vec<Message>),
    /// Continue after [`AgentEnd::AwaitingApproval`] or [`AgentEnd::Suspended`]: `data` is the decision on the
    /// waiting call (an [`ApprovalDecision`] as JSON) or the data the suspended tool is called again with.
    Resume { state: Value, data: Value },
}

/// A person's answer to a `ToolCallApproval`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub approved: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

impl ApprovalDecision {
    /// The decision resume data carries (checked against [`approval_schema`] before a resume starts; this only
    /// fails on data that bypassed that check), with a message saying what it must be.
    pub fn from_resume_data(data: Value) -> Result<Self, String> {
        serde_json::from_value(data)
            .map_err(|e| format!("resume_data must be {{\"approved\": bool, \"reason\"?: string}}: {e}"))
    }
}

/// Per-run options of the loop.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Ask for structured output: every model call is asked for JSON satisfying this schema, the answer streams as
    /// `ObjectPartial`s instead of text parts, and is checked before `ObjectResult`.
    pub output_schema: Option<Schema>,
    /// Ask the model to reason first (reasoning models; the offline model streams a scripted reasoning part).
    pub reasoning_effort: Option<ReasoningEffort>,
}

/// Runs `agent` on `messages`, emitting every chunk through `emit`; see [`run_agent_with`].
pub async fn run_agent<F>(agent: &Agent, messages: Vec<Message>, emit: F, cancel: CancellationToken) -> AgentOutcome
where
    F: Fn(AgentChunk) + Send + Sync,
{
    run_agent_with(agent, AgentInput::Messages(messages), &AgentOptions::default(), emit, cancel).await
}

/// Emits `AgentAbort` unless the loop ended otherwise, so that dropping the loop's future mid-run (the engine drops
/// a canceled step's future without polling it again) still tells the stream why the agent stopped.
struct AbortGuard<'a, F: Fn(AgentChunk)> {
    emit: &'a F,
    ended: bool,
}

impl<F: Fn(AgentChunk)> Drop for AbortGuard<'_, F> {
    fn drop(&mut self) {
        if !self.ended {
            (self.emit)(AgentChunk::AgentAbort { reason: "canceled".to_owned() });
        }
    }
}

/// Everything the loop needs to go on after a suspension. Kept by the engine in the run's snapshot (see
/// `StepContext::save_state`), never shown to callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    message_id: String,
    conversation: Vec<Message>,
    steps: u32,
    total: Usage,
    parts: PartIds,
    /// The tool half of the current model call, while its tools run (or wait for approval).
    pending: Option<ToolPhase>,
}

/// A model call whose response is complete and whose tool calls are being executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToolPhase {
    text: String,
    reason: model::FinishReason,
    raw: String,
    usage: Usage,
    /// The calls as the model made them, for the conversation.
    tool_calls: Vec<ToolCall>,
    /// Calls still to execute, in the model's order. The first may be waiting for approval.
    queue: VecDeque<QueuedCall>,
    /// Answers so far, errors included: every call gets one.
    answers: Vec<ToolAnswer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueuedCall {
    id: String,
    name: String,
    args: Value,
    /// A person approved this call: run it without asking again.
    #[serde(default)]
    approved: bool,
    /// The tool suspended itself on this call and waits for resume data.
    #[serde(default)]
    suspended: bool,
    /// The data the call was resumed with, for the tool's next invocation.
    #[serde(default)]
    resume_data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToolAnswer {
    id: String,
    name: String,
    content: String,
}

/// What stopped a model call's stream early.
enum CallEnd {
    Complete,
    Failed(String),
    Tripped { processor_id: String, reason: String },
}

/// Runs the loop from `input`, emitting every chunk through `emit`, until the model answers without tool calls,
/// `max_steps` calls were made, a model error occurs, a tool call needs approval, a guardrail trips or `cancel`
/// fires.
pub async fn run_agent_with<F>(
    agent: &Agent,
    input: AgentInput,
    options: &AgentOptions,
    emit: F,
    cancel: CancellationToken,
) -> AgentOutcome
where
    F: Fn(AgentChunk) + Send + Sync,
{
    let mut guard = AbortGuard { emit: &emit, ended: false };
    let mut st = match input {
        AgentInput::Messages(messages) => {
            let message_id = uuid::Uuid::new_v4().to_string();
            emit(AgentChunk::AgentStart {
                agent_id: Arc::clone(&agent.id),
                message_id: Arc::from(message_id.as_str()),
            });
            let mut conversation = Vec::with_capacity(messages.len() + 1);
            if !agent.instructions.is_empty() {
                conversation.push(Message::system(agent.instructions.clone()));
            }
            conversation.extend(messages);
            LoopState {
                message_id,
                conversation,
                steps: 0,
                total: Usage::default(),
                parts: PartIds::default(),
                pending: None,
            }
        }
        AgentInput::Resume { state, data } => match resume_state(agent, state, data, &emit) {
            Ok(st) => st,
            Err(message) => {
                let error = ErrorInfo::new("ResumeError", message);
                emit(AgentChunk::AgentError { error: error.clone() });
                guard.ended = true;
                return outcome(AgentEnd::Failed(error), String::new(), None, Usage::default(), 0, Vec::new());
            }
        },
    };
    let message_id: Arc<str> = Arc::from(st.message_id.as_str());
    let specs: Vec<_> = agent.tools.iter().map(|t| t.spec()).collect();
    let max_steps = agent.max_steps.max(1);
    let response_schema = options.output_schema.as_ref().map(|schema| ResponseSchema {
        name: "output".to_owned(),
        schema: schema.raw().clone(),
        strict: false,
    });

    // Every return through `aborted` leaves `guard.ended` false, so the guard emits `AgentAbort` on the way out.
    let aborted = |st: LoopState| outcome(AgentEnd::Aborted, String::new(), None, st.total, st.steps, st.conversation);

    loop {
        if st.pending.is_none() {
            // One model call.
            if cancel.is_cancelled() {
                return aborted(st);
            }
            st.steps += 1;
            emit(AgentChunk::AgentStepStart {
                message_id: Arc::clone(&message_id),
                step_number: st.steps,
                request: None,
                warnings: Vec::new(),
            });
            let mut request = ModelRequest::new(st.conversation.clone()).with_tools(specs.clone());
            request.response_schema = response_schema.clone();
            request.reasoning_effort = options.reasoning_effort;
            let mut stream = agent.model.stream(request, cancel.clone());
            let mut call = CallState { structured: options.output_schema.is_some(), ..CallState::default() };
            let end = loop {
                let item = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return aborted(st),
                    item = stream.next() => item,
                };
                match item {
                    None => break CallEnd::Complete,
                    Some(Err(ModelError::Canceled)) => return aborted(st),
                    Some(Err(e)) => break CallEnd::Failed(e.to_string()),
                    Some(Ok(chunk)) => {
                        if let Some((processor_id, reason)) = call.on_chunk(chunk, agent, &emit, &mut st.parts) {
                            break CallEnd::Tripped { processor_id, reason };
                        }
                    }
                }
            };
            drop(stream);
            call.close_parts(&emit);
            let end = match end {
                CallEnd::Complete if call.finish.is_none() => {
                    CallEnd::Failed("the model's response ended without a finish reason".to_owned())
                }
                other => other,
            };
            match end {
                CallEnd::Complete => {}
                CallEnd::Failed(message) => {
                    // The partial calls will never be made; close their input streams so every start has its end.
                    call.close_tool_inputs(&emit);
                    let error = ErrorInfo::new("ModelError", message);
                    emit(AgentChunk::AgentError { error: error.clone() });
                    guard.ended = true;
                    return outcome(AgentEnd::Failed(error), String::new(), None, st.total, st.steps, st.conversation);
                }
                CallEnd::Tripped { processor_id, reason } => {
                    call.close_tool_inputs(&emit);
                    emit(AgentChunk::Tripwire {
                        reason: reason.clone(),
                        retry: false,
                        metadata: None,
                        processor_id: Some(processor_id.clone()),
                    });
                    // The call was cut short: its usage is whatever the provider reported before the cut.
                    st.total.add(&call.usage);
                    emit(AgentChunk::AgentStepFinish {
                        message_id: Arc::clone(&message_id),
                        step_number: st.steps,
                        reason: FinishReason::Tripwire,
                        raw_reason: None,
                        usage: call.usage,
                        text: String::new(),
                        is_continued: false,
                        warnings: Vec::new(),
                    });
                    emit(AgentChunk::AgentFinish {
                        reason: FinishReason::Tripwire,
                        usage: st.total,
                        text: String::new(),
                        steps: st.steps,
                        object: None,
                    });
                    guard.ended = true;
                    let end = AgentEnd::Tripwire { reason, processor_id };
                    return outcome(end, String::new(), None, st.total, st.steps, st.conversation);
                }
            }
            st.total.add(&call.usage);
            st.pending = Some(call.into_tool_phase(&emit));
        }

        // The tool half: run the calls in the model's order, stopping at one that needs approval or suspends.
        let Some(mut phase) = st.pending.take() else { continue };
        while let Some(next) = phase.queue.front() {
            let tool = agent.tools.iter().find(|t| t.name() == next.name);
            if let Some(tool) = tool
                && tool.requires_approval()
                && !next.approved
            {
                let approval = ToolCallApproval {
                    tool_call_id: Arc::from(next.id.as_str()),
                    tool_name: Arc::from(next.name.as_str()),
                    args: next.args.clone(),
                    resume_schema: Some(approval_schema()),
                };
                emit(AgentChunk::ToolCallApproval(approval.clone()));
                guard.ended = true;
                st.pending = Some(phase);
                return suspend(st, &emit, |state| AgentEnd::AwaitingApproval { approval, state });
            }
            let Some(call) = phase.queue.pop_front() else { break };
            let (id, name): (Arc<str>, Arc<str>) = (Arc::from(call.id.as_str()), Arc::from(call.name.as_str()));
            let result = match tool {
                None => Err(ToolError::new(format!(
                    "unknown tool '{name}'; this agent has: [{}]",
                    agent.tools.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                ))),
                Some(tool) => {
                    let (tx, mut output) = tokio::sync::mpsc::unbounded_channel();
                    let ctx = ToolContext {
                        output: Some(tx),
                        resume: call.resume_data.clone(),
                        ..ToolContext::new(Arc::clone(&agent.id), Arc::clone(&id), cancel.clone())
                    };
                    let run = tool.call(ctx, call.args.clone());
                    tokio::pin!(run);
                    // The tool's writes stream while it runs; whatever is still queued when it returns goes out
                    // before its result.
                    let emit_output = |value| {
                        emit(AgentChunk::ToolOutput {
                            tool_call_id: Arc::clone(&id),
                            tool_name: Arc::clone(&name),
                            output: value,
                        })
                    };
                    let result = loop {
                        tokio::select! {
                            biased;
                            () = cancel.cancelled() => return aborted(st),
                            Some(value) = output.recv() => emit_output(value),
                            r = &mut run => break r,
                        }
                    };
                    while let Ok(value) = output.try_recv() {
                        emit_output(value);
                    }
                    result
                }
            };
            let result = match result {
                Err(error) if error.suspend_payload().is_some() => {
                    match tool.and_then(|t| t.resume_schema().cloned()) {
                        Some(resume_schema) => {
                            let suspended = ToolCallSuspended {
                                tool_call_id: id,
                                tool_name: name,
                                suspend_payload: error.suspend_payload().cloned().unwrap_or_default(),
                                args: call.args.clone(),
                                resume_schema: Some(resume_schema),
                            };
                            emit(AgentChunk::ToolCallSuspended(suspended.clone()));
                            guard.ended = true;
                            // The call stays first in line: resumed, it runs again with the data.
                            phase.queue.push_front(QueuedCall { suspended: true, resume_data: None, ..call });
                            st.pending = Some(phase);
                            return suspend(st, &emit, |state| AgentEnd::Suspended { suspended, state });
                        }
                        // Nothing could check the data it would be resumed with: a programming error, reported as
                        // the call's failure so the model can go on without it.
                        None => Err(ToolError::new(format!(
                            "tool '{name}' suspended itself, but it was not built with a resume schema \
                             (Tool::with_resume_schema), so it cannot be resumed"
                        ))),
                    }
                }
                other => other,
            };
            let content = match result {
                Ok(value) => {
                    let content = value.to_string();
                    emit(AgentChunk::ToolResult {
                        tool_call_id: id,
                        tool_name: name,
                        result: value,
                        is_error: false,
                        args: Some(call.args),
                        provider_executed: false,
                        dynamic: false,
                    });
                    content
                }
                Err(error) => {
                    emit(tool_error_chunk(&id, &name, Some(call.args), &error, None));
                    error_content(&error.message)
                }
            };
            phase.answers.push(ToolAnswer { id: call.id, name: call.name, content });
        }

        let called_tools = !phase.tool_calls.is_empty();
        let is_continued = called_tools && st.steps < max_steps;
        let reason = FinishReason::from(phase.reason);
        emit(AgentChunk::AgentStepFinish {
            message_id: Arc::clone(&message_id),
            step_number: st.steps,
            reason,
            raw_reason: Some(phase.raw),
            usage: phase.usage,
            text: phase.text.clone(),
            is_continued,
            warnings: Vec::new(),
        });
        let content = (!phase.text.is_empty()).then(|| phase.text.clone());
        // Tool results follow the assistant message in call order, answering each call (errors included), because
        // Chat Completions rejects a conversation with an unanswered call.
        let mut by_id: BTreeMap<String, ToolAnswer> = phase.answers.into_iter().map(|a| (a.id.clone(), a)).collect();
        let answers: Vec<Message> = phase
            .tool_calls
            .iter()
            .filter_map(|c| by_id.remove(&c.id).map(|a| Message::tool_result(a.id, a.name, a.content)))
            .collect();
        st.conversation.push(Message::Assistant { content, tool_calls: phase.tool_calls });
        st.conversation.extend(answers);

        if !is_continued {
            let object = match &options.output_schema {
                None => None,
                Some(schema) => match structured_output(schema, &phase.text) {
                    Ok(object) => {
                        emit(AgentChunk::ObjectResult { object: object.clone() });
                        Some(object)
                    }
                    Err(message) => {
                        let error = ErrorInfo::new("StructuredOutputError", message);
                        emit(AgentChunk::AgentError { error: error.clone() });
                        guard.ended = true;
                        return outcome(AgentEnd::Failed(error), phase.text, None, st.total, st.steps, st.conversation);
                    }
                },
            };
            emit(AgentChunk::AgentFinish {
                reason,
                usage: st.total,
                text: phase.text.clone(),
                steps: st.steps,
                object: object.clone(),
            });
            guard.ended = true;
            return outcome(AgentEnd::Finished(reason), phase.text, object, st.total, st.steps, st.conversation);
        }
    }
}

fn outcome(
    end: AgentEnd,
    text: String,
    object: Option<Value>,
    usage: Usage,
    steps: u32,
    messages: Vec<Message>,
) -> AgentOutcome {
    AgentOutcome { end, text, object, usage, steps, messages }
}

/// JSON Schema of the resume data an approval takes (compiled: [`APPROVAL_SCHEMA`]).
pub fn approval_schema() -> Value {
    APPROVAL_SCHEMA.raw().clone()
}

/// The approval schema, compiled once; what every approval suspension names as its resume schema.
pub(crate) static APPROVAL_SCHEMA: std::sync::LazyLock<Schema> =
    std::sync::LazyLock::new(|| Schema::compile_or_panic(approval_schema_json(), "the approval schema"));

fn approval_schema_json() -> Value {
    json!({
        "type": "object",
        "required": ["approved"],
        "properties": {
            "approved": { "type": "boolean", "description": "true runs the tool call; false declines it" },
            "reason": { "type": "string", "description": "why, shown to the model when declined" }
        },
        "additionalProperties": false
    })
}

/// Saves the loop's state for a resume and ends the run as `end` makes of it.
fn suspend(st: LoopState, emit: &impl Fn(AgentChunk), end: impl FnOnce(Value) -> AgentEnd) -> AgentOutcome {
    let (usage, steps) = (st.total, st.steps);
    match serde_json::to_value(&st) {
        Ok(state) => outcome(end(state), String::new(), None, usage, steps, st.conversation),
        // Plain data throughout; only a bug could make this fail, and then the run must say so.
        Err(e) => {
            let error = ErrorInfo::new("AgentStateError", format!("cannot save the agent's state: {e}"));
            emit(AgentChunk::AgentError { error: error.clone() });
            outcome(AgentEnd::Failed(error), String::new(), None, usage, steps, Vec::new())
        }
    }
}

/// Restores the loop after a suspension and hands `data` to the call that waited: the decision on a call awaiting
/// approval, the resume data of a tool that suspended itself (checked against its schema here too, for callers of
/// the loop that did not check it).
fn resume_state(agent: &Agent, state: Value, data: Value, emit: &impl Fn(AgentChunk)) -> Result<LoopState, String> {
    let mut st: LoopState =
        serde_json::from_value(state).map_err(|e| format!("the agent's saved state is unreadable: {e}"))?;
    let Some(phase) = st.pending.as_mut().filter(|p| !p.queue.is_empty()) else {
        return Err("the agent's saved state has no tool call waiting for a decision or resume data".to_owned());
    };
    if let Some(head) = phase.queue.front_mut().filter(|c| c.suspended) {
        if let Some(schema) = agent.find_tool(&head.name).and_then(|t| t.resume_schema.as_ref()) {
            schema
                .validate(&data, "resume_data")
                .map_err(|v| format!("{v}; the tool '{}' cannot resume", head.name))?;
        }
        head.suspended = false;
        head.resume_data = Some(data);
        return Ok(st);
    }
    let decision = ApprovalDecision::from_resume_data(data)?;
    if decision.approved {
        if let Some(head) = phase.queue.front_mut() {
            head.approved = true;
        }
    } else if let Some(call) = phase.queue.pop_front() {
        emit(AgentChunk::ToolOutputDenied {
            tool_call_id: Arc::from(call.id.as_str()),
            tool_name: Arc::from(call.name.as_str()),
            args: Some(call.args),
            approval_id: call.id.clone(),
            reason: decision.reason.clone(),
        });
        // The model learns that the call was declined (and why), so it can answer without it.
        let why = decision.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        let content = error_content(&format!("the user declined this call to '{}'{why}", call.name));
        phase.answers.push(ToolAnswer { id: call.id, name: call.name, content });
    }
    Ok(st)
}

/// Parses and checks the final structured answer.
fn structured_output(schema: &Schema, text: &str) -> Result<Value, String> {
    let object: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the model's answer is not the JSON the output schema asks for: {e}"))?;
    schema
        .validate(&object, "object")
        .map_err(|v| format!("the model's answer does not match the output schema: {v}"))?;
    Ok(object)
}

/// A tool call as the model streams it.
struct PendingCall {
    id: Arc<str>,
    name: Arc<str>,
    arguments: String,
}

/// What one model call (one attempt of it) has produced so far.
#[derive(Default)]
struct CallState {
    /// Text deltas are the structured answer: stream them as `ObjectPartial`s, not as text parts.
    structured: bool,
    text: String,
    last_partial: Option<Value>,
    open_text: Option<Arc<str>>,
    open_reasoning: Option<Arc<str>>,
    /// The open reasoning part's signature, repeated in its `ReasoningEnd`.
    reasoning_signature: Option<String>,
    /// This call's latest reasoning part, open or closed: what a late signature signs.
    last_reasoning: Option<Arc<str>>,
    /// By the model's `index`, so calls come out in the order the model made them.
    calls: BTreeMap<u32, PendingCall>,
    finish: Option<(model::FinishReason, String)>,
    usage: Usage,
}

impl CallState {
    /// Maps one model chunk to agent chunks. Returns the guardrail that tripped, if one did: the offending text is
    /// then not emitted.
    fn on_chunk(
        &mut self,
        chunk: ModelChunk,
        agent: &Agent,
        emit: &impl Fn(AgentChunk),
        parts: &mut PartIds,
    ) -> Option<(String, String)> {
        match chunk {
            ModelChunk::ResponseMetadata { id, model } => {
                emit(AgentChunk::ResponseMetadata { id, model_id: model, signature: None });
            }
            ModelChunk::TextDelta { text } => {
                if text.is_empty() {
                    return None;
                }
                // Guardrails see the whole answer so far, so a secret split across deltas is still caught, and
                // they see it before the client does (a tripped call is abandoned with its text).
                self.text.push_str(&text);
                for guardrail in &agent.output_guardrails {
                    if let Some(reason) = guardrail.check(&self.text) {
                        return Some((guardrail.id().to_owned(), reason));
                    }
                }
                self.close_reasoning(emit);
                if self.structured {
                    if let Some(object) = parse_partial(&self.text)
                        && self.last_partial.as_ref() != Some(&object)
                    {
                        self.last_partial = Some(object.clone());
                        emit(AgentChunk::ObjectPartial { object });
                    }
                    return None;
                }
                let id = match &self.open_text {
                    Some(id) => Arc::clone(id),
                    None => {
                        let id = parts.next("text");
                        emit(AgentChunk::TextStart { id: Arc::clone(&id) });
                        self.open_text = Some(Arc::clone(&id));
                        id
                    }
                };
                emit(AgentChunk::TextDelta { id, text });
            }
            ModelChunk::ReasoningDelta { text } => {
                if text.is_empty() {
                    return None;
                }
                self.close_text(emit);
                let id = self.reasoning_part(emit, parts);
                emit(AgentChunk::ReasoningDelta { id, text });
            }
            ModelChunk::ReasoningSignature { signature } => {
                if signature.is_empty() {
                    return None;
                }
                // It signs the reasoning before it: the open part; else this call's last part, closed early by
                // other content; else (a signature with no reasoning) a part of its own.
                let id = match (&self.open_reasoning, &self.last_reasoning) {
                    (None, Some(last)) => Arc::clone(last),
                    _ => {
                        self.close_text(emit);
                        let id = self.reasoning_part(emit, parts);
                        self.reasoning_signature = Some(signature.clone());
                        id
                    }
                };
                emit(AgentChunk::ReasoningSignature { id, signature });
            }
            ModelChunk::RedactedReasoning { data } => {
                if data.is_empty() {
                    return None;
                }
                // Withheld reasoning is still reasoning: it goes in (or opens) a reasoning part.
                self.close_text(emit);
                let id = self.reasoning_part(emit, parts);
                emit(AgentChunk::RedactedReasoning { id, data });
            }
            ModelChunk::Source { url, title } => {
                // A source is content of its own (a part in Mastra's message), so it ends the open text or
                // reasoning part, as any switch of content does.
                self.close_parts(emit);
                emit(AgentChunk::SourceRef {
                    id: parts.next("source").to_string(),
                    source_type: "url".to_owned(),
                    title: title.unwrap_or_default(),
                    mime_type: None,
                    filename: None,
                    url: Some(url),
                });
            }
            ModelChunk::File { media_type, base64 } => match BASE64.decode(base64.trim()) {
                Ok(data) => {
                    self.close_parts(emit);
                    emit(AgentChunk::FileData { data, mime_type: media_type, filename: None });
                }
                // The provider's bytes are unreadable; the rest of the response still stands.
                Err(e) => tracing::warn!(%media_type, "dropping a generated file whose base64 data is invalid: {e}"),
            },
            ModelChunk::ToolCallStart { index, id, name } => {
                self.close_parts(emit);
                let (id, name): (Arc<str>, Arc<str>) = (Arc::from(id), Arc::from(name));
                emit(AgentChunk::ToolCallInputStreamingStart {
                    tool_call_id: Arc::clone(&id),
                    tool_name: Arc::clone(&name),
                    provider_executed: false,
                    dynamic: false,
                    title: None,
                });
                self.calls.insert(index, PendingCall { id, name, arguments: String::new() });
            }
            ModelChunk::ToolCallDelta { index, arguments } => {
                // A delta for a call that never started breaks the provider contract; there is no id to report it
                // under, and the call cannot be made, so it is dropped.
                if let Some(call) = self.calls.get_mut(&index) {
                    call.arguments.push_str(&arguments);
                    emit(AgentChunk::ToolCallDelta {
                        tool_call_id: Arc::clone(&call.id),
                        tool_name: Arc::clone(&call.name),
                        args_text_delta: arguments,
                    });
                }
            }
            ModelChunk::Finish { reason, raw } => self.finish = Some((reason, raw)),
            ModelChunk::Usage { usage } => self.usage = usage,
            ModelChunk::Restart { .. } => {
                self.close_parts(emit);
                self.close_tool_inputs(emit);
                *self = CallState { structured: self.structured, ..CallState::default() };
            }
        }
        None
    }

    /// The response is complete: close the tool calls' input streams, parse their arguments (a call whose
    /// arguments are not JSON is answered with an error at once) and queue the rest for execution.
    fn into_tool_phase(self, emit: &impl Fn(AgentChunk)) -> ToolPhase {
        let (reason, raw) = self.finish.unwrap_or((model::FinishReason::Other, String::new()));
        let mut queue = VecDeque::new();
        let mut answers = Vec::new();
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for pending in self.calls.into_values() {
            emit(AgentChunk::ToolCallInputStreamingEnd { tool_call_id: Arc::clone(&pending.id) });
            let parsed = if pending.arguments.trim().is_empty() {
                // Models send no arguments at all for tools without parameters.
                Ok(json!({}))
            } else {
                serde_json::from_str::<Value>(&pending.arguments)
            };
            match parsed {
                Ok(args) => {
                    emit(AgentChunk::ToolCall {
                        tool_call_id: Arc::clone(&pending.id),
                        tool_name: Arc::clone(&pending.name),
                        args: args.clone(),
                        provider_executed: false,
                        dynamic: false,
                        title: None,
                    });
                    queue.push_back(QueuedCall {
                        id: pending.id.to_string(),
                        name: pending.name.to_string(),
                        args,
                        approved: false,
                        suspended: false,
                        resume_data: None,
                    });
                }
                Err(e) => {
                    let error =
                        ToolError::args(format!("the arguments of tool '{}' are not valid JSON: {e}", pending.name));
                    emit(tool_error_chunk(&pending.id, &pending.name, None, &error, Some(&pending.arguments)));
                    answers.push(ToolAnswer {
                        id: pending.id.to_string(),
                        name: pending.name.to_string(),
                        content: error_content(&error.message),
                    });
                }
            }
            tool_calls.push(ToolCall {
                id: pending.id.to_string(),
                name: pending.name.to_string(),
                arguments: pending.arguments,
            });
        }
        ToolPhase { text: self.text, reason, raw, usage: self.usage, tool_calls, queue, answers }
    }

    fn close_text(&mut self, emit: &impl Fn(AgentChunk)) {
        if let Some(id) = self.open_text.take() {
            emit(AgentChunk::TextEnd { id });
        }
    }

    /// The open reasoning part, or a new one (`ReasoningStart`).
    fn reasoning_part(&mut self, emit: &impl Fn(AgentChunk), parts: &mut PartIds) -> Arc<str> {
        if let Some(id) = &self.open_reasoning {
            return Arc::clone(id);
        }
        let id = parts.next("reasoning");
        emit(AgentChunk::ReasoningStart { id: Arc::clone(&id), signature: None });
        self.open_reasoning = Some(Arc::clone(&id));
        self.last_reasoning = Some(Arc::clone(&id));
        id
    }

    fn close_reasoning(&mut self, emit: &impl Fn(AgentChunk)) {
        if let Some(id) = self.open_reasoning.take() {
            emit(AgentChunk::ReasoningEnd { id, signature: self.reasoning_signature.take() });
        }
    }

    /// Ends the input streams of the calls so far, for an attempt that is abandoned.
    fn close_tool_inputs(&self, emit: &impl Fn(AgentChunk)) {
        for call in self.calls.values() {
            emit(AgentChunk::ToolCallInputStreamingEnd { tool_call_id: Arc::clone(&call.id) });
        }
    }

    fn close_parts(&mut self, emit: &impl Fn(AgentChunk)) {
        self.close_reasoning(emit);
        self.close_text(emit);
    }
}

/// Text and reasoning part ids and source ids, unique within one agent run (`text-1`, `reasoning-1`, `text-2`,
/// `source-1`, ...). Counters rather than random ids keep streams reproducible.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PartIds {
    text: u32,
    reasoning: u32,
    /// Default: states saved before sources had ids.
    #[serde(default)]
    source: u32,
}

impl PartIds {
    fn next(&mut self, kind: &'static str) -> Arc<str> {
        let n = match kind {
            "text" => &mut self.text,
            "reasoning" => &mut self.reasoning,
            _ => &mut self.source,
        };
        *n += 1;
        Arc::from(format!("{kind}-{n}"))
    }
}

fn tool_error_chunk(
    id: &Arc<str>,
    name: &Arc<str>,
    args: Option<Value>,
    error: &ToolError,
    args_text: Option<&str>,
) -> AgentChunk {
    AgentChunk::ToolError {
        tool_call_id: Arc::clone(id),
        tool_name: Arc::clone(name),
        args,
        error: ErrorInfo {
            name: error.name.clone(),
            message: error.message.clone(),
            details: args_text.map(|t| json!({ "argsText": t })),
        },
        provider_executed: false,
    }
}

/// What the model reads for a failed (or declined) call: the error as JSON, so it can tell it from a result.
fn error_content(message: &str) -> String {
    json!({ "error": message }).to_string()
}

impl From<model::FinishReason> for FinishReason {
    fn from(reason: model::FinishReason) -> Self {
        match reason {
            model::FinishReason::Stop => FinishReason::Stop,
            model::FinishReason::Length => FinishReason::Length,
            model::FinishReason::ContentFilter => FinishReason::ContentFilter,
            model::FinishReason::ToolCalls => FinishReason::ToolCalls,
            model::FinishReason::Other => FinishReason::Other,
        }
    }
}
