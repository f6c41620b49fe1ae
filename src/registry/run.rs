//! One run: its metadata, its state machine, its event log, and the task that drives its phases.
//!
//! State and log change together: the registry appends `workflow_finish` while holding the state lock, so anyone
//! who has seen a run's finish event and then asks for its status gets the status that event announced.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::{
    TraceContext,
    admission::Permit,
    error::RegistryError,
    log::{EventEncoder, EventLog, LogReader, ReadUntil},
    persist::{Persister, WithEvent},
};
use crate::{
    clock::Clock,
    engine::{
        ErrorInfo, Event, EventKind, EventSink, EventSource, EventTooLarge, Phase, PhaseOutcome, ResumeRequest,
        ResumeTarget, RunKind, RunSnapshot, RunStatus, StepRecord, StepStatus, Workflow, execute_phase,
        executor::{CANCEL_REASON, panic_text},
        recovered_snapshot,
    },
    store::{RunRecord, StateRecord, StepCheckpoint, StoredEvent},
};

/// What a run was started with.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: Arc<str>,
    pub workflow: Arc<Workflow>,
    /// The version of a registered workflow; 0 for one built into the server.
    pub version: u32,
    pub input: Value,
    pub request_context: Arc<Map<String, Value>>,
    pub resource_id: String,
    /// The tenant that started it: only its callers reach the run.
    pub tenant: Arc<str>,
    /// Trace propagation as the caller sent it.
    pub tracing: Option<TraceContext>,
}

/// The mutable part of a run: exactly what the store keeps of it, so one type serves both.
pub type RunState = StateRecord;

/// A point-in-time copy of a run, for GetRun, GetResult and ListRuns.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub kind: RunKind,
    pub resource_id: String,
    pub input: Value,
    pub created_at: SystemTime,
    pub state: RunState,
    pub last_seq: u64,
}

pub struct Run {
    spec: RunSpec,
    created_at: SystemTime,
    /// Creation order within this process, for newest-first listing independent of id format.
    pub(super) created_order: u64,
    log: Arc<EventLog>,
    state: Mutex<RunState>,
    /// Broadcasts every status change, for result waiters.
    status_tx: watch::Sender<RunStatus>,
    /// Cancels the run for good: one token for the whole run, since a canceled run never runs again.
    cancel: CancellationToken,
    /// True while a sleep step holds the run WAITING.
    waiting: AtomicBool,
    /// `state.phase`, readable without the state lock (step checkpoints name their phase).
    phase: AtomicU32,
    clock: Arc<dyn Clock>,
    /// Where the run's changes are stored; `None` for a registry without a store.
    persist: Option<Arc<Persister>>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("run_id", &self.spec.run_id).field("workflow", self.spec.workflow.id()).finish()
    }
}

