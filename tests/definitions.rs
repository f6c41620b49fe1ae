//! Workflows defined as data (RegisterWorkflow), against `runstream serve` as a child process, their steps run by a
//! Rust worker over WorkerService (tests/common/worker.rs): every kind of node in one run, input mappings, retries,
//! loop limits, versions, bad definitions, SIGKILL and restart with a SQLite data dir, and registration with
//! grpcurl from examples/definitions/thumbnails.json.

mod common;

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{
    process::{ServerProcess, fresh_tmp, run_with_timeout},
    worker::{AutoWorker, Reply, Task},
    *,
};
use runstream::pb::{
    self, condition::Test, node::Node as N, run_event::Event, run_service_client::RunServiceClient, source::Source as S,
};
use serde_json::{Value, json};
use tonic::Code;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(60);

fn tmp(name: &str) -> PathBuf {
    fresh_tmp("definitions", name)
}

/// `runstream serve` with `args`, its log under the target tmp dir.
fn serve(name: &str, args: &[&str]) -> ServerProcess {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    ServerProcess::start(&args, None, tmp(name).with_extension("log"), START_TIMEOUT)
}

async fn client(addr: &str) -> Client {
    RunServiceClient::connect(format!("http://{addr}")).await.expect("connect")
}

// ---- building definitions ----

fn node(n: N) -> pb::Node {
    pb::Node { node: Some(n) }
}

fn step(id: &str, task: &str) -> pb::StepNode {
    pb::StepNode { id: id.into(), task: task.into(), ..Default::default() }
}

fn step_node(id: &str, task: &str) -> pb::Node {
    node(N::Step(step(id, task)))
}

fn path(p: &str) -> pb::Source {
    pb::Source { source: Some(S::Path(p.into())) }
}

fn run_input(p: &str) -> pb::Source {
    pb::Source { source: Some(S::RunInput(p.into())) }
}

fn constant(v: Value) -> pb::Source {
    pb::Source { source: Some(S::Value(pb_value(v))) }
}

fn fields(entries: &[(&str, pb::Source)]) -> HashMap<String, pb::Source> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn map(id: &str, entries: &[(&str, pb::Source)]) -> pb::Node {
    node(N::Map(pb::MapNode { id: id.into(), fields: fields(entries) }))
}

fn when(p: &str, test: Test) -> pb::Condition {
    pb::Condition { path: p.into(), test: Some(test), ..Default::default() }
}

fn definition(id: &str, steps: Vec<pb::Node>) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition { id: id.into(), steps, ..Default::default() }
}

async fn register(client: &mut Client, def: pb::WorkflowDefinition) -> Result<pb::WorkflowDefinition, tonic::Status> {
    client.register_workflow(pb::RegisterWorkflowRequest { definition: Some(def) }).await.map(|r| r.into_inner())
}

async fn get_definition(client: &mut Client, id: &str, version: u32) -> Result<pb::WorkflowDefinition, tonic::Status> {
    client.get_workflow_definition(pb::GetDefinitionRequest { id: id.into(), version }).await.map(|r| r.into_inner())
}

async fn listed_version(client: &mut Client, id: &str) -> Option<u32> {
    let listed = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("ListWorkflows").into_inner();
    listed.workflows.iter().find(|w| w.id == id).map(|w| w.version)
}

async fn start(client: &mut Client, workflow_id: &str, run_id: &str, input: Value) {
    client
        .start_run(pb::StartRunRequest {
            workflow_id: workflow_id.into(),
            run_id: run_id.into(),
            input: Some(pb_value(input)),
            ..Default::default()
        })
        .await
        .expect("StartRun");
}

async fn result(client: &mut Client, run_id: &str) -> pb::RunResult {
    tokio::time::timeout(WAIT, get_result(client, run_id, true)).await.expect("a result in time")
}

/// The step ids of `step_result` events, each once, in the order they first appear.
fn results_in_order(events: &[pb::RunEvent]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in events {
        if let Some(Event::StepResult(r)) = &e.event
            && !ids.contains(&r.step_id)
        {
            ids.push(r.step_id.clone());
        }
    }
    ids
}

