//! The hub's state: sessions, queues, tasks, leases. One mutex, never held across an `.await`.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, OnceLock, Weak},
    time::{Duration, SystemTime},
};

use serde_json::{Map, Value};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use crate::engine::{StepError, StepOutcome, WaitReason};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Timings and limits of the worker protocol.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often workers must heartbeat (told to them in Welcome).
    pub heartbeat_interval: Duration,
    /// How long a lease lasts without a heartbeat; then the task goes to another worker.
    pub lease_duration: Duration,
    /// The largest message accepted from a worker.
    pub max_message_bytes: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            lease_duration: Duration::from_secs(30),
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Names one attempt of one task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TaskRef {
    pub task_id: String,
    pub attempt: u32,
    pub lease_token: String,
}

/// A worker's first message.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    pub worker_id: String,
    pub worker_name: String,
    pub sdk: String,
    pub protocol_version: u32,
    pub task_types: Vec<String>,
    pub max_in_flight: u32,
    pub labels: BTreeMap<String, String>,
    pub held: Vec<TaskRef>,
}

/// The answer to a Hello.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub session_id: String,
    pub heartbeat_interval: Duration,
    pub lease_duration: Duration,
    pub max_message_bytes: usize,
    pub resumed: Vec<TaskRef>,
    pub revoked: Vec<TaskRef>,
    pub protocol_version: u32,
}

/// A new session: its Welcome and the messages the hub sends it.
#[derive(Debug)]
pub struct Connected {
    pub welcome: Welcome,
    pub outbox: mpsc::UnboundedReceiver<ToWorker>,
}

/// A piece of output of a running attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Write(Value),
    Custom { kind: String, data: Value, id: Option<String>, transient: bool },
    Progress { current: u64, total: u64, message: String },
}

/// A message from a worker, after its first.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    Ack(TaskRef),
    Heartbeat(Vec<TaskRef>),
    Output { task: TaskRef, chunk_seq: u64, chunk: Chunk },
    Complete { task: TaskRef, output: Value },
    Fail { task: TaskRef, name: String, message: String, details: Option<Value>, non_retryable: bool },
    Suspend { task: TaskRef, payload: Value },
    Canceled(TaskRef),
    SetCapacity(u32),
}

/// Why an attempt is canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The run was canceled, or the step stopped waiting for the task.
    RunCanceled,
    /// The lease ran out; the task went to another worker.
    LeaseLost,
}

/// Why a message about an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    StaleAttempt,
    UnknownTask,
}

/// What one task hands a worker: the attempt it is, and the task.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: TaskRef,
    pub spec: NewTask,
}

/// A message the hub sends a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ToWorker {
    Assign(Box<Assignment>),
    Cancel { task: TaskRef, reason: CancelReason },
    ResultAck(TaskRef),
    Reject { task: TaskRef, code: RejectCode, message: String },
}

/// A worker's first message could not be accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// A field of the Hello is missing or wrong.
    #[error("hello.{field}: {problem}")]
    InvalidHello { field: &'static str, problem: String },
    /// The stream did not start with a Hello.
    #[error("the first message of a Connect stream must be a hello")]
    NoHello,
    /// A second Hello, or an unknown message.
    #[error("{0}")]
    Protocol(String),
}

/// One connected worker, as ListWorkers shows it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker's own stable id (its Hello).
    pub worker_id: String,
    /// A name for people.
    pub worker_name: String,
    /// This connection's id (a reconnect gets a new one).
    pub session_id: String,
    /// The SDK and its version, as the worker said.
    pub sdk: String,
    /// The task types it serves.
    pub task_types: Vec<String>,
    /// How many tasks it takes at once.
    pub max_in_flight: u32,
    /// How many it holds now.
    pub in_flight: u32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When this session began.
    pub connected_at: SystemTime,
    /// When it was last heard from (a heartbeat or any message).
    pub last_heartbeat_at: SystemTime,
}