impl Run {
    pub(super) fn new(
        spec: RunSpec,
        created_order: u64,
        clock: Arc<dyn Clock>,
        encoder: Arc<dyn EventEncoder>,
        persist: Option<Arc<Persister>>,
    ) -> Arc<Self> {
        let now = clock.now();
        let state = RunState {
            status: RunStatus::Pending,
            phase: 1,
            snapshot: RunSnapshot::default(),
            result: None,
            error: None,
            updated_at: now,
            resuming: None,
            recovering: None,
        };
        let log = match &persist {
            Some(persister) => EventLog::gated(encoder, spec.run_id.clone(), persister.clone()),
            None => EventLog::new(encoder),
        };
        // Whole milliseconds, the precision the store keeps: GetRun shows the same creation time after a restart.
        let created_at = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_millis() * 1_000_000),
            Err(_) => now,
        };
        Self::assemble(spec, created_at, created_order, Arc::new(log), state, clock, persist)
    }

    /// A run loaded from the store, with its log as stored (the newest events, and the first seq the store keeps).
    /// Not started: the registry decides what happens next.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restore(
        spec: RunSpec,
        created_at: SystemTime,
        created_order: u64,
        state: StateRecord,
        (events, events_from): (Vec<StoredEvent>, u64),
        clock: Arc<dyn Clock>,
        encoder: Arc<dyn EventEncoder>,
        persister: Arc<Persister>,
    ) -> Arc<Self> {
        let log = EventLog::restore(encoder, spec.run_id.clone(), persister.clone(), events, events_from);
        let run = Self::assemble(spec, created_at, created_order, Arc::new(log), state, clock, Some(persister.clone()));
        if !run.status().is_terminal() {
            persister.watch(run.id(), run.log.clone());
        }
        run
    }

    fn assemble(
        spec: RunSpec,
        created_at: SystemTime,
        created_order: u64,
        log: Arc<EventLog>,
        state: RunState,
        clock: Arc<dyn Clock>,
        persist: Option<Arc<Persister>>,
    ) -> Arc<Self> {
        let status = state.status;
        let phase = state.phase;
        Arc::new(Self {
            spec,
            created_at,
            created_order,
            log,
            state: Mutex::new(state),
            status_tx: watch::Sender::new(status),
            cancel: CancellationToken::new(),
            waiting: AtomicBool::new(false),
            phase: AtomicU32::new(phase),
            clock,
            persist,
        })
    }

    /// Queues the state for storage. Called under the state lock, so states are stored in the order they happen.
    fn persist_state(&self, state: &RunState) {
        if let Some(persister) = &self.persist {
            persister.state(&self.spec.run_id, state.clone());
        }
    }

    /// The state, to be stored with the event that announces it ([`EventLog::append_with`]); `None` without a store.
    fn state_with_event(&self, state: &RunState) -> Option<WithEvent> {
        self.persist.as_ref().map(|_| WithEvent::State(Box::new(state.clone())))
    }

    pub fn id(&self) -> &Arc<str> {
        &self.spec.run_id
    }

    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.spec.workflow
    }

    /// The input the run was started with.
    pub fn input(&self) -> &Value {
        &self.spec.input
    }

    pub fn resource_id(&self) -> &str {
        &self.spec.resource_id
    }

    /// The tenant that started it.
    pub fn tenant(&self) -> &str {
        &self.spec.tenant
    }

    pub fn status(&self) -> RunStatus {
        self.lock_state().status
    }

    pub fn last_seq(&self) -> u64 {
        self.log.last_seq()
    }

    fn lock_state(&self) -> MutexGuard<'_, RunState> {
        // Every mutation of RunState is a plain field assignment, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn view(&self) -> RunView {
        let state = self.lock_state().clone();
        RunView {
            run_id: self.spec.run_id.clone(),
            workflow_id: self.spec.workflow.id().clone(),
            kind: self.spec.workflow.kind(),
            resource_id: self.spec.resource_id.clone(),
            input: self.spec.input.clone(),
            created_at: self.created_at,
            last_seq: self.log.last_seq(),
            state,
        }
    }

    /// True if the run is over and ended before `cutoff` (retention may forget it).
    pub(super) fn ended_before(&self, cutoff: SystemTime) -> bool {
        let state = self.lock_state();
        state.status.is_terminal() && state.updated_at < cutoff
    }

    /// Whether the run is done for now (finished, or suspended until a client resumes it) since before `cutoff`,
    /// with every event it appended stored: then the store holds all of it, and it may leave memory.
    pub(super) fn is_idle_since(&self, cutoff: SystemTime) -> bool {
        let state = self.lock_state();
        let resting = state.status.is_terminal() || matches!(state.status, RunStatus::Suspended | RunStatus::Paused);
        resting && state.updated_at <= cutoff && self.is_stored()
    }

    /// Whether nobody but the run holds its log: no reader is attached.
    pub(super) fn log_unshared(&self) -> bool {
        Arc::strong_count(&self.log) == 1
    }

    /// Drops the log's events appended before `cutoff` (see [`EventLog::trim_before`]); the new first seq if any.
    pub(super) fn trim_log(&self, cutoff: SystemTime) -> Option<u64> {
        self.log.trim_before(cutoff)
    }

    /// Waits until everything this run has done so far is stored (at once without a store): its record, its
    /// events, and the state they announce. RPCs that report a status or result call this first, so that nothing
    /// they tell a client is undone by a crash. Fails at once, naming the store and the cause, while the store
    /// refuses writes.
    pub async fn stored(&self) -> Result<(), RegistryError> {
        let Some(persister) = &self.persist else { return Ok(()) };
        persister
            .stored()
            .await
            .map_err(|cause| RegistryError::StoreUnavailable { store: persister.describe().to_owned(), cause })
    }

    /// Seq of the last event appended, stored or not.
    #[cfg(test)]
    pub(super) fn appended_seq(&self) -> u64 {
        self.log.appended_seq()
    }

    /// Whether every event this run appended is stored: then what it shows is what a restart would find, even
    /// while the store refuses other writes (its finish carries its final state).
    pub fn is_stored(&self) -> bool {
        self.log.last_seq() == self.log.appended_seq()
    }

    /// A reader of this run's events after `after_seq`.
    pub fn reader(&self, after_seq: u64, until: ReadUntil) -> Result<LogReader, RegistryError> {
        // Against what was appended, not what is durable: a cursor between the two cannot come from a client, but
        // a caller racing a commit must not be told its valid cursor is ahead.
        let last_seq = self.log.appended_seq();
        if after_seq > last_seq {
            return Err(RegistryError::CursorAhead { run_id: self.spec.run_id.to_string(), after_seq, last_seq });
        }
        let first_seq = self.log.first_seq();
        if after_seq + 1 < first_seq {
            return Err(RegistryError::CursorExpired { run_id: self.spec.run_id.to_string(), after_seq, first_seq });
        }
        Ok(LogReader::new(self.log.clone(), after_seq, until))
    }

    /// Starts the first phase. Called once, right after the run is registered.
    pub(super) fn start(self: &Arc<Self>, permit: Permit) {
        {
            let mut state = self.lock_state();
            state.status = RunStatus::Running;
            state.updated_at = self.clock.now();
            // Stored before the phase can append its first event: the store gets the run before its events.
            if let Some(persister) = &self.persist {
                let record = RunRecord {
                    run_id: self.spec.run_id.to_string(),
                    workflow_id: self.spec.workflow.id().to_string(),
                    workflow_version: self.spec.version,
                    input: self.spec.input.clone(),
                    request_context: (*self.spec.request_context).clone(),
                    resource_id: self.spec.resource_id.clone(),
                    tenant: self.spec.tenant.to_string(),
                    created_at: self.created_at,
                    created_order: self.created_order,
                    state: state.clone(),
                };
                persister.create(record, self.log.clone());
            }
        }
        self.status_tx.send_replace(RunStatus::Running);
        self.spawn_phase(None, false, permit);
    }

    /// Continues a run that was in flight when the process stopped: the steps its interrupted phase completed
    /// (`checkpoints`) are kept, a `RunRecovered` event (source `System`) says so, and the next phase replays the
    /// snapshot, running again the step that was running (and a resume that had not finished).
    pub(super) fn recover(self: &Arc<Self>, checkpoints: Vec<StepCheckpoint>, permit: Permit) {
        let resume = {
            let mut state = self.lock_state();
            let interrupted_phase = state.phase;
            let completed: Vec<(String, StepRecord)> = checkpoints.into_iter().map(|c| (c.path, c.record)).collect();
            let snapshot = recovered_snapshot(&self.spec.workflow, state.snapshot.clone(), completed.clone());
            let completed_steps: Vec<String> = completed
                .into_iter()
                .filter(|(path, record)| snapshot.steps.get(path.as_str()) == Some(record))
                .map(|(path, _)| path)
                .collect();
            // A resume whose step completed before the crash is done; one that did not is carried out again.
            let resume = state.resuming.take().filter(|target| snapshot.suspended.contains_key(&target.step_id));
            state.snapshot = snapshot;
            state.phase += 1;
            self.phase.store(state.phase, Ordering::Relaxed);
            state.status = RunStatus::Running;
            state.resuming = resume.clone();
            state.updated_at = self.clock.now();
            let reason = format!(
                "runstream restarted while phase {interrupted_phase} was in flight; continuing as phase {}",
                state.phase
            );
            let kind = EventKind::RunRecovered { interrupted_phase, completed_steps, reason };
            let recovered = Event { source: EventSource::System, kind };
            self.log.append_with(&recovered, self.clock.now(), self.state_with_event(&state));
            resume
        };
        self.status_tx.send_replace(RunStatus::Running);
        self.spawn_phase(resume, true, permit);
    }

    /// Claims a suspended run for a resume and starts the resume phase. Exactly one of several concurrent callers
    /// wins: the claim (suspended -> running) happens under the state lock. Returns the seq after which the new
    /// phase's events will appear.
    pub(super) fn resume(self: &Arc<Self>, request: ResumeRequest, permit: Permit) -> Result<u64, RegistryError> {
        let (target, start_seq) = {
            let mut state = self.lock_state();
            if state.status != RunStatus::Suspended {
                return Err(RegistryError::NotSuspended { run_id: self.spec.run_id.to_string(), status: state.status });
            }
            let target = self
                .spec
                .workflow
                .resolve_resume(&state.snapshot, request)
                .map_err(|source| RegistryError::Resume { run_id: self.spec.run_id.to_string(), source })?;
            state.status = RunStatus::Running;
            state.phase += 1;
            self.phase.store(state.phase, Ordering::Relaxed);
            state.updated_at = self.clock.now();
            state.resuming = Some(target.clone());
            self.persist_state(&state);
            // Nothing appends while the run is suspended, so this is where the resume phase's events begin.
            (target, self.log.appended_seq())
        };
        self.status_tx.send_replace(RunStatus::Running);
        self.spawn_phase(Some(target), false, permit);
        Ok(start_seq)
    }

    /// Runs one phase on its own task and records its outcome. Step code that panics fails the run instead of
    /// leaving it "running" forever. The phase holds `permit` (its place among the runs executing) until it ends.
    fn spawn_phase(self: &Arc<Self>, resume: Option<ResumeTarget>, recovering: bool, permit: Permit) {
        let (snapshot, phase) = {
            let state = self.lock_state();
            (state.snapshot.clone(), state.phase)
        };
        let phase = Phase {
            run_id: self.spec.run_id.clone(),
            tenant: self.spec.tenant.clone(),
            workflow: self.spec.workflow.clone(),
            input: self.spec.input.clone(),
            request_context: self.spec.request_context.clone(),
            phase,
            snapshot,
            resume,
            recovering,
            sink: self.clone(),
            clock: self.clock.clone(),
            cancel: self.cancel.clone(),
        };
        let run = self.clone();
        let trace_id = self.spec.tracing.as_ref().map(|t| t.trace_id.as_str()).unwrap_or_default();
        let span = tracing::info_span!(
            "run",
            run_id = %self.spec.run_id,
            workflow = %self.spec.workflow.id(),
            phase = phase.phase,
            trace_id,
        );
        // One task per phase: the phase and its finish. A panic that escapes the executor (step panics are caught
        // inside it) fails the run rather than leaving it running.
        tokio::spawn(
            async move {
                let outcome = match AssertUnwindSafe(execute_phase(phase)).catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        let message = panic_text(&*panic);
                        warn!(run_id = %run.spec.run_id, error = %message, "phase task panicked");
                        let snapshot = run.lock_state().snapshot.clone();
                        PhaseOutcome {
                            status: RunStatus::Failed,
                            result: None,
                            error: Some(ErrorInfo::new(
                                "InternalError",
                                format!("the workflow task failed: panicked: {message}"),
                            )),
                            snapshot,
                        }
                    }
                };
                // Its place is given back before the end is shown: a client that resumes the moment it sees the
                // run suspended must not find it still counted.
                drop(permit);
                run.finish_phase(outcome);
            }
            .instrument(span),
        );
    }

    /// Records a phase's outcome and appends its `workflow_finish`, atomically with respect to readers of the
    /// state.
    fn finish_phase(&self, outcome: PhaseOutcome) {
        self.end_phase(self.lock_state(), outcome);
    }

    /// Ends the current phase with `outcome`: the new state and the `workflow_finish` (after `workflow_canceled`
    /// for a cancel) go into the log, and to the store, together. Takes the state lock and releases it.
    fn end_phase(&self, mut state: MutexGuard<'_, RunState>, outcome: PhaseOutcome) {
        let PhaseOutcome { mut status, result, mut error, snapshot } = outcome;
        let now = self.clock.now();
        // A cancel that arrived while the phase was ending must not leave the run suspended.
        if self.cancel.is_cancelled() && !status.is_terminal() {
            status = RunStatus::Canceled;
            error = Some(canceled_error());
        }
        let usage = snapshot.usage;
        state.status = status;
        state.snapshot = snapshot;
        state.updated_at = now;
        state.resuming = None;
        state.result = None;
        state.error = None;
        // The phase ended: whatever brought the server down before did not stop this run.
        state.recovering = None;
        // The result and error move through the event into the state: the log keeps only the event's encoding.
        let finish =
            Event { source: EventSource::Workflow, kind: EventKind::WorkflowFinish { status, result, error, usage } };
        // The new state is stored in the same commit as the finish event: never one without the other.
        let stored = match (&self.persist, &finish.kind) {
            (Some(_), EventKind::WorkflowFinish { result, error, .. }) => {
                let mut record = state.clone();
                record.result = result.clone();
                record.error = error.clone();
                Some(WithEvent::State(Box::new(record)))
            }
            _ => None,
        };
        if status == RunStatus::Canceled {
            // `workflow_canceled` (the executor's is not logged, see `emit_ref`), the finish and the state in one
            // commit: a restart never finds a cancel in the log of a run it would recover.
            self.log.append_group(&[&canceled_event(), &finish], now, stored);
        } else {
            self.log.append_with(&finish, now, stored);
        }
        if let EventKind::WorkflowFinish { result, error, .. } = finish.kind {
            state.result = result;
            state.error = error;
        }
        drop(state);
        debug!(run_id = %self.spec.run_id, status = status.as_str(), "phase finished");
        self.status_tx.send_replace(status);
    }

    /// Fails a run loaded in flight instead of recovering it (its recovery kept bringing the server down): its log
    /// ends with a `workflow_finish` FAILED whose error says why.
    /// The steps `checkpoints` recorded as completed stay completed in its final state, as a recovery would keep them.
    pub(super) fn fail_unrecoverable(&self, reason: &str, checkpoints: Vec<StepCheckpoint>) {
        let mut state = self.lock_state();
        let completed: Vec<(String, StepRecord)> = checkpoints.into_iter().map(|c| (c.path, c.record)).collect();
        let snapshot = recovered_snapshot(&self.spec.workflow, std::mem::take(&mut state.snapshot), completed);
        let error = ErrorInfo::new("RecoveryFailed", reason);
        let outcome = PhaseOutcome { status: RunStatus::Failed, result: None, error: Some(error), snapshot };
        self.end_phase(state, outcome);
    }

    /// At a clean stop: the recovery in progress, if any, did not bring the server down.
    pub(super) fn clear_recovery_mark(&self) {
        let mut state = self.lock_state();
        if state.recovering.take().is_some() && !state.status.is_terminal() {
            self.persist_state(&state);
        }
    }

    /// Cancels the run. A running or sleeping run is canceled by its executor (whose `workflow_canceled` is logged
    /// by `finish_phase`, with the finish); a suspended one is ended here. Returns false when the run had already
    /// ended.
    pub(super) fn cancel(&self) -> bool {
        let mut state = self.lock_state();
        if state.status.is_terminal() {
            return false;
        }
        self.cancel.cancel();
        if matches!(state.status, RunStatus::Suspended | RunStatus::Paused) {
            // No phase is running: end the suspended one here, as its executor would have.
            let mut snapshot = std::mem::take(&mut state.snapshot);
            snapshot.suspended.clear();
            let outcome =
                PhaseOutcome { status: RunStatus::Canceled, result: None, error: Some(canceled_error()), snapshot };
            self.end_phase(state, outcome);
        }
        true
    }

    /// Waits until the run's status satisfies `done`, or `timeout` passes. Returns whether it did.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(RunStatus) -> bool) -> bool {
        let mut status_rx = self.status_tx.subscribe();
        let wait = status_rx.wait_for(|status| done(*status));
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }
}

