//! The persister: one writer thread between the registry and its [`RunStore`], committing in batches.
//!
//! Runs queue their writes here (new run, each event, each completed step, each state change) without waiting: the
//! engine never blocks on the disk. The thread takes everything queued, commits it in one transaction (group
//! commit: while one commit is in progress the next batch accumulates), and then advances each run's *durable
//! seq*. Readers only ever see events up to the durable seq (see [`EventLog`]), which is the rule that makes a
//! crash safe: **an event a client has seen is committed**, so after a restart its seq still means that event.
//!
//! Writes of one run are queued in the order they happened (each event is queued under its log's lock, state
//! changes under the run's state lock), and the queue is FIFO, so a batch never holds a run's seq 7 without its 6.
//!
//! A failed commit is retried, with a growing pause, until it succeeds: events cannot be dropped, so readers wait
//! (and the error is logged) rather than skip ahead.

use std::{
    collections::HashMap,
    sync::{Arc, Weak, mpsc},
    thread,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tracing::{error, warn};

use super::log::EventLog;
use crate::{
    engine::RunStatus,
    store::{RunRecord, RunStore, StateRecord, StepCheckpoint, StoreError, StoredEvent, Write},
};

/// Most writes per transaction: bounds the time one commit holds back durability of the rest.
const MAX_BATCH: usize = 8192;

/// Most reads of the store at once, each on a blocking thread. The SQLite store serves them on one connection, so
/// more would only wait there, each holding a thread and what the allocator keeps for it: 1,000 observers behind a
/// flood's window took the server to 4.3 GB of RSS on tokio's 512 blocking threads (docs/performance.md).
const MAX_READS: usize = 4;

/// A write that belongs with an event: queued in the same operation, so it is committed in the same transaction.
/// A crash then never stores the event without it: a step's result without the checkpoint that lets recovery skip
/// the step, or a `workflow_finish` without the state it announces (which would make a restart recover a run
/// whose end a client may have seen).
#[derive(Debug)]
pub enum WithEvent {
    Step(Box<StepCheckpoint>),
    State(Box<StateRecord>),
}

enum Op {
    /// A new run and its log, whose durable seq this thread advances from now on.
    Create(Box<RunRecord>, Arc<EventLog>),
    Event {
        run_id: Arc<str>,
        seq: u64,
        time: SystemTime,
        body: Bytes,
        finish: Option<RunStatus>,
        with: Option<WithEvent>,
    },
    /// Consecutive events of one run, to be committed together (with `with`).
    Events {
        run_id: Arc<str>,
        events: Vec<StoredEvent>,
        with: Option<WithEvent>,
    },
    State {
        run_id: Arc<str>,
        state: Box<StateRecord>,
    },
    /// A run loaded at start, whose log this thread advances from now on.
    Watch(Arc<str>, Arc<EventLog>),
    Trim {
        run_id: Arc<str>,
        before_seq: u64,
    },
    /// Retention of the runs only in the store.
    Expire {
        ended_before: SystemTime,
    },
    /// Answered once everything queued before it is committed.
    Flush(Box<dyn FnOnce() + Send>),
}

/// Handle to the writer thread. Dropping the last handle lets the thread commit what is queued and exit.
pub struct Persister {
    tx: mpsc::Sender<Op>,
    /// For reads (the writer thread has its own handle): events readers need that are no longer in memory.
    store: Arc<dyn RunStore>,
    describe: String,
    /// Why the last commit failed, while the store refuses writes (disk full, file read-only); `None` once one
    /// succeeds. Callers that need a write fail fast on it instead of waiting behind the retries.
    failing: tokio::sync::watch::Receiver<Option<String>>,
    /// Permits for reads of the store ([`MAX_READS`]).
    reads: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister").field("store", &self.describe).finish()
    }
}

