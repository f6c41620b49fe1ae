//! The event log of one run: every event the run emits, numbered, kept, and readable from any cursor.
//!
//! This is the heart of runstream's stream guarantees:
//! - **Gapless numbering.** `append` assigns `seq` under the log's lock, so seq starts at 1 and rises by exactly 1
//!   per event, whichever task emits (parallel steps, foreach iterations, the registry's finish event).
//! - **Nothing lost, nothing twice.** There is one log per run and every reader is just a cursor into it, so a
//!   reader attaching at any time, with any cursor, sees exactly the events after its cursor, in order. There is no
//!   "snapshot, then subscribe" window in which events could fall between the two (the bug peers have).
//! - **Slow readers never stall the engine.** Appending never waits for readers: the log is append-only and each
//!   reader catches up at its own pace. A stalled reader costs memory that the run keeps anyway (the log is the
//!   replay buffer), never engine time, and never makes another reader lose events.
//! - **Cheap fan-out.** Entries are `Arc`s: a reader clones pointers, not payloads, in batches taken under one
//!   short lock (never held across an `.await`). Each entry also carries a cache for its encoded wire form, filled
//!   once by the first reader that needs it, so an event is encoded once however many readers it has.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::SystemTime,
};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::engine::{Event, EventKind, RunStatus};

/// How many entries a reader takes per visit to the log: large enough to amortize the lock, small enough that a
/// reader far behind does not copy a long run's log in one go.
const READ_BATCH: usize = 512;

/// One numbered event in a run's log.
///
/// The structured event is kept only until the transport has cached its encoded form: from then on the encoded
/// bytes are all any reader needs, and they are several times smaller than the event's JSON values (a run's log
/// is its replay buffer, kept as long as the run). What the log itself needs to decide when streams end, the status
/// of a `workflow_finish`, is kept apart.
#[derive(Debug)]
pub struct LogEntry {
    pub seq: u64,
    pub time: SystemTime,
    finish: Option<RunStatus>,
    /// `None` once `wire` is filled. Boxed, so that releasing it also releases its room.
    event: Mutex<Option<Box<Event>>>,
    /// The event's encoded wire form, filled by the transport layer on first use. The log does not know the
    /// encoding; it only guarantees that every reader sees the same cache.
    wire: OnceLock<Bytes>,
}

impl LogEntry {
    pub fn new(seq: u64, time: SystemTime, event: Event) -> Self {
        let finish = match &event.kind {
            EventKind::WorkflowFinish { status, .. } => Some(*status),
            _ => None,
        };
        Self { seq, time, finish, event: Mutex::new(Some(Box::new(event))), wire: OnceLock::new() }
    }

    /// The entry's encoded form: made by `encode(seq, time, event)` for the first caller, shared with every later
    /// one. The structured event is released once it is encoded.
    pub fn wire_or_init(&self, encode: impl FnOnce(u64, SystemTime, &Event) -> Bytes) -> &Bytes {
        self.wire.get_or_init(|| {
            let event = self.event.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            // Only this initializer takes the event, and it runs once, so the event is always still there.
            event.map_or_else(Bytes::new, |event| encode(self.seq, self.time, &event))
        })
    }

    /// A copy of the structured event, if it has not been encoded (and released) yet.
    pub fn event(&self) -> Option<Event> {
        self.event.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_deref().cloned()
    }

    /// The status of a `WorkflowFinish` entry, `None` for any other event.
    pub fn finish_status(&self) -> Option<RunStatus> {
        self.finish
    }
}

#[derive(Debug, Default)]
struct LogInner {
    entries: Vec<Arc<LogEntry>>,
}

