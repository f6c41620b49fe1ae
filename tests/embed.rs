//! runstream as a library: `examples/embed.rs` built and run as a user runs it (`cargo build --example embed`), then
//! driven over gRPC with the generated client: its own workflow streams, suspends and resumes, its own agent calls
//! its own tool, and nothing else is served. Also `runstream serve --no-builtins`, and what the builder refuses.

mod common;

use std::time::Duration;

use common::{
    process::{ServerProcess, example_binary},
    *,
};
use runstream::{
    ServeError, Server,
    engine::{Step, StepOutcome, Workflow},
    pb::{self, run_event::Event, run_service_client::RunServiceClient},
};
use serde_json::json;
use tonic::Code;

const STARTUP: Duration = Duration::from_secs(60);

async fn connect(addr: &str) -> Client {
    RunServiceClient::connect(format!("http://{addr}")).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_example_serves_its_own_workflow_and_agent() {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("embed-example.log");
    let server = ServerProcess::start_program(
        &example_binary("embed"),
        &["--listen".as_ref(), "127.0.0.1:0".as_ref()],
        log,
        STARTUP,
    );
    let mut client = connect(&server.addr).await;

    let listed = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let ids: Vec<&str> = listed.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["editor", "publish-post"], "only the example's own");

    // The workflow: a writer, a custom event, a suspension, a resume that continues the numbering.
    let events = stream_run(&mut client, stream_request("publish-post", "post-1", json!({ "topic": "streams" }))).await;
    assert_eq!(
        kinds(&events),
        [
            "workflow_start",
            "step_start",
            "step_output",
            "custom",
            "step_result",
            "step_start",
            "step_suspended",
            "workflow_finish"
        ]
    );
    assert_seqs(&events, 1, 8);
    assert_eq!(finish_status(&events[7]), Some(pb::RunStatus::Suspended));
    let resumed = client.resume_stream(resume_request("post-1", json!({ "approved": true }))).await.expect("resume");
    let resumed = collect(resumed.into_inner()).await;
    assert_seqs(&resumed, 9, resumed.len() as u64 + 8);
    assert_eq!(finish_result(resumed.last().expect("finish")), json!({ "published": true, "slug": "on-streams" }));
    assert_status(
        client.resume_stream(resume_request("post-1", json!({ "approved": "yes" }))).await,
        Code::FailedPrecondition,
        &["post-1"],
    );

    // The agent: it calls its own tool, whose result it reports.
    let request = pb::StreamRunRequest {
        agent_id: "editor".into(),
        input: Some(pb_value(json!({ "prompt": "Please count the words of: streams make long work visible" }))),
        ..Default::default()
    };
    let events = stream_run(&mut client, request).await;
    let tool_result = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::ToolResult(result)) => Some(result.clone()),
            _ => None,
        })
        .expect("a tool_result");
    assert_eq!(tool_result.tool_name, "word-count");
    assert!(json(&tool_result.result)["words"].as_u64().is_some_and(|n| n > 0), "{:?}", tool_result.result);
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Success));

    // The built-in demos are not there.
    assert_status(
        client.stream_run(stream_request("chain", "", json!({ "value": 1 }))).await,
        Code::NotFound,
        &["chain", "publish-post"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_no_builtins_serves_nothing_to_run() {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-builtins-server.log");
    let server =
        ServerProcess::start(&["--store".as_ref(), "memory".as_ref(), "--no-builtins".as_ref()], None, log, STARTUP);
    let mut client = connect(&server.addr).await;
    let listed = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    assert!(listed.is_empty(), "{:?}", listed.iter().map(|w| &w.id).collect::<Vec<_>>());
    assert_status(
        client.stream_run(stream_request("chain", "", json!({ "value": 1 }))).await,
        Code::NotFound,
        &["chain"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_refuses_an_id_served_twice() {
    let mine = Workflow::builder("chain")
        .then(Step::new("only", |_ctx| async move { Ok(StepOutcome::Done(json!(1))) }))
        .commit();
    let error = Server::builder().builtins(true).workflow(mine.clone()).build().expect_err("chain twice");
    assert!(matches!(&error, ServeError::DuplicateId { id, .. } if id == "chain"), "{error}");
    assert!(error.to_string().contains("give one of them another id"), "{error}");
    // Without the built-ins the id is free; and the server built in-process serves it.
    let listening = Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .workflow(mine)
        .build()
        .expect("build")
        .bind()
        .await
        .expect("bind");
    let addr = listening.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(listening.serve(async move {
        let _ = stopped.await;
    }));
    let mut client = connect(&addr).await;
    let events = stream_run(&mut client, stream_request("chain", "", json!(null))).await;
    assert_eq!(finish_result(events.last().expect("finish")), json!(1));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), serving).await.expect("stops").expect("task").expect("served");
}
