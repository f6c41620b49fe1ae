//! An OpenAI-compatible Chat Completions client that streams (server-sent events).
//!
//! One code path serves OpenAI and the servers people run themselves (vLLM, Ollama, llama.cpp's server,
//! LM Studio) or route through (OpenRouter), so the parser accepts their known variations: reasoning as
//! `delta.reasoning_content` or `delta.reasoning`; a tool call's arguments in many deltas or in one, as a string or
//! an object; usage in a final chunk with empty `choices` or alongside every chunk (the last one wins); tool-call
//! ids missing; a stream that closes without `data: [DONE]` after its `finish_reason`.
//!
//! Beyond text, reasoning and tool calls it reads what OpenRouter (and OpenAI's search models) add to a delta:
//! `reasoning_details` (`reasoning.text` and `reasoning.summary` entries, whose text repeats `delta.reasoning`
//! and is read only where that is absent, and whose `signature` becomes [`ModelChunk::ReasoningSignature`];
//! `reasoning.encrypted` entries become [`ModelChunk::RedactedReasoning`]), `annotations` (each `url_citation`
//! becomes a [`ModelChunk::Source`], once per URL) and `images` (each base64 `data:` URL becomes a
//! [`ModelChunk::File`]). Fields and entry types it does not know are ignored.

use std::{
    collections::VecDeque,
    error::Error as _,
    fmt,
    sync::{Arc, Once},
    time::Duration,
};

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    FinishReason, Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream, ReasoningEffort,
    ToolChoice, Usage,
    sse::{SseDecoder, SseEvent},
};

// The settings of `runstream serve` that choose the model, named in the hints of errors that a setting may cause.
// The library reads none of them: the binary builds the model and hands it in.
const BASE_URL_SETTING: &str = "RUNSTREAM_MODEL_BASE_URL / --model-base-url";
const API_KEY_SETTING: &str = "RUNSTREAM_MODEL_API_KEY / --model-api-key, or OPENAI_API_KEY";
const MODEL_SETTING: &str = "RUNSTREAM_MODEL / --model";

/// How much of an error response body is read, so a misbehaving server cannot make us buffer without bound.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where and how to reach an OpenAI-compatible server. `Debug` hides the API key.
#[derive(Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The API root, up to and including `/v1` (requests go to `{base_url}/chat/completions`). `http://` is fine
    /// for local servers.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`. Local servers usually need none.
    pub api_key: Option<String>,
    /// The model name the server knows.
    pub model: String,
    /// The longest wait for the response to begin, and then for each next piece of it. A generation that keeps
    /// streaming is never cut off, however long it runs.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl OpenAiConfig {
    pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
    /// Generous: reasoning models can think for minutes before their first token, and a local server may queue.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// `{base_url}/chat/completions`, or why the base URL cannot be used (see [`parse_base_url`]).
    fn endpoint(&self) -> Result<String, ModelError> {
        let url = parse_base_url(&self.base_url).map_err(|e| ModelError::Config(format!("the base URL {e}")))?;
        Ok(format!("{}/chat/completions", url.as_str().trim_end_matches('/')))
    }
}

