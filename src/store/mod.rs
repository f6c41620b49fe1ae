//! Where runs outlive the process: the storage trait under the run registry, and its implementations.
//!
//! - [`RunStore`]: what the registry needs of storage, and nothing more: load everything at start, commit a batch
//!   of writes atomically, read a run's events back. It knows runs, encoded events and step checkpoints, not gRPC
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

mod memory;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::engine::{ErrorInfo, ResumeTarget, RunSnapshot, RunStatus, StepRecord};

/// A run as stored: what it was started with, and its state as of its last recorded change.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow_id: String,
    pub input: Value,
    pub request_context: Map<String, Value>,
    pub resource_id: String,
    pub created_at: SystemTime,
    pub state: StateRecord,
}

/// The mutable part of a run, written whole at each change of status (start, suspension, resume, end).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateRecord {
    pub status: RunStatus,
    pub phase: u32,
    pub snapshot: RunSnapshot,
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub updated_at: SystemTime,
    /// The resume the running phase is carrying out, so that a phase interrupted mid-resume is resumed again.
    pub resuming: Option<ResumeTarget>,
}

/// One logged event: its seq, its encoded body (the registry's encoding; opaque here) and, for a
/// `workflow_finish`, the status it announced (readers need it to know where streams end).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    /// When it was appended (retention drops old events by it).
    pub time: SystemTime,
    pub body: Bytes,
    pub finish: Option<RunStatus>,
}

/// A step the running phase completed, recorded as it completes so that recovery need not run it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCheckpoint {
    pub phase: u32,
    /// Dotted step path.
    pub path: String,
    pub record: StepRecord,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new run; comes before any other write for it.
    CreateRun(Box<RunRecord>),
    /// Events of one run, with consecutive seqs following what is stored.
    Events {
        run_id: String,
        events: Vec<StoredEvent>,
    },
    Step {
        run_id: String,
        checkpoint: Box<StepCheckpoint>,
    },
    State {
        run_id: String,
        state: Box<StateRecord>,
    },
    /// Forget a run whose retention has passed: its record, events and checkpoints.
    DeleteRun {
        run_id: String,
    },
    /// Drop a run's events with seq < `before_seq` (retention of long-lived runs' old events).
    TrimEvents {
        run_id: String,
        before_seq: u64,
    },
}

/// A run as loaded at start: its record, its whole stored log, and the checkpoints of its current phase.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRun {
    pub record: RunRecord,
    pub events: Vec<StoredEvent>,
    pub checkpoints: Vec<StepCheckpoint>,
}

/// Storage of runs, their logs and their checkpoints. Blocking: called from the registry's writer thread and at
/// start, never from async tasks.
pub trait RunStore: Send + Sync + 'static {
    /// What and where this store is, for logs and errors (e.g. `sqlite ./data/runstream.db`).
    fn describe(&self) -> String;

    /// Every stored run, oldest first, with its events and the checkpoints of its current phase.
    fn load(&self) -> Result<Vec<LoadedRun>, StoreError>;

    /// Applies `writes` in order, atomically: after a crash either all of them are stored or none.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// A store that cannot be used. Every message names the store (its file) and what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the run store {location}: {reason}")]
    Open { location: String, reason: String },

    #[error(
        "the run store {location} is unreadable ({reason}); it was left untouched: restore it from a backup, or move it \
         away to start with an empty store"
    )]
    Corrupt { location: String, reason: String },

    #[error("the run store {location} failed: {reason}")]
    Io { location: String, reason: String },
}
