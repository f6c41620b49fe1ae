//! The loop's chunk order, against a scripted model.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    builtin::{assistant_with, concierge_with, tools},
    engine::{AgentChunk, FinishReason, Usage},
    model::{self, ModelChunk, ModelError, ModelRequest, ModelStream},
};

/// One model call's script: its items, then (with `hang`) a stream that never ends.
#[derive(Default)]
struct Script {
    items: Vec<Result<ModelChunk, ModelError>>,
    hang: bool,
}

/// Returns pre-set chunk lists, one per call, and records the requests.
#[derive(Default)]
struct Scripted {
    calls: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<ModelRequest>>,
}

impl Scripted {
    fn new(calls: Vec<Vec<ModelChunk>>) -> Arc<Self> {
        Self::with(calls.into_iter().map(|c| Script { items: c.into_iter().map(Ok).collect(), hang: false }).collect())
    }

    fn with(calls: Vec<Script>) -> Arc<Self> {
        Arc::new(Self { calls: Mutex::new(calls.into()), requests: Mutex::default() })
    }

    fn requests(&self) -> Vec<ModelRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl ModelProvider for Scripted {
    fn model_id(&self) -> &str {
        "scripted"
    }

    fn provider(&self) -> &str {
        "test"
    }

    fn stream(&self, request: ModelRequest, _cancel: CancellationToken) -> ModelStream {
        self.requests.lock().unwrap().push(request);
        let script =
            self.calls.lock().unwrap().pop_front().unwrap_or_else(|| Script {
                items: vec![Err(ModelError::Config("script exhausted".into()))],
                hang: false,
            });
        let items = futures_util::stream::iter(script.items);
        if script.hang { Box::pin(items.chain(futures_util::stream::pending())) } else { Box::pin(items) }
    }
}

fn meta(id: &str) -> ModelChunk {
    ModelChunk::ResponseMetadata { id: Some(id.into()), model: Some("scripted-1".into()) }
}

fn text(t: &str) -> ModelChunk {
    ModelChunk::TextDelta { text: t.into() }
}

fn reasoning(t: &str) -> ModelChunk {
    ModelChunk::ReasoningDelta { text: t.into() }
}

fn call_start(index: u32, id: &str, name: &str) -> ModelChunk {
    ModelChunk::ToolCallStart { index, id: id.into(), name: name.into() }
}

fn call_delta(index: u32, arguments: &str) -> ModelChunk {
    ModelChunk::ToolCallDelta { index, arguments: arguments.into() }
}

fn finish(reason: model::FinishReason) -> ModelChunk {
    let raw = match reason {
        model::FinishReason::ToolCalls => "tool_calls",
        model::FinishReason::Length => "length",
        _ => "stop",
    };
    ModelChunk::Finish { reason, raw: raw.into() }
}

fn usage(input: u64, output: u64) -> ModelChunk {
    ModelChunk::Usage {
        usage: Usage { input_tokens: input, output_tokens: output, total_tokens: input + output, ..Usage::default() },
    }
}

fn failing_tool() -> Tool {
    Tool::new("fails", "Always fails.", json!({"type": "object"}), |_ctx, _args| async {
        Err(ToolError::new("out of order"))
    })
}

fn agent(model: Arc<dyn ModelProvider>) -> Agent {
    Agent::new("test-agent", "Be brief.", model).tool(tools::calculator_tool()).tool(failing_tool())
}

/// One line per chunk; ids that are random (message ids) are left out.
fn describe(chunk: &AgentChunk) -> String {
    match chunk {
        AgentChunk::AgentStart { agent_id, .. } => format!("start {agent_id}"),
        AgentChunk::AgentStepStart { step_number, .. } => format!("step-start {step_number}"),
        AgentChunk::ResponseMetadata { id, .. } => format!("metadata {}", id.as_deref().unwrap_or("")),
        AgentChunk::TextStart { id } => format!("text-start {id}"),
        AgentChunk::TextDelta { id, text } => format!("text-delta {id} {text}"),
        AgentChunk::TextEnd { id } => format!("text-end {id}"),
        AgentChunk::ReasoningStart { id, .. } => format!("reasoning-start {id}"),
        AgentChunk::ReasoningDelta { id, text } => format!("reasoning-delta {id} {text}"),
        AgentChunk::ReasoningEnd { id, signature } => match signature {
            Some(signature) => format!("reasoning-end {id} signed {signature}"),
            None => format!("reasoning-end {id}"),
        },
        AgentChunk::ReasoningSignature { id, signature } => format!("reasoning-signature {id} {signature}"),
        AgentChunk::RedactedReasoning { id, data } => format!("redacted-reasoning {id} {data}"),
        AgentChunk::SourceRef { id, source_type, title, url, .. } => {
            format!("source {id} {source_type} {} {title:?}", url.as_deref().unwrap_or(""))
        }
        AgentChunk::FileData { data, mime_type, .. } => {
            format!("file {mime_type} {:?}", String::from_utf8_lossy(data))
        }
        AgentChunk::ToolCallInputStreamingStart { tool_call_id, tool_name, .. } => {
            format!("input-start {tool_call_id} {tool_name}")
        }
        AgentChunk::ToolCallDelta { tool_call_id, args_text_delta, .. } => {
            format!("input-delta {tool_call_id} {args_text_delta}")
        }
        AgentChunk::ToolCallInputStreamingEnd { tool_call_id } => format!("input-end {tool_call_id}"),
        AgentChunk::ToolCall { tool_call_id, tool_name, args, .. } => {
            format!("tool-call {tool_call_id} {tool_name} {args}")
        }
        AgentChunk::ToolResult { tool_call_id, result, .. } => format!("tool-result {tool_call_id} {result}"),
        AgentChunk::ToolError { tool_call_id, error, .. } => {
            format!("tool-error {tool_call_id} {}: {}", error.name, error.message)
        }
        AgentChunk::AgentStepFinish { step_number, reason, text, is_continued, .. } => {
            format!("step-finish {step_number} {reason:?} {text:?}{}", if *is_continued { " continued" } else { "" })
        }
        AgentChunk::AgentFinish { reason, text, steps, .. } => format!("finish {reason:?} {text:?} steps={steps}"),
        AgentChunk::AgentError { error } => format!("error {}: {}", error.name, error.message),
        AgentChunk::AgentAbort { reason } => format!("abort {reason}"),
        AgentChunk::ToolCallApproval(a) => format!("approval {} {} {}", a.tool_call_id, a.tool_name, a.args),
        AgentChunk::ToolCallSuspended(s) => {
            format!("suspended {} {} {} {}", s.tool_call_id, s.tool_name, s.args, s.suspend_payload)
        }
        AgentChunk::ToolOutputDenied { tool_call_id, reason, .. } => {
            format!("denied {tool_call_id} {}", reason.as_deref().unwrap_or(""))
        }
        AgentChunk::Tripwire { reason, processor_id, .. } => {
            format!("tripwire {}: {reason}", processor_id.as_deref().unwrap_or(""))
        }
        AgentChunk::ToolOutput { tool_call_id, output, .. } => format!("tool-output {tool_call_id} {output}"),
        AgentChunk::ObjectPartial { object } => format!("object {object}"),
        AgentChunk::ObjectResult { object } => format!("object-result {object}"),
    }
}

/// Runs `agent` on one user message, collecting every chunk.
async fn run(agent: &Agent, prompt: &str) -> (AgentOutcome, Vec<AgentChunk>) {
    let chunks = Mutex::new(Vec::new());
    let outcome =
        run_agent(agent, vec![Message::user(prompt)], |c| chunks.lock().unwrap().push(c), CancellationToken::new())
            .await;
    (outcome, chunks.into_inner().unwrap())
}

fn lines(chunks: &[AgentChunk]) -> Vec<String> {
    chunks.iter().map(describe).collect()
}

#[tokio::test]
async fn plain_text_answer() {
    let model = Scripted::new(vec![vec![
        meta("r1"),
        text("Hello"),
        text(" there"),
        finish(model::FinishReason::Stop),
        usage(5, 2),
    ]]);
    let (outcome, chunks) = run(&agent(model.clone()), "Hi").await;
    assert_eq!(
        lines(&chunks),
        [
            "start test-agent",
            "step-start 1",
            "metadata r1",
            "text-start text-1",
            "text-delta text-1 Hello",
            "text-delta text-1  there",
            "text-end text-1",
            "step-finish 1 Stop \"Hello there\"",
            "finish Stop \"Hello there\" steps=1",
        ]
    );
    assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    assert_eq!(outcome.text, "Hello there");
    assert_eq!((outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.total_tokens), (5, 2, 7));
    match &chunks[7] {
        AgentChunk::AgentStepFinish { usage, raw_reason, .. } => {
            assert_eq!(usage.total_tokens, 7);
            assert_eq!(raw_reason.as_deref(), Some("stop"));
        }
        other => panic!("{other:?}"),
    }
    // The instructions go first, as the system message; the tools are offered.
    let request = &model.requests()[0];
    assert_eq!(request.messages, [Message::system("Be brief."), Message::user("Hi")]);
    assert_eq!(request.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["calculator", "fails"]);
}

#[tokio::test]
async fn reasoning_then_text_are_separate_parts() {
    let model = Scripted::new(vec![vec![
        meta("r1"),
        reasoning("Think"),
        reasoning("ing."),
        text("Done"),
        finish(model::FinishReason::Stop),
        usage(1, 1),
    ]]);
    let (_, chunks) = run(&agent(model), "Hi").await;
    assert_eq!(
        lines(&chunks)[2..],
        [
            "metadata r1",
            "reasoning-start reasoning-1",
            "reasoning-delta reasoning-1 Think",
            "reasoning-delta reasoning-1 ing.",
            "reasoning-end reasoning-1",
            "text-start text-1",
            "text-delta text-1 Done",
            "text-end text-1",
            "step-finish 1 Stop \"Done\"",
            "finish Stop \"Done\" steps=1",
        ]
    );
}

#[tokio::test]
async fn signatures_and_redacted_reasoning_stay_inside_their_reasoning_part() {
    let model = Scripted::new(vec![vec![
        meta("r1"),
        reasoning("Think."),
        ModelChunk::ReasoningSignature { signature: "sig-1".into() },
        ModelChunk::RedactedReasoning { data: "opaque".into() },
        text("Done"),
        // Late: its part (reasoning-1) has closed; it still names it.
        ModelChunk::ReasoningSignature { signature: "sig-2".into() },
        // Redacted reasoning alone opens a part of its own.
        ModelChunk::RedactedReasoning { data: "more".into() },
        ModelChunk::ReasoningDelta { text: String::new() },
        finish(model::FinishReason::Stop),
    ]]);
    let (_, chunks) = run(&agent(model), "Hi").await;
    assert_eq!(
        lines(&chunks)[2..],
        [
            "metadata r1",
            "reasoning-start reasoning-1",
            "reasoning-delta reasoning-1 Think.",
            "reasoning-signature reasoning-1 sig-1",
            "redacted-reasoning reasoning-1 opaque",
            "reasoning-end reasoning-1 signed sig-1",
            "text-start text-1",
            "text-delta text-1 Done",
            // Not content: it does not end the text part.
            "reasoning-signature reasoning-1 sig-2",
            "text-end text-1",
            "reasoning-start reasoning-2",
            "redacted-reasoning reasoning-2 more",
            "reasoning-end reasoning-2",
            "step-finish 1 Stop \"Done\"",
            "finish Stop \"Done\" steps=1",
        ]
    );
}

#[tokio::test]
async fn sources_and_files_are_content_of_their_own() {
    let model = Scripted::new(vec![vec![
        text("See "),
        ModelChunk::Source { url: "https://example.com/a".into(), title: Some("A".into()) },
        ModelChunk::Source { url: "https://example.com/b".into(), title: None },
        text("and this:"),
        ModelChunk::File { media_type: "text/csv".into(), base64: "YSxiCjEsMgo=".into() },
        // Undecodable bytes are dropped; the answer stands.
        ModelChunk::File { media_type: "image/png".into(), base64: "not base64!".into() },
        finish(model::FinishReason::Stop),
    ]]);
    let (outcome, chunks) = run(&agent(model), "Hi").await;
    assert_eq!(
        lines(&chunks)[2..],
        [
            "text-start text-1",
            "text-delta text-1 See ",
            "text-end text-1",
            "source source-1 url https://example.com/a \"A\"",
            "source source-2 url https://example.com/b \"\"",
            "text-start text-2",
            "text-delta text-2 and this:",
            "text-end text-2",
            "file text/csv \"a,b\\n1,2\\n\"",
            "step-finish 1 Stop \"See and this:\"",
            "finish Stop \"See and this:\" steps=1",
        ]
    );
    assert_eq!(outcome.text, "See and this:");
}

#[tokio::test]
async fn tool_call_streams_runs_and_feeds_the_next_call() {
    let model = Scripted::new(vec![
        vec![
            meta("r1"),
            call_start(0, "call_1", "calculator"),
            call_delta(0, r#"{"expre"#),
            call_delta(0, r#"ssion": "6"#),
            call_delta(0, r#" * 7"}"#),
            finish(model::FinishReason::ToolCalls),
            usage(10, 5),
        ],
        vec![meta("r2"), text("It is 42."), finish(model::FinishReason::Stop), usage(20, 3)],
    ]);
    let (outcome, chunks) = run(&agent(model.clone()), "What is 6 * 7?").await;
    assert_eq!(
        lines(&chunks),
        [
            "start test-agent",
            "step-start 1",
            "metadata r1",
            "input-start call_1 calculator",
            "input-delta call_1 {\"expre",
            "input-delta call_1 ssion\": \"6",
            "input-delta call_1  * 7\"}",
            "input-end call_1",
            "tool-call call_1 calculator {\"expression\":\"6 * 7\"}",
            "tool-result call_1 {\"expression\":\"6 * 7\",\"result\":42}",
            "step-finish 1 ToolCalls \"\" continued",
            "step-start 2",
            "metadata r2",
            "text-start text-1",
            "text-delta text-1 It is 42.",
            "text-end text-1",
            "step-finish 2 Stop \"It is 42.\"",
            "finish Stop \"It is 42.\" steps=2",
        ]
    );
    match chunks.last() {
        Some(AgentChunk::AgentFinish { usage, .. }) => {
            assert_eq!((usage.input_tokens, usage.output_tokens, usage.total_tokens), (30, 8, 38));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome.usage.total_tokens, 38);
    assert_eq!(outcome.steps, 2);
    // The second call sees the assistant's call (arguments verbatim) and the tool's result.
    let second = &model.requests()[1];
    assert_eq!(
        second.messages[2..],
        [
            Message::Assistant {
                content: None,
                tool_calls: vec![model::ToolCall {
                    id: "call_1".into(),
                    name: "calculator".into(),
                    arguments: r#"{"expression": "6 * 7"}"#.into(),
                }],
            },
            Message::tool_result("call_1", "calculator", r#"{"expression":"6 * 7","result":42}"#),
        ]
    );
}

#[tokio::test]
async fn a_tool_error_is_reported_to_the_model_and_the_loop_goes_on() {
    let model = Scripted::new(vec![
        vec![
            call_start(0, "call_1", "fails"),
            call_delta(0, "{}"),
            finish(model::FinishReason::ToolCalls),
            usage(1, 1),
        ],
        vec![text("Sorry."), finish(model::FinishReason::Stop), usage(1, 1)],
    ]);
    let (outcome, chunks) = run(&agent(model.clone()), "Go").await;
    assert_eq!(
        lines(&chunks)[2..7],
        [
            "input-start call_1 fails",
            "input-delta call_1 {}",
            "input-end call_1",
            "tool-call call_1 fails {}",
            "tool-error call_1 ToolError: out of order",
        ]
    );
    assert_eq!(lines(&chunks)[7], "step-finish 1 ToolCalls \"\" continued");
    assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    assert_eq!(
        model.requests()[1].messages.last(),
        Some(&Message::tool_result("call_1", "fails", r#"{"error":"out of order"}"#))
    );
}

#[tokio::test]
async fn invalid_or_schema_violating_args_are_tool_errors() {
    let model = Scripted::new(vec![
        vec![
            call_start(0, "call_1", "calculator"),
            call_delta(0, r#"{"expression": "#),
            call_start(1, "call_2", "calculator"),
            call_delta(1, r#"{"expr": "1"}"#),
            call_start(2, "call_3", "nope"),
            finish(model::FinishReason::ToolCalls),
        ],
        vec![text("ok"), finish(model::FinishReason::Stop)],
    ]);
    let (outcome, chunks) = run(&agent(model.clone()), "Go").await;
    let lines = lines(&chunks);
    assert_eq!(
        lines[2..14],
        [
            "input-start call_1 calculator",
            "input-delta call_1 {\"expression\": ",
            "input-start call_2 calculator",
            "input-delta call_2 {\"expr\": \"1\"}",
            "input-start call_3 nope",
            "input-end call_1",
            "tool-error call_1 ToolArgsError: the arguments of tool 'calculator' are not valid JSON: EOF while parsing a value at line 1 column 15",
            "input-end call_2",
            "tool-call call_2 calculator {\"expr\":\"1\"}",
            "input-end call_3",
            "tool-call call_3 nope {}",
            "tool-error call_2 ToolArgsError: invalid arguments for tool 'calculator': args.expression: required field is missing",
        ]
    );
    assert_eq!(lines[14], "tool-error call_3 ToolError: unknown tool 'nope'; this agent has: [calculator, fails]");
    assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    // Every call is answered, in call order.
    let answered: Vec<String> = model.requests()[1]
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::Tool { tool_call_id, .. } => Some(tool_call_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(answered, ["call_1", "call_2", "call_3"]);
}

#[tokio::test]
async fn a_restart_closes_the_partial_part_and_discards_it() {
    let model = Scripted::new(vec![vec![
        meta("r1"),
        text("Hel"),
        call_start(0, "call_x", "calculator"),
        usage(100, 100),
        ModelChunk::Restart { attempt: 2, reason: "connection reset".into(), delay: Duration::from_millis(1) },
        meta("r1b"),
        text("Hello"),
        finish(model::FinishReason::Stop),
        usage(4, 1),
    ]]);
    let (outcome, chunks) = run(&agent(model), "Hi").await;
    assert_eq!(
        lines(&chunks)[2..],
        [
            "metadata r1",
            "text-start text-1",
            "text-delta text-1 Hel",
            "text-end text-1",
            "input-start call_x calculator",
            "input-end call_x",
            "metadata r1b",
            "text-start text-2",
            "text-delta text-2 Hello",
            "text-end text-2",
            "step-finish 1 Stop \"Hello\"",
            "finish Stop \"Hello\" steps=1",
        ]
    );
    assert_eq!(outcome.text, "Hello");
    assert_eq!(outcome.usage.total_tokens, 5);
}

#[tokio::test]
async fn a_model_error_ends_the_loop_with_agent_error() {
    let error = ModelError::Server { url: "http://m".into(), status: 500, message: "boom".into() };
    let model = Scripted::with(vec![Script {
        items: vec![Ok(meta("r1")), Ok(text("Hi")), Ok(call_start(0, "call_1", "calculator")), Err(error.clone())],
        hang: false,
    }]);
    let (outcome, chunks) = run(&agent(model), "Hi").await;
    let expected_error = format!("error ModelError: {error}");
    // Open parts and tool inputs are closed before the error, so every start has its end.
    assert_eq!(
        lines(&chunks)[2..],
        [
            "metadata r1",
            "text-start text-1",
            "text-delta text-1 Hi",
            "text-end text-1",
            "input-start call_1 calculator",
            "input-end call_1",
            expected_error.as_str(),
        ]
    );
    match outcome.end {
        AgentEnd::Failed(e) => assert_eq!(e.message, error.to_string()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cancel_ends_the_loop_with_abort() {
    let model =
        Scripted::with(vec![Script { items: vec![Ok(meta("r1")), Ok(text("Hi")), Ok(text(" again"))], hang: true }]);
    let agent = agent(model);
    let cancel = CancellationToken::new();
    let chunks = Mutex::new(Vec::new());
    let emit = |c: AgentChunk| {
        // Cancel as soon as the first text arrives: the loop must not map another model chunk.
        if matches!(c, AgentChunk::TextDelta { .. }) {
            cancel.cancel();
        }
        chunks.lock().unwrap().push(c);
    };
    let outcome = run_agent(&agent, vec![Message::user("Hi")], emit, cancel.clone()).await;
    assert_eq!(outcome.end, AgentEnd::Aborted);
    assert_eq!(
        lines(&chunks.lock().unwrap())[2..],
        ["metadata r1", "text-start text-1", "text-delta text-1 Hi", "abort canceled"]
    );
}

#[tokio::test]
async fn dropping_the_loop_mid_call_still_emits_abort() {
    let model = Scripted::with(vec![Script { items: vec![Ok(meta("r1"))], hang: true }]);
    let agent = agent(model);
    let chunks = Mutex::new(Vec::new());
    let run =
        run_agent(&agent, vec![Message::user("Hi")], |c| chunks.lock().unwrap().push(c), CancellationToken::new());
    assert!(tokio::time::timeout(Duration::from_millis(20), run).await.is_err());
    assert_eq!(lines(&chunks.lock().unwrap()), ["start test-agent", "step-start 1", "metadata r1", "abort canceled"]);
}

#[tokio::test]
async fn max_steps_stops_a_model_that_keeps_calling_tools() {
    let call = |id: &str| {
        vec![
            call_start(0, id, "calculator"),
            call_delta(0, r#"{"expression":"1+1"}"#),
            finish(model::FinishReason::ToolCalls),
            usage(1, 1),
        ]
    };
    let model = Scripted::new(vec![call("c1"), call("c2"), call("c3")]);
    let (outcome, chunks) = run(&agent(model.clone()).max_steps(2), "Go").await;
    let lines = lines(&chunks);
    let summary: Vec<&String> = lines.iter().filter(|l| l.starts_with("step-") || l.starts_with("finish")).collect();
    assert_eq!(
        summary,
        [
            "step-start 1",
            "step-finish 1 ToolCalls \"\" continued",
            "step-start 2",
            "step-finish 2 ToolCalls \"\"",
            "finish ToolCalls \"\" steps=2",
        ]
    );
    // The last call's tools still ran.
    assert!(lines.contains(&"tool-result c2 {\"expression\":\"1+1\",\"result\":2}".to_owned()));
    assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::ToolCalls));
    assert_eq!(outcome.usage.total_tokens, 4);
    assert_eq!(model.requests().len(), 2);
}

#[tokio::test]
async fn offline_assistant_calls_get_weather_then_answers() {
    let agent = assistant_with(Arc::new(crate::model::OfflineModel::new()));
    let (outcome, chunks) = run(&agent, "What's the weather in Paris?").await;
    let lines = lines(&chunks);
    let weather = tools::get_weather("Paris").unwrap();
    assert!(lines.contains(&"tool-call call_offline_1 get-weather {\"city\":\"Paris\"}".to_owned()), "{lines:#?}");
    assert!(lines.contains(&format!("tool-result call_offline_1 {weather}")), "{lines:#?}");
    assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    assert_eq!(outcome.steps, 2);
    assert!(outcome.text.starts_with("Here is what I found: get-weather returned"), "{}", outcome.text);
    assert!(matches!(chunks.last(), Some(AgentChunk::AgentFinish { text, .. }) if *text == outcome.text));
    let _: Value = weather;
}

mod as_a_step {
    use super::*;
    use crate::engine::{
        EventKind, EventSource, RunStatus, StepStatus, Workflow, execute_phase,
        executor::test_support::{phase, run},
        snapshot::RunSnapshot,
    };

    fn workflow(model: Arc<dyn ModelProvider>) -> Arc<Workflow> {
        let agent = Arc::new(Agent::new("a", "", model));
        Workflow::builder("w").then(agent_step("ask", agent, |input| format!("say {}", input["word"]))).commit()
    }

    fn agent_lines(events: &[crate::engine::Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Agent { step_id, chunk } => {
                    assert_eq!(step_id.as_deref(), Some("ask"));
                    assert_eq!(e.source, EventSource::Agent);
                    Some(describe(chunk))
                }
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn the_output_is_text_and_usage() {
        let model = Scripted::new(vec![vec![text("hi"), finish(model::FinishReason::Stop), usage(2, 1)]]);
        let (out, events) = run(&workflow(model.clone()), json!({"word": "hi"})).await;
        assert_eq!(out.status, RunStatus::Success);
        assert_eq!(
            out.result.unwrap(),
            json!({
                "text": "hi",
                "usage": Usage { input_tokens: 2, output_tokens: 1, total_tokens: 3, ..Usage::default() },
                "steps": 1,
                "finishReason": "stop",
            })
        );
        assert_eq!(agent_lines(&events).len(), 7);
        assert_eq!(model.requests()[0].messages, [Message::user("say \"hi\"")]);
    }

    #[tokio::test]
    async fn a_failed_agent_fails_the_step_with_its_message() {
        let model = Scripted::with(vec![Script { items: vec![Err(ModelError::Config("no key".into()))], hang: false }]);
        let (out, events) = run(&workflow(model), json!({})).await;
        assert_eq!(out.status, RunStatus::Failed);
        assert_eq!(
            agent_lines(&events).last().map(String::as_str),
            Some("error ModelError: model configuration: no key")
        );
        let error = events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::StepResult { status: StepStatus::Failed, error, .. } => error.clone(),
                _ => None,
            })
            .unwrap();
        assert_eq!(error.message, "model configuration: no key");
    }

    #[tokio::test]
    async fn a_canceled_run_aborts_the_agent_before_the_step_ends() {
        let model = Scripted::with(vec![Script { items: vec![Ok(text("partial"))], hang: true }]);
        let (phase, sink, cancel) = phase(&workflow(model), json!({}), 1, RunSnapshot::default(), None);
        let task = tokio::spawn(execute_phase(phase));
        sink.wait_for(|events| {
            events.iter().any(|e| matches!(&e.kind, EventKind::Agent { chunk: AgentChunk::TextDelta { .. }, .. }))
        })
        .await;
        cancel.cancel();
        let out = task.await.unwrap();
        assert_eq!(out.status, RunStatus::Canceled);
        let events = sink.events();
        assert_eq!(agent_lines(&events).last().map(String::as_str), Some("abort canceled"));
        let abort = events
            .iter()
            .position(|e| matches!(&e.kind, EventKind::Agent { chunk: AgentChunk::AgentAbort { .. }, .. }));
        let result =
            events.iter().position(|e| matches!(&e.kind, EventKind::StepResult { status: StepStatus::Canceled, .. }));
        assert!(abort.is_some() && abort < result, "{abort:?} {result:?}");
    }
}

mod approvals_guardrails_and_structured_output {
    use super::*;
    use crate::engine::schema::Schema;

    /// A tool that needs approval and reports what it booked.
    fn booking_tool() -> Tool {
        Tool::new(
            "book",
            "Books something.",
            json!({"type": "object", "required": ["what"], "properties": {"what": {"type": "string"}}}),
            |_ctx, args| async move { Ok(json!({ "booked": args["what"] })) },
        )
        .with_approval()
    }

    fn booking_agent(model: Arc<dyn ModelProvider>) -> Agent {
        Agent::new("booker", "", model).tool(booking_tool())
    }

    fn booking_calls() -> Vec<Vec<ModelChunk>> {
        vec![
            vec![
                call_start(0, "c1", "book"),
                call_delta(0, r#"{"what":"tour"}"#),
                finish(model::FinishReason::ToolCalls),
                usage(5, 2),
            ],
            vec![text("done"), finish(model::FinishReason::Stop), usage(8, 1)],
        ]
    }

    async fn run_with(agent: &Agent, input: AgentInput, options: &AgentOptions) -> (AgentOutcome, Vec<String>) {
        let chunks = Mutex::new(Vec::new());
        let outcome =
            run_agent_with(agent, input, options, |c| chunks.lock().unwrap().push(c), CancellationToken::new()).await;
        let lines = lines(&chunks.into_inner().unwrap());
        (outcome, lines)
    }

    /// Runs the booking agent to its approval and returns the saved state.
    async fn until_approval(model: Arc<Scripted>) -> (Agent, Value) {
        let agent = booking_agent(model);
        let (outcome, lines) =
            run_with(&agent, AgentInput::Messages(vec![Message::user("book a tour")]), &AgentOptions::default()).await;
        assert_eq!(
            lines,
            [
                "start booker",
                "step-start 1",
                "input-start c1 book",
                r#"input-delta c1 {"what":"tour"}"#,
                "input-end c1",
                r#"tool-call c1 book {"what":"tour"}"#,
                r#"approval c1 book {"what":"tour"}"#,
            ],
            "the call waits: no result and no step-finish before the decision"
        );
        assert_eq!(outcome.usage.total_tokens, 7);
        match outcome.end {
            AgentEnd::AwaitingApproval { approval, state } => {
                assert_eq!(approval.resume_schema, Some(approval_schema()));
                (agent, state)
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_approved_call_runs_and_the_loop_goes_on() {
        let model = Scripted::new(booking_calls());
        let (agent, state) = until_approval(model.clone()).await;
        let data = json!({ "approved": true });
        let (outcome, lines) = run_with(&agent, AgentInput::Resume { state, data }, &AgentOptions::default()).await;
        assert_eq!(
            lines,
            [
                r#"tool-result c1 {"booked":"tour"}"#,
                r#"step-finish 1 ToolCalls "" continued"#,
                "step-start 2",
                "text-start text-1",
                "text-delta text-1 done",
                "text-end text-1",
                r#"step-finish 2 Stop "done""#,
                r#"finish Stop "done" steps=2"#,
            ]
        );
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
        assert_eq!(outcome.usage.total_tokens, 16, "usage of the call before the suspension is kept");
        let second = &model.requests()[1].messages;
        assert_eq!(second.last(), Some(&Message::tool_result("c1", "book", r#"{"booked":"tour"}"#)));
    }

    /// A state a build before issue 10 saved (its usage in snake_case) resumes with the usage it had.
    #[tokio::test]
    async fn a_state_saved_with_snake_case_usage_resumes_with_its_usage() {
        let model = Scripted::new(booking_calls());
        let (agent, state) = until_approval(model.clone()).await;
        let old = crate::engine::with_old_usage_keys(state);
        assert_eq!(old["total"]["total_tokens"], 7, "{old}");
        let data = json!({ "approved": true });
        let (outcome, lines) =
            run_with(&agent, AgentInput::Resume { state: old, data }, &AgentOptions::default()).await;
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
        assert_eq!(outcome.usage.total_tokens, 16, "usage of the call before the suspension is kept");
        assert_eq!(lines[1], r#"step-finish 1 ToolCalls "" continued"#);
    }

    #[tokio::test]
    async fn a_declined_call_is_denied_and_the_model_is_told_why() {
        let model = Scripted::new(booking_calls());
        let (agent, state) = until_approval(model.clone()).await;
        let data = json!({ "approved": false, "reason": "too pricey" });
        let (outcome, lines) = run_with(&agent, AgentInput::Resume { state, data }, &AgentOptions::default()).await;
        assert_eq!(lines[..2], ["denied c1 too pricey", r#"step-finish 1 ToolCalls "" continued"#]);
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
        let told = &model.requests()[1].messages;
        assert_eq!(
            told.last(),
            Some(&Message::tool_result(
                "c1",
                "book",
                r#"{"error":"the user declined this call to 'book': too pricey"}"#
            ))
        );
    }

    #[tokio::test]
    async fn an_unreadable_saved_state_is_an_agent_error() {
        let agent = booking_agent(Scripted::new(vec![]));
        let input = AgentInput::Resume { state: json!({"nope": 1}), data: json!({ "approved": true }) };
        let (outcome, lines) = run_with(&agent, input, &AgentOptions::default()).await;
        assert!(matches!(outcome.end, AgentEnd::Failed(ref e) if e.name == "ResumeError"), "{outcome:?}");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("error ResumeError: the agent's saved state is unreadable"), "{lines:?}");
    }

    /// A tool that asks for a number it lacks: suspends with a question, then answers with the number.
    fn asking_tool() -> Tool {
        Tool::new("ask", "Asks for a number.", json!({"type": "object"}), |ctx, _args| async move {
            ctx.write(json!({ "stage": "checking" }));
            match ctx.resume_data() {
                None => Err(ctx.suspend(json!({ "question": "which number?" }))),
                Some(data) => Ok(json!({ "got": data["n"] })),
            }
        })
        .with_resume_schema(json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    }

    fn asking_calls() -> Vec<Vec<ModelChunk>> {
        vec![
            vec![call_start(0, "c1", "ask"), call_delta(0, "{}"), finish(model::FinishReason::ToolCalls), usage(5, 2)],
            vec![text("got it"), finish(model::FinishReason::Stop), usage(8, 1)],
        ]
    }

    #[tokio::test]
    async fn a_tool_that_suspends_itself_is_called_again_with_the_resume_data() {
        let model = Scripted::new(asking_calls());
        let agent = Agent::new("asker", "", model.clone()).tool(asking_tool());
        assert!(agent.can_suspend() && !agent.needs_approvals());
        let (outcome, lines) =
            run_with(&agent, AgentInput::Messages(vec![Message::user("ask me")]), &AgentOptions::default()).await;
        assert_eq!(
            lines[5..],
            [
                "tool-call c1 ask {}",
                r#"tool-output c1 {"stage":"checking"}"#,
                r#"suspended c1 ask {} {"question":"which number?"}"#,
            ],
            "no result and no step-finish before the resume"
        );
        let AgentEnd::Suspended { suspended, state } = outcome.end else { panic!("{outcome:?}") };
        assert_eq!(suspended.resume_schema.as_ref(), agent.tools[0].resume_schema());
        assert_eq!(outcome.usage.total_tokens, 7);

        // Data that misses the tool's resume schema: the loop does not resume.
        let bad = AgentInput::Resume { state: state.clone(), data: json!({ "n": "five" }) };
        let (failed, lines) = run_with(&agent, bad, &AgentOptions::default()).await;
        assert!(matches!(failed.end, AgentEnd::Failed(ref e) if e.name == "ResumeError"), "{failed:?}");
        assert!(lines[0].contains("resume_data.n: expected integer, got string"), "{lines:?}");

        let data = json!({ "n": 5 });
        let (outcome, lines) = run_with(&agent, AgentInput::Resume { state, data }, &AgentOptions::default()).await;
        assert_eq!(
            lines[..3],
            [
                r#"tool-output c1 {"stage":"checking"}"#,
                r#"tool-result c1 {"got":5}"#,
                r#"step-finish 1 ToolCalls "" continued"#,
            ]
        );
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
        assert_eq!(outcome.usage.total_tokens, 16, "usage before the suspension is kept");
        let second = &model.requests()[1].messages;
        assert_eq!(second.last(), Some(&Message::tool_result("c1", "ask", r#"{"got":5}"#)));
    }

    #[tokio::test]
    async fn a_tool_without_a_resume_schema_cannot_suspend() {
        let tool = Tool::new("ask", "", json!({"type": "object"}), |ctx, _args| async move {
            Err(ctx.suspend(json!({ "question": "?" })))
        });
        let agent = Agent::new("asker", "", Scripted::new(asking_calls())).tool(tool);
        assert!(!agent.can_suspend());
        let (outcome, lines) =
            run_with(&agent, AgentInput::Messages(vec![Message::user("ask me")]), &AgentOptions::default()).await;
        assert!(
            lines.contains(
                &"tool-error c1 ToolError: tool 'ask' suspended itself, but it was not built with a \
                                 resume schema (Tool::with_resume_schema), so it cannot be resumed"
                    .to_owned()
            ),
            "{lines:?}"
        );
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    }

    #[tokio::test]
    async fn a_guardrail_stops_the_answer_before_the_secret_is_streamed() {
        let model = Scripted::new(vec![vec![
            text("the key is "),
            text("sk-abcdefghijklmnopqrstuvwxyz"),
            text(" enjoy"),
            finish(model::FinishReason::Stop),
        ]]);
        let agent = Agent::new("guarded", "", model).output_guardrail(tools::secret_guard());
        let (outcome, lines) =
            run_with(&agent, AgentInput::Messages(vec![Message::user("hi")]), &AgentOptions::default()).await;
        assert_eq!(
            lines,
            [
                "start guarded",
                "step-start 1",
                "text-start text-1",
                "text-delta text-1 the key is ",
                "text-end text-1",
                "tripwire secret-guard: the answer would reveal an API key (sk-...); it was stopped before that text \
                 was sent",
                r#"step-finish 1 Tripwire """#,
                r#"finish Tripwire "" steps=1"#,
            ]
        );
        assert!(matches!(outcome.end, AgentEnd::Tripwire { ref processor_id, .. } if processor_id == "secret-guard"));
        assert!(!lines.iter().any(|l| l.contains("sk-abc")), "the secret never reaches the stream");
    }

    fn weather_schema() -> Schema {
        Schema::compile(json!({
            "type": "object",
            "required": ["city", "temp"],
            "properties": { "city": { "type": "string" }, "temp": { "type": "number" } }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn structured_output_streams_partial_objects_then_the_checked_result() {
        let model = Scripted::new(vec![vec![
            text(r#"{"city": "Par"#),
            text(r#"is", "temp": 1"#),
            text("8}"),
            finish(model::FinishReason::Stop),
        ]]);
        let agent = Agent::new("structured", "", model.clone());
        let options = AgentOptions { output_schema: Some(weather_schema()), ..AgentOptions::default() };
        let (outcome, lines) = run_with(&agent, AgentInput::Messages(vec![Message::user("weather?")]), &options).await;
        assert_eq!(
            lines,
            [
                "start structured",
                "step-start 1",
                r#"object {"city":"Par"}"#,
                r#"object {"city":"Paris","temp":1}"#,
                r#"object {"city":"Paris","temp":18}"#,
                r#"step-finish 1 Stop "{\"city\": \"Paris\", \"temp\": 18}""#,
                r#"object-result {"city":"Paris","temp":18}"#,
                r#"finish Stop "{\"city\": \"Paris\", \"temp\": 18}" steps=1"#,
            ]
        );
        assert_eq!(outcome.object, Some(json!({"city": "Paris", "temp": 18})));
        let asked = model.requests()[0].response_schema.clone().map(|r| r.schema);
        assert_eq!(asked.as_ref(), Some(weather_schema().raw()));
    }

    #[tokio::test]
    async fn structured_output_that_misses_the_schema_is_an_error_naming_the_field() {
        let model = Scripted::new(vec![vec![text(r#"{"city": 3, "temp": 1}"#), finish(model::FinishReason::Stop)]]);
        let agent = Agent::new("structured", "", model);
        let options = AgentOptions { output_schema: Some(weather_schema()), ..AgentOptions::default() };
        let (outcome, lines) = run_with(&agent, AgentInput::Messages(vec![Message::user("x")]), &options).await;
        let last = lines.last().unwrap();
        assert!(last.starts_with("error StructuredOutputError:") && last.contains("object.city"), "{last}");
        assert!(matches!(outcome.end, AgentEnd::Failed(_)));
    }

    #[tokio::test]
    async fn the_offline_concierge_asks_before_booking_and_books_when_approved() {
        let agent = concierge_with(Arc::new(crate::model::OfflineModel::new()));
        let (outcome, lines) = run_with(
            &agent,
            AgentInput::Messages(vec![Message::user("Please book a kayak tour in Lisbon")]),
            &AgentOptions::default(),
        )
        .await;
        let AgentEnd::AwaitingApproval { approval, state } = outcome.end else { panic!("{lines:?}") };
        assert_eq!(&*approval.tool_name, "book-activity");
        assert_eq!(approval.args["city"], "Lisbon");
        let data = json!({ "approved": true });
        let (outcome, lines) = run_with(&agent, AgentInput::Resume { state, data }, &AgentOptions::default()).await;
        assert_eq!(
            lines[..2],
            [
                r#"tool-output call_offline_1 {"city":"Lisbon","stage":"checking availability"}"#,
                r#"tool-output call_offline_1 {"stage":"reserving"}"#,
            ]
        );
        assert!(lines[2].starts_with("tool-result call_offline_1 "), "{lines:?}");
        assert!(outcome.text.contains("book-activity returned"), "{}", outcome.text);
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    }

    #[tokio::test]
    async fn the_offline_concierge_asks_the_guest_what_a_reservation_lacks() {
        let agent = concierge_with(Arc::new(crate::model::OfflineModel::new()));
        let (outcome, lines) = run_with(
            &agent,
            AgentInput::Messages(vec![Message::user("Reserve a table for dinner in Porto")]),
            &AgentOptions::default(),
        )
        .await;
        assert_eq!(
            lines.last().map(String::as_str),
            Some(
                r#"suspended call_offline_1 reserve-table {"city":"Porto"} {"city":"Porto","missing":["guests","time"],"question":"For how many guests, and at what time, shall I reserve the table in Porto?"}"#
            )
        );
        let AgentEnd::Suspended { state, .. } = outcome.end else { panic!("{lines:?}") };
        let data = json!({ "guests": 4, "time": "19:30" });
        let (outcome, lines) = run_with(&agent, AgentInput::Resume { state, data }, &AgentOptions::default()).await;
        assert_eq!(
            lines[0],
            r#"tool-result call_offline_1 {"city":"Porto","guests":4,"reservationId":"rt-call_offline_1","status":"confirmed","time":"19:30"}"#
        );
        assert!(outcome.text.contains("reserve-table returned"), "{}", outcome.text);
        assert_eq!(outcome.end, AgentEnd::Finished(FinishReason::Stop));
    }
}

/// An agent run's input takes `outputSchema` and `reasoningEffort` and, until the next release, their spellings
/// before issue 10 (`output_schema`, `reasoning_effort`): listed as deprecated in the input schema, warned about
/// once when the run's input is checked (once per run). Both spellings of one key at once are refused, naming it.
#[test]
fn the_renamed_input_keys_are_taken_in_either_spelling() {
    let wf = workflow(Arc::new(Agent::new("a", "", Arc::new(crate::model::OfflineModel::new()))));
    let schema = json!({ "type": "object", "required": ["n"], "properties": { "n": { "type": "integer" } } });
    let warning = |old: &str, new: &str| {
        format!(
            "agent 'a': input key `{old}` is deprecated, use `{new}` (the old spelling is accepted until the next \
             release)"
        )
    };
    let (old_schema, old_effort) =
        (warning("output_schema", "outputSchema"), warning("reasoning_effort", "reasoningEffort"));
    for (input, expected) in [
        (json!({ "prompt": "hi", "outputSchema": schema, "reasoningEffort": "high" }), vec![]),
        (
            json!({ "prompt": "hi", "output_schema": schema, "reasoning_effort": "high" }),
            vec![&old_schema, &old_effort],
        ),
        (json!({ "prompt": "hi", "outputSchema": schema, "reasoning_effort": "high" }), vec![&old_effort]),
    ] {
        let (checked, warnings) = crate::engine::renamed::capture_warnings(|| wf.validate_input(&input));
        assert_eq!(checked, Ok(()), "{input}");
        assert_eq!(warnings.iter().collect::<Vec<_>>(), expected, "{input}");
        let (messages, options) = agent_run_input(&input).unwrap();
        assert_eq!(messages, [Message::user("hi")]);
        assert_eq!(options.output_schema.map(|s| s.raw().clone()), Some(schema.clone()), "{input}");
        assert_eq!(options.reasoning_effort, Some(ReasoningEffort::High), "{input}");
    }

    let both = wf.validate_input(&json!({ "prompt": "hi", "outputSchema": {}, "output_schema": {} })).unwrap_err();
    assert_eq!(both.path, "input.outputSchema");
    assert!(both.message.contains("also as `output_schema`"), "{both}");
    let both = wf.validate_input(&json!({ "prompt": "hi", "reasoningEffort": "low", "reasoning_effort": "low" }));
    assert_eq!(both.unwrap_err().path, "input.reasoningEffort");
    // A bad value is named as it was given.
    let bad = |input: Value| wf.validate_input(&input).unwrap_err().path;
    assert_eq!(bad(json!({ "prompt": "hi", "reasoningEffort": "extreme" })), "input.reasoningEffort");
    assert_eq!(bad(json!({ "prompt": "hi", "reasoning_effort": "extreme" })), "input.reasoning_effort");
    assert_eq!(bad(json!({ "prompt": "hi", "outputSchema": { "type": "nonsense" } })), "input.outputSchema");
    assert_eq!(bad(json!({ "prompt": "hi", "output_schema": { "type": "nonsense" } })), "input.output_schema");

    let properties = &wf.input_schema().unwrap()["properties"];
    for (key, old) in [("outputSchema", "output_schema"), ("reasoningEffort", "reasoning_effort")] {
        assert!(properties[key].get("deprecated").is_none(), "{properties}");
        assert_eq!(properties[old]["deprecated"], true, "{properties}");
        assert_eq!(properties[old].get("enum"), properties[key].get("enum"), "the same values");
    }
}
