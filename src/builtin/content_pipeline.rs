//! `content-pipeline`: Mastra's AI content workflow. `analyze-content` runs the content analyst agent on the content
//! (its chunks stream as the model produces them), `track-progress` reports progress through the step's writer,
//! and `publish` returns the content ready to publish, with the analysis. Also a primitive of the built-in
//! `research-network`.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    agent::{Agent, agent_step},
    engine::{Step, StepOutcome, Workflow},
    model::ModelProvider,
};

/// The workflow's id.
pub const ID: &str = "content-pipeline";

/// Id of the content analyst agent ([`analyst_with`]).
pub const ANALYST_ID: &str = "content-analyst";

/// Content types the pipeline publishes; the first is the default.
const TYPES: [&str; 3] = ["article", "blog", "social"];

/// The content analyst, on `model`: no tools, just a reading.
pub fn analyst_with(model: Arc<dyn ModelProvider>) -> Arc<Agent> {
    Arc::new(
        Agent::new(
            ANALYST_ID,
            "You are a content analyst. Read the content and say, in a few sentences, what its main point is, who it \
             is for, its tone, and one concrete improvement.",
            model,
        )
        .description("Analyzes a piece of content: main point, audience, tone and one improvement."),
    )
}

/// The workflow with a given analyst, so tests can pin the model.
pub fn workflow_with(analyst: Arc<Agent>) -> Arc<Workflow> {
    Workflow::builder(ID)
        .description(
            "Analyzes a piece of content with an agent, reports progress, and returns it ready to publish \
             (title, summary, body, analysis).",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["content"],
            "properties": {
                "content": { "type": "string", "minLength": 1, "description": "the text to publish" },
                "type": { "enum": TYPES, "default": TYPES[0], "description": "what kind of content it is" }
            },
            "additionalProperties": false
        }))
        .output_schema(json!({
            "type": "object",
            "required": ["title", "summary", "body", "type", "analysis", "status"],
            // The snake_case spellings: a `publish` output recorded by a build before issue 10 is the result of
            // a run it left in flight, once recovered. Until the next release, as the old input spellings.
            "anyOf": [
                { "required": ["wordCount", "readingTimeMinutes"] },
                { "required": ["word_count", "reading_time_minutes"] }
            ],
            "properties": {
                "title": { "type": "string" },
                "summary": { "type": "string" },
                "body": { "type": "string" },
                "type": { "enum": TYPES },
                "analysis": { "type": "string" },
                "wordCount": { "type": "integer" },
                "readingTimeMinutes": { "type": "integer" },
                "word_count": { "type": "integer", "deprecated": true, "description": "older runs: wordCount" },
                "reading_time_minutes": {
                    "type": "integer",
                    "deprecated": true,
                    "description": "older runs: readingTimeMinutes"
                },
                "status": { "const": "ready" }
            }
        }))
        .then(
            agent_step("analyze-content", analyst, analysis_prompt)
                .description("Asks the content analyst about the content."),
        )
        .then(track_progress())
        .then(publish())
        .commit()
}

/// The content's type from the run input (the schema admits only [`TYPES`]; absent means the first).
fn content_type(run_input: &Value) -> &str {
    run_input.get("type").and_then(Value::as_str).unwrap_or(TYPES[0])
}

fn analysis_prompt(input: &Value) -> String {
    format!(
        "Analyze this {} for publication:\n\n{}",
        content_type(input),
        input.get("content").and_then(Value::as_str).unwrap_or_default()
    )
}

/// Reports the analysis done (`writer.write`) and publishing started (a `data-progress` custom event), and hands
/// the analysis on.
fn track_progress() -> Step {
    Step::new("track-progress", |ctx| async move {
        let analysis = ctx.input().get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
        ctx.writer()
            .write(json!({
                "stage": "analyze-content",
                "status": "done",
                "progressPercent": 50,
                "analysisWords": analysis.split_whitespace().count(),
            }))
            .await?;
        ctx.writer()
            .custom("progress", json!({ "stage": "publish", "status": "starting", "progressPercent": 75 }))
            .await?;
        Ok(StepOutcome::Done(json!({ "analysis": analysis })))
    })
    .description("Reports progress: the analysis is done, publishing starts.")
}

/// The publish-ready piece: the content with a title and summary derived from it, and the analysis.
fn publish() -> Step {
    Step::new("publish", |ctx| async move {
        let body = ctx.run_input().get("content").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
        let analysis = ctx.input().get("analysis").and_then(Value::as_str).unwrap_or_default().to_owned();
        let word_count = body.split_whitespace().count();
        let summary = first_sentence(&body, 30);
        Ok(StepOutcome::Done(json!({
            "title": title(&summary),
            "summary": summary,
            "body": body,
            "type": content_type(ctx.run_input()),
            "analysis": analysis,
            "wordCount": word_count,
            // At 200 words a minute, at least one minute.
            "readingTimeMinutes": word_count.div_ceil(200).max(1),
            "status": "ready",
        })))
    })
    .description("Assembles the publish-ready result.")
}

/// The text up to its first sentence end, at most `max_words` words (with "..." when cut).
fn first_sentence(text: &str, max_words: usize) -> String {
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        words.push(word);
        if word.ends_with(['.', '!', '?']) || words.len() == max_words {
            break;
        }
    }
    let mut sentence = words.join(" ");
    if words.len() == max_words && !sentence.ends_with(['.', '!', '?']) {
        sentence.push_str("...");
    }
    sentence
}

