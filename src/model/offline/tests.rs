//! Offline model tests: each script, the streamed chunks, usage, and the helpers that read the message.

use futures_util::StreamExt;
use serde_json::json;

use super::{
    facts::place,
    fill::{FILL_BUDGET, mention_position},
    *,
};
use crate::model::{ReasoningEffort, ResponseSchema, ToolCall};

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get-weather".into(),
        description: "Current weather for a city".into(),
        parameters: json!({
            "type": "object",
            "properties": { "location": { "type": "string" }, "units": { "type": "string", "enum": ["celsius", "fahrenheit"] } },
            "required": ["location"],
        }),
    }
}

fn calculator_tool() -> ToolSpec {
    ToolSpec {
        name: "calculator".into(),
        description: "Evaluates arithmetic".into(),
        parameters: json!({
            "type": "object",
            "properties": { "expression": { "type": "string" } },
            "required": ["expression"],
        }),
    }
}

fn text(chunks: &[ModelChunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn tool_call(chunks: &[ModelChunk]) -> Option<(String, String, Value)> {
    let (id, name) = chunks.iter().find_map(|c| match c {
        ModelChunk::ToolCallStart { id, name, .. } => Some((id.clone(), name.clone())),
        _ => None,
    })?;
    let arguments: String = chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    Some((id, name, serde_json::from_str(&arguments).ok()?))
}

fn finish(chunks: &[ModelChunk]) -> FinishReason {
    chunks
        .iter()
        .find_map(|c| match c {
            ModelChunk::Finish { reason, .. } => Some(*reason),
            _ => None,
        })
        .unwrap_or(FinishReason::Other)
}

fn usage(chunks: &[ModelChunk]) -> Usage {
    match chunks.last() {
        Some(ModelChunk::Usage { usage }) => *usage,
        other => panic!("last chunk is not usage: {other:?}"),
    }
}

#[test]
fn plain_prompts_get_a_deterministic_text_answer_in_word_deltas() {
    let model = OfflineModel::new();
    let request = ModelRequest::new(vec![Message::system("Be brief."), Message::user("Tell me a story")]);
    let chunks = model.respond(&request);
    assert_eq!(chunks, model.respond(&request), "same request, same chunks");
    assert!(matches!(&chunks[0], ModelChunk::ResponseMetadata { model: Some(m), .. } if m == "offline"));
    let answer = text(&chunks);
    assert!(answer.starts_with("You said: \"Tell me a story\"."), "{answer}");
    assert!(answer.contains("offline model"), "{answer}");
    let deltas = chunks.iter().filter(|c| matches!(c, ModelChunk::TextDelta { .. })).count();
    assert_eq!(deltas, answer.split(' ').count());
    assert_eq!(finish(&chunks), FinishReason::Stop);
    let usage = usage(&chunks);
    assert_eq!(usage.input_tokens, 6);
    assert_eq!(usage.output_tokens, count_words(&answer));
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
    // A different prompt gives a different response id.
    let other = model.respond(&ModelRequest::new(vec![Message::user("Tell me a joke")]));
    assert_ne!(chunks[0], other[0]);
}

#[test]
fn weather_questions_call_the_weather_tool_with_the_place() {
    let request = ModelRequest::new(vec![Message::user("What's the weather like in New York today?")])
        .with_tools(vec![calculator_tool(), weather_tool()]);
    let chunks = OfflineModel::new().respond(&request);
    let (id, name, arguments) = tool_call(&chunks).unwrap();
    assert_eq!((id.as_str(), name.as_str()), ("call_offline_1", "get-weather"));
    assert_eq!(arguments, json!({ "location": "New York" }));
    let deltas = chunks.iter().filter(|c| matches!(c, ModelChunk::ToolCallDelta { .. })).count();
    assert!(deltas >= 3, "arguments stream in several deltas, got {deltas}");
    assert_eq!(finish(&chunks), FinishReason::ToolCalls);
    assert!(text(&chunks).is_empty());
    assert!(usage(&chunks).output_tokens > 0);
}

#[test]
fn arithmetic_calls_the_calculator() {
    let tools = vec![weather_tool(), calculator_tool()];
    for (prompt, expected) in [
        ("What is 12 * 7?", "12 * 7"),
        ("compute 3 plus 4 times 2 please", "3 + 4 * 2"),
        ("how much is 2.5 divided by 5", "2.5 / 5"),
    ] {
        let request = ModelRequest::new(vec![Message::user(prompt)]).with_tools(tools.clone());
        let (_, name, arguments) = tool_call(&OfflineModel::new().respond(&request)).unwrap();
        assert_eq!(name, "calculator", "{prompt}");
        assert_eq!(arguments, json!({ "expression": expected }), "{prompt}");
    }
    // Schema with numbers and an operation enum.
    let tool = ToolSpec {
        name: "doMath".into(),
        description: String::new(),
        parameters: json!({ "type": "object", "properties": {
            "a": { "type": "number" }, "b": { "type": "number" },
            "op": { "type": "string", "enum": ["add", "subtract", "multiply", "divide"] },
        }}),
    };
    let request = ModelRequest::new(vec![Message::user("12 x 7")]).with_tools(vec![tool]);
    let (_, _, arguments) = tool_call(&OfflineModel::new().respond(&request)).unwrap();
    assert_eq!(arguments, json!({ "a": 12, "b": 7, "op": "multiply" }));
}

#[test]
fn no_matching_tool_means_a_text_answer() {
    let request = ModelRequest::new(vec![Message::user("Say hello")]).with_tools(vec![weather_tool()]);
    let chunks = OfflineModel::new().respond(&request);
    assert!(tool_call(&chunks).is_none());
    assert_eq!(finish(&chunks), FinishReason::Stop);
    let mut none = request.clone();
    none.messages = vec![Message::user("weather in Paris")];
    none.tool_choice = ToolChoice::None;
    assert!(tool_call(&OfflineModel::new().respond(&none)).is_none());
}

#[test]
fn after_tool_results_it_reports_them() {
    let request = ModelRequest::new(vec![
        Message::user("What's the weather in Paris?"),
        Message::Assistant {
            content: None,
            tool_calls: vec![ToolCall {
                id: "call_offline_1".into(),
                name: "get-weather".into(),
                arguments: r#"{"location":"Paris"}"#.into(),
            }],
        },
        Message::tool_result("call_offline_1", "get-weather", r#"{"temperature":18,"conditions":"sunny"}"#),
    ])
    .with_tools(vec![weather_tool()]);
    let chunks = OfflineModel::new().respond(&request);
    assert_eq!(text(&chunks), "Here is what I found: get-weather returned conditions sunny, temperature 18.");
    assert_eq!(finish(&chunks), FinishReason::Stop);
    // A follow-up question in the same conversation gets the next call id.
    let mut follow_up = request.clone();
    follow_up.messages.push(Message::assistant("It is sunny."));
    follow_up.messages.push(Message::user("And the weather in Rome?"));
    let (id, _, arguments) = tool_call(&OfflineModel::new().respond(&follow_up)).unwrap();
    assert_eq!(id, "call_offline_2");
    assert_eq!(arguments, json!({ "location": "Rome" }));
}

#[test]
fn response_schemas_get_conforming_json() {
    let mut request = ModelRequest::new(vec![Message::user("Rate a stay in Lyon, 4 stars")]);
    request.response_schema = Some(ResponseSchema {
        name: "rating".into(),
        strict: true,
        schema: json!({
            "type": "object",
            "properties": {
                "city": { "type": "string" },
                "stars": { "type": "integer" },
                "recommended": { "type": "boolean" },
                "tags": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                "detail": { "type": "object", "properties": { "note": { "type": ["string", "null"] } } },
                "kind": { "enum": ["town", "city"] },
                "optional": { "type": "string" },
            },
            "required": ["city", "stars", "recommended", "tags", "detail", "kind"],
        }),
    });
    let chunks = OfflineModel::new().respond(&request);
    let answer: Value = serde_json::from_str(&text(&chunks)).unwrap();
    assert_eq!(
        answer,
        json!({
            "city": "Lyon",
            "stars": 4,
            "recommended": true,
            "tags": ["Rate a stay in Lyon, 4 stars"],
            "detail": { "note": "Rate a stay in Lyon, 4 stars" },
            "kind": "town",
        })
    );
}

#[test]
fn a_schema_asking_for_absurdly_many_items_gets_a_bounded_answer() {
    let mut request = ModelRequest::new(vec![Message::user("Make a list")]);
    let huge = json!({ "type": "array", "minItems": 1_000_000_000_000u64, "items": { "type": "integer" } });
    request.response_schema = Some(ResponseSchema {
        name: "list".into(),
        strict: true,
        schema: json!({ "type": "object", "required": ["a", "b"], "properties": { "a": huge, "b": huge } }),
    });
    let chunks = OfflineModel::new().respond(&request);
    let answer: Value = serde_json::from_str(&text(&chunks)).unwrap();
    let items = |key: &str| answer[key].as_array().map_or(0, Vec::len);
    assert!(items("a") + items("b") < FILL_BUDGET, "{} + {}", items("a"), items("b"));
}

/// A router's decision: which of `options` to run next.
fn choose(options: &[&str], messages: Vec<Message>) -> Value {
    let mut request = ModelRequest::new(messages);
    request.response_schema = Some(ResponseSchema {
        name: "route".into(),
        strict: true,
        schema: json!({
            "type": "object",
            "required": ["next"],
            "properties": { "next": { "type": "string", "enum": options } },
        }),
    });
    let answer: Value = serde_json::from_str(&text(&OfflineModel::new().respond(&request))).unwrap();
    answer["next"].clone()
}

#[test]
fn enums_pick_each_mentioned_option_once_in_the_order_mentioned_then_the_first() {
    let options = ["none", "writer", "content-pipeline", "calculator"];
    let task = "Use the Calculator, then content-pipeline, then the writer.";
    let mut conversation = vec![Message::system("Route."), Message::user(task)];
    let mut picks = Vec::new();
    for _ in 0..5 {
        let pick = choose(&options, conversation.clone());
        picks.push(pick.as_str().unwrap().to_owned());
        // The decision goes back into the conversation, followed by a note that is not a JSON object.
        conversation.push(Message::assistant(json!({ "next": pick }).to_string()));
        conversation.push(Message::assistant(format!("{pick} returned 42")));
    }
    assert_eq!(picks, ["calculator", "content-pipeline", "writer", "none", "none"]);

    // Whole words only: "content" and "writers" mention neither option; nothing mentioned gives the first.
    assert_eq!(choose(&options, vec![Message::user("some content for writers")]), json!("none"));
    // Another field's earlier answer does not count as a choice.
    let other_field = Message::assistant(json!({ "other": "writer" }).to_string());
    assert_eq!(choose(&options, vec![Message::user("ask the writer"), other_field]), json!("writer"));
    assert_eq!(mention_position("a content-pipeline run", "content"), None);
    assert_eq!(mention_position("a content-pipeline run", "content-pipeline"), Some(2));
    assert_eq!(mention_position("pipeline-content content", "content"), Some(17));
}

#[test]
fn reasoning_streams_first_and_is_counted() {
    let mut request = ModelRequest::new(vec![Message::user("What is 6 * 7?")]).with_tools(vec![calculator_tool()]);
    request.reasoning_effort = Some(ReasoningEffort::Low);
    let chunks = OfflineModel::new().respond(&request);
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ReasoningDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasoning,
        "The request holds the arithmetic 6 * 7, so I will call the calculator tool and wait for its result."
    );
    let first_call = chunks.iter().position(|c| matches!(c, ModelChunk::ToolCallStart { .. })).unwrap();
    let last_reasoning = chunks.iter().rposition(|c| matches!(c, ModelChunk::ReasoningDelta { .. })).unwrap();
    assert!(last_reasoning < first_call);
    // The signature follows the reasoning it signs, and is the same for the same reasoning.
    let signature = format!("offline-sig-{:016x}", fnv1a(reasoning.as_bytes()));
    assert_eq!(chunks[last_reasoning + 1], ModelChunk::ReasoningSignature { signature });
    assert_eq!(chunks[last_reasoning + 2..first_call].len(), 0);
    let usage = usage(&chunks);
    assert_eq!(usage.reasoning_tokens, count_words(&reasoning));
    assert!(usage.output_tokens > usage.reasoning_tokens);

    // Hidden: one redacted chunk stands for the same reasoning, which still counts.
    request.reasoning_effort = Some(ReasoningEffort::Hidden);
    let hidden = OfflineModel::new().respond(&request);
    assert!(
        !hidden.iter().any(|c| matches!(c, ModelChunk::ReasoningDelta { .. } | ModelChunk::ReasoningSignature { .. }))
    );
    let data = format!("offline-redacted-{:016x}", fnv1a(reasoning.as_bytes()));
    assert_eq!(hidden[1], ModelChunk::RedactedReasoning { data });
    assert_eq!(self::usage(&hidden).reasoning_tokens, usage.reasoning_tokens);
}

fn weather_report(prompt: &str, results: &[(&str, &str, &str)]) -> Vec<ModelChunk> {
    let mut messages = vec![Message::user(prompt)];
    messages.push(Message::Assistant {
        content: None,
        tool_calls: results
            .iter()
            .map(|(id, name, _)| ToolCall { id: (*id).into(), name: (*name).into(), arguments: "{}".into() })
            .collect(),
    });
    messages.extend(results.iter().map(|(id, name, content)| Message::tool_result(*id, *name, *content)));
    OfflineModel::new().respond(&ModelRequest::new(messages).with_tools(vec![weather_tool()]))
}

#[test]
fn asked_for_sources_a_report_cites_each_successful_result_before_the_text() {
    let uncited = weather_report("Weather in Paris?", &[("c1", "get-weather", r#"{"city":"Paris"}"#)]);
    assert!(!uncited.iter().any(|c| matches!(c, ModelChunk::Source { .. })), "no sources unless asked");
    let chunks = weather_report(
        "Weather in Paris and Oslo? Cite your sources.",
        &[
            ("call_offline_1", "get-weather", r#"{"city":"Paris","temperature":18}"#),
            ("call_offline_2", "get-weather", r#"{"error":"the service is down"}"#),
        ],
    );
    let sources: Vec<&ModelChunk> = chunks.iter().filter(|c| matches!(c, ModelChunk::Source { .. })).collect();
    assert_eq!(
        sources,
        [&ModelChunk::Source {
            url: "runstream://tool/get-weather/call_offline_1".into(),
            title: Some("get-weather result".into()),
        }],
        "the failed call is reported but not cited"
    );
    let source = chunks.iter().position(|c| matches!(c, ModelChunk::Source { .. })).unwrap();
    let first_text = chunks.iter().position(|c| matches!(c, ModelChunk::TextDelta { .. })).unwrap();
    assert!(source < first_text);
    assert!(!chunks.iter().any(|c| matches!(c, ModelChunk::File { .. })), "no CSV unless asked");
    assert!(!text(&chunks).contains("CSV"));
}

#[test]
fn asked_for_csv_it_attaches_the_results_as_a_csv_file_after_the_text() {
    let chunks = weather_report(
        "Weather in Paris and Oslo, as a CSV file please",
        &[
            ("c1", "get-weather", r#"{"city":"Paris","temperature":18,"conditions":"sunny, warm"}"#),
            ("c2", "get-weather", r#"{"city":"Oslo","temperature":-2,"wind_kph":30}"#),
            ("c3", "calculator", "not JSON"),
            ("c4", "calculator", r#"{"error":"division by zero"}"#),
        ],
    );
    assert!(text(&chunks).ends_with(" The results are attached as a CSV file."), "{}", text(&chunks));
    let Some(ModelChunk::File { media_type, base64 }) = chunks.iter().find(|c| matches!(c, ModelChunk::File { .. }))
    else {
        panic!("no file: {chunks:?}")
    };
    assert_eq!(media_type, "text/csv");
    let csv = String::from_utf8(BASE64.decode(base64).unwrap()).unwrap();
    assert_eq!(
        csv,
        "tool,city,conditions,result,temperature,wind_kph\n\
         get-weather,Paris,\"sunny, warm\",,18,\n\
         get-weather,Oslo,,,-2,30\n\
         calculator,,,not JSON,,\n"
    );
    let file = chunks.iter().position(|c| matches!(c, ModelChunk::File { .. })).unwrap();
    let last_text = chunks.iter().rposition(|c| matches!(c, ModelChunk::TextDelta { .. })).unwrap();
    assert_eq!(file, last_text + 1);
    assert!(usage(&chunks).output_tokens > count_words(&text(&chunks)), "the file counts as output");
}

#[tokio::test]
async fn the_stream_yields_the_script_and_stops_when_canceled() {
    let model = OfflineModel::new();
    let request = ModelRequest::new(vec![Message::user("hello there")]);
    let streamed: Vec<ModelChunk> =
        model.stream(request.clone(), CancellationToken::new()).map(|c| c.unwrap()).collect().await;
    assert_eq!(streamed, model.respond(&request));

    let cancel = CancellationToken::new();
    let mut stream = model.stream(request, cancel.clone());
    assert!(matches!(stream.next().await, Some(Ok(ModelChunk::ResponseMetadata { .. }))));
    cancel.cancel();
    assert_eq!(stream.next().await, Some(Err(ModelError::Canceled)));
    assert_eq!(stream.next().await, None);
}

#[test]
fn words_and_names() {
    assert_eq!(name_words("getWeather"), ["get", "weather"]);
    assert_eq!(name_words("get_current-Weather"), ["get", "current", "weather"]);
    assert_eq!(word_runs("It's 2.5 degrees. Done.").collect::<Vec<_>>(), ["It", "s", "2.5", "degrees", "Done"]);
    assert_eq!(split_in("{\"a\":\"é\"}", 3).collect::<String>(), "{\"a\":\"é\"}");
    assert_eq!(place("weather for san francisco"), Some("san".into()));
    assert_eq!(place("no place here"), None);
    assert_eq!(place("weather in New York? Send it"), Some("New York".into()));
    assert_eq!(place("weather in Paris, Texas"), Some("Paris Texas".into()));
}
