//! Where runs outlive the process: the storage trait under the run registry, and its implementations.
//!
//! - [`RunStore`]: what the registry needs of storage, and nothing more: load what must run at start, load or list
//!   other runs when asked (issue 12: lazy runs), commit a batch of writes atomically. It knows runs, encoded events and step checkpoints, not gRPC
//!   and not the engine's graph.
//! - [`SqliteStore`]: the embedded default, one SQLite file under `--data-dir`.
//! - [`MemoryStore`]: the same contract in memory (tests, and embedding runstream where a restart need not keep
//!   anything); `--store memory` runs the registry with no store at all, which is the same minus the copying.
//!
//! # Why batches
//!
//! The registry never writes from the engine's tasks: it queues writes to one writer thread
//! ([`crate::registry`]'s persister), which commits everything queued since its last commit in one transaction
//! (group commit). One transaction per event would cap a run at the disk's commit rate; a batch costs one commit
//! whatever its size. A store for several replicas (PostgreSQL) implements the same three methods: a batch is one
//! transaction there too, and `load` is what a replica reads when it takes over runs.

pub mod backup;
mod coalesce;
mod fold;
mod memory;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

pub use coalesce::coalesce;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::engine::{ErrorInfo, ResumeTarget, RunSnapshot, RunStatus, StepRecord};

/// A run as stored: what it was started with, and its state as of its last recorded change.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run's id (the key).
    pub run_id: String,
    /// The workflow it runs (for an agent or network run, the agent's or network's id).
    pub workflow_id: String,
    /// The version of a registered workflow (or agent) the run runs; 0 for one built into the server.
    pub workflow_version: u32,
    /// The run input.
    pub input: Value,
    /// The request context it was started with.
    pub request_context: Map<String, Value>,
    /// Owner of the run (a user, thread or tenant id), as given at start.
    pub resource_id: String,
    /// The tenant that started it (`""` on a server without authentication); no other tenant reaches it.
    pub tenant: String,
    /// When it was started.
    pub created_at: SystemTime,
    /// The registry's creation order (1, 2, ...: later runs have higher ones), stored so that ListRuns page tokens
    /// mean the same for runs in memory and runs only in the store, across restarts (issue 12: lazy runs).
    pub created_order: u64,
    /// Its state as of its last recorded change.
    pub state: StateRecord,
}

/// Which runs [`RunStore::list_runs`] returns: runs of one tenant, and each filter set must match (ANDed); `None`
/// matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Runs of this tenant only (`""`: the tenant of a server without authentication): a list never crosses
    /// tenants.
    pub tenant: String,
    /// Runs of this workflow (or agent, network).
    pub workflow_id: Option<String>,
    /// Runs whose stored state has this status.
    pub status: Option<RunStatus>,
    /// Runs of this owner.
    pub resource_id: Option<String>,
}

impl RunQuery {
    /// Whether `record` matches.
    pub fn matches(&self, record: &RunRecord) -> bool {
        record.tenant == self.tenant
            && self.workflow_id.as_deref().is_none_or(|id| record.workflow_id == id)
            && self.status.is_none_or(|status| record.state.status == status)
            && self.resource_id.as_deref().is_none_or(|id| record.resource_id == id)
    }
}

/// A run as [`RunStore::list_runs`] gives it: its record and the seq of its last stored event (ListRuns shows it).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run's record, with its last state.
    pub record: RunRecord,
    /// The seq of its last stored event (0 when it has none).
    pub last_seq: u64,
}

/// Whether a run in `status` is in flight: a restart must recover it (see [`RunStore::load_active`]).
pub fn is_active(status: RunStatus) -> bool {
    matches!(status, RunStatus::Pending | RunStatus::Running | RunStatus::Waiting)
}

/// The mutable part of a run, written whole at each change of status (start, suspension, resume, end).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateRecord {
    /// The run's status.
    pub status: RunStatus,
    /// The current (or last) phase: 1 for the first execution, +1 for each resume.
    pub phase: u32,
    /// What the engine remembers of the finished phases.
    pub snapshot: RunSnapshot,
    /// The workflow's result, once it succeeded.
    pub result: Option<Value>,
    /// Why it failed, once it did.
    pub error: Option<ErrorInfo>,
    /// When this state was recorded.
    pub updated_at: SystemTime,
    /// The resume the running phase is carrying out, so that a phase interrupted mid-resume is resumed again.
    pub resuming: Option<ResumeTarget>,
    /// Set while the run is being recovered after an unclean stop, until its phase ends or the server stops
    /// cleanly: a run found still marked, with no step completed since, brought the server down during its recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovering: Option<RecoveryMark>,
}

