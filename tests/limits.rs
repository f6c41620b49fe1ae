//! Size limits and what a new user trips over, over a real server with the generated Rust client (whose default
//! decoding limit, 4 MiB, is every common client's): large results stay readable, oversized requests and answers
//! get RESOURCE_EXHAUSTED naming the size and the limit, events too large to decode are refused at the writer and
//! never streamed, typos in built-in workflow input are named, and a run id is not silently reused for other input.

mod common;

use std::{sync::Arc, time::Duration};

use common::{process::ServerProcess, *};
use runstream::{
    clock::SystemClock,
    engine::{Step, StepOutcome, Workflow, WorkflowCatalog},
    grpc::{ServiceConfig, wire::WireEncoder},
    pb,
    registry::RunRegistry,
};
use serde_json::{Value, json};
use tonic::Code;

const MIB: usize = 1024 * 1024;

/// `measure`: one step that answers with the size of its input (a small result of a large input);
/// `echo`: one step that answers with its input (a result as large as the input);
/// `big-write`: writes `{"blob": <n bytes>}` as a step_output; `big-output`: returns it.
fn catalog() -> WorkflowCatalog {
    let mut catalog = WorkflowCatalog::new();
    catalog.register(
        Workflow::builder("measure")
            .then(Step::new("measure", |ctx| async move {
                Ok(StepOutcome::Done(json!({ "bytes": ctx.input().to_string().len() })))
            }))
            .commit(),
    );
    catalog.register(
        Workflow::builder("echo")
            .then(Step::new("echo", |ctx| async move { Ok(StepOutcome::Done(ctx.input().clone())) }))
            .commit(),
    );
    catalog.register(
        Workflow::builder("big-write")
            .then(Step::new("write", |ctx| async move {
                let n = ctx.input()["n"].as_u64().unwrap_or(0) as usize;
                ctx.writer().write(json!({ "note": "small writes pass" })).await?;
                ctx.writer().write(json!({ "blob": "x".repeat(n) })).await?;
                Ok(StepOutcome::Done(json!({ "unreachable": true })))
            }))
            .commit(),
    );
    catalog.register(
        Workflow::builder("ignores-refusal")
            .then(Step::new("write", |ctx| async move {
                let n = ctx.input()["n"].as_u64().unwrap_or(0) as usize;
                // A step that drops the writer's error still fails: the refusal is the writer's, not the step's.
                let _ = ctx.writer().write(json!({ "blob": "x".repeat(n) })).await;
                Ok(StepOutcome::Done(json!({ "done": true })))
            }))
            .commit(),
    );
    catalog.register(
        Workflow::builder("big-output")
            .then(Step::new("produce", |ctx| async move {
                let n = ctx.input()["n"].as_u64().unwrap_or(0) as usize;
                Ok(StepOutcome::Done(json!({ "blob": "x".repeat(n) })))
            }))
            .commit(),
    );
    catalog.register(
        Workflow::builder("big-suspend")
            .then(Step::new("ask", |ctx| async move {
                let n = ctx.input()["n"].as_u64().unwrap_or(0) as usize;
                Ok(StepOutcome::suspend(json!({ "form": "x".repeat(n) })))
            }))
            .commit(),
    );
    catalog
}

async fn server_with(config: ServiceConfig, max_event_bytes: usize) -> TestServer {
    let encoder = Arc::new(WireEncoder::new(max_event_bytes));
    TestServer::start_with_registry(RunRegistry::new(catalog(), Arc::new(SystemClock), encoder), config).await
}