/// Checks an OpenAI-compatible server's base URL (its API root, e.g. `http://127.0.0.1:11434/v1`): an `http://` or
/// `https://` URL with a host and no query or fragment. The error quotes the text and says what to write instead,
/// e.g. `'127.0.0.1:9' has no scheme; write http://127.0.0.1:9/v1 (https:// if the server uses TLS)`; callers put
/// the setting's name in front of it.
pub fn parse_base_url(text: &str) -> Result<reqwest::Url, String> {
    let text = text.trim();
    let example =
        "write the server's API root, e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8000/v1 (vLLM)";
    if text.is_empty() {
        return Err(format!("is empty; {example}"));
    }
    // Without `://` there is no scheme, even where the URL grammar sees one (`localhost:8000/v1` would be a URL
    // of scheme `localhost`).
    if !text.contains("://") {
        let path = if text.contains('/') { "" } else { "/v1" };
        return Err(format!("'{text}' has no scheme; write http://{text}{path} (https:// if the server uses TLS)"));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("'{text}' is not a valid URL ({e}); {example}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
        return Err(format!(
            "'{text}' is not an http:// or https:// URL; write http://{rest} (https:// if the server uses TLS)"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{text}' has no host; {example}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        let root = text.split(['?', '#']).next().unwrap_or(text);
        return Err(format!(
            "'{text}' has a query or fragment; write only the API root the requests go under, e.g. {root}"
        ));
    }
    Ok(url)
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A Chat Completions client. Cheap to share: one connection pool per `OpenAiModel`.
#[derive(Debug, Clone)]
pub struct OpenAiModel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OpenAiConfig,
    url: Arc<str>,
    client: reqwest::Client,
}

impl OpenAiModel {
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelError> {
        let url = config.endpoint()?;
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("runstream/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ModelError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        Ok(Self { inner: Arc::new(Inner { config, url: url.into(), client }) })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        request_body(&self.inner.config.model, request)
    }
}

/// reqwest is built without a default TLS crypto provider (aws-lc-rs takes minutes to compile); rustls needs one
/// installed process-wide before a client is built. Installing fails harmlessly if someone installed one first.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl ModelProvider for OpenAiModel {
    fn model_id(&self) -> &str {
        &self.inner.config.model
    }

    fn provider(&self) -> &str {
        "openai-compatible"
    }

    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream {
        let show_reasoning = request.reasoning_effort.is_none_or(ReasoningEffort::shows_reasoning);
        let call = Call {
            inner: self.inner.clone(),
            request: Some(request),
            cancel,
            response: None,
            decoder: SseDecoder::new(),
            parser: Parser::new(self.inner.url.clone()).showing_reasoning(show_reasoning),
            pending: VecDeque::new(),
            done: false,
            failed: None,
        };
        Box::pin(futures_util::stream::unfold(call, |mut call| async move {
            let item = call.next().await?;
            Some((item, call))
        }))
    }
}

/// One streaming call: sends the request on the first poll, then turns network reads into chunks.
struct Call {
    inner: Arc<Inner>,
    /// Taken when the request is sent.
    request: Option<ModelRequest>,
    cancel: CancellationToken,
    response: Option<reqwest::Response>,
    decoder: SseDecoder,
    parser: Parser,
    /// Chunks parsed but not yet yielded (one read can hold many events).
    pending: VecDeque<ModelChunk>,
    /// Nothing more will be read: `pending`, then `failed`, are all that is left to yield.
    done: bool,
    failed: Option<ModelError>,
}

impl Call {
    async fn next(&mut self) -> Option<Result<ModelChunk, ModelError>> {
        loop {
            if !self.done && self.cancel.is_cancelled() {
                self.pending.clear();
                self.done = true;
                self.failed = Some(ModelError::Canceled);
                self.response = None;
            }
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Ok(chunk));
            }
            if self.done {
                return self.failed.take().map(Err);
            }
            if let Err(e) = self.advance().await {
                // The chunks parsed before the failure (same read) still go out first, as they arrived.
                self.done = true;
                self.failed = Some(e);
                self.response = None;
            }
        }
    }

    /// Sends the request, or reads the next piece of the response into `pending`.
    async fn advance(&mut self) -> Result<(), ModelError> {
        let timeout = self.inner.config.request_timeout;
        if let Some(request) = self.request.take() {
            let send = self.send(&request);
            let response = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(ModelError::Canceled),
                r = tokio::time::timeout(timeout, send) => r.map_err(|_| self.timeout())??,
            };
            self.response = Some(response);
            return Ok(());
        }
        let Some(response) = self.response.as_mut() else {
            self.done = true;
            return Ok(());
        };
        let read = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(ModelError::Canceled),
            r = tokio::time::timeout(timeout, response.chunk()) => r,
        };
        let mut events = Vec::new();
        let timed_out = read.is_err();
        let ended_by = match read {
            Ok(Ok(Some(bytes))) => {
                self.decoder.feed(&bytes, &mut events);
                None
            }
            Ok(Ok(None)) => {
                if let Some(last) = self.decoder.finish(&mut events) {
                    // Unterminated: accept it only if it is whole (`[DONE]` or complete JSON), not cut-off JSON.
                    if last.data.trim() == "[DONE]" || serde_json::from_str::<Value>(&last.data).is_ok() {
                        events.push(last);
                    }
                }
                Some(
                    "the server closed the connection before the last chunk (no finish_reason, no `data: [DONE]`)"
                        .to_owned(),
                )
            }
            Ok(Err(e)) => Some(error_chain(&e)),
            Err(_) => Some(format!("no data for {}s", timeout.as_secs_f32())),
        };
        for event in &events {
            self.parser.event(event, &mut self.pending)?;
            if self.parser.saw_done {
                break;
            }
        }
        if self.parser.saw_done {
            self.response = None;
            self.done = true;
            self.parser.end(&mut self.pending)?;
        } else if let Some(why) = ended_by {
            self.response = None;
            self.done = true;
            if self.parser.finish.is_some() {
                // Complete but for the usage chunk and `[DONE]`: some servers close here. Not worth a retry.
                tracing::debug!(url = %self.inner.url, %why, "model stream ended after finish_reason without [DONE]");
                self.parser.end(&mut self.pending)?;
            } else if timed_out {
                return Err(self.timeout());
            } else {
                return Err(ModelError::StreamDropped { url: self.inner.url.to_string(), message: why });
            }
        }
        Ok(())
    }

    async fn send(&self, request: &ModelRequest) -> Result<reqwest::Response, ModelError> {
        let url = &self.inner.url;
        let body = request_body(&self.inner.config.model, request);
        let body = serde_json::to_vec(&body).map_err(|e| ModelError::Config(format!("cannot encode request: {e}")))?;
        let mut builder = self
            .inner
            .client
            .post(&**url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &self.inner.config.api_key {
            builder = builder.bearer_auth(key);
        }
        tracing::debug!(%url, model = %self.inner.config.model, "sending model request");
        let response = builder.send().await.map_err(|e| {
            if e.is_builder() {
                ModelError::Config(format!("cannot build a request to {url}: {}", error_chain(&e)))
            } else if e.is_timeout() {
                self.timeout()
            } else {
                ModelError::Connect { url: url.to_string(), message: error_chain(&e) }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            let content_type = header_str(response.headers(), "content-type").unwrap_or_default();
            if content_type.starts_with("application/json") {
                return Err(ModelError::InvalidResponse {
                    url: url.to_string(),
                    message: "it answered with a single JSON document, not an event stream; the server does not \
                              support `stream: true`"
                        .to_owned(),
                });
            }
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let message = error_message(read_error_body(response, self.inner.config.request_timeout).await);
        Err(status_error(url, status, message, retry_after))
    }

    fn timeout(&self) -> ModelError {
        ModelError::Timeout { url: self.inner.url.to_string(), after: self.inner.config.request_timeout }
    }
}

/// Maps an unsuccessful HTTP status to an error, with a hint at what to check for the permanent ones.
fn status_error(url: &str, status: StatusCode, message: String, retry_after: Option<Duration>) -> ModelError {
    let url = url.to_owned();
    let code = status.as_u16();
    match code {
        429 => ModelError::RateLimited { url, message, retry_after },
        // 408 is the server timing out on us, as transient as a 5xx (OpenAI's own SDKs retry it).
        408 | 500..=599 => ModelError::Server { url, status: code, message },
        _ => {
            let hint = match code {
                401 | 403 => format!("; check the API key ({API_KEY_SETTING})"),
                404 => format!(
                    "; check {BASE_URL_SETTING} (it usually ends in /v1) and that {MODEL_SETTING} names a model this \
                     server serves"
                ),
                413 => "; the conversation is too long for the server".to_owned(),
                400 | 422 => "; the server does not accept something in the request (a parameter, a tool or \
                              response schema, or the conversation's length)"
                    .to_owned(),
                _ => String::new(),
            };
            ModelError::Rejected { url, status: code, message, hint }
        }
    }
}

async fn read_error_body(mut response: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(bytes)) = response.chunk().await {
            body.extend_from_slice(&bytes);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    // An error body that never arrives must not hide the status we already have.
    let _ = tokio::time::timeout(timeout.min(Duration::from_secs(10)), read).await;
    body.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, vLLM's `{"message"}`, or the text itself.
fn error_message(body: String) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(&body)
        && let Some(message) = json_error_message(&value)
    {
        return message;
    }
    let body = body.trim();
    if body.is_empty() { "(empty response body)".to_owned() } else { truncate(body, 500) }
}

fn json_error_message(value: &Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    match error {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The wait a 429 asks for: `retry-after-ms` (OpenAI's, milliseconds) or `retry-after` in seconds. The HTTP-date
/// form of `retry-after` is not read; the retry policy's backoff applies then.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let parse = |name: &str, scale: f64| {
        header_str(headers, name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .and_then(|v| Duration::try_from_secs_f64(v * scale).ok())
    };
    parse("retry-after-ms", 0.001).or_else(|| parse("retry-after", 1.0))
}

/// A reqwest error with its causes ("error sending request: connection refused"), because its top-level message
/// alone rarely says what went wrong.
fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The Chat Completions request body for `request`.
pub(crate) fn request_body(model: &str, request: &ModelRequest) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    body.insert("stream".into(), true.into());
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": { "name": t.name, "description": t.description, "parameters": t.parameters },
                })
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    // `tool_choice: none` without tools is meaningful to nobody, and some servers reject it.
    if !request.tools.is_empty() {
        let choice = match &request.tool_choice {
            ToolChoice::Auto => None,
            ToolChoice::None => Some(json!("none")),
            ToolChoice::Required => Some(json!("required")),
            ToolChoice::Tool(name) => Some(json!({ "type": "function", "function": { "name": name } })),
        };
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(schema) = &request.response_schema {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": { "name": schema.name, "schema": schema.schema, "strict": schema.strict },
            }),
        );
    }
    if let Some(max_tokens) = request.max_tokens {
        // OpenAI's reasoning models reject `max_tokens`; every other server reads it (not all read the newer name).
        let key = if request.reasoning_effort.is_some() { "max_completion_tokens" } else { "max_tokens" };
        body.insert(key.into(), max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), temperature.into());
    }
    if let Some(effort) = request.reasoning_effort {
        body.insert("reasoning_effort".into(), effort.requested().as_str().into());
    }
    Value::Object(body)
}

