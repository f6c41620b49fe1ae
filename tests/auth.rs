//! Authentication and tenants on the real binary (`runstream serve --auth tokens --tokens-file F`), with the
//! generated Rust client and the real grpcurl: every RPC but health and reflection needs a valid token; a tenant
//! never reaches another tenant's runs (NOT_FOUND, as for a run that does not exist), also after a restart; a
//! read-only token reads but does not change; the tokens file is read again on SIGHUP.

use std::{ffi::OsStr, path::PathBuf, process::Command, time::Duration};

use runstream::pb::{self, run_service_client::RunServiceClient, worker_service_client::WorkerServiceClient};
use serde_json::json;
use tonic::{Code, Request, Status, transport::Channel};

mod common;

use common::{
    collect, finish_status, order_input,
    process::{ServerProcess, fresh_tmp, run_with_timeout},
    resume_request, stream_request,
    tools::tools,
};

const STARTUP: Duration = Duration::from_secs(30);

const ACME: &str = "acme-0123456789abcdef";
const ACME_READER: &str = "acme-reader-0123456789";
const GLOBEX: &str = "globex-0123456789abcdef";
const LATER: &str = "later-0123456789abcdef";

struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = fresh_tmp("auth", name);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let setup = Self { dir };
        setup.tokens(&format!(
            "# tokens of the test\n{ACME} acme\n{ACME_READER} acme read-only\n\n{GLOBEX} globex read-write\n"
        ));
        setup
    }

    fn tokens(&self, text: &str) {
        std::fs::write(self.dir.join("tokens"), text).expect("write the tokens file");
    }

    fn start(&self, durable: bool) -> ServerProcess {
        self.start_with(durable, &[])
    }

    fn start_with(&self, durable: bool, extra: &[&str]) -> ServerProcess {
        let tokens = self.dir.join("tokens");
        let data = self.dir.join("data");
        let mut args: Vec<&OsStr> =
            vec!["--auth".as_ref(), "tokens".as_ref(), "--tokens-file".as_ref(), tokens.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        if durable {
            args.extend(["--data-dir".as_ref(), data.as_os_str()]);
        } else {
            args.extend([OsStr::new("--store"), OsStr::new("memory")]);
        }
        ServerProcess::start(&args, None, self.dir.join("server.log"), STARTUP)
    }
}

async fn channel(server: &ServerProcess) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await.expect("connect")
}

/// `message` as `token` sends it (no token: none).
fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The status of a call that must fail.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) -> Status {
    match result {
        Ok(answer) => panic!("{what}: expected a refusal, got {answer:?}"),
        Err(status) => status,
    }
}