fn result_request(run_id: &str, fields: &[&str]) -> pb::GetResultRequest {
    pb::GetResultRequest {
        run_id: run_id.into(),
        fields: fields.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_result_of_a_large_input_is_readable_and_a_too_large_answer_says_why() {
    let server = server_with(ServiceConfig::default(), WireEncoder::DEFAULT_MAX_EVENT_BYTES).await;
    let mut client = server.client().await;
    // ~2.5 MB: the input once fits in a message; twice (input and the step's input) would not.
    let input = json!({ "text": "y".repeat(2_500_000) });
    let events = stream_run(&mut client, stream_request("measure", "large-in", input.clone())).await;
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Success));

    let result =
        client.get_result(result_request("large-in", &[])).await.expect("the default answer fits").into_inner();
    assert_eq!(json(&result.result)["bytes"], json!(input.to_string().len()));
    assert_eq!(json(&result.input), input, "the input, once");
    let step = &result.steps["measure"];
    assert_eq!(step.status, pb::StepStatus::Success as i32);
    assert!(step.input.is_none() && step.output.is_none(), "step records leave out what they repeat");

    // Asking for the step inputs too makes the answer too large: said with the size, the limit and what to do.
    let status = match client.get_result(result_request("large-in", &["input", "steps.input"])).await {
        Ok(answer) => panic!("an answer of {} bytes, over the limit", prost::Message::encoded_len(answer.get_ref())),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    for needle in ["large-in", "4194304-byte response limit", "GetResultRequest.fields", "--max-response-bytes"] {
        assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
    }
    // Only what is asked for.
    let only = client.get_result(result_request("large-in", &["result"])).await.expect("result only").into_inner();
    assert!(only.result.is_some() && only.input.is_none() && only.steps.is_empty() && only.usage.is_none());
    assert_eq!((only.status, only.last_seq), (pb::RunStatus::Success as i32, events.len() as u64));
    let outputs =
        client.get_result(result_request("large-in", &["steps.output"])).await.expect("step outputs").into_inner();
    assert_eq!(json(&outputs.steps["measure"].output), json(&only.result));
    assert!(outputs.steps["measure"].input.is_none() && outputs.input.is_none());
    // A name that is not a part of a result is named, with the ones that are.
    assert_status(
        client.get_result(result_request("large-in", &["result", "stepz"])).await,
        Code::InvalidArgument,
        &["fields", "\"stepz\"", "steps.input", "suspend_payload"],
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_resource_exhausted_naming_the_limit() {
    let server = server_with(ServiceConfig::default(), WireEncoder::DEFAULT_MAX_EVENT_BYTES).await;
    let mut client = server.client().await;
    let request = stream_request("measure", "", json!({ "text": "z".repeat(5 * MIB) }));
    let status = client.stream_run(request).await.expect_err("over the request limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    for needle in ["over this server's 4194304-byte request limit", "--max-request-bytes"] {
        assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
    }
    // Unary calls too, and the server goes on serving.
    let start = pb::StartRunRequest {
        workflow_id: "measure".into(),
        input: Some(pb_value(json!({ "text": "z".repeat(5 * MIB) }))),
        ..Default::default()
    };
    assert_status(client.start_run(start).await, Code::ResourceExhausted, &["4194304-byte request limit"]);
    let events = stream_run(&mut client, stream_request("measure", "", json!({ "text": "small" }))).await;
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Success));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_configurable() {
    let config = ServiceConfig { max_request_bytes: 8 * MIB, max_response_bytes: 16 * MIB, ..ServiceConfig::default() };
    let server = server_with(config, 16 * MIB).await;
    let channel = server.channel().await;
    // The client must accept the larger messages too.
    let mut client = pb::run_service_client::RunServiceClient::new(channel).max_decoding_message_size(16 * MIB);
    let input = json!({ "text": "w".repeat(5 * MIB) });
    let events = stream_run(&mut client, stream_request("echo", "five", input.clone())).await;
    assert_eq!(finish_result(events.last().expect("finish")), input);
    let all = client.get_result(result_request("five", &["steps.input", "steps.output"])).await.expect("fits");
    assert_eq!(json(&all.into_inner().steps["echo"].input), input);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_to_decode_is_refused_at_the_writer_and_never_streamed() {
    const LIMIT: usize = 64 * 1024;
    let server = server_with(ServiceConfig::default(), LIMIT).await;
    let mut client = server.client().await;
    for workflow in ["big-write", "ignores-refusal"] {
        let events = stream_run(&mut client, stream_request(workflow, "", json!({ "n": 100_000 }))).await;
        assert_seqs(&events, 1, events.len() as u64);
        let writes: Vec<Value> = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::run_event::Event::StepOutput(out)) => Some(json(&out.output)),
                _ => None,
            })
            .collect();
        assert!(writes.iter().all(|w| w.get("blob").is_none()), "{workflow}: the large write was streamed");
        let last = events.last().expect("finish");
        assert_eq!(finish_status(last), Some(pb::RunStatus::Failed), "{workflow}");
        let result = get_result(&mut client, &events[0].run_id, false).await;
        let message = result.error.expect("an error").message;
        // The size is about the blob's (the event's timestamp varies it by a byte or two).
        for needle in ["step_output", "1000", "bytes encoded", "65536-byte event limit", "--max-event-bytes"] {
            assert!(message.contains(needle), "{workflow}: {message:?} lacks {needle:?}");
        }
        assert_eq!(result.steps["write"].status, pb::StepStatus::Failed as i32);
    }

    // An output too large for an event fails its step the same way (its step_result is not streamed either).
    let events = stream_run(&mut client, stream_request("big-output", "", json!({ "n": 100_000 }))).await;
    assert_eq!(kinds(&events), ["workflow_start", "step_start", "step_result", "workflow_finish"]);
    let result = get_result(&mut client, &events[0].run_id, false).await;
    let error = result.error.expect("an error");
    assert!(error.message.contains("its output is") && error.message.contains("65536-byte event limit"), "{error:?}");
    assert_eq!(error.name, "StepOutputTooLarge");
    // So does a suspend payload too large to stream: the run fails instead of suspending with it.
    let events = stream_run(&mut client, stream_request("big-suspend", "", json!({ "n": 100_000 }))).await;
    assert_eq!(kinds(&events), ["workflow_start", "step_start", "step_result", "workflow_finish"]);
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Failed));
    let error = get_result(&mut client, &events[0].run_id, false).await.error.expect("an error");
    assert!(error.message.contains("its suspend payload is"), "{error:?}");
    // Under the limit, all is as usual.
    let events = stream_run(&mut client, stream_request("big-output", "", json!({ "n": 1000 }))).await;
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Success));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typos_in_builtin_workflow_input_are_named() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_status(
        client.stream_run(stream_request("chain", "", json!({ "value": 1, "delayMS": 3000 }))).await,
        Code::InvalidArgument,
        &["input.delayMS", "unknown field", "delayMs, value"],
    );
    assert_status(
        client
            .stream_run(stream_request("order-approval", "", json!({ "orderId": "A", "amount": 1, "amnt": 2 })))
            .await,
        Code::InvalidArgument,
        &["input.amnt", "unknown field"],
    );
    server.stop().await;
}

