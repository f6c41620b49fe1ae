//! The `workers` scenario: remote steps through one Rust worker. The server is this binary re-executed with
//! `--workers-server` (a runstream `Server` with a `WorkerHub` and three workflows, see [`serve`]), its own process
//! like every server under test; the worker is a tokio task of the load generator on the generated client, over
//! real gRPC on loopback, answering each task at once (an echo), so the figures are the protocol's cost, not a
//! task's.

use std::{sync::Arc, time::Instant};

use runstream::{
    Server,
    engine::{Step, StepOutcome, Workflow},
    pb::{self, server_message::Msg as Out, worker_message::Msg as In, worker_service_client::WorkerServiceClient},
    worker::{WorkerHub, WorkerSettings},
};
use serde_json::json;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{
    client::{self, drain, expect_finish, stream_request},
    procs::Server as Process,
    scenarios::{Figures, Sizes, percentile},
};

/// The task type every remote step of the scenario uses.
const TASK_TYPE: &str = "echo";
/// Tasks in flight: the foreach's concurrency and the worker's `max_in_flight`.
pub const IN_FLIGHT: u32 = 64;
/// Steps of the two chains whose per-step latency is compared.
pub const CHAIN_STEPS: usize = 10;

fn workflows(hub: &Arc<WorkerHub>) -> Vec<Arc<Workflow>> {
    let mut remote = Workflow::builder("remote-chain");
    let mut local = Workflow::builder("local-chain");
    for i in 0..CHAIN_STEPS {
        remote = remote.then(hub.step(format!("s{i}"), TASK_TYPE));
        local = local.then(Step::new(format!("s{i}"), |ctx| async move { Ok(StepOutcome::Done(ctx.input().clone())) }));
    }
    vec![
        Workflow::builder("remote-foreach").foreach(hub.step("echo", TASK_TYPE), IN_FLIGHT as usize).commit(),
        remote.commit(),
        local.commit(),
    ]
}

/// `suite --workers-server`: serves the scenario's workflows on an ephemeral port, prints
/// `workers listening on ADDR`, runs until killed.
pub fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let hub = WorkerHub::new(WorkerSettings::default());
        let mut builder = Server::builder().workers(Arc::clone(&hub));
        for workflow in workflows(&hub) {
            builder = builder.workflow(workflow);
        }
        let server = builder.build().expect("the workers server builds");
        println!("workers listening on {addr}");
        server.on(listener).serve(std::future::pending()).await.expect("the workers server runs");
    });
}

/// One worker of `TASK_TYPE` with `IN_FLIGHT` slots that completes every task with its input, after its Ack.
async fn start_worker(addr: std::net::SocketAddr) -> JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hello = pb::Hello {
        worker_id: format!("bench-{}", std::process::id()),
        sdk: "benches/suite".into(),
        protocol_version: 1,
        task_types: vec![TASK_TYPE.into()],
        max_in_flight: IN_FLIGHT,
        ..Default::default()
    };
    tx.send(pb::WorkerMessage { msg: Some(In::Hello(hello)) }).expect("queue the hello");
    let mut stream = WorkerServiceClient::new(client::channel(addr).await)
        .connect(UnboundedReceiverStream::new(rx))
        .await
        .expect("WorkerService.Connect")
        .into_inner();
    match stream.message().await.expect("the welcome").and_then(|m| m.msg) {
        Some(Out::Welcome(_)) => {}
        other => panic!("expected a welcome, got {other:?}"),
    }
    tokio::spawn(async move {
        let send = |msg| tx.send(pb::WorkerMessage { msg: Some(msg) }).is_ok();
        while let Ok(Some(message)) = stream.message().await {
            // Pings and ResultAcks need no answer; this worker never gets a Cancel or Reject.
            let Some(Out::Assign(assign)) = message.msg else { continue };
            let ack = send(In::Ack(pb::Ack { r#ref: assign.r#ref.clone() }));
            let done =
                send(In::Complete(pb::Complete { r#ref: assign.r#ref, output: assign.input, last_chunk_seq: 0 }));
            if !(ack && done) {
                return;
            }
        }
    })
}

async fn run_once(client: &mut client::Client, workflow: &str, input: serde_json::Value) -> f64 {
    let start = Instant::now();
    let stream = client.stream_run(stream_request(workflow, input)).await.expect("StreamRun").into_inner();
    let drained = drain(stream).await.expect("the run's stream");
    expect_finish(&drained, pb::RunStatus::Success, workflow);
    start.elapsed().as_secs_f64()
}

/// workers: tasks/s through one worker with `IN_FLIGHT` tasks in flight (a foreach of `worker_tasks` remote
/// steps), and the latency per step of a chain of remote steps and of the same chain in-process, runs alternating.
pub async fn scenario(server: &Process, sizes: &Sizes) -> Figures {
    let worker = start_worker(server.addr).await;
    let mut c = client::client(&client::channel(server.addr).await);
    // Warm-up: connections, the worker's session, allocations.
    run_once(&mut c, "remote-foreach", json!((0..IN_FLIGHT * 4).collect::<Vec<_>>())).await;
    let items: Vec<u64> = (0..sizes.worker_tasks).collect();
    let wall = run_once(&mut c, "remote-foreach", json!(items)).await;
    let tasks_per_s = sizes.worker_tasks as f64 / wall;

    let (mut remote, mut local) = (Vec::new(), Vec::new());
    for i in 0..sizes.worker_chain_runs + 5 {
        let r = run_once(&mut c, "remote-chain", json!({ "i": i })).await;
        let l = run_once(&mut c, "local-chain", json!({ "i": i })).await;
        // The first few are warm-up.
        if i >= 5 {
            remote.push(r * 1e3 / CHAIN_STEPS as f64);
            local.push(l * 1e3 / CHAIN_STEPS as f64);
        }
    }
    worker.abort();
    remote.sort_by(f64::total_cmp);
    local.sort_by(f64::total_cmp);
    vec![
        ("workers.tasks_per_s", tasks_per_s),
        ("workers.remote_step_ms", percentile(&remote, 50.0)),
        ("workers.local_step_ms", percentile(&local, 50.0)),
        ("workers.remote_step_p99_ms", percentile(&remote, 99.0)),
    ]
}