impl Persister {
    /// Starts the writer thread. Without it nothing would become durable and every reader would wait forever, so
    /// failing to start it is the store's failure to open.
    pub fn start(store: Arc<dyn RunStore>) -> Result<Arc<Self>, StoreError> {
        let (tx, rx) = mpsc::channel();
        let describe = store.describe();
        let (failing_tx, failing) = tokio::sync::watch::channel(None);
        let writer = store.clone();
        thread::Builder::new()
            .name("runstream-store".into())
            .spawn(move || write_loop(&*writer, &rx, &failing_tx))
            .map_err(|e| StoreError::Open {
                location: describe.clone(),
                reason: format!("cannot start its writer thread: {e}"),
            })?;
        let reads = Arc::new(tokio::sync::Semaphore::new(MAX_READS));
        Ok(Arc::new(Self { tx, store, describe, failing, reads }))
    }

    /// The store, for what it says of itself (reads go through [`read`](Self::read)).
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Runs `read` on the store on a blocking thread, at most [`MAX_READS`] at once (the others wait their turn).
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn RunStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Result<T, StoreError>, tokio::task::JoinError> {
        // Never closed, so acquiring fails only if it were; reading without a permit is still correct. The permit
        // goes with the read, not with this future: a caller that gives up (its client went away) leaves the read
        // running on its thread, and its place taken until it ends.
        let permit = Arc::clone(&self.reads).acquire_owned().await.ok();
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read(&*store)
        })
        .await
    }

    /// What the store is (for messages).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Why the store refuses writes right now, if it does.
    pub fn failing(&self) -> Option<String> {
        self.failing.borrow().clone()
    }

    /// Follows [`failing`](Self::failing) as it changes (health).
    pub fn watch_failing(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failing.clone()
    }

    fn send(&self, op: Op) {
        // The thread only exits once every handle is gone, so a send fails only during process teardown.
        if self.tx.send(op).is_err() {
            warn!("the store writer has stopped; a write was not stored");
        }
    }

    pub fn create(&self, record: RunRecord, log: Arc<EventLog>) {
        self.send(Op::Create(Box::new(record), log));
    }

    pub fn event(
        &self,
        run_id: &Arc<str>,
        seq: u64,
        time: SystemTime,
        body: Bytes,
        finish: Option<RunStatus>,
        with: Option<WithEvent>,
    ) {
        self.send(Op::Event { run_id: Arc::clone(run_id), seq, time, body, finish, with });
    }

    pub fn events(&self, run_id: &Arc<str>, events: Vec<StoredEvent>, with: Option<WithEvent>) {
        self.send(Op::Events { run_id: Arc::clone(run_id), events, with });
    }

    pub fn state(&self, run_id: &Arc<str>, state: StateRecord) {
        self.send(Op::State { run_id: Arc::clone(run_id), state: Box::new(state) });
    }

    pub fn watch(&self, run_id: &Arc<str>, log: Arc<EventLog>) {
        self.send(Op::Watch(Arc::clone(run_id), log));
    }

    pub fn trim(&self, run_id: &Arc<str>, before_seq: u64) {
        self.send(Op::Trim { run_id: Arc::clone(run_id), before_seq });
    }

    pub fn expire(&self, ended_before: SystemTime) {
        self.send(Op::Expire { ended_before });
    }

    /// Waits (blocking) until everything queued so far is committed, or `limit` has passed; returns whether it
    /// was committed (a store that refuses writes would otherwise hold a shutdown forever).
    pub fn flush(&self, limit: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.send(Op::Flush(Box::new(move || {
            let _ = done_tx.send(());
        })));
        done_rx.recv_timeout(limit).is_ok()
    }

    /// Completes once everything queued so far is committed: events, and also the writes no event carries (a new
    /// run's record, the state a resume starts), which is why this is not a wait on a log's durable seq. Fails with
    /// the cause as soon as the store refuses writes (they stay queued, and are committed once it takes them).
    pub async fn stored(&self) -> Result<(), String> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.send(Op::Flush(Box::new(move || {
            let _ = done_tx.send(());
        })));
        let mut failing = self.failing.clone();
        tokio::select! {
            biased;
            _ = done_rx => Ok(()),
            refused = failing.wait_for(Option::is_some) => match refused {
                Ok(cause) => Err(cause.clone().unwrap_or_default()),
                // The writer thread is gone (process teardown): nothing more will be stored.
                Err(_) => Err("the store's writer has stopped".to_owned()),
            },
        }
    }
}