/// The append-only, numbered event log of one run.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<LogInner>,
    appended: Notify,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding this lock cannot leave the Vec half-written (push is the only mutation), so a
        // poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event, giving it the next seq. Never blocks on readers.
    pub fn append(&self, event: Event, time: SystemTime) -> u64 {
        let seq = {
            let mut inner = self.lock();
            let seq = inner.entries.len() as u64 + 1;
            inner.entries.push(Arc::new(LogEntry::new(seq, time, event)));
            seq
        };
        self.appended.notify_waiters();
        seq
    }

    /// Seq of the last event, 0 when the log is empty.
    pub fn last_seq(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    /// The entry with this seq, if present.
    pub fn get(&self, seq: u64) -> Option<Arc<LogEntry>> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.lock().entries.get(index).cloned()
    }

    /// Copies up to `READ_BATCH` entries after `after_seq` into `out`; returns the log's last seq at that moment.
    fn read_after(&self, after_seq: u64, out: &mut VecDeque<Arc<LogEntry>>) -> u64 {
        let inner = self.lock();
        let len = inner.entries.len();
        let start = usize::try_from(after_seq).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(READ_BATCH).min(len);
        out.extend(inner.entries[start..end].iter().cloned());
        len as u64
    }
}

/// When a reader's stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUntil {
    /// Follow one phase (StreamRun, ResumeStream): end at the first `workflow_finish`, whatever its status, when
    /// `close_on_suspend`; otherwise at the first terminal one.
    Phase { close_on_suspend: bool },
    /// Follow the run (ObserveStream): end at a terminal `workflow_finish`; with `close_on_suspend`, also at a
    /// suspended `workflow_finish` that is the newest event when read (the run is suspended *now*; a suspension
    /// that a resume already followed is replayed, not stopped at).
    Run { close_on_suspend: bool },
}

/// A cursor into a run's log that follows it live. Reading never affects the run or other readers.
#[derive(Debug)]
pub struct LogReader {
    log: Arc<EventLog>,
    after_seq: u64,
    buffer: VecDeque<Arc<LogEntry>>,
    /// The log's last seq when `buffer` was filled.
    tip_at_fill: u64,
    until: ReadUntil,
    done: bool,
}

impl LogReader {
    /// A reader that yields the events with seq > `after_seq`.
    pub fn new(log: Arc<EventLog>, after_seq: u64, until: ReadUntil) -> Self {
        Self { log, after_seq, buffer: VecDeque::new(), tip_at_fill: 0, until, done: false }
    }

    /// The seq of the last event this reader yielded (its cursor).
    pub fn cursor(&self) -> u64 {
        self.after_seq
    }

    /// The next event, waiting for it if needed; `None` once the stream is over.
    pub async fn next(&mut self) -> Option<Arc<LogEntry>> {
        if self.done {
            return None;
        }
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        self.next_buffered()
    }

    /// The next event if one is already buffered: the fast path, with no waiting and no lock.
    pub fn next_buffered(&mut self) -> Option<Arc<LogEntry>> {
        if self.done {
            return None;
        }
        let entry = self.buffer.pop_front()?;
        self.after_seq = entry.seq;
        if let Some(status) = entry.finish_status() {
            self.done = self.ends_at(status, entry.seq == self.tip_at_fill);
        }
        Some(entry)
    }

    fn ends_at(&self, status: RunStatus, newest: bool) -> bool {
        if status.is_terminal() {
            return true;
        }
        match self.until {
            ReadUntil::Phase { close_on_suspend } => close_on_suspend,
            ReadUntil::Run { close_on_suspend } => close_on_suspend && newest,
        }
    }

    /// Waits until there is something after the cursor. `None` when the stream must end without further events:
    /// the reader is at the end of a run that is over (or suspended, when that closes this reader).
    async fn fill(&mut self) -> Option<()> {
        loop {
            // Register for the wake-up *before* looking, so an append between the look and the wait is not missed.
            let appended = self.log.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();

            self.tip_at_fill = self.log.read_after(self.after_seq, &mut self.buffer);
            if !self.buffer.is_empty() {
                return Some(());
            }
            // Nothing new: decide from the newest event whether more can come for this reader.
            if let Some(status) = self.log.get(self.tip_at_fill).and_then(|last| last.finish_status()) {
                let ends = match self.until {
                    // A phase reader that starts after its phase's finish has nothing to wait for only if the run
                    // is over; a suspended run can still be resumed into the phase it waits for.
                    ReadUntil::Phase { .. } => status.is_terminal(),
                    ReadUntil::Run { .. } => self.ends_at(status, true),
                };
                if ends {
                    self.done = true;
                    return None;
                }
            }
            appended.await;
        }
    }
}
