//! `runstream.v1.WorkerService`: a thin translation of the Connect stream to the [`WorkerHub`].
//!
//! The first message must be a Hello (else INVALID_ARGUMENT naming the field); the answer starts with Welcome,
//! then carries what the hub sends the session. Every later message is converted and handed to the hub; a
//! malformed one ends the stream with INVALID_ARGUMENT naming the field. When the worker's side of the stream ends
//! (or the connection drops) the session ends; its tasks keep their leases, so a reconnect in time keeps them.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, stream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, server::worker_service_server, status::invalid_field};
use crate::{
    pb::{self, server_message::Msg as Out, worker_message::Msg as In},
    worker::{
        Assignment, CancelReason, Chunk, FromWorker, Hello, RejectCode, TaskRef, ToWorker, Welcome, WorkerError,
        WorkerHub, WorkerInfo,
    },
};

/// How long a drained worker is told to wait before it reconnects.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The WorkerService implementation.
#[derive(Debug, Clone)]
pub struct WorkerService {
    hub: Arc<WorkerHub>,
    /// Cancelled when the server shuts down: every Connect stream gets a Drain and ends.
    shutdown: CancellationToken,
}

impl WorkerService {
    pub fn new(hub: Arc<WorkerHub>, shutdown: CancellationToken) -> Self {
        Self { hub, shutdown }
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl worker_service_server::WorkerService for WorkerService {
    type ConnectStream = ServerStream;

    async fn connect(&self, request: Request<Streaming<pb::WorkerMessage>>) -> Result<Response<ServerStream>, Status> {
        let caller = super::auth::caller(&request)?;
        super::auth::require_write(&caller, "connect workers")?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid_field("hello", "the stream ended before its first message"))?;
        let hello = match first.msg {
            Some(In::Hello(hello)) => hello_from_pb(hello)?,
            _ => return Err(WorkerError::NoHello.into()),
        };
        let connected = self.hub.connect(caller.tenant().clone(), hello)?;
        let session_id = connected.welcome.session_id.clone();
        tracing::info!(session_id, "worker connected");
        let (fatal_tx, fatal_rx) = oneshot::channel::<Status>();
        let hub = Arc::clone(&self.hub);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = shutdown.cancelled() => break,
                };
                match message {
                    Ok(Some(message)) => match from_pb(message) {
                        Ok(Some(message)) => hub.handle(&session_id, message),
                        Ok(None) => {}
                        Err(status) => {
                            let _ = fatal_tx.send(status);
                            break;
                        }
                    },
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::info!(session_id, "worker disconnected");
            hub.disconnect(&session_id);
        });
        let idle = self.hub.settings().heartbeat_interval;
        let out = Outbound {
            welcome: Some(welcome_to_pb(connected.welcome)),
            idle,
            outbox: connected.outbox,
            fatal: Some(fatal_rx),
            shutdown: self.shutdown.clone(),
            ping_at: Box::pin(tokio::time::sleep(idle)),
            done: false,
        };
        Ok(Response::new(Box::pin(stream::unfold(out, Outbound::next))))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = super::auth::caller(&request)?;
        let r = request.into_inner();
        let filter = (!r.task_type.is_empty()).then_some(r.task_type.as_str());
        let workers = self.hub.list(caller.tenant(), filter).into_iter().map(worker_info).collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}

