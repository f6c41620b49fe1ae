//! One model call's stream turned into agent chunks: text, reasoning, sources, files and tool-call parts opened and
//! closed in order, output guardrails checked before text is shown, and the finished response's tool calls queued
//! for the loop to run.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Agent, ToolError, partial_json::parse_partial};
use crate::{
    engine::{AgentChunk, ErrorInfo, FinishReason, Usage},
    model::{self, ModelChunk, ToolCall},
};

/// What one model call (one attempt of it) has produced so far.
#[derive(Default)]
pub(super) struct CallState {
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
    pub(super) finish: Option<(model::FinishReason, String)>,
    pub(super) usage: Usage,
}

impl CallState {
    /// A call about to start; `structured`: its text is the structured answer.
    pub(super) fn new(structured: bool) -> Self {
        Self { structured, ..Self::default() }
    }

    /// Maps one model chunk to agent chunks. Returns the guardrail that tripped, if one did: the offending text is
    /// then not emitted.
    pub(super) fn on_chunk(
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
    pub(super) fn into_tool_phase(self, emit: &impl Fn(AgentChunk)) -> ToolPhase {
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
    pub(super) fn close_tool_inputs(&self, emit: &impl Fn(AgentChunk)) {
        for call in self.calls.values() {
            emit(AgentChunk::ToolCallInputStreamingEnd { tool_call_id: Arc::clone(&call.id) });
        }
    }

    pub(super) fn close_parts(&mut self, emit: &impl Fn(AgentChunk)) {
        self.close_reasoning(emit);
        self.close_text(emit);
    }
}

/// A tool call as the model streams it.
struct PendingCall {
    id: Arc<str>,
    name: Arc<str>,
    arguments: String,
}

/// A model call whose response is complete and whose tool calls are being executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ToolPhase {
    pub(super) text: String,
    pub(super) reason: model::FinishReason,
    pub(super) raw: String,
    pub(super) usage: Usage,
    /// The calls as the model made them, for the conversation.
    pub(super) tool_calls: Vec<ToolCall>,
    /// Calls still to execute, in the model's order. The first may be waiting for approval.
    pub(super) queue: VecDeque<QueuedCall>,
    /// Answers so far, errors included: every call gets one.
    pub(super) answers: Vec<ToolAnswer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct QueuedCall {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) args: Value,
    /// A person approved this call: run it without asking again.
    #[serde(default)]
    pub(super) approved: bool,
    /// The tool suspended itself on this call and waits for resume data.
    #[serde(default)]
    pub(super) suspended: bool,
    /// The data the call was resumed with, for the tool's next invocation.
    #[serde(default)]
    pub(super) resume_data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ToolAnswer {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) content: String,
}

/// Text and reasoning part ids and source ids, unique within one agent run (`text-1`, `reasoning-1`, `text-2`,
/// `source-1`, ...). Counters rather than random ids keep streams reproducible.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct PartIds {
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

pub(super) fn tool_error_chunk(
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
pub(super) fn error_content(message: &str) -> String {
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
