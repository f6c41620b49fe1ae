//! The agent loop; see the [module docs](super) for the chunks it emits and why.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Agent, ToolContext, ToolError};
use crate::{
    engine::{AgentChunk, ErrorInfo, FinishReason, Usage},
    model::{self, Message, ModelChunk, ModelError, ModelRequest, ToolCall},
};

/// How a run of the loop ended, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    pub end: AgentEnd,
    /// The last model call's text (empty when the agent failed or was aborted before finishing).
    pub text: String,
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
    /// A model error ended the loop; also streamed as `AgentError`.
    Failed(ErrorInfo),
    /// The run was canceled; streamed as `AgentAbort`.
    Aborted,
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

/// A tool call as the model streams it.
struct PendingCall {
    id: Arc<str>,
    name: Arc<str>,
    arguments: String,
}

/// What one model call (one attempt of it) has produced so far.
#[derive(Default)]
struct CallState {
    text: String,
    open_text: Option<Arc<str>>,
    open_reasoning: Option<Arc<str>>,
    /// By the model's `index`, so calls come out in the order the model made them.
    calls: BTreeMap<u32, PendingCall>,
    finish: Option<(model::FinishReason, String)>,
    usage: Usage,
}

/// Runs `agent` on `messages` (the instructions are prepended as the system message), emitting every chunk through
/// `emit`, until the model answers without tool calls, `max_steps` calls were made, a model error occurs or
/// `cancel` fires.
pub async fn run_agent<F>(agent: &Agent, messages: Vec<Message>, emit: F, cancel: CancellationToken) -> AgentOutcome
where
    F: Fn(AgentChunk) + Send + Sync,
{
    let mut guard = AbortGuard { emit: &emit, ended: false };
    let message_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    emit(AgentChunk::AgentStart { agent_id: Arc::clone(&agent.id), message_id: Arc::clone(&message_id) });

    let mut conversation = Vec::with_capacity(messages.len() + 1);
    if !agent.instructions.is_empty() {
        conversation.push(Message::system(agent.instructions.clone()));
    }
    conversation.extend(messages);
    let specs: Vec<_> = agent.tools.iter().map(|t| t.spec()).collect();
    let mut parts = PartIds::default();
    let mut total = Usage::default();
    let mut steps = 0u32;
    let max_steps = agent.max_steps.max(1);

    // Every return through `aborted` leaves `guard.ended` false, so the guard emits `AgentAbort` on the way out.
    let aborted =
        |usage, steps, messages| AgentOutcome { end: AgentEnd::Aborted, text: String::new(), usage, steps, messages };

    loop {
        if cancel.is_cancelled() {
            return aborted(total, steps, conversation);
        }
        steps += 1;
        emit(AgentChunk::AgentStepStart {
            message_id: Arc::clone(&message_id),
            step_number: steps,
            request: None,
            warnings: Vec::new(),
        });

        // Stream one model call.
        let request = ModelRequest::new(conversation.clone()).with_tools(specs.clone());
        let mut stream = agent.model.stream(request, cancel.clone());
        let mut call = CallState::default();
        let failure = loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return aborted(total, steps, conversation),
                item = stream.next() => item,
            };
            match item {
                None => break None,
                Some(Err(ModelError::Canceled)) => return aborted(total, steps, conversation),
                Some(Err(e)) => break Some(e.to_string()),
                Some(Ok(chunk)) => call.on_chunk(chunk, &emit, &mut parts),
            }
        };
        call.close_parts(&emit);
        let failure = failure
            .or_else(|| call.finish.is_none().then(|| "the model's response ended without a finish reason".to_owned()));
        if let Some(message) = failure {
            // The partial calls will never be made; close their input streams so every start has its end.
            call.close_tool_inputs(&emit);
            let error = ErrorInfo::new("ModelError", message);
            emit(AgentChunk::AgentError { error: error.clone() });
            guard.ended = true;
            return AgentOutcome {
                end: AgentEnd::Failed(error),
                text: String::new(),
                usage: total,
                steps,
                messages: conversation,
            };
        }
        let (reason, raw) = call.finish.take().unwrap_or((model::FinishReason::Other, String::new()));
        total.add(&call.usage);

        // The arguments are complete now: close their streams and parse them.
        let mut runnable = Vec::new();
        let mut results: Vec<(Arc<str>, Arc<str>, String)> = Vec::new();
        let mut tool_calls = Vec::with_capacity(call.calls.len());
        for pending in call.calls.into_values() {
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
                    runnable.push((Arc::clone(&pending.id), Arc::clone(&pending.name), args));
                }
                Err(e) => {
                    let error =
                        ToolError::args(format!("the arguments of tool '{}' are not valid JSON: {e}", pending.name));
                    emit(tool_error_chunk(&pending.id, &pending.name, None, &error, Some(&pending.arguments)));
                    results.push((Arc::clone(&pending.id), Arc::clone(&pending.name), error_content(&error)));
                }
            }
            tool_calls.push(ToolCall {
                id: pending.id.to_string(),
                name: pending.name.to_string(),
                arguments: pending.arguments,
            });
        }

        // Run the tools, in the order the model called them.
        for (id, name, args) in runnable {
            let result = match agent.tools.iter().find(|t| **t.name_arc() == *name) {
                None => Err(ToolError::new(format!(
                    "unknown tool '{name}'; this agent has: [{}]",
                    agent.tools.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                ))),
                Some(tool) => {
                    let ctx = ToolContext {
                        agent_id: Arc::clone(&agent.id),
                        tool_call_id: Arc::clone(&id),
                        cancel: cancel.clone(),
                    };
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return aborted(total, steps, conversation),
                        r = tool.call(ctx, args.clone()) => r,
                    }
                }
            };
            match result {
                Ok(value) => {
                    let content = value.to_string();
                    emit(AgentChunk::ToolResult {
                        tool_call_id: Arc::clone(&id),
                        tool_name: Arc::clone(&name),
                        result: value,
                        is_error: false,
                        args: Some(args),
                        provider_executed: false,
                        dynamic: false,
                    });
                    results.push((id, name, content));
                }
                Err(error) => {
                    emit(tool_error_chunk(&id, &name, Some(args), &error, None));
                    results.push((id, name, error_content(&error)));
                }
            }
        }

        let called_tools = !tool_calls.is_empty();
        let is_continued = called_tools && steps < max_steps;
        emit(AgentChunk::AgentStepFinish {
            message_id: Arc::clone(&message_id),
            step_number: steps,
            reason: finish_reason(reason),
            raw_reason: Some(raw),
            usage: call.usage,
            text: call.text.clone(),
            is_continued,
            warnings: Vec::new(),
        });
        let content = (!call.text.is_empty()).then(|| call.text.clone());
        conversation.push(Message::Assistant { content, tool_calls });
        // Tool results follow the assistant message in call order, answering each call (errors included), because
        // Chat Completions rejects a conversation with an unanswered call.
        let mut by_id: BTreeMap<Arc<str>, (Arc<str>, String)> = BTreeMap::new();
        for (id, name, content) in results {
            by_id.insert(id, (name, content));
        }
        if let Some(Message::Assistant { tool_calls, .. }) = conversation.last() {
            let answers: Vec<Message> = tool_calls
                .iter()
                .filter_map(|c| {
                    by_id
                        .remove(c.id.as_str())
                        .map(|(name, content)| Message::tool_result(c.id.clone(), name.to_string(), content))
                })
                .collect();
            conversation.extend(answers);
        }

        if !is_continued {
            emit(AgentChunk::AgentFinish {
                reason: finish_reason(reason),
                usage: total,
                text: call.text.clone(),
                steps,
                object: None,
            });
            guard.ended = true;
            return AgentOutcome {
                end: AgentEnd::Finished(finish_reason(reason)),
                text: call.text,
                usage: total,
                steps,
                messages: conversation,
            };
        }
    }
}