fn write_loop(store: &dyn RunStore, rx: &mpsc::Receiver<Op>, failing: &tokio::sync::watch::Sender<Option<String>>) {
    // Weak: a run that leaves memory (evicted once all its events are stored) takes its log with it; holding the
    // log here would keep every suspended run's log alive, and make "nobody holds the log" useless to eviction.
    let mut logs: HashMap<Arc<str>, Weak<EventLog>> = HashMap::new();
    let mut writes: Vec<Write> = Vec::new();
    // Per run touched by the batch: the highest seq it commits.
    let mut durable: HashMap<Arc<str>, u64> = HashMap::new();
    let mut flushes: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next.take() {
            taken += 1;
            match op {
                Op::Create(record, log) => {
                    logs.insert(record.run_id.as_str().into(), Arc::downgrade(&log));
                    writes.push(Write::CreateRun(record));
                }
                Op::Watch(run_id, log) => {
                    logs.insert(run_id, Arc::downgrade(&log));
                }
                Op::Event { run_id, seq, time, body, finish, with } => {
                    push_events(&mut writes, &run_id, [StoredEvent { seq, time, body, finish }], with);
                    durable.insert(run_id, seq);
                }
                Op::Events { run_id, events, with } => {
                    let last = events.last().map(|e| e.seq);
                    push_events(&mut writes, &run_id, events, with);
                    if let Some(seq) = last {
                        durable.insert(run_id, seq);
                    }
                }
                Op::State { run_id, state } => writes.push(Write::State { run_id: run_id.to_string(), state }),
                Op::Trim { run_id, before_seq } => {
                    writes.push(Write::TrimEvents { run_id: run_id.to_string(), before_seq })
                }
                Op::Expire { ended_before } => writes.push(Write::ExpireRuns { ended_before }),
                Op::Flush(done) => flushes.push(done),
            }
            if taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Per run, one record or state, one row of events and only the checkpoints still of use (issue 12).
        let batch = crate::store::coalesce(std::mem::take(&mut writes));
        commit_until_done(store, &batch, failing);
        writes = batch;
        writes.clear();
        for (run_id, seq) in durable.drain() {
            let Some(watched) = logs.get(&run_id) else { continue };
            match watched.upgrade() {
                Some(log) => {
                    log.mark_durable(seq);
                    // A run whose log ended for good needs no more watching.
                    if log.is_finished() {
                        logs.remove(&run_id);
                    }
                }
                // Nobody can read it any more: the run left memory.
                None => {
                    logs.remove(&run_id);
                }
            }
        }
        for done in flushes.drain(..) {
            done();
        }
    }
}

/// Adds a run's events to the batch, then the write that goes with them.
fn push_events(
    writes: &mut Vec<Write>,
    run_id: &str,
    new: impl IntoIterator<Item = StoredEvent>,
    with: Option<WithEvent>,
) {
    match writes.last_mut() {
        // Consecutive events of one run share one write.
        Some(Write::Events { run_id: last, events }) if last == run_id => events.extend(new),
        _ => writes.push(Write::Events { run_id: run_id.to_owned(), events: new.into_iter().collect() }),
    }
    match with {
        None => {}
        Some(WithEvent::Step(checkpoint)) => writes.push(Write::Step { run_id: run_id.to_owned(), checkpoint }),
        Some(WithEvent::State(state)) => writes.push(Write::State { run_id: run_id.to_owned(), state }),
    }
}

/// Commits `writes`, retrying with a growing pause until the store takes them (events must not be dropped). While
/// it refuses them, `failing` says why.
fn commit_until_done(store: &dyn RunStore, writes: &[Write], failing: &tokio::sync::watch::Sender<Option<String>>) {
    if writes.is_empty() {
        return;
    }
    let mut pause = Duration::from_millis(50);
    loop {
        match store.commit(writes) {
            Ok(()) => {
                if failing.borrow().is_some() {
                    tracing::info!("the store takes writes again");
                    failing.send_replace(None);
                }
                return;
            }
            Err(e) => {
                failing.send_replace(Some(e.to_string()));
                error!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot store {} writes; retrying", writes.len());
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
