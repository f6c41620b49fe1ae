//! The OpenAI-compatible client over real HTTP, against a fake server on loopback.
//!
//! The fake server is a few dozen lines on tokio's `TcpListener`: it answers each connection with the next scripted
//! reply, and writes event streams the way OpenAI, vLLM and llama.cpp's server do (chunked transfer encoding),
//! cut into pieces of awkward sizes (inside JSON, inside `data:`, between `\r` and `\n`) so the client's reassembly
//! is exercised. It records every request for the request-shape assertions.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::*;

/// How a scripted reply ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The chunked body's terminator: a complete response.
    Complete,
    /// The connection closes mid-body, as when a server or proxy dies.
    Drop,
    /// The body is not chunked: it ends when the connection closes (allowed by HTTP/1.1), here early.
    CloseDelimited,
    /// Nothing more is sent, and the connection stays open until the client closes it.
    Hang,
}

#[derive(Debug, Clone)]
enum Reply {
    Stream { body: String, end: End },
    Status { status: u16, headers: Vec<(&'static str, String)>, body: String },
}

impl Reply {
    fn stream(body: String) -> Self {
        Self::Stream { body, end: End::Complete }
    }

    fn status(status: u16, body: &str) -> Self {
        Self::Status { status, headers: Vec::new(), body: body.to_owned() }
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct FakeServer {
    base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeServer {
    async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            while let Ok((socket, _)) = listener.accept().await {
                let reply = replies.next().unwrap_or_else(|| Reply::status(500, "the test scripted no more replies"));
                tokio::spawn(handle(socket, reply, recorded.clone()));
            }
        });
        Self { base_url, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn model(&self) -> OpenAiModel {
        OpenAiModel::new(OpenAiConfig::new(&self.base_url, "test-model").with_api_key("sk-test")).unwrap()
    }

    fn retrying(&self, max_attempts: u32) -> RetryingModel {
        RetryingModel::new(Arc::new(self.model()), fast_policy(max_attempts))
    }
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(50),
        jitter: false,
    }
}

async fn handle(mut socket: TcpStream, reply: Reply, requests: Arc<Mutex<Vec<Recorded>>>) {
    socket.set_nodelay(true).unwrap();
    let Some(request) = read_request(&mut socket).await else { return };
    requests.lock().unwrap().push(request);
    match reply {
        Reply::Status { status, headers, body } => {
            let mut head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        }
        Reply::Stream { body, end } => {
            let chunked = end != End::CloseDelimited;
            let framing = if chunked { "transfer-encoding: chunked\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n{framing}connection: close\r\n\r\n"
            );
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in awkward_pieces(body.as_bytes()) {
                let written = if chunked {
                    let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                    frame.extend_from_slice(piece);
                    frame.extend_from_slice(b"\r\n");
                    socket.write_all(&frame).await
                } else {
                    socket.write_all(piece).await
                };
                if written.is_err() || socket.flush().await.is_err() {
                    return;
                }
            }
            match end {
                End::Complete => {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                }
                End::Hang => {
                    // Returns when the client closes the connection.
                    let mut buf = [0u8; 64];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                }
                End::Drop | End::CloseDelimited => {}
            }
        }
    }
    let _ = socket.shutdown().await;
}

/// `bytes` in pieces of 1, 2, 5, 11, 3, 17, 7 and 64 bytes, over and over.
fn awkward_pieces(bytes: &[u8]) -> Vec<&[u8]> {
    const SIZES: [usize; 8] = [1, 2, 5, 11, 3, 17, 7, 64];
    let mut pieces = Vec::new();
    let mut rest = bytes;
    for size in SIZES.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?.to_owned(), request_line.next()?.to_owned());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned())).collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap_or(Value::Null);
    Some(Recorded { method, path, headers, body })
}

/// Events as a server writes them: `data: {json}` and a blank line each.
fn sse(events: &[Value], done: bool) -> String {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

/// A chunk in OpenAI's recorded format.
fn chunk(delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1_741_570_283,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        "usage": null,
    })
}

fn usage_chunk(prompt: u64, completion: u64, reasoning: u64, cached: u64) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1_741_570_283,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_06737a9306",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": { "cached_tokens": cached, "audio_tokens": 0 },
            "completion_tokens_details": {
                "reasoning_tokens": reasoning, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        },
    })
}

