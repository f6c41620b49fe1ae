//! A real runstream server on an ephemeral port, and helpers to talk to it with the generated client.
#![allow(dead_code)]

pub mod process;
pub mod tools;
pub mod worker;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use runstream::{
    builtin,
    clock::SystemClock,
    grpc::{ServiceConfig, serve, wire::WireEncoder},
    pb::{self, run_event::Event, run_service_client::RunServiceClient},
    registry::RunRegistry,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming, transport::Channel};

pub type Client = RunServiceClient<Channel>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServiceConfig::default()).await
    }

    pub async fn start_with(config: ServiceConfig) -> Self {
        Self::start_serving(builtin::catalog(), config).await
    }

    /// A server running `catalog` instead of the built-ins (e.g. agents on a slowed-down offline model).
    pub async fn start_with_catalog(catalog: runstream::engine::WorkflowCatalog) -> Self {
        Self::start_serving(catalog, ServiceConfig::default()).await
    }

    async fn start_serving(catalog: runstream::engine::WorkflowCatalog, config: ServiceConfig) -> Self {
        Self::start_with_registry(
            RunRegistry::new(catalog, Arc::new(SystemClock), Arc::new(WireEncoder::default())),
            config,
        )
        .await
    }

    /// A server over a registry the test made (e.g. with a clock it moves).
    pub async fn start_with_registry(registry: Arc<RunRegistry>, config: ServiceConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                serve::serve(listener, registry, config, shutdown).await.expect("server runs");
            }
        });
        Self { addr, shutdown, handle: Some(handle) }
    }

    pub async fn client(&self) -> Client {
        let endpoint = format!("http://{}", self.addr);
        // The listener is bound before serve() starts, so connecting cannot race the bind.
        RunServiceClient::connect(endpoint).await.expect("connect to the test server")
    }

    /// A raw channel, for clients of the other services (health, reflection).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle).await.expect("server drains").expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---- JSON <-> protobuf Value, for building requests and reading outputs ----

pub fn pb_value(value: Value) -> prost_types::Value {
    runstream::grpc::convert::json_to_pb(&value)
}

pub fn json(value: &Option<prost_types::Value>) -> Value {
    value.clone().map(runstream::grpc::convert::pb_to_json).unwrap_or(Value::Null)
}

pub fn stream_request(workflow_id: &str, run_id: &str, input: Value) -> pb::StreamRunRequest {
    pb::StreamRunRequest {
        workflow_id: workflow_id.into(),
        run_id: run_id.into(),
        input: Some(pb_value(input)),
        ..Default::default()
    }
}

pub fn resume_request(run_id: &str, data: Value) -> pb::ResumeStreamRequest {
    pb::ResumeStreamRequest { run_id: run_id.into(), resume_data: Some(pb_value(data)), ..Default::default() }
}

pub fn approval(approved: bool, approver: &str) -> Value {
    json!({"approved": approved, "approver": approver})
}

pub fn order_input() -> Value {
    json!({"orderId": "A-100", "amount": 250})
}

// ---- reading streams ----

/// Reads a stream to its end; panics if it ends with an error.
pub async fn collect(mut stream: Streaming<pb::RunEvent>) -> Vec<pb::RunEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("stream ends cleanly") {
        events.push(event);
    }
    events
}

pub async fn stream_run(client: &mut Client, request: pb::StreamRunRequest) -> Vec<pb::RunEvent> {
    let stream = client.stream_run(request).await.expect("StreamRun accepted").into_inner();
    collect(stream).await
}

/// A finished run's whole log, from seq 1 to its finish (ObserveStream from 0).
pub async fn observe_log(client: &mut Client, run_id: &str) -> Vec<pb::RunEvent> {
    let request = pb::ObserveStreamRequest { run_id: run_id.into(), after_seq: 0, ..Default::default() };
    let stream = client.observe_stream(request).await.expect("ObserveStream accepted").into_inner();
    collect(stream).await
}

/// A short name for an event's variant, for order assertions.
pub fn kind(event: &pb::RunEvent) -> &'static str {
    match &event.event {
        Some(Event::WorkflowStart(_)) => "workflow_start",
        Some(Event::StepStart(_)) => "step_start",
        Some(Event::StepOutput(_)) => "step_output",
        Some(Event::StepProgress(_)) => "step_progress",
        Some(Event::StepSuspended(_)) => "step_suspended",
        Some(Event::StepWaiting(_)) => "step_waiting",
        Some(Event::StepResult(_)) => "step_result",
        Some(Event::WorkflowPaused(_)) => "workflow_paused",
        Some(Event::WorkflowCanceled(_)) => "workflow_canceled",
        Some(Event::WorkflowFinish(_)) => "workflow_finish",
        Some(Event::Custom(_)) => "custom",
        Some(_) => "agent_or_network",
        None => "none",
    }
}

pub fn kinds(events: &[pb::RunEvent]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

pub fn seqs(events: &[pb::RunEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// The status of a `workflow_finish` event.
pub fn finish_status(event: &pb::RunEvent) -> Option<pb::RunStatus> {
    match &event.event {
        Some(Event::WorkflowFinish(finish)) => pb::RunStatus::try_from(finish.status).ok(),
        _ => None,
    }
}

pub fn finish_result(event: &pb::RunEvent) -> Value {
    match &event.event {
        Some(Event::WorkflowFinish(finish)) => json(&finish.result),
        other => panic!("not a workflow_finish: {other:?}"),
    }
}

/// Asserts seqs are exactly `from..=to`.
pub fn assert_seqs(events: &[pb::RunEvent], from: u64, to: u64) {
    let got = seqs(events);
    assert_eq!(
        (got.first().copied(), got.last().copied(), got.len()),
        (Some(from), Some(to), (to + 1 - from) as usize),
        "first seq, last seq and count"
    );
    let expected: Vec<u64> = (from..=to).collect();
    assert!(got == expected, "seqs must be gapless and in order");
}

/// Asserts an RPC failed with `code` and its message contains each of `needles`.
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected code; message: {}", status.message());
    for needle in needles {
        assert!(status.message().contains(needle), "message {:?} should mention {needle:?}", status.message());
    }
}

pub async fn get_result(client: &mut Client, run_id: &str, wait: bool) -> pb::RunResult {
    client
        .get_result(pb::GetResultRequest { run_id: run_id.into(), wait, max_wait: None, fields: vec![] })
        .await
        .expect("GetResult")
        .into_inner()
}

pub fn status_of(result: &pb::RunResult) -> pb::RunStatus {
    pb::RunStatus::try_from(result.status).expect("known status")
}