fn message_json(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({ "role": "system", "content": content }),
        Message::User { content } => json!({ "role": "user", "content": content }),
        Message::Assistant { content, tool_calls } => {
            let mut m = Map::new();
            m.insert("role".into(), "assistant".into());
            m.insert("content".into(), content.as_deref().map_or(Value::Null, Value::from));
            // An empty `tool_calls` array is rejected by some servers: omit it.
            if !tool_calls.is_empty() {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments },
                        })
                    })
                    .collect();
                m.insert("tool_calls".into(), calls.into());
            }
            Value::Object(m)
        }
        Message::Tool { tool_call_id, content, .. } => {
            json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content })
        }
    }
}

/// Turns the events of one response into chunks, and knows when the response is complete.
#[derive(Debug)]
struct Parser {
    url: Arc<str>,
    metadata_sent: bool,
    response_id: Option<String>,
    calls: Vec<ToolCallSlot>,
    finish: Option<String>,
    usage: Option<Usage>,
    saw_done: bool,
    /// False when the request asked for hidden reasoning: its text and signatures are then not yielded.
    show_reasoning: bool,
    /// URLs cited so far: servers repeat annotations (OpenRouter sends them again with the last chunk).
    cited: Vec<String>,
}

/// One tool call being streamed. `index` in chunks is the slot's position, which equals the server's index except
/// when a server reuses one index for several calls (then a new id starts a new slot).
#[derive(Debug)]
struct ToolCallSlot {
    server_index: u64,
    id: Option<String>,
    name: Option<String>,
    started: bool,
    /// Arguments that arrived before the call's name (then `ToolCallStart` cannot be sent yet).
    early_arguments: String,
}

