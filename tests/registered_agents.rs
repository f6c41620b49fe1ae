//! Agents defined as data (RegisterAgent), against `runstream serve` as a child process on the offline model, their
//! tools run by a Rust worker over WorkerService (tests/common/worker.rs): a run streaming every chunk of a tool
//! call whose output the worker writes, a failing tool reported to the model, approval before a worker's tool runs,
//! a cancel while a call waits for a worker, versions, bad definitions, and SIGKILL and restart with a SQLite data
//! dir.

mod common;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    process::{ServerProcess, fresh_tmp},
    worker::{AutoWorker, Reply, Task},
    *,
};
use runstream::pb::{self, run_event::Event, run_service_client::RunServiceClient};
use serde_json::{Value, json};
use tonic::Code;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(60);

fn tmp(name: &str) -> PathBuf {
    fresh_tmp("registered-agents", name)
}

/// `runstream serve --no-builtins` with a data dir of its own (or `data`), its log under the target tmp dir.
fn serve(name: &str, data: Option<&Path>) -> ServerProcess {
    let data = data.map_or_else(|| tmp(&format!("{name}-data")), Path::to_path_buf);
    let args: Vec<&OsStr> = vec![OsStr::new("--data-dir"), data.as_os_str(), OsStr::new("--no-builtins")];
    ServerProcess::start(&args, None, tmp(name).with_extension("log"), START_TIMEOUT)
}

async fn client(addr: &str) -> Client {
    RunServiceClient::connect(format!("http://{addr}")).await.expect("connect")
}

fn weather_tool() -> pb::ToolDefinition {
    pb::ToolDefinition {
        name: "get_weather".into(),
        description: "The current weather in a city.".into(),
        parameters: Some(pb_value(json!({
            "type": "object",
            "properties": { "city": { "type": "string", "description": "the city" } },
            "required": ["city"],
        }))),
        task: "weather-lookup".into(),
        requires_approval: false,
    }
}

fn forecaster(instructions: &str) -> pb::AgentDefinition {
    pb::AgentDefinition {
        id: "forecaster".into(),
        description: "Answers questions about the weather.".into(),
        instructions: instructions.into(),
        tools: vec![weather_tool()],
        ..Default::default()
    }
}

async fn register(client: &mut Client, def: pb::AgentDefinition) -> Result<pb::AgentDefinition, tonic::Status> {
    client.register_agent(pb::RegisterAgentRequest { definition: Some(def) }).await.map(|r| r.into_inner())
}

async fn get_definition(client: &mut Client, id: &str, version: u32) -> Result<pb::AgentDefinition, tonic::Status> {
    client.get_agent_definition(pb::GetDefinitionRequest { id: id.into(), version }).await.map(|r| r.into_inner())
}

fn ask(agent_id: &str, run_id: &str, prompt: &str) -> pb::StreamRunRequest {
    pb::StreamRunRequest {
        agent_id: agent_id.into(),
        run_id: run_id.into(),
        input: Some(pb_value(json!({ "prompt": prompt }))),
        ..Default::default()
    }
}

async fn stream(client: &mut Client, request: pb::StreamRunRequest) -> Vec<pb::RunEvent> {
    tokio::time::timeout(WAIT, stream_run(client, request)).await.expect("the run ends in time")
}

fn find<T>(events: &[pb::RunEvent], pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
    events.iter().filter_map(|e| e.event.as_ref().and_then(&pick)).collect()
}

/// A worker answering weather lookups: two writes, then the weather.
fn weather_worker() -> impl Fn(&Task) -> Reply + Send + Sync + 'static {
    |task: &Task| Reply::Stream {
        writes: vec![json!({ "looking_up": task.input["city"] }), json!({ "progress": 1 })],
        output: json!({ "city": task.input["city"], "tempC": 21, "sky": "clear" }),
    }
}

