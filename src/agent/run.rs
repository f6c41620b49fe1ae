//! The agent loop: model call, then the tool calls it made, until the model answers without tools, a limit or an
//! error ends it, a guardrail trips, a tool call waits for a person, or the run is canceled; see the
//! [module docs](super) for the chunks it emits and why.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    Agent, ToolContext, ToolError,
    chunks::{CallState, PartIds, QueuedCall, ToolAnswer, error_content, tool_error_chunk},
    suspend::{LoopState, approval_schema, resume_state},
};
use crate::{
    engine::{AgentChunk, ErrorInfo, FinishReason, ToolCallApproval, ToolCallSuspended, Usage, schema::Schema},
    model::{Message, ModelError, ModelRequest, ReasoningEffort, ResponseSchema},
};

/// How a run of the loop ended, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    /// Why the loop stopped.
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

/// Why the agent loop stopped.
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
    AwaitingApproval {
        /// The call that waits, as streamed.
        approval: ToolCallApproval,
        /// The loop's state to hand back on resume (kept in the run's snapshot, never shown to clients).
        state: Value,
    },
    /// A tool suspended itself ([`ToolContext::suspend`]); streamed as `ToolCallSuspended`. Continue with
    /// [`AgentInput::Resume`], handing back `state` and data for the tool (its resume schema says what).
    Suspended {
        /// The suspension, as streamed (with the tool's payload and resume schema).
        suspended: ToolCallSuspended,
        /// The loop's state to hand back on resume.
        state: Value,
    },
    /// An output guardrail stopped the agent; streamed as `Tripwire`.
    Tripwire {
        /// What the guardrail said.
        reason: String,
        /// Which guardrail it was.
        processor_id: String,
    },
}

/// What the loop starts from.
#[derive(Debug, Clone)]
pub enum AgentInput {
    /// A new conversation (the instructions are prepended as the system message).
    Messages(Vec<Message>),
    /// Continue after [`AgentEnd::AwaitingApproval`] or [`AgentEnd::Suspended`]: `data` is the decision on the
    /// waiting call (an [`ApprovalDecision`] as JSON) or the data the suspended tool is called again with.
    Resume {
        /// The state the loop ended with ([`AgentEnd::AwaitingApproval`] or [`AgentEnd::Suspended`]).
        state: Value,
        /// The decision, or the suspended tool's data.
        data: Value,
    },
}

/// Per-run options of the loop.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Ask for structured output: every model call is asked for JSON satisfying this schema, the answer streams as
    /// `ObjectPartial`s instead of text parts, and is checked before `ObjectResult`.
    pub output_schema: Option<Schema>,
    /// Ask the model to reason first (reasoning models; the offline model streams a scripted reasoning part).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// The run and step the agent runs in, handed to its tools ([`ToolContext::run_id`], [`ToolContext::step_id`]):
    /// an agent step sets them; `None` elsewhere.
    pub run_id: Option<Arc<str>>,
    /// See `run_id`.
    pub step_id: Option<Arc<str>>,
    /// The run's request context, handed to its tools ([`ToolContext::request_context`]); empty outside a run.
    pub request_context: Arc<Map<String, Value>>,
    /// The run's tenant, handed to its tools ([`ToolContext::tenant`]).
    pub tenant: Arc<str>,
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
            let mut call = CallState::new(options.output_schema.is_some());
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
                        run_id: options.run_id.clone(),
                        step_id: options.step_id.clone(),
                        step_number: st.steps,
                        request_context: Arc::clone(&options.request_context),
                        tenant: Arc::clone(&options.tenant),
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

/// Parses and checks the final structured answer.
fn structured_output(schema: &Schema, text: &str) -> Result<Value, String> {
    let object: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the model's answer is not the JSON the output schema asks for: {e}"))?;
    schema
        .validate(&object, "object")
        .map_err(|v| format!("the model's answer does not match the output schema: {v}"))?;
    Ok(object)
}
