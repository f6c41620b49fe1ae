//! runstream as a library: a server with one workflow and one agent of its own, and nothing else.
//!
//! ```sh
//! cargo run --example embed -- --listen 127.0.0.1:50051            # runs kept in memory
//! cargo run --example embed -- --listen 127.0.0.1:50051 --data-dir ./embed-data   # runs kept in SQLite
//! ```
//!
//! Then, with grpcurl (see the README):
//!
//! ```sh
//! grpcurl -plaintext -d '{"workflowId": "publish-post", "runId": "post-1", "input": {"topic": "streams"}}' \
//!   localhost:50051 runstream.v1.RunService/StreamRun
//! grpcurl -plaintext -d '{"runId": "post-1", "resumeData": {"approved": true}}' \
//!   localhost:50051 runstream.v1.RunService/ResumeStream
//! grpcurl -plaintext -d '{"agentId": "editor", "input": {"prompt": "Count the words of: streams make work visible"}}' \
//!   localhost:50051 runstream.v1.RunService/StreamRun
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use runstream::{
    Server, Store,
    agent::{Agent, Tool, ToolError},
    engine::{Step, StepError, StepOutcome, Workflow},
    model::OfflineModel,
};
use serde_json::{Value, json};

/// `publish-post`: drafts a post on a topic (streaming its progress), waits for a person to approve it, then
/// publishes it.
fn publish_post() -> Arc<Workflow> {
    let draft = Step::new("draft", |ctx| async move {
        let topic = ctx.input()["topic"].as_str().unwrap_or_default().to_owned();
        // Each write is a `step_output` event every client of the run sees, numbered like every other event.
        ctx.writer().write(json!({ "stage": "drafting", "topic": topic })).await?;
        let body = format!("Everything about {topic}, streamed as it happens.");
        // A `custom` event (`data-progress`), for a client's progress bar.
        ctx.writer().custom("progress", json!({ "percent": 100 })).await?;
        Ok(StepOutcome::Done(json!({ "title": format!("On {topic}"), "body": body })))
    })
    .description("Drafts the post.");

    let review = Step::new("review", |ctx| async move {
        match ctx.resume_data() {
            // First time here: the run suspends until someone calls ResumeStream with the decision.
            None => Ok(StepOutcome::suspend(json!({ "title": ctx.input()["title"], "ask": "approve this post?" }))),
            Some(decision) if decision["approved"] == Value::Bool(true) => Ok(StepOutcome::Done(ctx.input().clone())),
            // A rejected post ends the run here, successfully, with this value.
            Some(_) => Ok(StepOutcome::bail(json!({ "published": false }))),
        }
    })
    .description("Waits for a person to approve the draft.")
    .resume_schema(json!({
        "type": "object",
        "required": ["approved"],
        "properties": { "approved": { "type": "boolean" } },
        "additionalProperties": false
    }));

    let publish = Step::new("publish", |ctx| async move {
        let title = ctx.input()["title"].as_str().ok_or_else(|| StepError::new("the draft has no title"))?;
        let slug: String = title.to_lowercase().split_whitespace().collect::<Vec<_>>().join("-");
        Ok(StepOutcome::Done(json!({ "published": true, "slug": slug })))
    })
    .description("Publishes the approved post.");

    Workflow::builder("publish-post")
        .description("Drafts a post on a topic, waits for approval, publishes it.")
        .input_schema(json!({
            "type": "object",
            "required": ["topic"],
            "properties": { "topic": { "type": "string", "minLength": 1 } },
            "additionalProperties": false
        }))
        .then(draft)
        .then(review)
        .then(publish)
        .commit()
}

/// `editor`: an agent with one tool of its own, `word-count`. The offline model stands in for a real one (it calls
/// a tool the prompt mentions); hand the agent an `OpenAiModel` to use a real model.
fn editor() -> Arc<Agent> {
    let word_count = Tool::new(
        "word-count",
        "Counts the words of a text.",
        json!({ "type": "object", "required": ["text"], "properties": { "text": { "type": "string" } } }),
        |_ctx, args| async move {
            let text = args["text"].as_str().ok_or_else(|| ToolError::new("text must be a string"))?;
            Ok(json!({ "words": text.split_whitespace().count() }))
        },
    );
    Arc::new(
        Agent::new("editor", "You are an editor. Count words with word-count.", Arc::new(OfflineModel::new()))
            .description("Counts words with its word-count tool.")
            .tool(word_count),
    )
}

/// `--listen ADDR` (default 127.0.0.1:50051; port 0 picks one) and `--data-dir DIR` (SQLite; default: memory).
fn args() -> Result<(SocketAddr, Option<PathBuf>), String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 50051));
    let mut data_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--listen" => listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?,
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {arg}; use --listen ADDR and --data-dir DIR")),
        }
    }
    Ok((listen, data_dir))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (listen, data_dir) = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let server = Server::builder()
        .listen(listen)
        .store(data_dir.map_or(Store::Memory, Store::sqlite))
        .workflow(publish_post())
        .agent(editor());
    let served = async {
        let listening = server.build()?.bind().await?;
        println!("runstream listening on {}", listening.local_addr());
        listening
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    };
    match served.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