/// What the hub tells the remote step waiting on a task.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    Output(Chunk),
    /// The task waits in its queue.
    Waiting(WaitReason),
    /// A task that waited (after `Waiting`) was handed to a worker.
    Running,
    /// The task was handed to a worker again after a lease ran out.
    Redelivered(u32),
    Finished(Result<StepOutcome, StepError>),
}

/// A task handed to the hub by a remote step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewTask {
    /// The tenant of the run: only that tenant's workers get the task.
    pub tenant: Arc<str>,
    pub task_type: String,
    pub run_id: String,
    pub workflow_id: String,
    pub step_id: String,
    pub for_each_index: Option<u32>,
    pub input: Value,
    pub resume_data: Option<Value>,
    pub suspend_payload: Option<Value>,
    pub request_context: Map<String, Value>,
    pub idempotency_key: String,
}

struct Task {
    assignment: Assignment,
    holder: Option<Holder>,
    /// The step stopped waiting (run canceled): the task ends when the worker says Canceled or its lease runs out.
    abandoned: bool,
    /// Sessions that let a lease of this task run out: it goes to them again only if no other worker can take it.
    lost_by: HashSet<String>,
    last_chunk_seq: u64,
    /// The step was told the task waits: it is told again when a worker takes it.
    waited: bool,
    events: mpsc::UnboundedSender<TaskEvent>,
}

struct Holder {
    session_id: String,
    worker_id: String,
    lease_until: Instant,
}

struct Session {
    /// The tenant the worker connected as: it gets that tenant's tasks only.
    tenant: Arc<str>,
    info: WorkerInfo,
    in_flight: HashSet<String>,
    outbox: mpsc::UnboundedSender<ToWorker>,
}

impl Session {
    fn free_slots(&self) -> usize {
        (self.info.max_in_flight as usize).saturating_sub(self.in_flight.len())
    }

    fn serves(&self, lane: &Lane) -> bool {
        self.tenant == lane.tenant && self.info.task_types.contains(&lane.task_type)
    }

    /// The lanes whose tasks it may take.
    fn lanes(&self) -> Vec<Lane> {
        let tenant = &self.tenant;
        self.info.task_types.iter().map(|t| Lane { tenant: Arc::clone(tenant), task_type: t.clone() }).collect()
    }
}

/// A queue of tasks: one task type of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Lane {
    tenant: Arc<str>,
    task_type: String,
}

impl Lane {
    fn of(task: &NewTask) -> Self {
        Self { tenant: Arc::clone(&task.tenant), task_type: task.task_type.clone() }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    tasks: HashMap<String, Task>,
    queues: HashMap<Lane, VecDeque<String>>,
}

/// The worker hub: see the module docs. Create one with [`WorkerHub::new`], define remote steps with
/// [`WorkerHub::step`], and hand it to [`crate::ServerBuilder::workers`].
pub struct WorkerHub {
    settings: WorkerSettings,
    state: Mutex<State>,
    reaper: OnceLock<()>,
}

impl std::fmt::Debug for WorkerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHub").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl WorkerHub {
    /// A hub with no worker connected yet; hand it to [`crate::ServerBuilder::workers`] and build remote steps with
    /// [`WorkerHub::step`].
    pub fn new(settings: WorkerSettings) -> Arc<Self> {
        Arc::new(Self { settings, state: Mutex::default(), reaper: OnceLock::new() })
    }