/// A recovery in progress: stored before the recovery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryMark {
    /// Recoveries in a row with no step completed in between (1 for the first).
    pub attempts: u32,
    /// The phase that was interrupted; the recovery runs as the next one.
    pub from_phase: u32,
}

/// One logged event: its seq, its encoded body (the registry's encoding; opaque here) and, for a
/// `workflow_finish`, the status it announced (readers need it to know where streams end).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its position in the run's log (1, 2, ..., gapless).
    pub seq: u64,
    /// When it was appended (retention drops old events by it).
    pub time: SystemTime,
    /// The encoded event, stored as is.
    pub body: Bytes,
    /// For a `workflow_finish`, the status it announced.
    pub finish: Option<RunStatus>,
}

/// A step the running phase completed, recorded as it completes so that recovery need not run it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCheckpoint {
    /// The phase that completed the step.
    pub phase: u32,
    /// Dotted step path.
    pub path: String,
    /// The step's recorded outcome.
    pub record: StepRecord,
}

/// A workflow (or agent) registered as data, one record per version.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionRecord {
    /// The tenant that registered it (`""` on a server without authentication): its alone.
    pub tenant: String,
    /// What it defines: "workflow" or "agent".
    pub kind: String,
    /// Its id.
    pub id: String,
    /// 1 for the first registration of the id, +1 for each later one.
    pub version: u32,
    /// The definition as its compiler reads it (JSON; opaque here).
    pub body: Value,
    /// When it was registered.
    pub registered_at: SystemTime,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new run; comes before any other write for it.
    CreateRun(Box<RunRecord>),
    /// Events of one run, with consecutive seqs following what is stored.
    Events {
        /// The run.
        run_id: String,
        /// The events, in seq order.
        events: Vec<StoredEvent>,
    },
    /// A step checkpoint; replaces one of the same phase and path.
    Step {
        /// The run.
        run_id: String,
        /// The checkpoint.
        checkpoint: Box<StepCheckpoint>,
    },
    /// The run's new state, replacing the stored one; checkpoints of earlier phases may then be dropped (the
    /// snapshot has them).
    State {
        /// The run.
        run_id: String,
        /// The state.
        state: Box<StateRecord>,
    },
    /// Forget a run whose retention has passed: its record, events and checkpoints.
    DeleteRun {
        /// The run.
        run_id: String,
    },
    /// A new version of a registered definition (never replaced: runs keep the version they started with).
    Definition(Box<DefinitionRecord>),
    /// Forget every run that ended (a terminal status) before `ended_before`, as [`Write::DeleteRun`] would: retention
    /// of runs that are only in the store (issue 12: a finished run leaves memory long before its retention ends).
    ExpireRuns {
        /// Runs whose state was last recorded before this, with a terminal status, go.
        ended_before: SystemTime,
    },
    /// Drop a run's events with seq < `before_seq` (retention of long-lived runs' old events).
    TrimEvents {
        /// The run.
        run_id: String,
        /// The first seq to keep.
        before_seq: u64,
    },
}

/// A run as loaded (at start, or on demand): its record, its stored log or the newest part of it (see [`Tail`]),
/// and the checkpoints of its current phase.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRun {
    /// The run's record, with its last state.
    pub record: RunRecord,
    /// Its stored events, in seq order: all of them from `events_from`, or the newest ones a [`Tail`] asked for.
    pub events: Vec<StoredEvent>,
    /// The first seq the store keeps; retention dropped the ones before it.
    pub events_from: u64,
    /// The checkpoints of its current phase.
    pub checkpoints: Vec<StepCheckpoint>,
}

/// How much of a run's log a load reads: its newest events up to `events` of them or `bytes` of bodies, whichever
/// comes first (at least one, and whole packed rows, so a little more may come). Why (issue 12): a run loaded again
/// keeps only a window of its log in memory, so reading all of a million-event log only to drop most of it cost
/// time and a peak of memory; the older events are read from the store when a reader gets to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The most events wanted.
    pub events: usize,
    /// The most bytes of event bodies wanted.
    pub bytes: usize,
}

impl Tail {
    /// The whole log.
    pub const ALL: Tail = Tail { events: usize::MAX, bytes: usize::MAX };

    /// Drops from the front of `events` (in seq order) what this tail does not ask for; keeps at least one.
    pub(crate) fn cut(self, events: &mut Vec<StoredEvent>) {
        let (mut keep, mut bytes) = (0, 0usize);
        for event in events.iter().rev() {
            if keep > 0 && (keep >= self.events || bytes >= self.bytes) {
                break;
            }
            keep += 1;
            bytes = bytes.saturating_add(event.body.len());
        }
        events.drain(..events.len() - keep);
    }
}