/// The worker of the mixed workflow's tasks; "flaky" fails its first try.
fn mixed_handler() -> impl Fn(&Task) -> Reply + Send + Sync + 'static {
    let flaky_calls = Arc::new(AtomicU32::new(0));
    move |task: &Task| {
        let input = &task.input;
        Reply::Done(match task.task_type.as_str() {
            "list" => input["urls"].clone(),
            "resize" => json!({ "thumb": format!("{}-t", input.as_str().unwrap_or("?")) }),
            "audit" => json!({ "audited": input["count"] }),
            "notify" => json!({ "sent": true }),
            "label" => json!({ "label": task.step_id }),
            "increment" => json!({ "n": input["n"].as_u64().unwrap_or(0) + 1 }),
            "flaky" => {
                if flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Reply::Fail { message: "a hiccup".into(), non_retryable: false };
                }
                json!({ "done": input["n"] })
            }
            other => return Reply::Fail { message: format!("no task {other}"), non_retryable: true },
        })
    }
}

/// step, input mapping, foreach (concurrency 4), sleep, map, parallel, branch, dountil, a nested registered
/// workflow with retries, and a final map: one run, every event in order, gapless, with the right result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_workflow_of_every_node_streams_in_order_with_the_right_result() {
    let server = serve("mixed", &["--store", "memory", "--no-builtins"]);
    let mut client = client(&server.addr).await;
    let worker = AutoWorker::start(
        &server.addr,
        "w-mixed",
        &["list", "resize", "audit", "notify", "label", "increment", "flaky"],
        8,
        mixed_handler(),
    )
    .await;

    let child = definition(
        "finish-child",
        vec![node(N::Step(pb::StepNode {
            retries: Some(pb::Retries {
                attempts: 2,
                delay: Some(prost_types::Duration { seconds: 0, nanos: 10_000_000 }),
            }),
            ..step("flaky", "flaky")
        }))],
    );
    let registered = register(&mut client, child).await.expect("register the child");
    assert_eq!(registered.version, 1);

    let mixed = pb::WorkflowDefinition {
        description: "every node".into(),
        input_schema: Some(pb_value(json!({ "type": "object", "required": ["images", "user"] }))),
        ..definition(
            "mixed",
            vec![
                node(N::Step(pb::StepNode {
                    input: fields(&[("urls", path("images")), ("owner", run_input("user"))]),
                    ..step("list", "list")
                })),
                node(N::Foreach(Box::new(pb::ForeachNode {
                    node: Some(Box::new(step_node("resize", "resize"))),
                    concurrency: 4,
                }))),
                node(N::Sleep(pb::SleepNode { id: "settle".into(), ms: 50 })),
                map("summary", &[("count", path("length")), ("first", path("0.thumb")), ("user", run_input("user"))]),
                node(N::Parallel(pb::ParallelNode {
                    nodes: vec![step_node("p-audit", "audit"), step_node("p-notify", "notify")],
                })),
                node(N::Branch(pb::BranchNode {
                    cases: vec![
                        pb::BranchCase {
                            when: Some(when("p-audit.audited", Test::GreaterThan(3.0))),
                            node: Some(step_node("big", "label")),
                        },
                        pb::BranchCase {
                            when: Some(when("p-audit.audited", Test::LessOrEqual(3.0))),
                            node: Some(step_node("small", "label")),
                        },
                    ],
                })),
                node(N::Dountil(Box::new(pb::LoopNode {
                    node: Some(Box::new(step_node("count-up", "increment"))),
                    condition: Some(when("n", Test::GreaterOrEqual(3.0))),
                    max_iterations: 10,
                }))),
                node(N::Workflow(pb::WorkflowNode { id: "finish-child".into() })),
                map("final", &[("done", path("done")), ("user", run_input("user")), ("mark", constant(json!("ok")))]),
            ],
        )
    };
    let registered = register(&mut client, mixed).await.expect("register");
    assert_eq!((registered.id.as_str(), registered.version), ("mixed", 1));
    assert!(registered.registered_at.is_some());
    assert_eq!(listed_version(&mut client, "mixed").await, Some(1));

    let input = json!({ "images": ["a", "b", "c", "d", "e"], "user": "ada" });
    let events = tokio::time::timeout(WAIT, stream_run(&mut client, stream_request("mixed", "mixed-1", input)))
        .await
        .expect("the run ends in time");
    assert_seqs(&events, 1, events.len() as u64);
    let last = events.last().expect("events");
    assert_eq!(finish_status(last), Some(pb::RunStatus::Success), "kinds: {:?}", kinds(&events));
    assert_eq!(finish_result(last), json!({ "done": 3, "user": "ada", "mark": "ok" }));

    let order = results_in_order(&events);
    let parallel: Vec<&str> = order[4..6].iter().map(String::as_str).collect();
    assert!(parallel.contains(&"p-audit") && parallel.contains(&"p-notify"), "{order:?}");
    let mut sequential = order.clone();
    sequential.drain(4..6);
    assert_eq!(
        sequential,
        ["list", "resize", "settle", "summary", "big", "count-up", "finish-child.flaky", "finish-child", "final"],
        "step results in order: {order:?}"
    );
    let summary = events.iter().find_map(|e| match &e.event {
        Some(Event::StepResult(r)) if r.step_id == "summary" => Some(json(&r.output)),
        _ => None,
    });
    assert_eq!(summary, Some(json!({ "count": 5, "first": "a-t", "user": "ada" })));

    let tasks = worker.tasks();
    let list = tasks.iter().find(|t| t.task_type == "list").expect("the list task");
    assert_eq!(list.input, json!({ "urls": ["a", "b", "c", "d", "e"], "owner": "ada" }), "the input mapping");
    let resized: Vec<Option<u32>> =
        tasks.iter().filter(|t| t.task_type == "resize").map(|t| t.for_each_index).collect();
    assert_eq!(resized.len(), 5);
    assert_eq!(tasks.iter().filter(|t| t.task_type == "increment").count(), 3, "three iterations");
    let flaky: Vec<&Task> = tasks.iter().filter(|t| t.task_type == "flaky").collect();
    assert_eq!(flaky.len(), 2, "failed once, retried once");
    assert_eq!(flaky[0].idempotency_key, flaky[1].idempotency_key);
    assert!(tasks.iter().all(|t| t.task_type != "label" || t.step_id == "big"), "only the case that holds runs");

    // GetWorkflowDefinition returns it as registered.
    let got = get_definition(&mut client, "mixed", 0).await.expect("the definition");
    assert_eq!((got.version, got.steps.len()), (1, 9));
    assert_eq!(
        got.steps[1],
        node(N::Foreach(Box::new(pb::ForeachNode {
            node: Some(Box::new(step_node("resize", "resize"))),
            concurrency: 4,
        })))
    );
    let child = get_definition(&mut client, "finish-child", 1).await.expect("the child");
    let Some(N::Step(flaky_step)) = &child.steps[0].node else { panic!("a step") };
    let retries = flaky_step.retries.expect("retries");
    assert_eq!((retries.attempts, retries.delay), (2, Some(prost_types::Duration { seconds: 0, nanos: 10_000_000 })));
}