/// The answer stream: Welcome, then the hub's messages, a Ping after each `idle` without one (so that a worker
/// hears from a live server at least every heartbeat interval, through proxies that answer HTTP/2 pings
/// themselves, and can take silence for a dead server); a Drain at shutdown; a protocol error ends it.
struct Outbound {
    welcome: Option<pb::ServerMessage>,
    idle: Duration,
    outbox: tokio::sync::mpsc::UnboundedReceiver<ToWorker>,
    fatal: Option<oneshot::Receiver<Status>>,
    shutdown: CancellationToken,
    /// One timer for the stream's life, re-armed after each message (cheaper than a new one per message).
    ping_at: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Outbound {
    async fn next(mut self) -> Option<(Result<pb::ServerMessage, Status>, Self)> {
        if self.done {
            return None;
        }
        if let Some(welcome) = self.welcome.take() {
            return Some((Ok(welcome), self));
        }
        // Each call follows a message sent: the stream has been idle since now.
        let idle = self.idle;
        self.ping_at.as_mut().reset(tokio::time::Instant::now() + idle);
        let fatal = async {
            match self.fatal.as_mut() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            message = self.outbox.recv() => message.map(|m| (Ok(to_pb(m)), self)),
            status = fatal => match status {
                Some(status) => {
                    self.done = true;
                    Some((Err(status), self))
                }
                // The reader ended without an error: the hub drops the session, which ends the outbox.
                None => {
                    self.fatal = None;
                    Box::pin(self.next()).await
                }
            },
            () = self.shutdown.cancelled() => {
                self.done = true;
                let drain = pb::Drain { reconnect_after: RECONNECT_AFTER.try_into().ok() };
                Some((Ok(pb::ServerMessage { msg: Some(Out::Drain(drain)) }), self))
            }
            () = self.ping_at.as_mut() => Some((Ok(pb::ServerMessage { msg: Some(Out::Ping(pb::Ping {})) }), self)),
        }
    }
}

fn hello_from_pb(hello: pb::Hello) -> Result<Hello, Status> {
    let held = hello
        .held
        .into_iter()
        .enumerate()
        .map(|(i, r)| task_ref(Some(r), &format!("hello.held[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Hello {
        worker_id: hello.worker_id,
        worker_name: hello.worker_name,
        sdk: hello.sdk,
        protocol_version: hello.protocol_version,
        task_types: hello.task_types,
        max_in_flight: hello.max_in_flight,
        labels: hello.labels.into_iter().collect(),
        held,
    })
}

fn task_ref(r: Option<pb::TaskRef>, field: &str) -> Result<TaskRef, Status> {
    let r = r.ok_or_else(|| invalid_field(field, "required"))?;
    if r.task_id.is_empty() {
        return Err(invalid_field(&format!("{field}.task_id"), "required"));
    }
    Ok(TaskRef { task_id: r.task_id, attempt: r.attempt, lease_token: r.lease_token })
}

fn json(value: Option<prost_types::Value>) -> serde_json::Value {
    value.map_or(serde_json::Value::Null, convert::pb_to_json)
}

/// A worker message for the hub; `None` for an empty one (a newer client's message this server does not know).
fn from_pb(message: pb::WorkerMessage) -> Result<Option<FromWorker>, Status> {
    Ok(Some(match message.msg {
        None => return Ok(None),
        Some(In::Hello(_)) => {
            return Err(WorkerError::Protocol("hello: only the first message of a stream may be a hello".into()).into());
        }
        Some(In::Ack(m)) => FromWorker::Ack(task_ref(m.r#ref, "ack.ref")?),
        Some(In::Heartbeat(m)) => FromWorker::Heartbeat(
            m.in_flight
                .into_iter()
                .enumerate()
                .map(|(i, r)| task_ref(Some(r), &format!("heartbeat.in_flight[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Some(In::Output(m)) => {
            let task = task_ref(m.r#ref, "output.ref")?;
            let chunk = match m.chunk {
                Some(pb::task_output::Chunk::Write(v)) => Chunk::Write(convert::pb_to_json(v)),
                Some(pb::task_output::Chunk::Custom(c)) => {
                    if c.kind.is_empty() {
                        return Err(invalid_field("output.custom.kind", "required"));
                    }
                    Chunk::Custom {
                        kind: c.kind,
                        data: json(c.data),
                        id: (!c.id.is_empty()).then_some(c.id),
                        transient: c.transient,
                    }
                }
                Some(pb::task_output::Chunk::Progress(p)) => {
                    Chunk::Progress { current: p.current, total: p.total, message: p.message }
                }
                None => return Err(invalid_field("output.chunk", "one of write, custom, progress is required")),
            };
            FromWorker::Output { task, chunk_seq: m.chunk_seq, chunk }
        }
        Some(In::Complete(m)) => {
            FromWorker::Complete { task: task_ref(m.r#ref, "complete.ref")?, output: json(m.output) }
        }
        Some(In::Fail(m)) => {
            let task = task_ref(m.r#ref, "fail.ref")?;
            let error = m.error.unwrap_or_default();
            FromWorker::Fail {
                task,
                name: if error.name.is_empty() { "WorkerError".to_owned() } else { error.name },
                message: if error.message.is_empty() {
                    "the worker reported a failure".to_owned()
                } else {
                    error.message
                },
                details: error.details.map(convert::pb_to_json),
                non_retryable: m.non_retryable,
            }
        }
        Some(In::Suspend(m)) => {
            FromWorker::Suspend { task: task_ref(m.r#ref, "suspend.ref")?, payload: json(m.payload) }
        }
        Some(In::Canceled(m)) => FromWorker::Canceled(task_ref(m.r#ref, "canceled.ref")?),
        Some(In::SetCapacity(m)) => FromWorker::SetCapacity(m.max_in_flight),
    }))
}

fn ref_to_pb(r: TaskRef) -> pb::TaskRef {
    pb::TaskRef { task_id: r.task_id, attempt: r.attempt, lease_token: r.lease_token }
}

fn welcome_to_pb(w: Welcome) -> pb::ServerMessage {
    let welcome = pb::Welcome {
        session_id: w.session_id,
        heartbeat_interval: w.heartbeat_interval.try_into().ok(),
        lease_duration: w.lease_duration.try_into().ok(),
        max_message_bytes: w.max_message_bytes as u64,
        resumed: w.resumed.into_iter().map(ref_to_pb).collect(),
        revoked: w.revoked.into_iter().map(ref_to_pb).collect(),
        protocol_version: w.protocol_version,
    };
    pb::ServerMessage { msg: Some(Out::Welcome(welcome)) }
}

fn to_pb(message: ToWorker) -> pb::ServerMessage {
    let msg = match message {
        ToWorker::Assign(assignment) => {
            let Assignment { task, spec: a } = *assignment;
            Out::Assign(pb::Assign {
                r#ref: Some(ref_to_pb(task)),
                task_type: a.task_type,
                run_id: a.run_id,
                workflow_id: a.workflow_id,
                step_id: a.step_id,
                for_each_index: a.for_each_index,
                input: Some(convert::json_to_pb(&a.input)),
                resume_data: convert::opt_json(&a.resume_data),
                suspend_payload: convert::opt_json(&a.suspend_payload),
                request_context: Some(convert::map_to_struct(&a.request_context)),
                idempotency_key: a.idempotency_key,
            })
        }
        ToWorker::Cancel { task, reason } => Out::Cancel(pb::Cancel {
            r#ref: Some(ref_to_pb(task)),
            reason: match reason {
                CancelReason::RunCanceled => pb::CancelReason::RunCanceled,
                CancelReason::LeaseLost => pb::CancelReason::LeaseLost,
            } as i32,
        }),
        ToWorker::ResultAck(task) => Out::ResultAck(pb::ResultAck { r#ref: Some(ref_to_pb(task)) }),
        ToWorker::Reject { task, code, message } => Out::Reject(pb::Reject {
            r#ref: Some(ref_to_pb(task)),
            code: match code {
                RejectCode::StaleAttempt => pb::RejectCode::StaleAttempt,
                RejectCode::UnknownTask => pb::RejectCode::UnknownTask,
            } as i32,
            message,
        }),
    };
    pb::ServerMessage { msg: Some(msg) }
}

fn worker_info(w: WorkerInfo) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.worker_id,
        worker_name: w.worker_name,
        session_id: w.session_id,
        sdk: w.sdk,
        task_types: w.task_types,
        max_in_flight: w.max_in_flight,
        in_flight: w.in_flight,
        labels: w.labels.into_iter().collect(),
        connected_at: Some(w.connected_at.into()),
        last_heartbeat_at: Some(w.last_heartbeat_at.into()),
    }
}