/// The text answer "Hello, world!" as OpenAI streams it.
fn hello_events() -> Vec<Value> {
    vec![
        chunk(json!({ "role": "assistant", "content": "", "refusal": null }), None),
        chunk(json!({ "content": "Hello" }), None),
        chunk(json!({ "content": ", wor" }), None),
        chunk(json!({ "content": "ld! \u{1f600}" }), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(9, 4, 0, 0),
    ]
}

fn hello_request() -> ModelRequest {
    ModelRequest::new(vec![Message::user("Say hello")])
}

async fn collect(mut stream: ModelStream) -> (Vec<ModelChunk>, Option<ModelError>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing may follow an error");
                return (chunks, Some(error));
            }
        }
    }
    (chunks, None)
}

async fn run(model: &dyn ModelProvider, request: ModelRequest) -> (Vec<ModelChunk>, Option<ModelError>) {
    collect(model.stream(request, CancellationToken::new())).await
}

fn text_of(chunks: &[ModelChunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn hello_chunks_expected() -> Vec<ModelChunk> {
    vec![
        ModelChunk::ResponseMetadata {
            id: Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG".into()),
            model: Some("gpt-4o-mini-2024-07-18".into()),
        },
        ModelChunk::TextDelta { text: "Hello".into() },
        ModelChunk::TextDelta { text: ", wor".into() },
        ModelChunk::TextDelta { text: "ld! \u{1f600}".into() },
        ModelChunk::Finish { reason: FinishReason::Stop, raw: "stop".into() },
        ModelChunk::Usage { usage: Usage { input_tokens: 9, output_tokens: 4, total_tokens: 13, ..Usage::default() } },
    ]
}

#[tokio::test]
async fn text_streams_in_order_with_finish_then_usage() {
    let server = FakeServer::start(vec![Reply::stream(sse(&hello_events(), true))]).await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(error, None);
    assert_eq!(chunks, hello_chunks_expected());
}

#[tokio::test]
async fn the_request_has_the_chat_completions_shape() {
    let server = FakeServer::start(vec![Reply::stream(sse(&hello_events(), true))]).await;
    let request = ModelRequest {
        messages: vec![
            Message::system("You are terse."),
            Message::user("Weather in Paris?"),
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get-weather".into(),
                    arguments: r#"{"location":"Paris"}"#.into(),
                }],
            },
            Message::tool_result("call_1", "get-weather", r#"{"temperature":18}"#),
        ],
        tools: vec![ToolSpec {
            name: "get-weather".into(),
            description: "Current weather".into(),
            parameters: json!({ "type": "object", "properties": { "location": { "type": "string" } } }),
        }],
        tool_choice: ToolChoice::Required,
        response_schema: Some(ResponseSchema {
            name: "answer".into(),
            schema: json!({ "type": "object", "properties": { "text": { "type": "string" } } }),
            strict: true,
        }),
        max_tokens: Some(256),
        temperature: Some(0.5),
        reasoning_effort: None,
    };
    let (_, error) = run(&server.model(), request).await;
    assert_eq!(error, None);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let recorded = &requests[0];
    assert_eq!((recorded.method.as_str(), recorded.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(recorded.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(recorded.header("content-type"), Some("application/json"));
    assert_eq!(recorded.header("accept"), Some("text/event-stream"));
    assert_eq!(
        recorded.body,
        json!({
            "model": "test-model",
            "stream": true,
            "stream_options": { "include_usage": true },
            "messages": [
                { "role": "system", "content": "You are terse." },
                { "role": "user", "content": "Weather in Paris?" },
                { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "call_1", "type": "function",
                      "function": { "name": "get-weather", "arguments": "{\"location\":\"Paris\"}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\":18}" },
            ],
            "tools": [{ "type": "function", "function": {
                "name": "get-weather",
                "description": "Current weather",
                "parameters": { "type": "object", "properties": { "location": { "type": "string" } } },
            } }],
            "tool_choice": "required",
            "response_format": { "type": "json_schema", "json_schema": {
                "name": "answer",
                "schema": { "type": "object", "properties": { "text": { "type": "string" } } },
                "strict": true,
            } },
            "max_tokens": 256,
            "temperature": 0.5,
        })
    );

    // No key: no Authorization header (local servers); no tools: no `tools` key at all.
    let server = FakeServer::start(vec![Reply::stream(sse(&hello_events(), true))]).await;
    let model = OpenAiModel::new(OpenAiConfig::new(format!("{}/", server.base_url), "m")).unwrap();
    let (_, error) = run(&model, hello_request()).await;
    assert_eq!(error, None);
    let recorded = &server.requests()[0];
    assert_eq!(recorded.header("authorization"), None);
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert!(recorded.body.get("tools").is_none() && recorded.body.get("tool_choice").is_none());
}

#[tokio::test]
async fn reasoning_deltas_from_either_field_with_crlf_and_comments() {
    // vLLM says `reasoning_content` (content null), newer servers `reasoning`; proxies add comments and CRLF.
    let events = [
        json!({ "id": "chatcmpl-1", "model": "Qwen/Qwen3-8B", "object": "chat.completion.chunk",
                "choices": [{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }] }),
        json!({ "id": "chatcmpl-1", "model": "Qwen/Qwen3-8B",
                "choices": [{ "index": 0, "delta": { "reasoning_content": "Six times seven", "content": null }, "finish_reason": null }] }),
        json!({ "id": "chatcmpl-1", "model": "Qwen/Qwen3-8B",
                "choices": [{ "index": 0, "delta": { "reasoning": " is 42." }, "finish_reason": null }] }),
        json!({ "id": "chatcmpl-1", "model": "Qwen/Qwen3-8B",
                "choices": [{ "index": 0, "delta": { "content": "42" }, "finish_reason": "stop" }] }),
        usage_chunk(12, 9, 6, 4),
    ];
    let body: String = events.iter().map(|e| format!(": OPENROUTER PROCESSING\r\n\r\ndata: {e}\r\n\r\n")).collect();
    let server = FakeServer::start(vec![Reply::stream(body + "data: [DONE]\r\n\r\n")]).await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks,
        [
            ModelChunk::ResponseMetadata { id: Some("chatcmpl-1".into()), model: Some("Qwen/Qwen3-8B".into()) },
            ModelChunk::ReasoningDelta { text: "Six times seven".into() },
            ModelChunk::ReasoningDelta { text: " is 42.".into() },
            ModelChunk::TextDelta { text: "42".into() },
            ModelChunk::Finish { reason: FinishReason::Stop, raw: "stop".into() },
            ModelChunk::Usage {
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 9,
                    total_tokens: 21,
                    reasoning_tokens: 6,
                    cached_input_tokens: 4,
                    cache_creation_input_tokens: 0,
                },
            },
        ]
    );
}

/// A chunk as OpenRouter streams it: its own fields (`provider`, `native_finish_reason`) beside OpenAI's.
fn openrouter_chunk(delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "gen-1741570283-Zr8kVjQnVb3n8uNvR0zP",
        "provider": "Anthropic",
        "model": "anthropic/claude-3.7-sonnet",
        "object": "chat.completion.chunk",
        "created": 1_741_570_283,
        "choices": [{
            "index": 0, "delta": delta, "finish_reason": finish_reason,
            "native_finish_reason": finish_reason, "logprobs": null,
        }],
    })
}

