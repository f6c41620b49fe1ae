//! Language models behind one streaming trait, for the agent loop.
//!
//! - [`ModelProvider`]: the trait an agent calls. One call streams one model response ("step") as
//!   [`ModelChunk`]s; the contract below is what the agent loop may rely on, whatever the provider.
//! - [`OpenAiModel`]: an OpenAI-compatible Chat Completions client (OpenAI, vLLM, Ollama, llama.cpp's server,
//!   LM Studio, ...), streaming over server-sent events.
//! - [`OfflineModel`]: a deterministic, scripted stand-in that needs no network, so that the service and its
//!   built-in agents work out of the box. It is not a language model.
//! - [`RetryingModel`]: wraps any provider and re-issues a call after a transient failure, per [`RetryPolicy`].
//! - [`parse_base_url`]: checks a server's base URL, saying what to write instead of one that cannot be used.
//!
//! The library reads no environment variable: `runstream serve` builds the model from its settings
//! (`--model`, `--model-base-url`, `--model-api-key` or their `RUNSTREAM_MODEL*` variables) and hands it in.
//!
//! # The stream contract
//!
//! [`ModelProvider::stream`] returns a lazy stream: nothing is sent until it is first polled, and dropping it
//! abandons the call (the HTTP connection is closed). A successful stream yields, in this order:
//!
//! 1. at most one [`ModelChunk::ResponseMetadata`], before any content;
//! 2. any interleaving of [`ModelChunk::TextDelta`], [`ModelChunk::ReasoningDelta`],
//!    [`ModelChunk::ReasoningSignature`], [`ModelChunk::RedactedReasoning`], [`ModelChunk::Source`],
//!    [`ModelChunk::File`], [`ModelChunk::ToolCallStart`] and [`ModelChunk::ToolCallDelta`]. For each tool-call
//!    `index`, its `ToolCallStart` comes before its deltas; the concatenated deltas of one index are the call's
//!    arguments as JSON text, complete only once `Finish` arrives (parse them then, not before: the text may be
//!    invalid JSON if the model erred, which is the agent's to report as a tool error). A `ReasoningSignature`
//!    follows the reasoning deltas it signs (those since the previous signature). With
//!    [`ReasoningEffort::Hidden`] there are no `ReasoningDelta`s or `ReasoningSignature`s, only what the provider
//!    sends redacted;
//! 3. exactly one [`ModelChunk::Finish`], held back until the response is known to be complete;
//! 4. at most one [`ModelChunk::Usage`], the response's total (never a running count);
//!
//! and then ends. A failed stream yields one `Err(ModelError)` and ends; chunks yielded before it are a partial
//! response the agent should treat as unfinished. Canceling the token ends the stream with
//! [`ModelError::Canceled`] promptly, even mid-response.
//!
//! Only [`RetryingModel`] yields [`ModelChunk::Restart`]: it means "everything since the start of this call is
//! void; the call is being issued again", and the contract above starts over after it.

mod offline;
mod openai;
mod retry;
mod sse;
#[cfg(test)]
mod tests;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use crate::engine::event::Usage;
pub use offline::OfflineModel;
pub use openai::{OpenAiConfig, OpenAiModel, parse_base_url};
pub use retry::{RetryPolicy, RetryingModel};

/// The stream one model call returns; see the [module docs](self) for its contract.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelChunk, ModelError>> + Send + 'static>>;

/// A language model (or a stand-in for one) that streams responses.
///
/// Object-safe, used as `Arc<dyn ModelProvider>`. Implementations must honour the stream contract in the
/// [module docs](self): the agent loop is written against it, not against any one provider.
pub trait ModelProvider: Send + Sync + 'static {
    /// The model's name as the provider knows it (e.g. `gpt-4o-mini`, `offline`): for events and logs.
    fn model_id(&self) -> &str;

    /// Which kind of provider this is (`openai-compatible`, `offline`): for events and logs.
    fn provider(&self) -> &str;

    /// Streams one response to `request`. Lazy: nothing happens until the stream is polled. `cancel` ends the
    /// stream with [`ModelError::Canceled`].
    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream;

    /// The same provider calling another of its models (`name`, as the provider knows it), for an agent that names
    /// its model; `None` when this provider has one model only (the offline stand-in), which then serves every
    /// name.
    fn with_model(&self, name: &str) -> Option<Arc<dyn ModelProvider>> {
        let _ = name;
        None
    }
}

