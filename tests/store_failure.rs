//! A store that refuses writes (as a full disk or a read-only file does) fails fast and visibly, and the server
//! carries on by itself once it takes writes again: calls that need a write answer UNAVAILABLE naming the store
//! within a second, reads of what is stored keep working, health turns NOT_SERVING, a shutdown still ends within
//! its grace, and nothing a client saw is lost. The store is the in-memory one behind a switch that makes its
//! commits fail with the error SQLite gives on a full disk; everything else is the real server over gRPC.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use runstream::{
    Server, ServiceConfig, Store,
    pb::{self, run_service_client::RunServiceClient},
    store::{DefinitionRecord, LoadedRun, MemoryStore, RunStore, StoreError, Write},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const WAIT: Duration = Duration::from_secs(30);

/// The memory store, whose commits fail while `full` is set.
struct SwitchedStore {
    inner: MemoryStore,
    full: Arc<AtomicBool>,
}

impl RunStore for SwitchedStore {
    fn describe(&self) -> String {
        "switched-test-store".into()
    }

    fn load(&self) -> Result<Vec<LoadedRun>, StoreError> {
        self.inner.load()
    }

    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.inner.load_definitions()
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Io { location: self.describe(), reason: "database or disk is full".into() });
        }
        self.inner.commit(writes)
    }
}

fn start_request(run_id: &str) -> pb::StartRunRequest {
    pb::StartRunRequest {
        workflow_id: "chain".into(),
        run_id: run_id.into(),
        input: Some(pb_value(json!({ "value": 1 }))),
        ..Default::default()
    }
}

async fn health(channel: tonic::transport::Channel) -> i32 {
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest { service: "runstream.v1.RunService".into() };
    health.check(request).await.expect("health").into_inner().status
}

/// Polls health until it is `want`, for at most `limit`; returns how long that took.
async fn health_becomes(channel: &tonic::transport::Channel, want: ServingStatus, limit: Duration) -> Duration {
    let since = Instant::now();
    loop {
        if health(channel.clone()).await == want as i32 {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "health did not become {want:?} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_fails_fast_and_the_server_carries_on() {
    let full = Arc::new(AtomicBool::new(false));
    let store = SwitchedStore { inner: MemoryStore::new(), full: Arc::clone(&full) };
    let config = ServiceConfig { shutdown_grace: Duration::from_millis(500), ..ServiceConfig::default() };
    let server = Server::builder()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .store(Store::Custom(Arc::new(store)))
        .builtins(true)
        .service_config(config)
        .build()
        .expect("build");
    let listening = server.bind().await.expect("bind");
    let addr = listening.local_addr();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(listening.serve(stop.clone().cancelled_owned()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = RunServiceClient::new(channel.clone());

    client.start_run(start_request("before")).await.expect("StartRun");
    let before = tokio::time::timeout(WAIT, get_result(&mut client, "before", true)).await.expect("in time");
    assert_eq!(status_of(&before), pb::RunStatus::Success);

    // The disk fills: the next write fails, and from then on what needs a write fails at once.
    full.store(true, Ordering::SeqCst);
    // The run is created, but its record cannot be stored: UNAVAILABLE rather than an id a crash could undo (the
    // run goes on, and is stored once the store takes writes).
    let asked = Instant::now();
    let during = client.start_run(start_request("during")).await;
    assert!(asked.elapsed() < Duration::from_secs(1), "answered at once: {:?}", asked.elapsed());
    assert_status(during, Code::Unavailable, &["switched-test-store", "database or disk is full"]);
    let took = health_becomes(&channel, ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "NOT_SERVING within a second of the failure: {took:?}");
    let asked = Instant::now();
    let refused = client.start_run(start_request("refused")).await;
    assert!(asked.elapsed() < Duration::from_secs(1), "answered at once: {:?}", asked.elapsed());
    assert_status(refused, Code::Unavailable, &["switched-test-store", "database or disk is full", "refuses writes"]);
    let resume = client.resume_stream(resume_request("before", json!({}))).await;
    assert_status(resume, Code::Unavailable, &["refuses writes"]);
    // Reads of what is stored keep working.
    let read = client.get_run(pb::GetRunRequest { run_id: "before".into() }).await.expect("GetRun").into_inner();
    assert_eq!(read.status, pb::RunStatus::Success as i32);
    let log = tokio::time::timeout(WAIT, observe_log(&mut client, "before")).await.expect("in time");
    assert_seqs(&log, 1, log.len() as u64);

    // Space returns: the server carries on by itself, and the run started meanwhile completes, nothing lost.
    full.store(false, Ordering::SeqCst);
    health_becomes(&channel, ServingStatus::Serving, WAIT).await;
    let during = tokio::time::timeout(WAIT, get_result(&mut client, "during", true)).await.expect("in time");
    assert_eq!(status_of(&during), pb::RunStatus::Success);
    let log = tokio::time::timeout(WAIT, observe_log(&mut client, "during")).await.expect("in time");
    assert_seqs(&log, 1, log.len() as u64);
    client.start_run(start_request("after")).await.expect("StartRun takes runs again");

    // Full again at shutdown: the stop still ends within its grace, not held by the writes it cannot store.
    full.store(true, Ordering::SeqCst);
    let at_stop = client.start_run(start_request("at-stop")).await;
    assert_status(at_stop, Code::Unavailable, &["refuses writes"]);
    health_becomes(&channel, ServingStatus::NotServing, Duration::from_secs(5)).await;
    drop(client);
    drop(channel);
    let stopping = Instant::now();
    stop.cancel();
    let served = tokio::time::timeout(Duration::from_secs(10), serving).await.expect("the stop ends").expect("join");
    served.expect("serve");
    assert!(stopping.elapsed() < Duration::from_secs(3), "stopped within its grace: {:?}", stopping.elapsed());
}