    /// The timings and limits it runs with.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the task that hands out expired leases again (once, from inside the runtime).
    fn ensure_reaper(self: &Arc<Self>) {
        self.reaper.get_or_init(|| {
            let hub: Weak<Self> = Arc::downgrade(self);
            let period = (self.settings.lease_duration / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(hub) = hub.upgrade() else { return };
                    hub.expire_leases(Instant::now());
                }
            });
        });
    }

    /// A new session for a worker that said `hello`, or why its Hello is refused.
    /// A worker of `tenant` says hello: it gets that tenant's tasks of its task types.
    pub(crate) fn connect(self: &Arc<Self>, tenant: Arc<str>, hello: Hello) -> Result<Connected, WorkerError> {
        if hello.worker_id.trim().is_empty() {
            return Err(WorkerError::InvalidHello { field: "worker_id", problem: "required".into() });
        }
        if hello.task_types.is_empty() {
            return Err(WorkerError::InvalidHello { field: "task_types", problem: "at least one is required".into() });
        }
        if let Some(bad) = hello.task_types.iter().find(|t| t.trim().is_empty()) {
            return Err(WorkerError::InvalidHello {
                field: "task_types",
                problem: format!("a task type must not be empty (got {bad:?})"),
            });
        }
        if hello.max_in_flight == 0 {
            return Err(WorkerError::InvalidHello { field: "max_in_flight", problem: "must be at least 1".into() });
        }
        if hello.protocol_version > PROTOCOL_VERSION {
            return Err(WorkerError::InvalidHello {
                field: "protocol_version",
                problem: format!("this server speaks version {PROTOCOL_VERSION}, not {}", hello.protocol_version),
            });
        }
        self.ensure_reaper();
        let session_id = new_token();
        let (tx, outbox) = mpsc::unbounded_channel();
        let now = SystemTime::now();
        let lease_until = Instant::now() + self.settings.lease_duration;
        let mut resumed = Vec::new();
        let mut revoked = Vec::new();
        let mut state = self.state();
        let mut in_flight = HashSet::new();
        for held in hello.held {
            let keep = state.tasks.get_mut(&held.task_id).and_then(|task| {
                let current = &task.assignment.task;
                let holder = task.holder.as_mut()?;
                (current.attempt == held.attempt
                    && current.lease_token == held.lease_token
                    && holder.worker_id == hello.worker_id
                    && task.assignment.spec.tenant == tenant
                    && !task.abandoned)
                    .then(|| std::mem::replace(&mut holder.session_id, session_id.clone()))
            });
            match keep {
                Some(old_session) => {
                    if let Some(task) = state.tasks.get_mut(&held.task_id)
                        && let Some(holder) = task.holder.as_mut()
                    {
                        holder.lease_until = lease_until;
                    }
                    if let Some(old) = state.sessions.get_mut(&old_session) {
                        old.in_flight.remove(&held.task_id);
                    }
                    in_flight.insert(held.task_id.clone());
                    resumed.push(held);
                }
                None => revoked.push(held),
            }
        }
        let info = WorkerInfo {
            worker_id: hello.worker_id,
            worker_name: hello.worker_name,
            session_id: session_id.clone(),
            sdk: hello.sdk,
            task_types: hello.task_types,
            max_in_flight: hello.max_in_flight,
            in_flight: 0,
            labels: hello.labels,
            connected_at: now,
            last_heartbeat_at: now,
        };
        let session = Session { tenant, info, in_flight, outbox: tx };
        let lanes = session.lanes();
        state.sessions.insert(session_id.clone(), session);
        for lane in &lanes {
            dispatch(&mut state, lane, &self.settings);
        }
        drop(state);
        Ok(Connected {
            welcome: Welcome {
                session_id,
                heartbeat_interval: self.settings.heartbeat_interval,
                lease_duration: self.settings.lease_duration,
                max_message_bytes: self.settings.max_message_bytes,
                resumed,
                revoked,
                protocol_version: PROTOCOL_VERSION,
            },
            outbox,
        })
    }

    /// The session's stream ended. Its tasks keep their leases: a reconnect in time keeps them, else they go to
    /// another worker when the leases run out.
    pub(crate) fn disconnect(&self, session_id: &str) {
        self.state().sessions.remove(session_id);
    }

    /// Applies a message of session `session_id`. Answers (ResultAck, Reject) go to its outbox.
    pub(crate) fn handle(&self, session_id: &str, message: FromWorker) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(session_id) else { return };
        session.info.last_heartbeat_at = SystemTime::now();
        let outbox = session.outbox.clone();
        let lease_until = Instant::now() + self.settings.lease_duration;
        let reject = |task: &TaskRef, code: RejectCode, message: String| {
            let _ = outbox.send(ToWorker::Reject { task: task.clone(), code, message });
        };
        // The task `r` names, if `r` is its current attempt held by this session.
        let current = |tasks: &mut HashMap<String, Task>, r: &TaskRef| -> Result<(), (RejectCode, String)> {
            let Some(task) = tasks.get(&r.task_id) else {
                return Err((RejectCode::UnknownTask, format!("no task {} (it ended, or never existed)", r.task_id)));
            };
            let cur = &task.assignment.task;
            let held_here = task.holder.as_ref().is_some_and(|h| h.session_id == session_id);
            if cur.attempt != r.attempt || cur.lease_token != r.lease_token || !held_here {
                return Err((
                    RejectCode::StaleAttempt,
                    format!(
                        "task {} attempt {} is not current (attempt {} is): its lease ran out and it was handed on",
                        r.task_id, r.attempt, cur.attempt
                    ),
                ));
            }
            Ok(())
        };
        match message {
            FromWorker::Heartbeat(refs) => {
                for r in refs {
                    match current(&mut state.tasks, &r) {
                        Ok(()) => renew(&mut state.tasks, &r.task_id, lease_until),
                        Err((code, message)) => reject(&r, code, message),
                    }
                }
            }
            FromWorker::Ack(r) => match current(&mut state.tasks, &r) {
                Ok(()) => renew(&mut state.tasks, &r.task_id, lease_until),
                Err((code, message)) => reject(&r, code, message),
            },
            FromWorker::Output { task: r, chunk_seq, chunk } => match current(&mut state.tasks, &r) {
                Ok(()) => {
                    renew(&mut state.tasks, &r.task_id, lease_until);
                    if let Some(task) = state.tasks.get_mut(&r.task_id)
                        && chunk_seq > task.last_chunk_seq
                    {
                        task.last_chunk_seq = chunk_seq;
                        if !task.abandoned {
                            let _ = task.events.send(TaskEvent::Output(chunk));
                        }
                    }
                }
                Err((code, message)) => reject(&r, code, message),
            },
            FromWorker::Complete { task: r, output } => {
                self.finish(state, session_id, &r, &outbox, || Ok(StepOutcome::Done(output)));
            }
            FromWorker::Fail { task: r, name, message, details, non_retryable } => {
                self.finish(state, session_id, &r, &outbox, || {
                    let mut error = StepError::new(message)
                        .with_details(serde_json::json!({ "name": name, "details": details, "attempt": r.attempt }));
                    if non_retryable {
                        error = error.non_retryable();
                    }
                    Err(error)
                });
            }
            FromWorker::Suspend { task: r, payload } => {
                self.finish(state, session_id, &r, &outbox, || Ok(StepOutcome::suspend(payload)));
            }
            FromWorker::Canceled(r) => {
                self.finish(state, session_id, &r, &outbox, || Err(StepError::new("the worker canceled the task")));
            }
            FromWorker::SetCapacity(n) => {
                let lanes = session.lanes();
                session.info.max_in_flight = n;
                for lane in &lanes {
                    dispatch(state, lane, &self.settings);
                }
            }
        }
    }

    /// Applies a result: the task ends, its slot frees, the step gets `outcome`.
    fn finish(
        &self,
        state: &mut State,
        session_id: &str,
        r: &TaskRef,
        outbox: &mpsc::UnboundedSender<ToWorker>,
        outcome: impl FnOnce() -> Result<StepOutcome, StepError>,
    ) {
        let valid = state.tasks.get(&r.task_id).map(|task| {
            let cur = &task.assignment.task;
            cur.attempt == r.attempt
                && cur.lease_token == r.lease_token
                && task.holder.as_ref().is_some_and(|h| h.session_id == session_id)
        });
        match valid {
            Some(true) => {}
            Some(false) => {
                let attempt = state.tasks.get(&r.task_id).map_or(0, |t| t.assignment.task.attempt);
                let _ = outbox.send(ToWorker::Reject {
                    task: r.clone(),
                    code: RejectCode::StaleAttempt,
                    message: format!(
                        "task {} attempt {} is not current (attempt {attempt} is): its result is not applied",
                        r.task_id, r.attempt
                    ),
                });
                return;
            }
            None => {
                let _ = outbox.send(ToWorker::Reject {
                    task: r.clone(),
                    code: RejectCode::UnknownTask,
                    message: format!("no task {} (it ended, or never existed): its result is not applied", r.task_id),
                });
                return;
            }
        }
        let Some(task) = state.tasks.remove(&r.task_id) else { return };
        if !task.abandoned {
            let _ = task.events.send(TaskEvent::Finished(outcome()));
        }
        let _ = outbox.send(ToWorker::ResultAck(r.clone()));
        if let Some(session) = state.sessions.get_mut(session_id) {
            session.in_flight.remove(&r.task_id);
        }
        dispatch(state, &Lane::of(&task.assignment.spec), &self.settings);
    }

    /// Hands every task whose lease ran out to another worker (next attempt, new lease token).
    fn expire_leases(&self, now: Instant) {
        let mut guard = self.state();
        let state = &mut *guard;
        let expired: Vec<String> = state
            .tasks
            .iter()
            .filter(|(_, t)| t.holder.as_ref().is_some_and(|h| h.lease_until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut lanes = HashSet::new();
        for task_id in expired {
            let Some(task) = state.tasks.get_mut(&task_id) else { continue };
            let Some(holder) = task.holder.take() else { continue };
            let old = task.assignment.task.clone();
            task.lost_by.insert(holder.session_id.clone());
            if let Some(session) = state.sessions.get_mut(&holder.session_id) {
                session.in_flight.remove(&task_id);
                let _ = session.outbox.send(ToWorker::Cancel { task: old, reason: CancelReason::LeaseLost });
            }
            if task.abandoned {
                state.tasks.remove(&task_id);
                continue;
            }
            task.assignment.task.attempt += 1;
            task.assignment.task.lease_token = new_token();
            task.last_chunk_seq = 0;
            let _ = task.events.send(TaskEvent::Redelivered(task.assignment.task.attempt));
            let lane = Lane::of(&task.assignment.spec);
            lanes.insert(lane.clone());
            // A redelivery goes first: it has waited longest.
            state.queues.entry(lane.clone()).or_default().push_front(task_id.clone());
            if let Some(reason) = wait_reason(state, &lane)
                && let Some(task) = state.tasks.get_mut(&task_id)
            {
                task.waited = true;
                let _ = task.events.send(TaskEvent::Waiting(reason));
            }
        }
        for lane in lanes {
            dispatch(state, &lane, &self.settings);
        }
    }

    /// Queues a task whose first attempt is `attempt` (the step's attempt: 1, or more for a retry); returns its id
    /// and the channel its events arrive on.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        new: NewTask,
        attempt: u32,
    ) -> (String, mpsc::UnboundedReceiver<TaskEvent>) {
        self.ensure_reaper();
        let (tx, rx) = mpsc::unbounded_channel();
        let task_id = uuid::Uuid::now_v7().to_string();
        let lane = Lane::of(&new);
        let assignment = Assignment {
            task: TaskRef { task_id: task_id.clone(), attempt: attempt.max(1), lease_token: new_token() },
            spec: new,
        };
        let mut guard = self.state();
        let state = &mut *guard;
        // Whether it must wait depends on the workers only, not on this task: known before it is queued.
        let waiting = wait_reason(state, &lane);
        if let Some(reason) = waiting {
            let _ = tx.send(TaskEvent::Waiting(reason));
        }
        state.tasks.insert(
            task_id.clone(),
            Task {
                assignment,
                holder: None,
                abandoned: false,
                lost_by: HashSet::new(),
                last_chunk_seq: 0,
                waited: waiting.is_some(),
                events: tx,
            },
        );
        state.queues.entry(lane.clone()).or_default().push_back(task_id.clone());
        dispatch(state, &lane, &self.settings);
        (task_id, rx)
    }

    /// The step stopped waiting for `task_id` (its run was canceled, or it ended): a queued task is dropped, a
    /// running one is told to stop.
    pub(crate) fn abandon(&self, task_id: &str) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(task) = state.tasks.get_mut(task_id) else { return };
        match &task.holder {
            None => {
                let lane = Lane::of(&task.assignment.spec);
                state.tasks.remove(task_id);
                if let Some(queue) = state.queues.get_mut(&lane) {
                    queue.retain(|id| id != task_id);
                }
            }
            Some(holder) => {
                task.abandoned = true;
                if let Some(session) = state.sessions.get(&holder.session_id) {
                    let _ = session.outbox.send(ToWorker::Cancel {
                        task: task.assignment.task.clone(),
                        reason: CancelReason::RunCanceled,
                    });
                }
            }
        }
    }

    /// The connected workers of `tenant`, optionally only those serving `task_type`.
    pub fn list(&self, tenant: &str, task_type: Option<&str>) -> Vec<WorkerInfo> {
        let state = self.state();
        let mut workers: Vec<WorkerInfo> = state
            .sessions
            .values()
            .filter(|s| &*s.tenant == tenant)
            .filter(|s| task_type.is_none_or(|t| s.info.task_types.iter().any(|own| own == t)))
            .map(|s| WorkerInfo { in_flight: s.in_flight.len() as u32, ..s.info.clone() })
            .collect();
        workers.sort_by(|a, b| a.connected_at.cmp(&b.connected_at).then_with(|| a.session_id.cmp(&b.session_id)));
        workers
    }
}