/// What to ask the model: the conversation so far, the tools it may call, and how to answer.
///
/// `Clone` because a retry re-issues the same request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRequest {
    /// The conversation so far, system message first.
    pub messages: Vec<Message>,
    /// Tools the model may call. Empty: the model can only answer in text.
    pub tools: Vec<ToolSpec>,
    /// Whether and which tool the model must call.
    pub tool_choice: ToolChoice,
    /// Ask for a JSON answer that satisfies this schema (structured output).
    pub response_schema: Option<ResponseSchema>,
    /// Sent as `max_tokens`, or as `max_completion_tokens` when `reasoning_effort` is set (OpenAI's reasoning
    /// models accept only that name; other servers do not all know it).
    pub max_tokens: Option<u32>,
    /// Sampling temperature; `None` leaves the server's default.
    pub temperature: Option<f32>,
    /// Ask for reasoning. The OpenAI-compatible client sends it as `reasoning_effort` (only reasoning models accept
    /// it; leave `None` for others); the offline model streams a short scripted reasoning section (and its
    /// signature), or with [`ReasoningEffort::Hidden`] that section redacted.
    pub reasoning_effort: Option<ReasoningEffort>,
}

impl ModelRequest {
    /// A request with these messages and nothing else set.
    pub fn new(messages: Vec<Message>) -> Self {
        Self { messages, ..Self::default() }
    }

    /// Sets the tools the model may call.
    pub fn with_tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }
}

/// One message of the conversation, in Chat Completions' roles. Serialized as Chat Completions writes it
/// (`{"role": "user", "content": "..."}`), which is also how agent runs take messages as input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions to the model.
    System {
        /// The instructions.
        content: String,
    },
    /// What the user said.
    User {
        /// The user's text.
        content: String,
    },
    /// A previous model response: its text (if any) and the tool calls it made (if any).
    Assistant {
        /// Its text, if it answered in text.
        #[serde(default)]
        content: Option<String>,
        /// The tool calls it made.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, answering the assistant's call with id `tool_call_id`.
    Tool {
        /// The id of the call answered.
        tool_call_id: String,
        /// The tool's name. Chat Completions does not need it; other providers (and the offline model) do.
        #[serde(default)]
        tool_name: String,
        /// The result as the model should read it, usually JSON text.
        content: String,
    },
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::System { content: content.into() }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::User { content: content.into() }
    }

    /// An assistant message with text and no tool calls.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::Assistant { content: Some(content.into()), tool_calls: Vec::new() }
    }

    /// The result of tool call `tool_call_id` (of tool `tool_name`).
    pub fn tool_result(
        tool_call_id: impl Into<String>,
        tool_name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self::Tool { tool_call_id: tool_call_id.into(), tool_name: tool_name.into(), content: content.into() }
    }
}

/// A tool call the model made, as it goes back into the conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// The call's id, as the model assigned it.
    pub id: String,
    /// The tool called.
    pub name: String,
    /// The arguments exactly as the model streamed them (JSON text), so the conversation replays verbatim.
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// OpenAI accepts `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    /// What the tool does, as the model is told.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ToolChoice {
    /// The model decides. Not sent on the wire: it is every server's default.
    #[default]
    Auto,
    /// The model must not call tools.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call the tool with this name.
    Tool(String),
}

/// A JSON Schema the answer must satisfy (Chat Completions' `response_format: json_schema`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseSchema {
    /// OpenAI requires `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    /// The JSON Schema.
    pub schema: Value,
    /// OpenAI's strict mode: guaranteed conformance, but only for a subset of JSON Schema.
    pub strict: bool,
}