/// 1x1 transparent PNG.
const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[tokio::test]
async fn reasoning_details_citations_and_images_become_their_chunks() {
    let detail = |mut entry: Value| {
        entry["format"] = json!("anthropic-claude-v1");
        entry
    };
    let citation = |url: &str, title: &str| {
        json!({ "type": "url_citation", "url_citation": {
            "url": url, "title": title, "content": "...", "start_index": 0, "end_index": 12,
        } })
    };
    let events = [
        // `reasoning` and its structured twin carry the same text: read once.
        openrouter_chunk(
            json!({ "role": "assistant", "content": "", "reasoning": "Lisbon is ",
                    "reasoning_details": [detail(json!({ "type": "reasoning.text", "text": "Lisbon is " }))] }),
            None,
        ),
        // Only the structured form: its text is read.
        openrouter_chunk(
            json!({ "content": "", "reasoning_details": [detail(json!({ "type": "reasoning.text", "text": "sunny." }))] }),
            None,
        ),
        // The block's signature, then a redacted block, then an entry type nobody knows yet.
        openrouter_chunk(
            json!({ "content": "", "reasoning": null, "reasoning_details": [
                detail(json!({ "type": "reasoning.text", "text": "", "signature": "EqQBCkgIARABGAIiQL3y" })),
                detail(json!({ "type": "reasoning.encrypted", "data": "RXJyb3I6IHJlZGFjdGVk", "index": 1 })),
                detail(json!({ "type": "reasoning.future", "text": "ignored" })),
            ] }),
            None,
        ),
        openrouter_chunk(json!({ "content": "It is sunny in Lisbon." }), None),
        // Citations; OpenRouter repeats them with the last chunk. Other annotation types are not sources.
        openrouter_chunk(
            json!({ "content": "", "annotations": [
                citation("https://weather.example/lisbon", "Lisbon weather"),
                { "type": "file_citation", "file_citation": { "file_id": "f1" } },
            ] }),
            None,
        ),
        // An image as a data URL is a file; one by link is not; neither is a malformed entry.
        openrouter_chunk(
            json!({ "content": "", "images": [
                { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{PNG_BASE64}") }, "index": 0 },
                { "type": "image_url", "image_url": { "url": "https://cdn.example/sky.png" }, "index": 1 },
                { "type": "image_url" },
            ] }),
            None,
        ),
        openrouter_chunk(
            json!({ "content": "", "annotations": [
                citation("https://weather.example/lisbon", "Lisbon weather"),
                citation("https://ipma.example/", ""),
            ] }),
            Some("stop"),
        ),
        usage_chunk(30, 20, 8, 0),
    ];
    let server = FakeServer::start(vec![Reply::stream(sse(&events, true))]).await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks[1..chunks.len() - 2],
        [
            ModelChunk::ReasoningDelta { text: "Lisbon is ".into() },
            ModelChunk::ReasoningDelta { text: "sunny.".into() },
            ModelChunk::ReasoningSignature { signature: "EqQBCkgIARABGAIiQL3y".into() },
            ModelChunk::RedactedReasoning { data: "RXJyb3I6IHJlZGFjdGVk".into() },
            ModelChunk::TextDelta { text: "It is sunny in Lisbon.".into() },
            ModelChunk::Source { url: "https://weather.example/lisbon".into(), title: Some("Lisbon weather".into()) },
            ModelChunk::File { media_type: "image/png".into(), base64: PNG_BASE64.into() },
            ModelChunk::Source { url: "https://ipma.example/".into(), title: None },
        ]
    );
    assert_eq!(
        chunks.last(),
        Some(&ModelChunk::Usage {
            usage: Usage {
                input_tokens: 30,
                output_tokens: 20,
                total_tokens: 50,
                reasoning_tokens: 8,
                ..Usage::default()
            }
        })
    );
}