impl Parser {
    fn new(url: Arc<str>) -> Self {
        Self {
            url,
            metadata_sent: false,
            response_id: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
            saw_done: false,
            show_reasoning: true,
            cited: Vec::new(),
        }
    }

    fn showing_reasoning(mut self, show: bool) -> Self {
        self.show_reasoning = show;
        self
    }

    fn invalid(&self, message: String) -> ModelError {
        ModelError::InvalidResponse { url: self.url.to_string(), message }
    }

    fn event(&mut self, event: &SseEvent, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| self.invalid(format!("an event is not JSON ({e}): {}", truncate(data, 200))))?;
        if event.event.as_deref() == Some("error") || value.get("error").is_some_and(|e| !e.is_null()) {
            return Err(self.stream_error(&value));
        }
        if !self.metadata_sent {
            let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
            let model = value.get("model").and_then(Value::as_str).map(str::to_owned);
            if id.is_some() || model.is_some() {
                self.metadata_sent = true;
                self.response_id.clone_from(&id);
                out.push_back(ModelChunk::ResponseMetadata { id, model });
            }
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(parse_usage(usage));
        }
        let choices = value.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        // We ask for one choice (no `n`); a server that sends more gets its first one read.
        let Some(choice) = choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
            self.delta(delta, out)?;
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Value, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        let text = |key: &str| delta.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
        // vLLM and llama.cpp say `reasoning_content`, newer vLLM and OpenRouter `reasoning`; a server in transition
        // may send both with the same text, so take one.
        let reasoning = text("reasoning_content").or_else(|| text("reasoning"));
        if let Some(reasoning) = reasoning.filter(|_| self.show_reasoning) {
            out.push_back(ModelChunk::ReasoningDelta { text: reasoning.to_owned() });
        }
        for detail in delta.get("reasoning_details").and_then(Value::as_array).into_iter().flatten() {
            self.reasoning_detail(detail, reasoning.is_none(), out);
        }
        if let Some(content) = text("content") {
            out.push_back(ModelChunk::TextDelta { text: content.to_owned() });
        }
        // A refusal is the model's answer to the user: show it as text.
        if let Some(refusal) = text("refusal") {
            out.push_back(ModelChunk::TextDelta { text: refusal.to_owned() });
        }
        for annotation in delta.get("annotations").and_then(Value::as_array).into_iter().flatten() {
            self.annotation(annotation, out);
        }
        for image in delta.get("images").and_then(Value::as_array).into_iter().flatten() {
            // `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`; some send the URL bare.
            let url = image.pointer("/image_url/url").or_else(|| image.get("image_url")).and_then(Value::as_str);
            match url.and_then(base64_data_url) {
                Some((media_type, base64)) => out.push_back(ModelChunk::File { media_type, base64 }),
                // A link rather than the bytes: nothing to stream as a file.
                None => tracing::debug!(url = %self.url, "ignoring an image that is not a base64 data URL"),
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                self.tool_call_delta(position, call, out)?;
            }
        }
        Ok(())
    }

    /// One entry of OpenRouter's `reasoning_details`. `take_text`: the delta has no plain reasoning field, whose
    /// text the entry's would repeat.
    fn reasoning_detail(&self, detail: &Value, take_text: bool, out: &mut VecDeque<ModelChunk>) {
        let field = |key: &str| detail.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        match detail.get("type").and_then(Value::as_str) {
            Some("reasoning.text" | "reasoning.summary") if self.show_reasoning => {
                if take_text && let Some(text) = field("text").or_else(|| field("summary")) {
                    out.push_back(ModelChunk::ReasoningDelta { text });
                }
                // After the text: a signature signs the reasoning before it.
                if let Some(signature) = field("signature") {
                    out.push_back(ModelChunk::ReasoningSignature { signature });
                }
            }
            Some("reasoning.encrypted") => {
                if let Some(data) = field("data") {
                    out.push_back(ModelChunk::RedactedReasoning { data });
                }
            }
            _ => {}
        }
    }

    /// One entry of `annotations`: a `url_citation` is a source, cited once however often the server repeats it.
    fn annotation(&mut self, annotation: &Value, out: &mut VecDeque<ModelChunk>) {
        if annotation.get("type").and_then(Value::as_str) != Some("url_citation") {
            return;
        }
        let citation = annotation.get("url_citation").unwrap_or(annotation);
        let field = |key: &str| citation.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let Some(url) = field("url") else { return };
        if self.cited.iter().any(|seen| seen == url) {
            return;
        }
        self.cited.push(url.to_owned());
        out.push_back(ModelChunk::Source { url: url.to_owned(), title: field("title").map(str::to_owned) });
    }

    fn tool_call_delta(
        &mut self,
        position: usize,
        call: &Value,
        out: &mut VecDeque<ModelChunk>,
    ) -> Result<(), ModelError> {
        // Servers that send whole calls sometimes omit `index`; the position in the array stands in for it.
        let server_index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        let id = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty());
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // Some servers send the arguments as a JSON object rather than JSON text.
            Some(other) => other.to_string(),
        };
        let existing = self.calls.iter().rposition(|slot| slot.server_index == server_index);
        let slot_index = match existing {
            // The same index with a different id and a name: a server that reuses indices. A new call.
            Some(i)
                if id.is_some()
                    && name.is_some()
                    && self.calls[i].id.is_some()
                    && self.calls[i].id.as_deref() != id =>
            {
                None
            }
            other => other,
        };
        let slot_index = slot_index.unwrap_or_else(|| {
            self.calls.push(ToolCallSlot {
                server_index,
                id: None,
                name: None,
                started: false,
                early_arguments: String::new(),
            });
            self.calls.len() - 1
        });
        let index = u32::try_from(slot_index).map_err(|_| self.invalid("too many tool calls".to_owned()))?;
        let response_id = self.response_id.clone();
        let slot = &mut self.calls[slot_index];
        if slot.id.is_none() {
            slot.id = id.map(str::to_owned);
        }
        if slot.name.is_none() {
            slot.name = name.map(str::to_owned);
        }
        if !slot.started {
            let Some(name) = slot.name.clone() else {
                slot.early_arguments.push_str(&arguments);
                return Ok(());
            };
            slot.started = true;
            // A call needs an id to be answered; servers that send none get one made up, unique in the response.
            let id = slot.id.get_or_insert_with(|| match &response_id {
                Some(response) => format!("call_{response}_{index}"),
                None => format!("call_{index}"),
            });
            out.push_back(ModelChunk::ToolCallStart { index, id: id.clone(), name });
            let early = std::mem::take(&mut slot.early_arguments);
            if !early.is_empty() {
                out.push_back(ModelChunk::ToolCallDelta { index, arguments: early });
            }
        }
        if !arguments.is_empty() {
            out.push_back(ModelChunk::ToolCallDelta { index, arguments });
        }
        Ok(())
    }

    fn stream_error(&self, value: &Value) -> ModelError {
        let error = value.get("error").unwrap_or(value);
        let message = json_error_message(value).unwrap_or_else(|| truncate(&value.to_string(), 500));
        let code = error.get("code").and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
        let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
        let retryable = matches!(code, Some(429 | 500..=599))
            || matches!(kind, "server_error" | "overloaded_error" | "rate_limit_error" | "internal_error");
        ModelError::StreamError { url: self.url.to_string(), message, retryable }
    }

    /// The response is complete: the `Finish` (and `Usage`) chunks.
    fn end(&mut self, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        if let Some(slot) = self.calls.iter().find(|s| !s.started) {
            return Err(self.invalid(format!("tool call {} has arguments but no function name", slot.server_index)));
        }
        let (reason, raw) = match self.finish.take() {
            Some(raw) => (FinishReason::from_openai(&raw), raw),
            // `[DONE]` without a finish_reason: complete, but the server did not say why. Infer it.
            None if self.calls.is_empty() => (FinishReason::Stop, String::new()),
            None => (FinishReason::ToolCalls, String::new()),
        };
        out.push_back(ModelChunk::Finish { reason, raw });
        if let Some(usage) = self.usage.take() {
            out.push_back(ModelChunk::Usage { usage });
        }
        Ok(())
    }
}