/// The limits as `runstream serve` flags: a bad one stops the server at start, saying why; a raised one lets a
/// larger request in.
#[test]
fn serve_takes_the_limits_as_flags() {
    let bin = env!("CARGO_BIN_EXE_runstream");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory", "--max-event-bytes", "8MiB"])
        .output()
        .expect("run runstream");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-event-bytes") && stderr.contains("--max-response-bytes"), "{stderr}");
    let out = std::process::Command::new(bin)
        .args(["serve", "--store", "memory", "--max-request-bytes", "4 parsecs"])
        .output()
        .expect("run runstream");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("4MiB"), "{}", String::from_utf8_lossy(&out.stderr));

    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("limits-flags-server.log");
    let server = ServerProcess::start(
        &["--store".as_ref(), "memory".as_ref(), "--max-request-bytes".as_ref(), "6MiB".as_ref()],
        None,
        log,
        Duration::from_secs(30),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = pb::run_service_client::RunServiceClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        let big = stream_request("writer-flood", "", json!({ "count": 1, "pad": "p".repeat(5 * MIB) }));
        // Let in (5 MB < 6 MiB), then refused by the schema (an unknown field), not by size.
        assert_status(client.stream_run(big).await, Code::InvalidArgument, &["input.pad"]);
        let bigger = stream_request("writer-flood", "", json!({ "count": 1, "pad": "p".repeat(7 * MIB) }));
        assert_status(client.stream_run(bigger).await, Code::ResourceExhausted, &["6291456-byte request limit"]);
    });
}