/// Calls every RPC of both services as `token` and returns each one's status code (OK when answered).
async fn every_rpc(channel: &Channel, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let mut c = RunServiceClient::new(channel.clone());
    let mut w = WorkerServiceClient::new(channel.clone());
    let code = |result: Result<(), Status>| result.err().map_or(Code::Ok, |status| status.code());
    let id = || "some-run".to_owned();
    let mut codes = vec![
        ("StartRun", code(c.start_run(with(token, pb::StartRunRequest::default())).await.map(drop))),
        (
            "StreamRun",
            code(c.stream_run(with(token, stream_request("chain", "", json!({"value": 1})))).await.map(drop)),
        ),
        ("ResumeStream", code(c.resume_stream(with(token, resume_request(&id(), json!({})))).await.map(drop))),
        (
            "ObserveStream",
            code(
                c.observe_stream(with(token, pb::ObserveStreamRequest { run_id: id(), ..Default::default() }))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetResult",
            code(
                c.get_result(with(token, pb::GetResultRequest { run_id: id(), ..Default::default() })).await.map(drop),
            ),
        ),
        ("GetRun", code(c.get_run(with(token, pb::GetRunRequest { run_id: id() })).await.map(drop))),
        ("ListRuns", code(c.list_runs(with(token, pb::ListRunsRequest::default())).await.map(drop))),
        ("CancelRun", code(c.cancel_run(with(token, pb::CancelRunRequest { run_id: id() })).await.map(drop))),
        ("ListWorkflows", code(c.list_workflows(with(token, pb::ListWorkflowsRequest::default())).await.map(drop))),
        (
            "RegisterWorkflow",
            code(c.register_workflow(with(token, pb::RegisterWorkflowRequest::default())).await.map(drop)),
        ),
        (
            "GetWorkflowDefinition",
            code(c.get_workflow_definition(with(token, pb::GetDefinitionRequest::default())).await.map(drop)),
        ),
        ("RegisterAgent", code(c.register_agent(with(token, pb::RegisterAgentRequest::default())).await.map(drop))),
        (
            "GetAgentDefinition",
            code(c.get_agent_definition(with(token, pb::GetDefinitionRequest::default())).await.map(drop)),
        ),
        ("ListWorkers", code(w.list_workers(with(token, pb::ListWorkersRequest::default())).await.map(drop))),
    ];
    let connect = w.connect(with(token, tokio_stream::iter(Vec::<pb::WorkerMessage>::new()))).await;
    codes.push(("WorkerService.Connect", code(connect.map(drop))));
    codes
}

#[tokio::test]
async fn every_call_but_health_and_reflection_needs_a_valid_token() {
    let setup = Setup::new("tokens");
    let server = setup.start(false);
    let channel = channel(&server).await;

    for (token, what) in [(None, "no token"), (Some("not-a-token-of-this-server"), "an unknown token")] {
        for (rpc, code) in every_rpc(&channel, token).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {what}");
        }
    }
    let mut c = RunServiceClient::new(channel.clone());
    let status = refused(c.list_runs(pb::ListRunsRequest::default()).await, "ListRuns without a token");
    assert!(status.message().contains("authorization: Bearer <token>"), "says what to send: {}", status.message());
    let mut raw = Request::new(pb::ListRunsRequest::default());
    raw.metadata_mut().insert("authorization", ACME.parse().expect("value"));
    let status = refused(c.list_runs(raw).await, "a token without `Bearer `");
    assert!(status.message().contains("must be `Bearer <token>`"), "{}", status.message());

    // With a valid token every RPC gets past authentication (its own checks answer the empty requests).
    for (rpc, code) in every_rpc(&channel, Some(ACME)).await {
        assert!(!matches!(code, Code::Unauthenticated | Code::PermissionDenied), "{rpc} with a valid token: {code:?}");
    }

    // Health and reflection need none: probes and grpcurl's discovery carry no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health without a token");
    assert_eq!(serving.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let tools = tools();
    let grpcurl = |extra: &[&str], args: &[&str]| {
        let mut command = Command::new(&tools.grpcurl);
        command.arg("-plaintext").args(extra).arg(&server.addr).args(args);
        run_with_timeout(command, Duration::from_secs(30), "grpcurl")
    };
    let listed = grpcurl(&[], &["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("runstream.v1.RunService"), "reflection is open");
    let denied = grpcurl(&[], &["runstream.v1.RunService/ListRuns"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"), "grpcurl without a token");
    let header = format!("authorization: Bearer {ACME}");
    let streamed = grpcurl(
        &["-H", &header, "-d", r#"{"workflow_id": "chain", "input": {"value": 1}}"#],
        &["runstream.v1.RunService/StreamRun"],
    );
    let out = String::from_utf8_lossy(&streamed.stdout);
    assert!(streamed.status.success() && out.contains("\"workflowFinish\""), "grpcurl -H with a token: {out}");
}

/// Starts an order-approval run (it suspends) and a chain run (it finishes) as `token`; returns their ids.
async fn two_runs(channel: &Channel, token: &str) -> (String, String) {
    let mut c = RunServiceClient::new(channel.clone());
    let order =
        c.stream_run(with(Some(token), stream_request("order-approval", "", order_input()))).await.expect("StreamRun");
    let order = collect(order.into_inner()).await;
    assert_eq!(order.last().and_then(finish_status), Some(pb::RunStatus::Suspended));
    let chain =
        c.stream_run(with(Some(token), stream_request("chain", "", json!({"value": 1})))).await.expect("StreamRun");
    let chain = collect(chain.into_inner()).await;
    assert_eq!(chain.last().and_then(finish_status), Some(pb::RunStatus::Success));
    (order[0].run_id.clone(), chain[0].run_id.clone())
}

/// Every RPC that names a run answers `token` NOT_FOUND for `run_id`, with the message of a run that does not
/// exist, and ListRuns does not show it.
async fn unreachable(channel: &Channel, token: &str, run_id: &str) {
    let mut c = RunServiceClient::new(channel.clone());
    let id = || run_id.to_owned();
    let missing =
        refused(c.get_run(with(Some(token), pb::GetRunRequest { run_id: "no-such-run".into() })).await, "GetRun");
    let expected = missing.message().replace("no-such-run", run_id);
    let answers = [
        ("GetRun", c.get_run(with(Some(token), pb::GetRunRequest { run_id: id() })).await.map(drop)),
        (
            "GetResult",
            c.get_result(with(Some(token), pb::GetResultRequest { run_id: id(), ..Default::default() }))
                .await
                .map(drop),
        ),
        (
            "ObserveStream",
            c.observe_stream(with(Some(token), pb::ObserveStreamRequest { run_id: id(), ..Default::default() }))
                .await
                .map(drop),
        ),
        (
            "ResumeStream",
            c.resume_stream(with(Some(token), resume_request(run_id, json!({"approved": true})))).await.map(drop),
        ),
        ("CancelRun", c.cancel_run(with(Some(token), pb::CancelRunRequest { run_id: id() })).await.map(drop)),
    ];
    for (rpc, answer) in answers {
        let status = refused(answer, rpc);
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, expected.as_str()),
            "{rpc} of another tenant's run"
        );
    }
    let listed = c.list_runs(with(Some(token), pb::ListRunsRequest::default())).await.expect("ListRuns").into_inner();
    assert!(listed.runs.iter().all(|run| run.run_id != run_id), "ListRuns shows no run of another tenant");
    // A start with its id: taken, and nothing more said (not its workflow).
    let taken = c.stream_run(with(Some(token), stream_request("chain", run_id, json!({"value": 1})))).await;
    let status = refused(taken.map(drop), "StreamRun with another tenant's run id");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        !status.message().contains("order-approval") && !status.message().contains("chain"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn tenants_never_reach_each_others_runs_also_after_a_restart() {
    let setup = Setup::new("tenants");
    let mut server = setup.start(true);
    let (order, chain) = two_runs(&channel(&server).await, ACME).await;
    let (globex_order, _) = two_runs(&channel(&server).await, GLOBEX).await;
    for restarted in [false, true] {
        if restarted {
            server.child.kill().expect("SIGKILL the server");
            server.child.wait().expect("reap it");
            server = setup.start(true);
        }
        let channel = channel(&server).await;
        for run_id in [&order, &chain] {
            unreachable(&channel, GLOBEX, run_id).await;
        }
        unreachable(&channel, ACME, &globex_order).await;
        let mut c = RunServiceClient::new(channel.clone());
        let mine = c.list_runs(with(Some(ACME), pb::ListRunsRequest::default())).await.expect("ListRuns").into_inner();
        let mut ids: Vec<&str> = mine.runs.iter().map(|run| run.run_id.as_str()).collect();
        ids.sort_unstable();
        let mut expected = vec![order.as_str(), chain.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected, "acme lists its own runs (restarted: {restarted})");
        let result =
            c.get_result(with(Some(ACME), pb::GetResultRequest { run_id: chain.clone(), ..Default::default() })).await;
        assert_eq!(result.expect("GetResult of its own run").into_inner().status, pb::RunStatus::Success as i32);
    }
    // The owner still resumes its suspended run after the restart.
    let mut c = RunServiceClient::new(channel(&server).await);
    let resumed =
        c.resume_stream(with(Some(ACME), resume_request(&order, json!({"approved": true, "approver": "a"})))).await;
    let events = collect(resumed.expect("ResumeStream of its own run").into_inner()).await;
    assert_eq!(events.last().and_then(finish_status), Some(pb::RunStatus::Success));
}

#[tokio::test]
async fn a_read_only_token_reads_its_tenants_runs_and_changes_nothing() {
    let setup = Setup::new("read-only");
    let server = setup.start(false);
    let channel = channel(&server).await;
    let (order, chain) = two_runs(&channel, ACME).await;
    let reader = Some(ACME_READER);
    let mut c = RunServiceClient::new(channel.clone());

    let log =
        c.observe_stream(with(reader, pb::ObserveStreamRequest { run_id: chain.clone(), ..Default::default() })).await;
    assert_eq!(
        collect(log.expect("ObserveStream").into_inner()).await.last().and_then(finish_status),
        Some(pb::RunStatus::Success)
    );
    c.get_run(with(reader, pb::GetRunRequest { run_id: order.clone() })).await.expect("GetRun");
    c.get_result(with(reader, pb::GetResultRequest { run_id: chain.clone(), ..Default::default() }))
        .await
        .expect("GetResult");
    let listed = c.list_runs(with(reader, pb::ListRunsRequest::default())).await.expect("ListRuns").into_inner();
    assert_eq!(listed.runs.len(), 2);

    let denied = [
        (
            "StartRun",
            c.start_run(with(reader, pb::StartRunRequest { workflow_id: "chain".into(), ..Default::default() }))
                .await
                .map(drop),
        ),
        ("StreamRun", c.stream_run(with(reader, stream_request("chain", "", json!({"value": 1})))).await.map(drop)),
        (
            "ResumeStream",
            c.resume_stream(with(reader, resume_request(&order, json!({"approved": true})))).await.map(drop),
        ),
        ("CancelRun", c.cancel_run(with(reader, pb::CancelRunRequest { run_id: order.clone() })).await.map(drop)),
        ("RegisterWorkflow", c.register_workflow(with(reader, pb::RegisterWorkflowRequest::default())).await.map(drop)),
    ];
    for (rpc, answer) in denied {
        let status = refused(answer, rpc);
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc} with a read-only token: {}", status.message());
        assert!(status.message().contains("read-only for tenant 'acme'"), "{}", status.message());
    }
    let still = c.get_run(with(Some(ACME), pb::GetRunRequest { run_id: order })).await.expect("GetRun").into_inner();
    assert_eq!(still.status, pb::RunStatus::Suspended as i32, "nothing changed");
}

#[tokio::test]
async fn the_tokens_file_is_read_again_on_sighup() {
    let setup = Setup::new("sighup");
    let server = setup.start(false);
    let channel = channel(&server).await;
    let mut c = RunServiceClient::new(channel.clone());
    let code =
        |answer: Result<tonic::Response<pb::ListRunsResponse>, Status>| answer.err().map_or(Code::Ok, |s| s.code());
    assert_eq!(code(c.list_runs(with(Some(LATER), pb::ListRunsRequest::default())).await), Code::Unauthenticated);

    let hangup = || {
        let pid = server.child.id().to_string();
        let status = Command::new("kill").args(["-HUP", &pid]).status().expect("kill -HUP");
        assert!(status.success());
    };
    setup.tokens(&format!("{GLOBEX} globex\n{LATER} initech\n"));
    hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while code(c.list_runs(with(Some(LATER), pb::ListRunsRequest::default())).await) != Code::Ok {
        assert!(tokio::time::Instant::now() < deadline, "the new token works after SIGHUP\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        code(c.list_runs(with(Some(ACME), pb::ListRunsRequest::default())).await),
        Code::Unauthenticated,
        "a removed token"
    );

    // A file that cannot be used changes nothing, and the log says why.
    setup.tokens("short initech\n");
    hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&server.log).unwrap_or_default().contains("the tokens in use stay") {
        assert!(tokio::time::Instant::now() < deadline, "the log reports the bad file\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code(c.list_runs(with(Some(LATER), pb::ListRunsRequest::default())).await), Code::Ok);
}

#[test]
fn settings_that_cannot_work_stop_the_server_at_start() {
    let setup = Setup::new("bad");
    let run = |args: &[&str]| {
        let mut command = common::process::runstream_command(["serve", "--store", "memory", "--listen", "127.0.0.1:0"]);
        command.args(args).current_dir(&setup.dir);
        let out = run_with_timeout(command, STARTUP, "runstream serve with bad auth settings");
        assert!(!out.status.success(), "{args:?} must not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--auth", "tokens"]).contains("--tokens-file"));
    assert!(run(&["--tokens-file", "tokens"]).contains("--auth tokens"));
    setup.tokens(&format!("{ACME} acme owner\n"));
    let message = run(&["--auth", "tokens", "--tokens-file", "tokens"]);
    assert!(message.contains("line 1: unknown role 'owner'") && !message.contains(ACME), "{message}");
    setup.tokens("# nobody\n");
    assert!(run(&["--auth", "tokens", "--tokens-file", "tokens"]).contains("lists no token"));
}

/// A workflow of one remote step, task type `resize`.
fn resize_flow() -> pb::WorkflowDefinition {
    let step = pb::StepNode { id: "resize".into(), task: "resize".into(), ..Default::default() };
    pb::WorkflowDefinition {
        id: "resize-flow".into(),
        steps: vec![pb::Node { node: Some(pb::node::Node::Step(step)) }],
        ..Default::default()
    }
}

#[tokio::test]
async fn registered_definitions_and_workers_belong_to_their_tenant() {
    let setup = Setup::new("definitions");
    let server = setup.start(false);
    let channel = channel(&server).await;
    let mut c = RunServiceClient::new(channel.clone());
    let register = pb::RegisterWorkflowRequest { definition: Some(resize_flow()) };
    let acme = c.register_workflow(with(Some(ACME), register.clone())).await.expect("acme registers").into_inner();
    assert_eq!(acme.version, 1);

    // Globex sees nothing of it, and its own registration of the same id is its version 1.
    let get = pb::GetDefinitionRequest { id: "resize-flow".into(), version: 0 };
    let status =
        refused(c.get_workflow_definition(with(Some(GLOBEX), get.clone())).await, "another tenant's definition");
    assert_eq!(status.code(), Code::NotFound);
    let listed =
        c.list_workflows(with(Some(GLOBEX), pb::ListWorkflowsRequest {})).await.expect("ListWorkflows").into_inner();
    assert!(listed.workflows.iter().all(|w| w.id != "resize-flow") && listed.workflows.iter().any(|w| w.id == "chain"));
    let start = || stream_request("resize-flow", "", json!({"width": 64}));
    let status =
        refused(c.stream_run(with(Some(GLOBEX), start())).await.map(drop), "a run of another tenant's workflow");
    assert_eq!(status.code(), Code::NotFound);
    let globex = c.register_workflow(with(Some(GLOBEX), register)).await.expect("globex registers").into_inner();
    assert_eq!(globex.version, 1, "versions count per tenant");
    assert_eq!(c.get_workflow_definition(with(Some(ACME), get)).await.expect("acme's").into_inner().version, 1);

    // A globex worker never gets acme's task; acme's own worker does.
    let globex_worker = common::worker::AutoWorker::start_as(&server.addr, Some(GLOBEX), "g-1", &["resize"], 4, |_| {
        common::worker::Reply::Done(json!({"by": "globex"}))
    })
    .await;
    let mut w = WorkerServiceClient::new(channel.clone());
    let workers = |token| with(Some(token), pb::ListWorkersRequest::default());
    assert_eq!(w.list_workers(workers(ACME)).await.expect("ListWorkers").into_inner().workers.len(), 0);
    assert_eq!(w.list_workers(workers(GLOBEX)).await.expect("ListWorkers").into_inner().workers.len(), 1);
    let mut run = c.stream_run(with(Some(ACME), start())).await.expect("acme starts its run").into_inner();
    // The step waits (no worker of acme's): its step_waiting event, then nothing until acme's worker connects.
    let mut events = Vec::new();
    while let Some(event) = run.message().await.expect("stream") {
        let waiting = matches!(event.event, Some(pb::run_event::Event::StepWaiting(_)));
        events.push(event);
        if waiting {
            break;
        }
    }
    assert!(globex_worker.tasks().is_empty(), "globex's worker got none of acme's tasks");
    let acme_worker = common::worker::AutoWorker::start_as(&server.addr, Some(ACME), "a-1", &["resize"], 4, |_| {
        common::worker::Reply::Done(json!({"by": "acme"}))
    })
    .await;
    events.extend(collect(run).await);
    let finish = events.last().expect("events");
    assert_eq!(finish_status(finish), Some(pb::RunStatus::Success));
    let result =
        c.get_result(with(Some(ACME), pb::GetResultRequest { run_id: finish.run_id.clone(), ..Default::default() }));
    let result = result.await.expect("GetResult").into_inner();
    assert_eq!(common::json(&result.result), json!({"by": "acme"}));
    assert_eq!(acme_worker.tasks().len(), 1);
    assert!(globex_worker.tasks().is_empty());
}

#[tokio::test]
async fn runs_executing_at_once_are_limited_in_all_and_per_tenant() {
    let setup = Setup::new("run-limits");
    let server = setup.start_with(false, &["--max-running-runs", "3", "--max-running-runs-per-tenant", "2"]);
    let mut c = RunServiceClient::new(channel(&server).await);
    let sleeper = || pb::StartRunRequest {
        workflow_id: "timer".into(),
        input: Some(common::pb_value(json!({"ms": 600_000}))),
        ..Default::default()
    };
    // A suspended run executes nothing and holds no place.
    let (suspended, _) = two_runs(&channel(&server).await, ACME).await;
    let a1 = c.start_run(with(Some(ACME), sleeper())).await.expect("acme 1").into_inner().run_id;
    c.start_run(with(Some(ACME), sleeper())).await.expect("acme 2");
    let status = refused(c.start_run(with(Some(ACME), sleeper())).await, "acme's third");
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("tenant 'acme' has 2 runs running, its limit (2"), "{}", status.message());
    let resume = resume_request(&suspended, json!({"approved": true}));
    let status = refused(c.resume_stream(with(Some(ACME), resume)).await.map(drop), "a resume over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "a resume is a phase too");

    c.start_run(with(Some(GLOBEX), sleeper())).await.expect("globex is not held back by acme's limit");
    let status = refused(c.start_run(with(Some(GLOBEX), sleeper())).await, "over the server's limit");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("retry"), "says to retry: {}", status.message());

    // A run that ends gives its place back.
    c.cancel_run(with(Some(ACME), pb::CancelRunRequest { run_id: a1 })).await.expect("cancel");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = c.start_run(with(Some(ACME), sleeper())).await {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(tokio::time::Instant::now() < deadline, "acme's place came back after the cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