fn canceled_event() -> Event {
    Event { source: EventSource::Workflow, kind: EventKind::WorkflowCanceled { reason: CANCEL_REASON.to_owned() } }
}

fn canceled_error() -> ErrorInfo {
    ErrorInfo::new("Canceled", "the run was canceled by CancelRun")
}

/// The engine emits into the run: the log numbers the event, and sleep events move the status to and from WAITING.
impl EventSink for Run {
    fn emit(&self, event: Event) {
        self.emit_ref(&event);
    }

    fn emit_ref(&self, event: &Event) {
        let _ = self.append(event, false);
    }

    fn try_emit_ref(&self, event: &Event) -> Result<(), EventTooLarge> {
        self.append(event, true)
    }

    fn step_running(&self) {
        if self.waiting.load(Ordering::Acquire) {
            self.set_status_if(RunStatus::Waiting, RunStatus::Running);
        }
    }

    fn ready(&self) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        self.log.room()
    }
}

impl Run {
    /// Appends an engine event to the log (refused when `checked` and too large for the encoder), with what goes
    /// with it: status changes of sleeps, a step's checkpoint.
    fn append(&self, event: &Event, checked: bool) -> Result<(), EventTooLarge> {
        match &event.kind {
            // The executor's last event of a canceled phase: `finish_phase` logs it with the finish, in one commit.
            EventKind::WorkflowCanceled { .. } => return Ok(()),
            EventKind::StepWaiting { .. } => self.set_status_if(RunStatus::Running, RunStatus::Waiting),
            // Only a run a step_waiting made WAITING needs the state lock here; every other step result skips it. A
            // step_start after a wait is the next attempt of a step that waited out its retry delay.
            EventKind::StepResult { .. } | EventKind::StepStart { .. } if self.waiting.load(Ordering::Acquire) => {
                self.set_status_if(RunStatus::Waiting, RunStatus::Running)
            }
            _ => {}
        }
        // A step's checkpoint is stored in the same commit as its result: a recovery skips every step whose
        // result a client may have seen.
        let checkpoint = match (&self.persist, &event.kind) {
            (Some(_), EventKind::StepResult { step_id, status: StepStatus::Success, .. }) => {
                Some(WithEvent::Step(Box::new(self.checkpoint(step_id, &event.kind))))
            }
            _ => None,
        };
        if checked {
            self.log.try_append_with(event, self.clock.now(), checkpoint)?;
        } else {
            self.log.append_with(event, self.clock.now(), checkpoint);
        }
        Ok(())
    }
}

impl Run {
    /// The checkpoint of a step that just succeeded: what a recovery needs to skip it (its output).
    fn checkpoint(&self, path: &str, result: &EventKind) -> StepCheckpoint {
        let (output, attempts, started_at, ended_at) = match result {
            EventKind::StepResult { output, attempts, started_at, ended_at, .. } => {
                (output.clone(), *attempts, *started_at, Some(*ended_at))
            }
            _ => (None, 0, self.clock.now(), None),
        };
        let record = StepRecord {
            status: StepStatus::Success,
            input: Value::Null,
            output,
            error: None,
            suspend_payload: None,
            resume_data: None,
            attempts,
            started_at,
            ended_at,
            suspended_at: None,
            resumed_at: None,
        };
        StepCheckpoint { phase: self.phase.load(Ordering::Relaxed), path: path.to_owned(), record }
    }

    fn set_status_if(&self, from: RunStatus, to: RunStatus) {
        let mut state = self.lock_state();
        if state.status == from {
            state.status = to;
            state.updated_at = self.clock.now();
            // Changed under the state lock, so it always agrees with the status it summarizes.
            self.waiting.store(to == RunStatus::Waiting, Ordering::Release);
            drop(state);
            self.status_tx.send_replace(to);
        }
    }
}