/// A loop whose condition never lets go fails the run at maxIterations, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_fails_the_run_at_max_iterations() {
    let server = serve("loop", &["--store", "memory", "--no-builtins"]);
    let mut client = client(&server.addr).await;
    let worker = AutoWorker::start(&server.addr, "w-loop", &["increment"], 1, mixed_handler()).await;
    let spin = definition(
        "spin",
        vec![node(N::Dowhile(Box::new(pb::LoopNode {
            node: Some(Box::new(step_node("spin", "increment"))),
            condition: Some(when("n", Test::GreaterThan(0.0))),
            max_iterations: 3,
        })))],
    );
    register(&mut client, spin).await.expect("register");
    start(&mut client, "spin", "spin-1", json!({})).await;
    let outcome = result(&mut client, "spin-1").await;
    assert_eq!(status_of(&outcome), pb::RunStatus::Failed);
    let message = outcome.error.expect("an error").message;
    assert!(message.contains("loop 'spin' reached its maxIterations (3)"), "{message}");
    assert_eq!(worker.tasks().len(), 3);
}

/// Bad definitions: INVALID_ARGUMENT naming the field; ids that are taken or missing: FAILED_PRECONDITION;
/// unknown definitions and versions: NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_naming_the_node_path() {
    let server = serve("bad", &["--store", "memory"]);
    let mut client = client(&server.addr).await;

    let missing = client.register_workflow(pb::RegisterWorkflowRequest { definition: None }).await;
    assert_status(missing, Code::InvalidArgument, &["definition: required"]);
    let inner_sleep = definition(
        "bad",
        vec![
            step_node("a", "t"),
            node(N::Foreach(Box::new(pb::ForeachNode {
                node: Some(Box::new(node(N::Sleep(pb::SleepNode { id: "s".into(), ms: 1 })))),
                concurrency: 2,
            }))),
        ],
    );
    assert_status(
        register(&mut client, inner_sleep).await,
        Code::InvalidArgument,
        &["definition.steps[1].foreach.node: only a step node can stand inside foreach, got sleep"],
    );
    let no_task = definition("bad", vec![node(N::Parallel(pb::ParallelNode { nodes: vec![step_node("a", "")] }))]);
    assert_status(
        register(&mut client, no_task).await,
        Code::InvalidArgument,
        &["definition.steps[0].parallel.nodes[0].step.task: must not be empty"],
    );
    let empty = definition("bad", vec![step_node("a", "t"), pb::Node { node: None }]);
    assert_status(register(&mut client, empty).await, Code::InvalidArgument, &["definition.steps[1]: an empty node"]);
    assert_status(register(&mut client, definition("bad", vec![])).await, Code::InvalidArgument, &["definition.steps"]);
    let dup = definition("bad", vec![step_node("a", "t"), map("a", &[("x", path(""))])]);
    assert_status(register(&mut client, dup).await, Code::InvalidArgument, &["definition.steps[1].map.id", "unique"]);
    let nested = definition("bad", vec![node(N::Workflow(pb::WorkflowNode { id: "nowhere".into() }))]);
    assert_status(
        register(&mut client, nested).await,
        Code::FailedPrecondition,
        &["definition.steps[0].workflow.id", "no workflow 'nowhere'"],
    );
    let built_in = definition("chain", vec![step_node("a", "t")]);
    assert_status(
        register(&mut client, built_in).await,
        Code::FailedPrecondition,
        &["'chain' is a workflow built into"],
    );

    assert_status(get_definition(&mut client, "nothing", 0).await, Code::NotFound, &["no workflow 'nothing'"]);
    assert_status(get_definition(&mut client, "chain", 0).await, Code::NotFound, &["built into this server"]);
    register(&mut client, definition("good", vec![step_node("a", "t")])).await.expect("a good one");
    assert_status(get_definition(&mut client, "good", 9).await, Code::NotFound, &["no version 9", "1 to 1"]);
    assert_eq!(listed_version(&mut client, "bad").await, None, "nothing of the bad ones was registered");
}