/// Storage of runs, their logs and their checkpoints. Blocking: called from the registry's writer thread and at
/// start, never from async tasks.
pub trait RunStore: Send + Sync + 'static {
    /// What and where this store is, for logs and errors (e.g. `sqlite ./data/runstream.db`).
    fn describe(&self) -> String;

    /// Every stored run, oldest first (by creation order), with its events and the checkpoints of its current
    /// phase.
    fn load(&self) -> Result<Vec<LoadedRun>, StoreError>;

    /// The runs a start must recover (pending, running or waiting), oldest first, as [`load`](Self::load) gives
    /// them but with only the `tail` of each log. Why (issue 12): a start loads only what must run and serves every
    /// other run lazily, so that start time and memory do not grow with history. The default filters `load`; stores
    /// worth being lazy override it.
    fn load_active(&self, tail: Tail) -> Result<Vec<LoadedRun>, StoreError> {
        let mut runs = self.load()?;
        runs.retain(|run| is_active(run.record.state.status));
        for run in &mut runs {
            tail.cut(&mut run.events);
        }
        Ok(runs)
    }

    /// One run as [`load`](Self::load) gives it but with only the `tail` of its log, `None` if none is stored under
    /// `run_id`. Why (issue 12): a run not in memory is loaded when a client asks for it. The default searches
    /// `load`.
    fn load_run(&self, run_id: &str, tail: Tail) -> Result<Option<LoadedRun>, StoreError> {
        let mut run = self.load()?.into_iter().find(|run| run.record.run_id == run_id);
        if let Some(run) = &mut run {
            tail.cut(&mut run.events);
        }
        Ok(run)
    }

    /// Up to `limit` of run `run_id`'s stored events after `after_seq`, in seq order (fewer at the end of what is
    /// stored; none for an unknown run). A run's events from before what is kept (retention) are not returned: the
    /// first one returned is then above `after_seq + 1`. Why (issue 12): a live run keeps only a window of its log
    /// in memory, and a reader behind that window reads the rest from here. The default reads `load_run`.
    fn read_events(&self, run_id: &str, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(run) = self.load_run(run_id, Tail::ALL)? else { return Ok(Vec::new()) };
        Ok(run.events.into_iter().filter(|e| e.seq > after_seq).take(limit).collect())
    }

    /// The records (no events, no checkpoints) of runs matching `query`, each with its last stored seq, newest
    /// first by creation order, only those created before `before_order` (0: from the newest), at most `limit`.
    /// Why (issue 12): ListRuns pages through stored runs without loading them. The default filters `load`.
    fn list_runs(&self, query: &RunQuery, before_order: u64, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let mut runs: Vec<RunSummary> = self
            .load()?
            .into_iter()
            .filter(|run| (before_order == 0 || run.record.created_order < before_order) && query.matches(&run.record))
            .map(|run| RunSummary { last_seq: run.events.last().map_or(0, |e| e.seq), record: run.record })
            .collect();
        runs.sort_by_key(|run| std::cmp::Reverse(run.record.created_order));
        runs.truncate(limit);
        Ok(runs)
    }

    /// The highest creation order stored (0 when there is no run). Why (issue 12): a start that loads only active
    /// runs still numbers new runs after every stored one. The default reads `load`.
    fn max_order(&self) -> Result<u64, StoreError> {
        Ok(self.load()?.iter().map(|run| run.record.created_order).max().unwrap_or(0))
    }

    /// Every registered definition version, in the order they were registered (a definition may nest one
    /// registered before it).
    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError>;

    /// Applies `writes` in order, atomically: after a crash either all of them are stored or none.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// Called at a clean stop after the last commit: folds whatever the store keeps beside its main file into it
    /// (SQLite's WAL), so that a copy of that file alone holds everything. Nothing to do for most stores.
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store that cannot be used. Every message names the store (its file) and what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened: e.g. another process has it open, or it was written by another version.
    #[error("cannot open the run store {location}: {reason}")]
    Open {
        /// The store (its file).
        location: String,
        /// Why.
        reason: String,
    },

    /// What is stored cannot be read; the store was left as it is.
    #[error(
        "the run store {location} is unreadable ({reason}); it was left untouched: restore it from a backup (see \
         `runstream backup`), or move it away with its -wal and -shm files to start with an empty store"
    )]
    Corrupt {
        /// The store (its file).
        location: String,
        /// What is wrong.
        reason: String,
    },

    /// A read or write failed.
    #[error("the run store {location} failed: {reason}")]
    Io {
        /// The store (its file).
        location: String,
        /// Why.
        reason: String,
    },
}