#[tokio::test]
async fn hidden_reasoning_asks_for_medium_effort_and_yields_only_the_redacted_part() {
    let events = [
        openrouter_chunk(
            json!({ "role": "assistant", "content": "", "reasoning": "private",
                    "reasoning_details": [{ "type": "reasoning.text", "text": "private", "signature": "sig" }] }),
            None,
        ),
        openrouter_chunk(json!({ "reasoning_content": "also private" }), None),
        openrouter_chunk(json!({ "reasoning_details": [{ "type": "reasoning.encrypted", "data": "gAAAAABo" }] }), None),
        openrouter_chunk(json!({ "content": "42" }), Some("stop")),
    ];
    let server = FakeServer::start(vec![Reply::stream(sse(&events, true))]).await;
    let mut request = hello_request();
    request.reasoning_effort = Some(ReasoningEffort::Hidden);
    request.max_tokens = Some(100);
    let (chunks, error) = run(&server.model(), request).await;
    assert_eq!(error, None);
    assert_eq!(
        chunks[1..],
        [
            ModelChunk::RedactedReasoning { data: "gAAAAABo".into() },
            ModelChunk::TextDelta { text: "42".into() },
            ModelChunk::Finish { reason: FinishReason::Stop, raw: "stop".into() },
        ]
    );
    let body = &server.requests()[0].body;
    assert_eq!((&body["reasoning_effort"], &body["max_completion_tokens"]), (&json!("medium"), &json!(100)));
}