/// Register, read back, list, and run: the model's tool call goes to a worker as a task whose input is the call's
/// arguments; the worker's writes stream as the call's tool_output chunks, in order, before its tool_result; the
/// model then answers with the result. Every seq once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_agent_streams_a_tool_call_that_a_worker_runs() {
    let server = serve("run", None);
    let mut c = client(&server.addr).await;

    let registered = register(&mut c, forecaster("You answer questions about the weather.")).await.expect("register");
    assert_eq!(registered.version, 1);
    assert!(registered.registered_at.is_some());
    let read = get_definition(&mut c, "forecaster", 0).await.expect("GetAgentDefinition");
    assert_eq!(read, registered, "read back as registered");
    assert_eq!(
        read,
        pb::AgentDefinition {
            version: 1,
            registered_at: read.registered_at,
            ..forecaster("You answer questions about the weather.")
        },
        "every field kept"
    );
    let listed = c.list_workflows(pb::ListWorkflowsRequest {}).await.expect("ListWorkflows").into_inner().workflows;
    let listed = listed.iter().find(|w| w.id == "forecaster").expect("listed");
    assert_eq!(listed.kind, pb::RunKind::Agent as i32);
    assert_eq!(listed.version, 1);
    assert_eq!(listed.model, "offline", "no model named: the server's");
    assert_eq!(listed.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["get_weather"]);

    let worker = AutoWorker::start(&server.addr, "weather-1", &["weather-lookup"], 4, weather_worker()).await;
    let mut request = ask("forecaster", "paris-1", "What is the weather in Paris?");
    let context = json!({ "tenant": "acme", "locale": "fr" });
    request.request_context = context.as_object().map(runstream::grpc::convert::map_to_struct);
    let events = stream(&mut c, request).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));

    let calls = find(&events, |e| match e {
        Event::ToolCall(c) => Some(c.clone()),
        _ => None,
    });
    let [call] = calls.as_slice() else { panic!("one tool call, got {calls:?}") };
    assert_eq!((call.tool_name.as_str(), json(&call.args)), ("get_weather", json!({ "city": "Paris" })));

    let tasks = worker.tasks();
    let [task] = tasks.as_slice() else { panic!("one task, got {tasks:?}") };
    assert_eq!(task.task_type, "weather-lookup");
    assert_eq!(task.input, json!({ "city": "Paris" }), "the task's input is the call's arguments");
    assert_eq!(task.step_id, "forecaster/get_weather");
    assert_eq!(Value::Object(task.request_context.clone()), context, "the run's request context, as remote steps get");
    assert_eq!(
        task.idempotency_key,
        format!("paris-1/forecaster/1/{}", call.tool_call_id),
        "run / step / model call / tool call"
    );

    // The worker's writes, then its result, all of the same call; the model answers after.
    let after_call: Vec<&pb::RunEvent> =
        events.iter().skip_while(|e| !matches!(e.event, Some(Event::ToolCall(_)))).skip(1).collect();
    let outputs: Vec<Value> = after_call
        .iter()
        .take_while(|e| matches!(e.event, Some(Event::ToolOutput(_))))
        .map(|e| match &e.event {
            Some(Event::ToolOutput(o)) => {
                assert_eq!(
                    (o.tool_call_id.as_str(), o.tool_name.as_str()),
                    (call.tool_call_id.as_str(), "get_weather")
                );
                json(&o.output)
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(outputs, [json!({ "looking_up": "Paris" }), json!({ "progress": 1 })]);
    let Some(Event::ToolResult(result)) = &after_call[outputs.len()].event else {
        panic!("the tool_result follows the outputs, got {:?}", after_call[outputs.len()])
    };
    assert_eq!(result.tool_call_id, call.tool_call_id);
    assert_eq!(json(&result.result), json!({ "city": "Paris", "tempC": 21, "sky": "clear" }));
    let answer: String = find(&events, |e| match e {
        Event::TextDelta(d) => Some(d.text.clone()),
        _ => None,
    })
    .concat();
    assert!(answer.contains("21"), "the model answers with the worker's result: {answer}");
    let done = get_result(&mut c, "paris-1", false).await;
    assert_eq!(status_of(&done), pb::RunStatus::Success);
    assert_eq!(json(&done.result)["finishReason"], "stop");
}

/// A worker's Fail is the tool's error: streamed as tool_error and shown to the model, which still answers; the
/// run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_tool_is_reported_to_the_model() {
    let server = serve("fail", None);
    let mut c = client(&server.addr).await;
    register(&mut c, forecaster("")).await.expect("register");
    let _worker = AutoWorker::start(&server.addr, "weather-down", &["weather-lookup"], 4, |_: &Task| Reply::Fail {
        message: "the weather service is down".into(),
        non_retryable: true,
    })
    .await;
    let events = stream(&mut c, ask("forecaster", "down-1", "What is the weather in Oslo?")).await;
    let errors = find(&events, |e| match e {
        Event::ToolError(t) => Some(t.clone()),
        _ => None,
    });
    let [error] = errors.as_slice() else { panic!("one tool error, got {errors:?}") };
    assert_eq!(error.tool_name, "get_weather");
    assert_eq!(json(&error.args), json!({ "city": "Oslo" }));
    assert_eq!(error.error.as_ref().map(|e| e.message.as_str()), Some("the weather service is down"));
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));
}

