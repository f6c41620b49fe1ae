//! A worker that answers every task at once, from a handler: for tests that need steps done rather than a
//! protocol driven by hand (tests/workers.rs does that). It connects over the generated WorkerService client, acks
//! each Assign, sends the handler's Complete or Fail, and heartbeats while it is connected.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use runstream::pb::{
    self, server_message::Msg as Out, worker_message::Msg as In, worker_service_client::WorkerServiceClient,
};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Streaming, transport::Channel};

use super::{json, pb_value};

/// How long a test waits for the server's Welcome.
const WELCOME_DEADLINE: Duration = Duration::from_secs(15);

/// A Hello for a worker `worker_id` serving `task_types`, at most `max_in_flight` at once.
pub fn hello(worker_id: &str, task_types: &[&str], max_in_flight: u32) -> pb::Hello {
    pb::Hello {
        worker_id: worker_id.into(),
        worker_name: format!("{worker_id}-host"),
        sdk: "tests/common/worker.rs".into(),
        protocol_version: 1,
        task_types: task_types.iter().map(|t| (*t).to_owned()).collect(),
        max_in_flight,
        ..Default::default()
    }
}

/// One open Connect stream: what the worker sends on, what the server sent after its Welcome, and the Welcome.
pub struct Session {
    pub tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    pub rx: Streaming<pb::ServerMessage>,
    pub welcome: pb::Welcome,
}

/// Opens a Connect stream on `channel` with `hello` and waits for the Welcome; the server's refusal is the error.
pub async fn connect(channel: Channel, hello: pb::Hello) -> Result<Session, tonic::Status> {
    connect_as(channel, None, hello).await
}

/// [`connect`] with `authorization: Bearer <token>`, if given.
pub async fn connect_as(channel: Channel, token: Option<&str>, hello: pb::Hello) -> Result<Session, tonic::Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(pb::WorkerMessage { msg: Some(In::Hello(hello)) }).expect("queue hello");
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = WorkerServiceClient::new(channel).connect(request).await?.into_inner();
    let first = tokio::time::timeout(WELCOME_DEADLINE, stream.message()).await.expect("a welcome in time")?;
    let Some(pb::ServerMessage { msg: Some(Out::Welcome(welcome)) }) = first else {
        panic!("expected a welcome, got {first:?}")
    };
    Ok(Session { tx, rx: stream, welcome })
}

/// What the handler makes of a task.
pub enum Reply {
    /// Complete with this output.
    Done(Value),
    /// Fail; retryable unless `non_retryable`.
    Fail { message: String, non_retryable: bool },
    /// Write each of `writes` (TaskOutput), then complete with `output`.
    Stream { writes: Vec<Value>, output: Value },
}

/// What the handler sees of a task.
#[derive(Debug, Clone)]
pub struct Task {
    pub task_type: String,
    pub step_id: String,
    pub input: Value,
    pub attempt: u32,
    pub idempotency_key: String,
    pub for_each_index: Option<u32>,
    pub request_context: serde_json::Map<String, Value>,
}

pub type Handler = Arc<dyn Fn(&Task) -> Reply + Send + Sync>;

/// A connected worker; disconnects when dropped.
pub struct AutoWorker {
    session: JoinHandle<()>,
    /// Every task it was given, in order.
    pub tasks: Arc<Mutex<Vec<Task>>>,
}

impl AutoWorker {
    /// Connects to `addr` serving `task_types`, at most `max_in_flight` at once, and answers with `handler`.
    pub async fn start(
        addr: &str,
        worker_id: &str,
        task_types: &[&str],
        max_in_flight: u32,
        handler: impl Fn(&Task) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_as(addr, None, worker_id, task_types, max_in_flight, handler).await
    }

    /// [`start`](Self::start) as the holder of `token`.
    pub async fn start_as(
        addr: &str,
        token: Option<&str>,
        worker_id: &str,
        task_types: &[&str],
        max_in_flight: u32,
        handler: impl Fn(&Task) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        let Session { tx, rx: mut stream, welcome } =
            connect_as(channel, token, hello(worker_id, task_types, max_in_flight)).await.expect("Connect");
        let every = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let handler: Handler = Arc::new(handler);
        let tasks: Arc<Mutex<Vec<Task>>> = Arc::default();
        let log = Arc::clone(&tasks);
        let session = tokio::spawn(async move {
            let send = |msg: In| tx.send(pb::WorkerMessage { msg: Some(msg) }).is_ok();
            let mut beat = tokio::time::interval(every);
            loop {
                let message = tokio::select! {
                    _ = beat.tick() => {
                        // Every task is answered as it arrives: nothing is held between messages.
                        if !send(In::Heartbeat(pb::Heartbeat { in_flight: Vec::new() })) {
                            return;
                        }
                        continue;
                    }
                    message = stream.message() => message,
                };
                let Ok(Some(pb::ServerMessage { msg: Some(msg) })) = message else { return };
                let Out::Assign(assign) = msg else { continue };
                let Some(r) = assign.r#ref.clone() else { continue };
                send(In::Ack(pb::Ack { r#ref: Some(r.clone()) }));
                let task = Task {
                    task_type: assign.task_type.clone(),
                    step_id: assign.step_id.clone(),
                    input: json(&assign.input),
                    attempt: r.attempt,
                    idempotency_key: assign.idempotency_key.clone(),
                    for_each_index: assign.for_each_index,
                    request_context: assign
                        .request_context
                        .clone()
                        .map(runstream::grpc::convert::struct_to_map)
                        .unwrap_or_default(),
                };
                log.lock().expect("tasks").push(task.clone());
                let reply = match handler(&task) {
                    Reply::Done(output) => {
                        In::Complete(pb::Complete { r#ref: Some(r), output: Some(pb_value(output)), last_chunk_seq: 0 })
                    }
                    Reply::Stream { writes, output } => {
                        let last_chunk_seq = writes.len() as u64;
                        for (seq, value) in (1..).zip(writes) {
                            send(In::Output(pb::TaskOutput {
                                r#ref: Some(r.clone()),
                                chunk_seq: seq,
                                chunk: Some(pb::task_output::Chunk::Write(pb_value(value))),
                            }));
                        }
                        In::Complete(pb::Complete { r#ref: Some(r), output: Some(pb_value(output)), last_chunk_seq })
                    }
                    Reply::Fail { message, non_retryable } => In::Fail(pb::Fail {
                        r#ref: Some(r),
                        error: Some(pb::ErrorInfo { message, ..Default::default() }),
                        non_retryable,
                        last_chunk_seq: 0,
                    }),
                };
                if !send(reply) {
                    return;
                }
            }
        });
        Self { session, tasks }
    }

    /// The tasks it was given so far.
    pub fn tasks(&self) -> Vec<Task> {
        self.tasks.lock().expect("tasks").clone()
    }
}

impl Drop for AutoWorker {
    fn drop(&mut self) {
        self.session.abort();
    }
}