#[tokio::test]
async fn two_parallel_tool_calls_stream_their_arguments_across_chunks() {
    let call = |index: u32, id: Option<&str>, name: Option<&str>, arguments: &str| {
        let mut function = json!({ "arguments": arguments });
        let mut tool_call = json!({ "index": index, "function": function.clone() });
        if let (Some(id), Some(name)) = (id, name) {
            function["name"] = json!(name);
            tool_call = json!({ "index": index, "id": id, "type": "function", "function": function });
        }
        chunk(json!({ "tool_calls": [tool_call] }), None)
    };
    let events = vec![
        chunk(json!({ "role": "assistant", "content": null, "refusal": null }), None),
        call(0, Some("call_weather"), Some("get_weather"), ""),
        call(0, None, None, "{\"lo"),
        call(0, None, None, "cation\": \"Par"),
        call(0, None, None, "is, France\"}"),
        call(1, Some("call_calc"), Some("calculator"), ""),
        call(1, None, None, "{\"expression\""),
        call(1, None, None, ": \"12 * 7\"}"),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(80, 40, 0, 64),
    ];
    let server = FakeServer::start(vec![Reply::stream(sse(&events, true))]).await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(error, None);
    let starts: Vec<_> = chunks.iter().filter(|c| matches!(c, ModelChunk::ToolCallStart { .. })).collect();
    assert_eq!(
        starts,
        [
            &ModelChunk::ToolCallStart { index: 0, id: "call_weather".into(), name: "get_weather".into() },
            &ModelChunk::ToolCallStart { index: 1, id: "call_calc".into(), name: "calculator".into() },
        ]
    );
    let arguments = |index: u32| -> Value {
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::ToolCallDelta { index: i, arguments } if *i == index => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(arguments(0), json!({ "location": "Paris, France" }));
    assert_eq!(arguments(1), json!({ "expression": "12 * 7" }));
    let deltas = chunks.iter().filter(|c| matches!(c, ModelChunk::ToolCallDelta { .. })).count();
    assert_eq!(deltas, 5, "each non-empty arguments piece is one delta");
    // Each call's start precedes its deltas.
    for index in [0, 1] {
        let start = chunks.iter().position(|c| matches!(c, ModelChunk::ToolCallStart { index: i, .. } if *i == index));
        let first_delta =
            chunks.iter().position(|c| matches!(c, ModelChunk::ToolCallDelta { index: i, .. } if *i == index));
        assert!(start < first_delta);
    }
    let n = chunks.len();
    assert_eq!(chunks[n - 2], ModelChunk::Finish { reason: FinishReason::ToolCalls, raw: "tool_calls".into() });
    assert!(matches!(chunks[n - 1], ModelChunk::Usage { usage } if usage.cached_input_tokens == 64));
}

#[tokio::test]
async fn rate_limited_then_success_waits_as_asked() {
    let server = FakeServer::start(vec![
        Reply::Status {
            status: 429,
            headers: vec![("retry-after-ms", "30".into()), ("retry-after", "1".into())],
            body: r#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
        },
        Reply::stream(sse(&hello_events(), true)),
    ])
    .await;
    let started = Instant::now();
    let (chunks, error) = run(&server.retrying(3), hello_request()).await;
    assert_eq!(error, None);
    assert!(started.elapsed() >= Duration::from_millis(30), "retry-after-ms was honoured");
    // Nothing had been yielded when the 429 came: no Restart, just the answer.
    assert_eq!(chunks, hello_chunks_expected());
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_long_retry_after_is_capped_by_the_policy() {
    let server = FakeServer::start(vec![
        Reply::Status { status: 429, headers: vec![("retry-after", "3600".into())], body: "slow down".into() },
        Reply::stream(sse(&hello_events(), true)),
    ])
    .await;
    let started = Instant::now();
    let (chunks, error) = run(&server.retrying(2), hello_request()).await;
    assert_eq!(error, None);
    assert!(started.elapsed() < Duration::from_secs(30), "waited the policy's 50 ms, not an hour");
    assert_eq!(text_of(&chunks), "Hello, world! \u{1f600}");
}

#[tokio::test]
async fn server_error_then_success() {
    let server = FakeServer::start(vec![
        Reply::status(
            500,
            r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error"}}"#,
        ),
        Reply::stream(sse(&hello_events(), true)),
    ])
    .await;
    let (chunks, error) = run(&server.retrying(3), hello_request()).await;
    assert_eq!(error, None);
    assert_eq!(chunks, hello_chunks_expected());
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_stream_dropped_mid_answer_restarts_then_succeeds() {
    // The first attempt's connection dies after "Hello, wor".
    let partial = sse(&hello_events()[..3], false);
    let server = FakeServer::start(vec![
        Reply::Stream { body: partial, end: End::Drop },
        Reply::stream(sse(&hello_events(), true)),
    ])
    .await;
    let (chunks, error) = run(&server.retrying(3), hello_request()).await;
    assert_eq!(error, None);
    let restart = chunks.iter().position(|c| matches!(c, ModelChunk::Restart { .. })).expect("a restart marker");
    let ModelChunk::Restart { attempt, reason, .. } = &chunks[restart] else { unreachable!() };
    assert_eq!(*attempt, 2);
    assert!(reason.contains("ended before the response was complete"), "{reason}");
    assert_eq!(text_of(&chunks[..restart]), "Hello, wor", "the partial answer came first");
    assert_eq!(chunks[restart + 1..], hello_chunks_expected(), "then the whole answer again");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn an_early_close_without_finish_is_a_retryable_drop() {
    for end in [End::Drop, End::CloseDelimited] {
        let server = FakeServer::start(vec![Reply::Stream { body: sse(&hello_events()[..2], false), end }]).await;
        let (chunks, error) = run(&server.model(), hello_request()).await;
        assert_eq!(text_of(&chunks), "Hello", "{end:?}");
        let error = error.expect("an error");
        assert!(matches!(error, ModelError::StreamDropped { .. }), "{end:?}: {error}");
        assert!(error.is_retryable());
    }
}

#[tokio::test]
async fn a_close_after_finish_without_done_is_complete() {
    // Some servers close right after the finish_reason chunk: no usage chunk, no [DONE]. Not worth a retry.
    let server =
        FakeServer::start(vec![Reply::Stream { body: sse(&hello_events()[..5], false), end: End::CloseDelimited }])
            .await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(error, None);
    assert_eq!(chunks.last(), Some(&ModelChunk::Finish { reason: FinishReason::Stop, raw: "stop".into() }));
}

#[tokio::test]
async fn spent_retries_end_with_an_error_that_says_why() {
    let unavailable =
        r#"{"object":"error","message":"The model is overloaded","type":"ServiceUnavailableError","code":503}"#;
    let server = FakeServer::start(vec![Reply::status(503, unavailable); 3]).await;
    let (chunks, error) = run(&server.retrying(3), hello_request()).await;
    assert!(chunks.is_empty());
    let error = error.expect("an error");
    let ModelError::RetriesExhausted { attempts, last } = &error else { panic!("{error:?}") };
    assert_eq!(*attempts, 3);
    assert!(matches!(**last, ModelError::Server { status: 503, .. }));
    let message = error.to_string();
    assert!(message.contains("failed 3 times"), "{message}");
    assert!(message.contains("HTTP 503") && message.contains("The model is overloaded"), "{message}");
    assert!(message.contains(&server.base_url), "{message}");
    assert!(!error.is_retryable());
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_rejected_request_fails_at_once_with_a_hint() {
    let server = FakeServer::start(vec![
        Reply::status(400, r#"{"error":{"message":"Invalid schema for function 'get-weather'","type":"invalid_request_error","param":"tools[0]","code":"invalid_function_parameters"}}"#),
        Reply::stream(sse(&hello_events(), true)),
    ])
    .await;
    let (chunks, error) = run(&server.retrying(3), hello_request()).await;
    assert!(chunks.is_empty());
    let error = error.expect("an error");
    assert!(matches!(error, ModelError::Rejected { status: 400, .. }), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("Invalid schema for function 'get-weather'"), "{message}");
    assert!(message.contains("tool or response schema"), "{message}");
    assert_eq!(server.requests().len(), 1, "no retry");

    let server =
        FakeServer::start(vec![Reply::status(401, r#"{"error":{"message":"Incorrect API key provided"}}"#)]).await;
    let (_, error) = run(&server.retrying(3), hello_request()).await;
    let message = error.expect("an error").to_string();
    assert!(message.contains("Incorrect API key provided") && message.contains("RUNSTREAM_MODEL_API_KEY"), "{message}");
}

#[tokio::test]
async fn an_error_event_mid_stream_is_reported() {
    let body = sse(&hello_events()[..2], false)
        + "data: {\"error\":{\"object\":\"error\",\"message\":\"CUDA out of memory\",\"type\":\"InternalServerError\",\"code\":500}}\n\n";
    let server = FakeServer::start(vec![Reply::stream(body)]).await;
    let (chunks, error) = run(&server.model(), hello_request()).await;
    assert_eq!(text_of(&chunks), "Hello");
    let error = error.expect("an error");
    assert!(matches!(error, ModelError::StreamError { retryable: true, .. }), "{error:?}");
    assert!(error.to_string().contains("CUDA out of memory"));
}

#[tokio::test]
async fn a_server_that_cannot_stream_is_a_permanent_error() {
    let server = FakeServer::start(vec![Reply::status(200, r#"{"id":"x","choices":[]}"#)]).await;
    let (_, error) = run(&server.retrying(3), hello_request()).await;
    let error = error.expect("an error");
    assert!(matches!(error, ModelError::InvalidResponse { .. }), "{error:?}");
    assert!(error.to_string().contains("stream: true"));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let model = OpenAiModel::new(OpenAiConfig::new(&base_url, "m")).unwrap();
    let (chunks, error) = run(&RetryingModel::new(Arc::new(model), fast_policy(2)), hello_request()).await;
    assert!(chunks.is_empty());
    let error = error.expect("an error");
    let ModelError::RetriesExhausted { last, .. } = &error else { panic!("{error:?}") };
    assert!(matches!(**last, ModelError::Connect { .. }), "{last:?}");
    assert!(error.to_string().contains("RUNSTREAM_MODEL_BASE_URL"), "{error}");
}

#[tokio::test]
async fn cancel_ends_a_stream_mid_answer() {
    let server =
        FakeServer::start(vec![Reply::Stream { body: sse(&hello_events()[..2], false), end: End::Hang }]).await;
    let cancel = CancellationToken::new();
    let mut stream = server.retrying(3).stream(hello_request(), cancel.clone());
    assert!(matches!(stream.next().await, Some(Ok(ModelChunk::ResponseMetadata { .. }))));
    assert!(matches!(stream.next().await, Some(Ok(ModelChunk::TextDelta { .. }))));
    cancel.cancel();
    assert_eq!(stream.next().await, Some(Err(ModelError::Canceled)));
    assert_eq!(stream.next().await, None);
    assert_eq!(server.requests().len(), 1, "cancellation is not retried");
}

#[tokio::test]
async fn a_silent_server_times_out_retryably() {
    let server =
        FakeServer::start(vec![Reply::Stream { body: sse(&hello_events()[..2], false), end: End::Hang }]).await;
    let mut config = OpenAiConfig::new(&server.base_url, "m");
    config.request_timeout = Duration::from_millis(200);
    let (chunks, error) = run(&OpenAiModel::new(config).unwrap(), hello_request()).await;
    assert_eq!(text_of(&chunks), "Hello");
    let error = error.expect("an error");
    assert!(matches!(error, ModelError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
}

/// An agent naming its model gets the same server, key and retries with that model's name; the offline stand-in
/// has one model and takes no other.
#[tokio::test]
async fn with_model_calls_another_model_on_the_same_server() {
    let server = FakeServer::start(vec![Reply::status(503, "busy"), Reply::stream(sse(&hello_events(), true))]).await;
    let other = server.retrying(2).with_model("other-model").expect("an OpenAI-compatible server serves any name");
    assert_eq!((other.model_id(), other.provider()), ("other-model", "openai-compatible"));
    let (_, error) = run(&*other, hello_request()).await;
    assert_eq!(error, None, "the 503 was retried");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for recorded in &requests {
        assert_eq!(recorded.body["model"], "other-model");
        assert_eq!(recorded.header("authorization"), Some("Bearer sk-test"));
    }
    assert_eq!(server.model().model_id(), "test-model", "the server's own model is unchanged");
    assert!(OfflineModel::new().with_model("gpt-4o").is_none());
}