fn versioned(version: i64) -> pb::WorkflowDefinition {
    definition(
        "versioned",
        vec![step_node("work", "job"), map("tag", &[("version", constant(json!(version))), ("out", path(""))])],
    )
}

fn job_worker() -> impl Fn(&Task) -> Reply + Send + Sync + 'static {
    |task: &Task| Reply::Done(json!({ "job": task.input }))
}

/// Versions: a run keeps the version it started with; definitions, versions and a run in flight survive a SIGKILL
/// of the server (SQLite data dir), and the run completes after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_definitions_survive_a_sigkill_and_runs_keep_their_version() {
    let data = tmp("restart-data");
    let data_dir = data.to_str().expect("utf-8 path");
    let mut server = serve("restart-1", &["--data-dir", data_dir, "--no-builtins"]);
    let mut c = client(&server.addr).await;

    assert_eq!(register(&mut c, versioned(1)).await.expect("v1").version, 1);
    // No worker yet: the run waits in its first step, on version 1.
    start(&mut c, "versioned", "on-v1", json!({ "n": 1 })).await;
    assert_eq!(register(&mut c, versioned(2)).await.expect("v2").version, 2);
    assert_eq!(listed_version(&mut c, "versioned").await, Some(2));
    let worker = AutoWorker::start(&server.addr, "w-1", &["job"], 4, job_worker()).await;
    let v1 = result(&mut c, "on-v1").await;
    assert_eq!(status_of(&v1), pb::RunStatus::Success);
    assert_eq!(json(&v1.result), json!({ "version": 1, "out": { "job": { "n": 1 } } }), "finished on version 1");
    drop(worker);

    // A run of version 2 is in flight (no worker) when the server is killed, version 3 the latest.
    start(&mut c, "versioned", "in-flight", json!({ "n": 2 })).await;
    assert_eq!(register(&mut c, versioned(3)).await.expect("v3").version, 3);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    drop(server);

    let server = serve("restart-2", &["--data-dir", data_dir, "--no-builtins"]);
    let mut c = client(&server.addr).await;
    assert_eq!(listed_version(&mut c, "versioned").await, Some(3), "still listed, at its latest version");
    let first = get_definition(&mut c, "versioned", 1).await.expect("version 1 after the restart");
    assert_eq!(first, pb::WorkflowDefinition { version: 1, registered_at: first.registered_at, ..versioned(1) });
    assert_eq!(get_definition(&mut c, "versioned", 0).await.expect("the latest").version, 3);
    let _worker = AutoWorker::start(&server.addr, "w-2", &["job"], 4, job_worker()).await;
    let recovered = result(&mut c, "in-flight").await;
    assert_eq!(status_of(&recovered), pb::RunStatus::Success);
    assert_eq!(json(&recovered.result), json!({ "version": 2, "out": { "job": { "n": 2 } } }), "still on version 2");
    start(&mut c, "versioned", "after", json!({ "n": 3 })).await;
    assert_eq!(json(&result(&mut c, "after").await.result)["version"], 3, "a new run gets the latest");
    // Versions number on from what the store kept.
    assert_eq!(register(&mut c, versioned(4)).await.expect("v4").version, 4);
    let _ = std::fs::remove_dir_all(&data);
}