/// The first eight words of `summary`, without trailing punctuation, capitalized.
fn title(summary: &str) -> String {
    let words: Vec<&str> = summary.split_whitespace().take(8).collect();
    let title = words.join(" ");
    let title = title.trim_end_matches(|c: char| !c.is_alphanumeric());
    let mut chars = title.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Untitled".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{AgentChunk, EventKind, EventSource, RunStatus, executor::test_support::run},
        model::OfflineModel,
    };

    #[tokio::test]
    async fn streams_the_analysis_reports_progress_and_publishes() {
        let wf = workflow_with(analyst_with(Arc::new(OfflineModel::new())));
        let content = "Event streams make runs observable. Every step reports as it happens.";
        let (out, events) = run(&wf, json!({ "content": content })).await;
        assert_eq!(out.status, RunStatus::Success, "{:?}", out.error);

        // Steps in order; the agent's chunks inside analyze-content, collapsed to their kinds.
        let mut order: Vec<String> = Vec::new();
        let mut analysis = String::new();
        for event in &events {
            let line = match &event.kind {
                EventKind::WorkflowStart { workflow_id, .. } => format!("start {workflow_id}"),
                EventKind::StepStart { step_id, .. } => format!("step-start {step_id}"),
                EventKind::StepResult { step_id, status, .. } => format!("result {step_id} {status:?}"),
                EventKind::StepOutput { step_id, output } => format!("output {step_id} {}", output["status"]),
                EventKind::Custom { step_id, kind, .. } => format!("custom {step_id} {kind}"),
                EventKind::Agent { step_id, chunk } => {
                    assert_eq!(step_id.as_deref(), Some("analyze-content"));
                    assert_eq!(event.source, EventSource::Agent);
                    match chunk {
                        AgentChunk::TextDelta { text, .. } => {
                            analysis.push_str(text);
                            "agent text-delta".to_owned()
                        }
                        AgentChunk::AgentStart { agent_id, .. } => format!("agent start {agent_id}"),
                        AgentChunk::AgentFinish { .. } => "agent finish".to_owned(),
                        _ => continue,
                    }
                }
                other => panic!("unexpected {other:?}"),
            };
            if order.last() != Some(&line) {
                order.push(line);
            }
        }
        assert_eq!(
            order,
            [
                "start content-pipeline",
                "step-start analyze-content",
                "agent start content-analyst",
                "agent text-delta",
                "agent finish",
                "result analyze-content Success",
                "step-start track-progress",
                "output track-progress \"done\"",
                "custom track-progress data-progress",
                "result track-progress Success",
                "step-start publish",
                "result publish Success",
            ]
        );
        assert!(analysis.contains("Analyze this article for publication"), "{analysis}");

        let result = out.result.unwrap();
        assert_eq!(
            result,
            json!({
                "title": "Event streams make runs observable",
                "summary": "Event streams make runs observable.",
                "body": content,
                "type": "article",
                "analysis": analysis,
                "wordCount": 11,
                "readingTimeMinutes": 1,
                "status": "ready",
            })
        );
        assert!(out.snapshot.usage.total_tokens > 0, "the analyst's usage counts in the run's");
    }

    #[test]
    fn input_is_schema_checked() {
        let wf = workflow_with(analyst_with(Arc::new(OfflineModel::new())));
        assert!(wf.validate_input(&json!({ "content": "x", "type": "blog" })).is_ok());
        assert_eq!(wf.validate_input(&json!({ "content": "" })).unwrap_err().path, "input.content");
        assert_eq!(wf.validate_input(&json!({ "content": "x", "type": "poem" })).unwrap_err().path, "input.type");
        assert!(wf.validate_input(&json!({ "text": "x" })).is_err());
    }

    #[test]
    fn the_output_schema_takes_the_result_and_one_recorded_by_an_older_build() {
        let wf = workflow_with(analyst_with(Arc::new(OfflineModel::new())));
        let schema = crate::engine::schema::Schema::compile(wf.output_schema().unwrap().clone()).unwrap();
        let result = json!({
            "title": "T", "summary": "S.", "body": "S.", "type": "blog", "analysis": "A",
            "wordCount": 1, "readingTimeMinutes": 1, "status": "ready",
        });
        assert!(schema.validate(&result, "output").is_ok());
        let mut old = result.as_object().unwrap().clone();
        let (words, minutes) = (old.remove("wordCount").unwrap(), old.remove("readingTimeMinutes").unwrap());
        old.insert("word_count".into(), words);
        old.insert("reading_time_minutes".into(), minutes);
        assert!(schema.validate(&Value::Object(old.clone()), "output").is_ok());
        old.remove("word_count");
        let error = schema.validate(&Value::Object(old), "output");
        assert!(error.is_err(), "the counts are required, in one spelling or the other");
    }

    #[test]
    fn summaries_and_titles() {
        assert_eq!(first_sentence("One two. Three.", 30), "One two.");
        assert_eq!(first_sentence("a b c d", 3), "a b c...");
        assert_eq!(title("hello, streaming world!"), "Hello, streaming world");
        assert_eq!(title(""), "Untitled");
    }
}