/// `requires_approval`: the run suspends with tool_call_approval before any task exists; approved, the worker runs
/// the call; declined, it never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_requires_approval_reaches_the_worker_only_when_approved() {
    let server = serve("approval", None);
    let mut c = client(&server.addr).await;
    let mut def = forecaster("");
    def.tools[0].requires_approval = true;
    register(&mut c, def).await.expect("register");
    let worker = AutoWorker::start(&server.addr, "weather-2", &["weather-lookup"], 4, weather_worker()).await;

    for (run_id, approved) in [("approve-1", true), ("decline-1", false)] {
        let events = stream(&mut c, ask("forecaster", run_id, "What is the weather in Rome?")).await;
        assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Suspended));
        let approvals = find(&events, |e| match e {
            Event::ToolCallApproval(a) => Some(a.clone()),
            _ => None,
        });
        assert_eq!(approvals.len(), 1, "{run_id}: one approval asked");
        assert!(worker.tasks().iter().all(|t| !t.idempotency_key.starts_with(run_id)), "no task before approval");

        let resumed = c
            .resume_stream(resume_request(run_id, json!({ "approved": approved })))
            .await
            .expect("ResumeStream")
            .into_inner();
        let resumed = tokio::time::timeout(WAIT, collect(resumed)).await.expect("resumed run ends");
        assert_eq!(finish_status(resumed.last().expect("events")), Some(pb::RunStatus::Success));
        let ran = worker.tasks().iter().filter(|t| t.idempotency_key.starts_with(&format!("{run_id}/"))).count();
        let results = find(&resumed, |e| matches!(e, Event::ToolResult(_)).then_some(())).len();
        let denied = find(&resumed, |e| matches!(e, Event::ToolOutputDenied(_)).then_some(())).len();
        if approved {
            assert_eq!((ran, results, denied), (1, 1, 0), "approved: the worker ran the call once");
        } else {
            assert_eq!((ran, results, denied), (0, 0, 1), "declined: no task, the call is denied");
        }
    }
}

/// With no worker serving the tool, the call waits for one; CancelRun ends the run at once, as CANCELED, and the
/// waiting task is dropped: a worker that connects afterwards gets only the next run's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_a_worker_ends_with_a_cancel() {
    let server = serve("cancel", None);
    let mut c = client(&server.addr).await;
    register(&mut c, forecaster("")).await.expect("register");
    let mut live = c.stream_run(ask("forecaster", "waits-1", "What is the weather in Lima?")).await.expect("StreamRun");
    let live = live.get_mut();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &pb::RunEvent| matches!(e.event, Some(Event::ToolCall(_)))) {
        let next = tokio::time::timeout(WAIT, live.message()).await.expect("events in time").expect("stream ok");
        seen.push(next.expect("the run waits for a worker, it does not end"));
    }
    let asked = std::time::Instant::now();
    let canceled = c.cancel_run(pb::CancelRunRequest { run_id: "waits-1".into() }).await.expect("CancelRun");
    assert!(canceled.into_inner().canceled);
    assert!(asked.elapsed() < Duration::from_secs(1), "the cancel answers at once: {:?}", asked.elapsed());
    while let Some(event) = tokio::time::timeout(WAIT, live.message()).await.expect("in time").expect("stream ok") {
        seen.push(event);
    }
    assert_seqs(&seen, 1, seen.len() as u64);
    assert_eq!(finish_status(seen.last().expect("events")), Some(pb::RunStatus::Canceled));

    let worker = AutoWorker::start(&server.addr, "weather-late", &["weather-lookup"], 4, weather_worker()).await;
    let events = stream(&mut c, ask("forecaster", "after-1", "What is the weather in Quito?")).await;
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));
    let keys: Vec<String> = worker.tasks().into_iter().map(|t| t.idempotency_key).collect();
    assert!(keys.len() == 1 && keys[0].starts_with("after-1/"), "only the new run's task: {keys:?}");
}