/// Where `scripts/test-deps.sh` put grpcurl.
fn grpcurl() -> PathBuf {
    common::tools::tools().grpcurl.clone()
}

/// The file users keep, registered with grpcurl as the docs show, then run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_file_registers_with_grpcurl_and_runs() {
    let grpcurl = grpcurl();
    let server = serve("grpcurl", &["--store", "memory", "--no-builtins"]);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/definitions/thumbnails.json");
    let definition = std::fs::read_to_string(&file).expect("the example file");
    let mut command = Command::new(&grpcurl);
    command.args([
        "-plaintext",
        "-d",
        &format!("{{\"definition\": {definition}}}"),
        &server.addr,
        "runstream.v1.RunService/RegisterWorkflow",
    ]);
    let out = run_with_timeout(command, WAIT, "grpcurl RegisterWorkflow");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grpcurl failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_str(&stdout).expect("grpcurl prints JSON");
    assert_eq!((answer["id"].as_str(), answer["version"].as_u64()), (Some("thumbnails"), Some(1)));
    assert_eq!(
        answer["steps"][1],
        json!({"foreach": {"concurrency": 4, "node": {"step": {"id": "resize", "task": "resize-image"}}}})
    );
    assert_eq!(answer["steps"][0]["step"]["retries"], json!({"attempts": 3, "delay": "1s"}));

    let _worker = AutoWorker::start(&server.addr, "w-thumbs", &["fetch-images", "resize-image"], 4, |task: &Task| {
        Reply::Done(match task.task_type.as_str() {
            "fetch-images" => {
                json!([format!("{}/1.png", task.input["page"].as_str().unwrap_or("?")), "2.png", "3.png"])
            }
            _ => json!({ "thumbnail": format!("small-{}", task.input.as_str().unwrap_or("?")) }),
        })
    })
    .await;
    let mut c = client(&server.addr).await;
    let input = json!({ "url": "https://example.com" });
    let events = tokio::time::timeout(WAIT, stream_run(&mut c, stream_request("thumbnails", "t-1", input)))
        .await
        .expect("the run ends in time");
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(
        finish_result(events.last().expect("events")),
        json!({ "count": 3, "first": "small-https://example.com/1.png", "source": "https://example.com" })
    );
}
