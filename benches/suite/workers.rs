//! The `workers` scenario: remote steps through one Rust worker. The server is this binary re-executed with
//! `--workers-server` (a runstream `Server` with a `WorkerHub` and four workflows, see [`serve`]), its own process
//! like every server under test; the worker is a tokio task of the load generator on the generated client, over
//! real gRPC on loopback, answering each task at once (an echo), so the figures are the protocol's cost, not a
//! task's. Beside it, the same foreach through one Python SDK worker process (benches/suite/python_worker.py), on
//! a task type of its own so the two workers never share tasks.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

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
/// The Python worker's task type (its own, so the Rust worker, if still connected, takes none of its tasks).
const PY_TASK_TYPE: &str = "py-echo";
/// The Python worker script.
const PY_WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/suite/python_worker.py");
/// How long the Python worker may take to connect and finish the warm-up before its figure is skipped.
const PY_WARMUP_LIMIT: Duration = Duration::from_secs(60);
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
        Workflow::builder("python-foreach").foreach(hub.step("echo", PY_TASK_TYPE), IN_FLIGHT as usize).commit(),
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

/// The Python to run the worker with: `--python PATH`, else the venv scripts/test-deps.sh makes (`.venv` at the
/// repository's root); either must import the SDK (`runstream`). Err says why not, for the skip message.
pub fn find_python(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let python = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
            if !venv.exists() {
                return Err(format!("no {} (run scripts/test-deps.sh, or pass --python PATH)", venv.display()));
            }
            venv
        }
    };
    let check = Command::new(&python).args(["-c", "import runstream"]).stdin(Stdio::null()).output();
    match check {
        Ok(out) if out.status.success() => Ok(python),
        // The traceback's last line names the error (ModuleNotFoundError: ...); the rest is noise here.
        Ok(out) => Err(format!(
            "{} cannot import the SDK (run scripts/test-deps.sh): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no message")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", python.display())),
    }
}

/// The Python worker process, killed when dropped.
struct PythonWorker(Child);

impl PythonWorker {
    fn start(python: &Path, addr: std::net::SocketAddr) -> Result<Self, String> {
        Command::new(python)
            .arg(PY_WORKER)
            .args([addr.to_string(), PY_TASK_TYPE.to_string(), IN_FLIGHT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(Self)
            .map_err(|e| format!("cannot start {} {PY_WORKER}: {e}", python.display()))
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        // Already gone is fine: nothing to clean up then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tasks/s through one Python SDK worker: the same foreach as the Rust figure, `tasks` items. Err says why it was
/// not measured (no Python or SDK, the worker died or never connected).
async fn python_tasks_per_s(
    c: &mut client::Client,
    addr: std::net::SocketAddr,
    python: Option<&Path>,
    tasks: u64,
) -> Result<f64, String> {
    let python = find_python(python)?;
    let mut worker = PythonWorker::start(&python, addr)?;
    // Warm-up; tasks wait in the hub's queue until the worker connects, so this is also the wait for it.
    let warmup = run_once(c, "python-foreach", json!((0..IN_FLIGHT * 4).collect::<Vec<_>>()));
    if tokio::time::timeout(PY_WARMUP_LIMIT, warmup).await.is_err() {
        let status = worker.0.try_wait().ok().flatten().map(|s| format!(" (it exited: {s})")).unwrap_or_default();
        return Err(format!("the Python worker did not finish the warm-up in {PY_WARMUP_LIMIT:?}{status}"));
    }
    let items: Vec<u64> = (0..tasks).collect();
    let wall = run_once(c, "python-foreach", json!(items)).await;
    Ok(tasks as f64 / wall)
}

async fn run_once(client: &mut client::Client, workflow: &str, input: serde_json::Value) -> f64 {
    let start = Instant::now();
    let stream = client.stream_run(stream_request(workflow, input)).await.expect("StreamRun").into_inner();
    let drained = drain(stream).await.expect("the run's stream");
    expect_finish(&drained, pb::RunStatus::Success, workflow);
    start.elapsed().as_secs_f64()
}

/// workers: tasks/s through one worker with `IN_FLIGHT` tasks in flight (a foreach of `worker_tasks` remote
/// steps), and the latency per step of a chain of remote steps and of the same chain in-process, runs alternating;
/// then the same foreach through one Python worker (`python`: `--python`), skipped with a message when it cannot run.
pub async fn scenario(server: &Process, sizes: &Sizes, python: Option<&Path>) -> Figures {
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
    let mut figures = vec![
        ("workers.tasks_per_s", tasks_per_s),
        ("workers.remote_step_ms", percentile(&remote, 50.0)),
        ("workers.local_step_ms", percentile(&local, 50.0)),
        ("workers.remote_step_p99_ms", percentile(&remote, 99.0)),
    ];
    match python_tasks_per_s(&mut c, server.addr, python, sizes.worker_tasks).await {
        Ok(python_tasks_per_s) => figures.push(("workers.python_tasks_per_s", python_tasks_per_s)),
        Err(why) => eprintln!("workers: Python worker figure skipped: {why}"),
    }
    figures
}