impl CallState {
    /// Maps one model chunk to agent chunks.
    fn on_chunk(&mut self, chunk: ModelChunk, emit: &impl Fn(AgentChunk), parts: &mut PartIds) {
        match chunk {
            ModelChunk::ResponseMetadata { id, model } => {
                emit(AgentChunk::ResponseMetadata { id, model_id: model, signature: None });
            }
            ModelChunk::TextDelta { text } => {
                if text.is_empty() {
                    return;
                }
                self.close_reasoning(emit);
                let id = match &self.open_text {
                    Some(id) => Arc::clone(id),
                    None => {
                        let id = parts.next("text");
                        emit(AgentChunk::TextStart { id: Arc::clone(&id) });
                        self.open_text = Some(Arc::clone(&id));
                        id
                    }
                };
                self.text.push_str(&text);
                emit(AgentChunk::TextDelta { id, text });
            }
            ModelChunk::ReasoningDelta { text } => {
                if text.is_empty() {
                    return;
                }
                self.close_text(emit);
                let id = match &self.open_reasoning {
                    Some(id) => Arc::clone(id),
                    None => {
                        let id = parts.next("reasoning");
                        emit(AgentChunk::ReasoningStart { id: Arc::clone(&id), signature: None });
                        self.open_reasoning = Some(Arc::clone(&id));
                        id
                    }
                };
                emit(AgentChunk::ReasoningDelta { id, text });
            }
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
                *self = CallState::default();
            }
        }
    }

    fn close_text(&mut self, emit: &impl Fn(AgentChunk)) {
        if let Some(id) = self.open_text.take() {
            emit(AgentChunk::TextEnd { id });
        }
    }

    fn close_reasoning(&mut self, emit: &impl Fn(AgentChunk)) {
        if let Some(id) = self.open_reasoning.take() {
            emit(AgentChunk::ReasoningEnd { id, signature: None });
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

/// Text and reasoning part ids, unique within one agent run (`text-1`, `reasoning-1`, `text-2`, ...). Counters
/// rather than random ids keep streams reproducible.
#[derive(Default)]
struct PartIds {
    text: u32,
    reasoning: u32,
}

impl PartIds {
    fn next(&mut self, kind: &'static str) -> Arc<str> {
        let n = if kind == "text" { &mut self.text } else { &mut self.reasoning };
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
            details: args_text.map(|t| json!({ "args_text": t })),
        },
        provider_executed: false,
    }
}

/// What the model reads for a failed call: the error as JSON, so it can tell it from a result.
fn error_content(error: &ToolError) -> String {
    json!({ "error": error.message }).to_string()
}

fn finish_reason(reason: model::FinishReason) -> FinishReason {
    match reason {
        model::FinishReason::Stop => FinishReason::Stop,
        model::FinishReason::Length => FinishReason::Length,
        model::FinishReason::ContentFilter => FinishReason::ContentFilter,
        model::FinishReason::ToolCalls => FinishReason::ToolCalls,
        model::FinishReason::Other => FinishReason::Other,
    }
}
