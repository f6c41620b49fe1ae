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
//!
//! This file holds the configuration and the client (one streaming call per request); `request.rs` writes the
//! request body, `parse.rs` reads the response stream, `error.rs` turns failed calls into `ModelError`s.

mod error;
mod parse;
mod request;

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Once},
    time::Duration,
};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::{
    error::{error_chain, error_message, header_str, read_error_body, retry_after, status_error},
    parse::Parser,
    request::request_body,
};
use super::{ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream, ReasoningEffort, sse::SseDecoder};

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
    /// The longest wait for a connection to the server.
    pub connect_timeout: Duration,
}

impl OpenAiConfig {
    /// OpenAI's API root.
    pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
    /// Generous: reasoning models can think for minutes before their first token, and a local server may queue.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
    /// Ten seconds: a server that does not accept a connection by then is down or unreachable.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Model `model` at `base_url`, without an API key, with the default timeouts.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The same, with an API key (sent as `Authorization: Bearer`).
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
    /// A client for `config`; fails when its base URL cannot be used (say why) or the HTTP client cannot be built.
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

    /// The configuration it was made with.
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

    fn with_model(&self, name: &str) -> Option<Arc<dyn ModelProvider>> {
        // Same server, key and connection pool.
        let config = OpenAiConfig { model: name.to_owned(), ..self.inner.config.clone() };
        let inner = Inner { config, url: Arc::clone(&self.inner.url), client: self.inner.client.clone() };
        Some(Arc::new(Self { inner: Arc::new(inner) }))
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

#[cfg(test)]
mod tests {
    use super::*;

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