/// How hard a reasoning model should think (OpenAI's `reasoning_effort`), or [`Hidden`](Self::Hidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    /// Little reasoning: faster, cheaper.
    Low,
    /// The usual amount.
    Medium,
    /// Most reasoning: slower, more tokens.
    High,
    /// Reason (at medium effort), but keep the reasoning private: the response carries no readable reasoning, only
    /// what the provider sends redacted ([`ModelChunk::RedactedReasoning`]). For callers who want reasoning's
    /// better answers without streaming its text to their users.
    Hidden,
}

impl ReasoningEffort {
    /// Its name in JSON: `low`, `medium`, `high`, `hidden`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Hidden => "hidden",
        }
    }

    /// The effort a provider is asked for: servers know only `low`, `medium` and `high`.
    pub fn requested(self) -> Self {
        match self {
            Self::Hidden => Self::Medium,
            other => other,
        }
    }

    /// Whether the reasoning's text may be shown (false for [`Hidden`](Self::Hidden)).
    pub fn shows_reasoning(self) -> bool {
        self != Self::Hidden
    }
}

/// One piece of a streamed model response. See the [module docs](self) for the order they come in.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChunk {
    /// The provider's id for the response and the model that actually answered (may differ from the one asked).
    ResponseMetadata {
        /// The provider's response id.
        id: Option<String>,
        /// The model that answered.
        model: Option<String>,
    },
    /// More of the answer's text.
    TextDelta {
        /// The text since the previous delta.
        text: String,
    },
    /// More of the model's reasoning.
    ReasoningDelta {
        /// The reasoning text since the previous delta.
        text: String,
    },
    /// The provider's signature of the reasoning streamed since the previous signature (it lets the provider
    /// verify that reasoning when it is sent back). Follows the reasoning it signs.
    ReasoningSignature {
        /// The signature, as the provider sent it.
        signature: String,
    },
    /// Reasoning the provider withheld: an opaque payload (usually encrypted) that only the provider can read.
    RedactedReasoning {
        /// The payload, as the provider sent it.
        data: String,
    },
    /// A web page the model cites (a URL citation).
    Source {
        /// The page's URL.
        url: String,
        /// Its title, when the provider gives one.
        title: Option<String>,
    },
    /// A file the model generated (an image, a document): its media type (`image/png`) and its bytes in standard
    /// base64, as providers send them.
    File {
        /// Media type, e.g. `image/png`.
        media_type: String,
        /// The bytes, in standard base64.
        base64: String,
    },
    /// The model begins tool call number `index` (0-based, in the order the model made them).
    ToolCallStart {
        /// 0-based position of the call in the response.
        index: u32,
        /// The call's id, as the model assigned it.
        id: String,
        /// The tool called.
        name: String,
    },
    /// More of the arguments (JSON text) of tool call `index`.
    ToolCallDelta {
        /// Which call (as in its `ToolCallStart`).
        index: u32,
        /// More of the arguments' JSON text, to be concatenated.
        arguments: String,
    },
    /// The response is complete. `raw` is the provider's own word for why it stopped.
    Finish {
        /// Why it stopped.
        reason: FinishReason,
        /// The provider's own word for it.
        raw: String,
    },
    /// Tokens the whole response used.
    Usage {
        /// The response's total.
        usage: Usage,
    },
    /// From [`RetryingModel`] only: the previous attempt failed after yielding chunks; discard them, because the
    /// call is re-issued (attempt number `attempt`, 2 for the first retry) after `delay`.
    Restart {
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// Why the previous attempt failed.
        reason: String,
        /// How long the retry waits before it is issued.
        delay: Duration,
    },
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It finished its answer (or hit a stop sequence).
    Stop,
    /// It hit `max_tokens` or the context limit: the answer is cut short.
    Length,
    /// The provider's content filter withheld (part of) the answer.
    ContentFilter,
    /// It wants the tool calls it made executed, and their results sent back.
    ToolCalls,
    /// Anything else; see the `raw` reason.
    Other,
}