/// Every malformed definition gets INVALID_ARGUMENT naming the field; an id that a workflow holds is
/// FAILED_PRECONDITION; unknown ids NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_definitions_get_precise_statuses() {
    let server = serve("bad", None);
    let mut c = client(&server.addr).await;
    let with_tool = |edit: &dyn Fn(&mut pb::ToolDefinition)| {
        let mut def = forecaster("");
        edit(&mut def.tools[0]);
        def
    };
    let cases: Vec<(pb::AgentDefinition, &[&str])> = vec![
        (pb::AgentDefinition { id: String::new(), ..forecaster("") }, &["id", "must not be empty"]),
        (pb::AgentDefinition { id: "a.b".into(), ..forecaster("") }, &["id", "'.'"]),
        (with_tool(&|t| t.name = "get weather".into()), &["tools[0].name", "' '"]),
        (with_tool(&|t| t.name = "x".repeat(65)), &["tools[0].name", "at most 64"]),
        (with_tool(&|t| t.task = String::new()), &["tools[0].task", "must not be empty"]),
        (
            with_tool(&|t| t.parameters = Some(pb_value(json!({ "type": "string" })))),
            &["tools[0].parameters", "\"object\""],
        ),
        (
            with_tool(&|t| t.parameters = Some(pb_value(json!({ "type": "object", "properties": 3 })))),
            &["tools[0].parameters", "not a valid JSON Schema"],
        ),
        (
            pb::AgentDefinition { tools: vec![weather_tool(), weather_tool()], ..forecaster("") },
            &["tools[1].name", "unique"],
        ),
        (pb::AgentDefinition { max_steps: 51, ..forecaster("") }, &["maxSteps", "50"]),
        (pb::AgentDefinition { model: "m".repeat(200), ..forecaster("") }, &["model", "at most 128"]),
    ];
    for (def, needles) in cases {
        assert_status(register(&mut c, def).await, Code::InvalidArgument, needles);
    }
    assert_status(
        c.register_agent(pb::RegisterAgentRequest { definition: None }).await,
        Code::InvalidArgument,
        &["definition", "required"],
    );

    // One namespace: a registered workflow's id is taken.
    let workflow = pb::WorkflowDefinition {
        id: "taken".into(),
        steps: vec![pb::Node {
            node: Some(pb::node::Node::Step(pb::StepNode { id: "s".into(), task: "t".into(), ..Default::default() })),
        }],
        ..Default::default()
    };
    c.register_workflow(pb::RegisterWorkflowRequest { definition: Some(workflow) }).await.expect("workflow");
    let taken = pb::AgentDefinition { id: "taken".into(), ..forecaster("") };
    assert_status(register(&mut c, taken).await, Code::FailedPrecondition, &["taken"]);
    assert_status(get_definition(&mut c, "taken", 0).await, Code::NotFound, &["taken"]);
    assert_status(get_definition(&mut c, "nobody", 0).await, Code::NotFound, &["nobody"]);
    assert_status(get_definition(&mut c, "", 0).await, Code::InvalidArgument, &["id", "required"]);
    register(&mut c, forecaster("")).await.expect("a good one still registers");
    assert_status(get_definition(&mut c, "forecaster", 2).await, Code::NotFound, &["forecaster", "2"]);
}

/// Versions: a new version changes new runs only; every version and the definitions survive a SIGKILL of the server
/// (SQLite data dir), and the agent runs after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_survive_a_sigkill() {
    let data = tmp("restart-data");
    let mut server = serve("restart-1", Some(&data));
    let mut c = client(&server.addr).await;
    let v1 = register(&mut c, forecaster("first")).await.expect("v1");
    let mut second = forecaster("second");
    second.max_steps = 3;
    second.model = "some-model".into();
    let v2 = register(&mut c, second.clone()).await.expect("v2");
    assert_eq!((v1.version, v2.version), (1, 2));
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    drop(server);

    let server = serve("restart-2", Some(&data));
    let mut c = client(&server.addr).await;
    assert_eq!(get_definition(&mut c, "forecaster", 1).await.expect("v1 after the restart"), v1);
    assert_eq!(get_definition(&mut c, "forecaster", 0).await.expect("the latest"), v2);
    assert_eq!(v2, pb::AgentDefinition { version: 2, registered_at: v2.registered_at, ..second });
    let _worker = AutoWorker::start(&server.addr, "weather-3", &["weather-lookup"], 4, weather_worker()).await;
    let events = stream(&mut c, ask("forecaster", "after-restart", "What is the weather in Paris?")).await;
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));
    assert_eq!(find(&events, |e| matches!(e, Event::ToolResult(_)).then_some(())).len(), 1);
    assert_eq!(register(&mut c, forecaster("third")).await.expect("v3").version, 3, "versions number on");
    let _ = std::fs::remove_dir_all(&data);
}