fn renew(tasks: &mut HashMap<String, Task>, task_id: &str, until: Instant) {
    if let Some(holder) = tasks.get_mut(task_id).and_then(|t| t.holder.as_mut()) {
        holder.lease_until = until;
    }
}

/// Why a task of `lane` would wait now, or `None` if a worker has a free slot.
fn wait_reason(state: &State, lane: &Lane) -> Option<WaitReason> {
    let mut serving = state.sessions.values().filter(|s| s.serves(lane)).peekable();
    if serving.peek().is_none() {
        return Some(WaitReason::NoWorker);
    }
    if serving.any(|s| s.free_slots() > 0) { None } else { Some(WaitReason::WorkersBusy) }
}

/// Hands queued tasks of `lane` to workers of its tenant with free slots, the least busy first.
fn dispatch(state: &mut State, lane: &Lane, settings: &WorkerSettings) {
    loop {
        let Some(queue) = state.queues.get_mut(lane) else { return };
        if queue.is_empty() {
            return;
        }
        let Some(task_id) = queue.front().cloned() else { return };
        let Some(task) = state.tasks.get_mut(&task_id) else {
            queue.pop_front();
            continue;
        };
        // The least busy worker with a free slot, preferring one that has not let this task's lease run out.
        let best = state
            .sessions
            .iter()
            .filter(|(_, s)| s.free_slots() > 0 && s.serves(lane))
            .max_by_key(|(id, s)| (!task.lost_by.contains(*id), s.free_slots(), std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone());
        let Some(session_id) = best else { return };
        queue.pop_front();
        let Some(session) = state.sessions.get_mut(&session_id) else { return };
        task.holder = Some(Holder {
            session_id: session_id.clone(),
            worker_id: session.info.worker_id.clone(),
            lease_until: Instant::now() + settings.lease_duration,
        });
        session.in_flight.insert(task_id);
        if std::mem::take(&mut task.waited) {
            let _ = task.events.send(TaskEvent::Running);
        }
        if session.outbox.send(ToWorker::Assign(Box::new(task.assignment.clone()))).is_err() {
            // The stream is gone; the lease will run out and the task go to another worker.
            tracing::debug!(session_id, "assigned to a session whose stream just closed");
        }
    }
}