/// `data:image/png;base64,iVBOR...` → (`image/png`, `iVBOR...`). Only base64 data URLs: their bytes are all there
/// is to a file. Parameters other than `base64` (`;charset=...`) are dropped from the media type.
fn base64_data_url(url: &str) -> Option<(String, String)> {
    let (meta, data) = url.trim().strip_prefix("data:")?.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?.split(';').next().unwrap_or_default().trim();
    // RFC 2397's default media type.
    let media_type = if media_type.is_empty() { "text/plain" } else { media_type };
    Some((media_type.to_owned(), data.trim().to_owned()))
}

fn parse_usage(usage: &Value) -> Usage {
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let input_tokens = count(usage.get("prompt_tokens"));
    let output_tokens = count(usage.get("completion_tokens"));
    let total_tokens = usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(input_tokens + output_tokens);
    Usage {
        input_tokens,
        output_tokens,
        total_tokens,
        reasoning_tokens: count(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        cached_input_tokens: count(usage.pointer("/prompt_tokens_details/cached_tokens")),
        cache_creation_input_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(events: &[&str]) -> Result<Vec<ModelChunk>, ModelError> {
        let mut parser = Parser::new("http://test/v1/chat/completions".into());
        let mut out = VecDeque::new();
        for data in events {
            parser.event(&SseEvent { event: None, data: (*data).to_owned() }, &mut out)?;
        }
        parser.end(&mut out)?;
        Ok(out.into())
    }

    #[test]
    fn usage_fields_map_to_the_engine_usage() {
        let usage = parse_usage(&json!({
            "prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50,
            "completion_tokens_details": { "reasoning_tokens": 12 },
            "prompt_tokens_details": { "cached_tokens": 8 },
        }));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 20,
                output_tokens: 30,
                total_tokens: 50,
                reasoning_tokens: 12,
                cached_input_tokens: 8,
                cache_creation_input_tokens: 0
            }
        );
        let usage = parse_usage(&json!({ "prompt_tokens": 3, "completion_tokens": 4 }));
        assert_eq!(usage.total_tokens, 7);
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(FinishReason::from_openai("stop"), FinishReason::Stop);
        assert_eq!(FinishReason::from_openai("length"), FinishReason::Length);
        assert_eq!(FinishReason::from_openai("content_filter"), FinishReason::ContentFilter);
        assert_eq!(FinishReason::from_openai("tool_calls"), FinishReason::ToolCalls);
        assert_eq!(FinishReason::from_openai("function_call"), FinishReason::ToolCalls);
        assert_eq!(FinishReason::from_openai("abort"), FinishReason::Other);
    }

    #[test]
    fn whole_tool_calls_with_object_arguments_and_no_ids_or_indices() {
        // Ollama-style: complete calls in one chunk.
        let chunks =
            parse(&[r#"{"id":"r1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[
                {"function":{"name":"a","arguments":{"x":1}}},
                {"function":{"name":"b","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#])
            .unwrap();
        assert_eq!(
            chunks,
            [
                ModelChunk::ResponseMetadata { id: Some("r1".into()), model: Some("m".into()) },
                ModelChunk::ToolCallStart { index: 0, id: "call_r1_0".into(), name: "a".into() },
                ModelChunk::ToolCallDelta { index: 0, arguments: r#"{"x":1}"#.into() },
                ModelChunk::ToolCallStart { index: 1, id: "call_r1_1".into(), name: "b".into() },
                ModelChunk::ToolCallDelta { index: 1, arguments: "{}".into() },
                ModelChunk::Finish { reason: FinishReason::ToolCalls, raw: "tool_calls".into() },
            ]
        );
    }

    #[test]
    fn a_reused_index_with_a_new_id_is_a_new_call() {
        let chunks = parse(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"a","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c2","function":{"name":"b","arguments":"{}"}}]}}]}"#,
        ])
        .unwrap();
        assert!(chunks.contains(&ModelChunk::ToolCallStart { index: 1, id: "c2".into(), name: "b".into() }));
        // `[DONE]` without finish_reason after tool calls: inferred.
        assert_eq!(chunks.last(), Some(&ModelChunk::Finish { reason: FinishReason::ToolCalls, raw: String::new() }));
    }

    #[test]
    fn reasoning_is_read_from_either_field_but_not_twice() {
        let chunks = parse(&[
            r#"{"choices":[{"delta":{"reasoning_content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"b"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"c","reasoning":"c"}}]}"#,
        ])
        .unwrap();
        let reasoning: Vec<_> = chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::ReasoningDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasoning, ["a", "b", "c"]);
    }

    #[test]
    fn only_base64_data_urls_are_files() {
        let file = |url: &str| base64_data_url(url);
        assert_eq!(file("data:image/png;base64,iVBO"), Some(("image/png".into(), "iVBO".into())));
        assert_eq!(file(" data:text/csv;charset=utf-8;base64,YQ== "), Some(("text/csv".into(), "YQ==".into())));
        assert_eq!(file("data:;base64,YQ=="), Some(("text/plain".into(), "YQ==".into())));
        assert_eq!(file("data:text/plain,hello"), None, "not base64");
        assert_eq!(file("https://cdn.example/a.png"), None);
    }

    #[test]
    fn errors_in_the_stream_and_malformed_events() {
        let err = parse(&[r#"{"error":{"message":"overloaded","type":"server_error"}}"#]).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("overloaded"));
        let err = parse(&[r#"{"error":{"message":"bad schema","code":400}}"#]).unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        let err = parse(&["{not json"]).unwrap_err();
        assert!(matches!(err, ModelError::InvalidResponse { .. }), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(error_message(r#"{"error":{"message":"Invalid API key","type":"x"}}"#.into()), "Invalid API key");
        assert_eq!(error_message(r#"{"object":"error","message":"model not found"}"#.into()), "model not found");
        assert_eq!(error_message("  upstream down \n".into()), "upstream down");
        assert_eq!(error_message(String::new()), "(empty response body)");
    }

    #[test]
    fn retry_after_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn config_debug_hides_the_key() {
        let config = OpenAiConfig::new(OpenAiConfig::DEFAULT_BASE_URL, "gpt-4o-mini").with_api_key("sk-1");
        assert!(!format!("{config:?}").contains("sk-1"), "Debug must not show the key");
        let config = OpenAiConfig::new("http://127.0.0.1:11434/v1/", "llama3.2");
        assert_eq!(config.endpoint().unwrap(), "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(OpenAiConfig::new("http://gpu:8000", "m").endpoint().unwrap(), "http://gpu:8000/chat/completions");
        let err = OpenAiModel::new(OpenAiConfig::new("localhost:8000/v1", "m")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model configuration: the base URL 'localhost:8000/v1' has no scheme; write http://localhost:8000/v1 \
             (https:// if the server uses TLS)"
        );
    }

    #[test]
    fn base_urls_that_cannot_be_used_say_what_to_write() {
        let ok = |text: &str| parse_base_url(text).map(|url| url.to_string());
        assert_eq!(ok("http://127.0.0.1:11434/v1").unwrap(), "http://127.0.0.1:11434/v1");
        assert_eq!(ok(" https://api.openai.com/v1/ ").unwrap(), "https://api.openai.com/v1/");
        assert_eq!(ok("http://[::1]:8000/v1").unwrap(), "http://[::1]:8000/v1");
        let err = |text: &str| parse_base_url(text).unwrap_err();
        assert_eq!(
            err("127.0.0.1:9"),
            "'127.0.0.1:9' has no scheme; write http://127.0.0.1:9/v1 (https:// if the server uses TLS)"
        );
        assert!(
            err("localhost:11434/v1").contains("write http://localhost:11434/v1 "),
            "{}",
            err("localhost:11434/v1")
        );
        assert!(err("ftp://host/v1").contains("not an http:// or https:// URL; write http://host/v1"));
        assert!(err("ws://host:8000/v1").contains("write http://host:8000/v1"));
        assert!(err("http://").contains("is not a valid URL"), "{}", err("http://"));
        assert!(err("http://:8000/v1").contains("is not a valid URL"), "{}", err("http://:8000/v1"));
        assert!(err("http://exa mple/v1").contains("is not a valid URL"));
        assert!(err("http://h/v1?x=1").contains("e.g. http://h/v1"), "{}", err("http://h/v1?x=1"));
        assert!(err("").starts_with("is empty; write the server's API root"));
    }

    #[test]
    fn https_clients_build_with_the_ring_provider() {
        // Would panic inside reqwest if no rustls crypto provider were installed.
        let model = OpenAiModel::new(OpenAiConfig::new(OpenAiConfig::DEFAULT_BASE_URL, "gpt-4o-mini")).unwrap();
        assert_eq!(model.model_id(), "gpt-4o-mini");
    }
}