impl FinishReason {
    /// Maps a Chat Completions `finish_reason`.
    pub fn from_openai(raw: &str) -> Self {
        match raw {
            "stop" | "eos" | "end_turn" | "stop_sequence" => Self::Stop,
            "length" | "max_tokens" => Self::Length,
            "content_filter" => Self::ContentFilter,
            // `function_call` is the deprecated single-function form of `tool_calls`.
            "tool_calls" | "function_call" | "tool_use" => Self::ToolCalls,
            _ => Self::Other,
        }
    }
}

/// Why a model call failed. [`is_retryable`](Self::is_retryable) splits transient failures (worth re-issuing the
/// same request) from permanent ones (the same request would fail again). Messages name what to check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// HTTP 429. Retryable.
    #[error("the model server at {url} is rate-limiting requests (HTTP 429{}): {message}", retry_after_text(*retry_after))]
    RateLimited {
        /// The endpoint called.
        url: String,
        /// What the server said.
        message: String,
        /// How long the server asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A 5xx or 408 answer. Retryable.
    #[error("the model server at {url} failed (HTTP {status}): {message}")]
    Server {
        /// The endpoint called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The request could not be sent: the server is down or unreachable. Retryable.
    #[error(
        "could not reach the model server at {url}: {message}; check RUNSTREAM_MODEL_BASE_URL / --model-base-url and that the server is up"
    )]
    Connect {
        /// The endpoint called.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server sent nothing for too long. Retryable.
    #[error("the model server at {url} sent nothing for {}s; it may be overloaded", after.as_secs_f32())]
    Timeout {
        /// The endpoint called.
        url: String,
        /// How long it was silent.
        after: Duration,
    },
    /// The response stream ended before the response was complete. Retryable.
    #[error("the model's response stream from {url} ended before the response was complete: {message}")]
    StreamDropped {
        /// The endpoint called.
        url: String,
        /// What ended it.
        message: String,
    },
    /// The server reported an error inside the stream.
    #[error("the model server at {url} reported an error mid-stream: {message}")]
    StreamError {
        /// The endpoint called.
        url: String,
        /// What the server said.
        message: String,
        /// Whether the error is transient (e.g. the server said it is overloaded).
        retryable: bool,
    },
    /// A 4xx answer other than 429: the same request would fail again.
    #[error("the model server at {url} rejected the request (HTTP {status}): {message}{hint}")]
    Rejected {
        /// The endpoint called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
        /// What to check, e.g. the API key on a 401 (empty, or starting with "; ").
        hint: String,
    },
    /// The server's answer could not be read as a Chat Completions stream.
    #[error("the model server at {url} sent a response runstream cannot read: {message}")]
    InvalidResponse {
        /// The endpoint called.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The client cannot be set up or the request built (e.g. a base URL that cannot be used).
    #[error("model configuration: {0}")]
    Config(String),
    /// The call was canceled through its token.
    #[error("the model call was canceled")]
    Canceled,
    /// [`RetryingModel`] gave up.
    #[error("the model call failed {attempts} times, giving up; last error: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ModelError>,
    },
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after.map(|d| format!(", retry after {}s", d.as_secs_f32())).unwrap_or_default()
}

impl ModelError {
    /// True when re-issuing the same request may succeed: rate limits, server errors, network failures, timeouts
    /// and streams cut short. Rejected requests, unreadable responses, configuration errors and cancellation are
    /// permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Server { .. }
            | Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::StreamDropped { .. } => true,
            Self::StreamError { retryable, .. } => *retryable,
            Self::Rejected { .. }
            | Self::InvalidResponse { .. }
            | Self::Config(_)
            | Self::Canceled
            | Self::RetriesExhausted { .. } => false,
        }
    }

    /// How long the server asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
