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
//! - **Cheap fan-out.** Each event is encoded once, when it is appended, by the transport's [`EventEncoder`]; the
//!   log keeps only those bytes (the structured event is dropped at once), packed into per-run chunks, so a reader
//!   copies reference-counted slices, not payloads, in batches taken under one short lock (never held across an
//!   `.await`). Encoding happens before the lock is taken; under it, the bytes are copied into the chunk.
//! - **Readers see only what is stored.** With a store, the log is *gated*: each append is queued to the
//!   persister (under the log's lock, so in seq order) and readers see events only up to the *durable seq* the
//!   persister advances after each commit. Without a store the durable seq is simply the last seq.
//! - **Writers wait for the store, not for readers.** A gated log with more than [`MAX_UNSTORED`] events not yet
//!   durable makes step code's writes wait ([`EventLog::room`]) until a commit brings it back under: a step that
//!   writes faster than the store commits slows itself, and its backlog in the persister's queue stays bounded,
//!   so other runs' events never queue behind it for long. The engine's own events never wait.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::{
    error::RegistryError,
    persist::{Persister, WithEvent},
};
use crate::{
    engine::{Event, EventKind, EventTooLarge, RunStatus},
    store::{StoredEvent, Tail},
};

/// How many entries a reader takes per visit to the log: large enough to amortize the lock, small enough that a
/// reader far behind does not copy a long run's log in one go.
const READ_BATCH: usize = 512;

/// A live run of a registry with a store keeps in memory only the newest of its durable events, at least this many
/// and this many bytes (older ones are read back from the store by the readers that need them): a long run's log
/// is history too (issue 12). It sheds down to the window once it holds twice as much, so that shedding is
/// amortized (a `Vec` drains from its front by moving what stays). A window of a few thousand events is what a
/// reader a little behind needs without a store read; 8,192 events of ~40 bytes plus their entries is ~1 MB.
const WINDOW_EVENTS: usize = 8192;
const WINDOW_BYTES: usize = 1 << 20;

/// What a run loaded from the store reads of its log: its window (the rest is read when a reader gets to it).
pub(super) const WINDOW: Tail = Tail { events: WINDOW_EVENTS, bytes: WINDOW_BYTES };

/// The first chunk a run's encoded events are packed into; each next chunk is as large as everything stored so far
/// (so a short run wastes at most about half of its small log), up to `MAX_CHUNK`.
const MIN_CHUNK: usize = 256;
const MAX_CHUNK: usize = 64 * 1024;

/// How many events of one run may be appended but not yet durable before step code's writes wait for the store.
/// The persister takes everything queued per commit, so this is about one commit's worth of the run's events:
/// large enough that a commit's fixed cost (the transaction, the WAL sync) is shared by many events, small enough
/// that another run's event queued behind a flood waits for at most this many of its events. Measured with the
/// `b@durable` and `latency@durable` scenarios (docs/performance.md, "Issue 12: back-pressure"): 1,024, 4,096 and
/// 16,384 streamed B alike (within the noise), and the latency p99 under B rose with the limit (31-46, 52-64 and
/// 117 ms), so the smallest.
pub(super) const MAX_UNSTORED: u64 = 1024;

/// How a log stores its events: the transport's encoding, made once per event at append. The registry does not
/// know the encoding; it keeps the bytes and hands them to readers with their seq.
pub trait EventEncoder: Send + Sync + 'static {
    /// Appends the stored form of `event`, appended at `time`, to `out`.
    fn encode(&self, time: SystemTime, event: &Event, out: &mut Vec<u8>);

    /// Refuses a writer's event whose stored form, `body_bytes` long, is too large to be streamed
    /// ([`EventLog::try_append_with`]). Default: no limit.
    fn check_size(&self, body_bytes: usize) -> Result<(), EventTooLarge> {
        let _ = body_bytes;
        Ok(())
    }
}

/// One numbered event, as readers get it: its seq and its encoded bytes (a shared slice, cheap to clone).
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: u64,
    /// The event as the log's [`EventEncoder`] wrote it.
    pub bytes: Bytes,
    finish: Option<RunStatus>,
}

impl LoggedEvent {
    /// The status of a `WorkflowFinish` entry, `None` for any other event.
    pub fn finish_status(&self) -> Option<RunStatus> {
        self.finish
    }
}

/// What the log keeps per event; the seq is its index + 1. What the log itself needs to decide when streams end,
/// the status of a `workflow_finish`, is kept apart from the encoded bytes.
#[derive(Debug)]
struct Stored {
    bytes: Bytes,
    finish: Option<RunStatus>,
    /// When it was appended, in whole UNIX seconds: for retention. (Fits in the padding after `finish`.)
    at_secs: u32,
}

fn unix_secs(time: SystemTime) -> u32 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[derive(Debug, Default)]
struct LogInner {
    entries: Vec<Stored>,
    /// Seqs up to `base` are not in memory; `entries[0]` has seq `base + 1`. Those above `trimmed` are in the store.
    base: u64,
    /// Seqs up to `trimmed` are no longer kept anywhere (retention); `trimmed <= base`.
    trimmed: u64,
    /// The bytes of the events in `entries`.
    resident_bytes: usize,
    /// When the newest event shed from memory was appended (UNIX seconds): retention of what is only in the store.
    shed_at_secs: u32,
    /// Readers see seqs up to this one (gated logs; ungated logs keep it equal to the last seq).
    durable: u64,
    /// The chunk being filled: each event's bytes are split off it, so a chunk is one allocation for many events
    /// and readers' clones are reference-count increments.
    chunk: BytesMut,
    /// Bytes stored so far, to size the next chunk.
    stored: usize,
    /// Set by a reader that found nothing new and is about to wait; the next append wakes the waiting readers
    /// and clears it. Appends with nobody waiting skip the wake-up entirely.
    reader_waiting: bool,
    /// Set by a writer waiting for room ([`EventLog::room`]); the next commit that makes room wakes it.
    writer_waiting: bool,
}

impl LogInner {
    fn unstored(&self) -> u64 {
        (self.base + self.entries.len() as u64).saturating_sub(self.durable)
    }
}

impl LogInner {
    /// Copies one encoded event into the current chunk (or a new one) and returns its slice.
    fn store(&mut self, encoded: &[u8]) -> Bytes {
        let n = encoded.len();
        self.stored += n;
        self.resident_bytes += n;
        if n > MAX_CHUNK / 4 {
            // A large event gets its own allocation rather than wasting the rest of a chunk.
            return Bytes::copy_from_slice(encoded);
        }
        if self.chunk.capacity() - self.chunk.len() < n {
            self.chunk = BytesMut::with_capacity(self.stored.clamp(MIN_CHUNK, MAX_CHUNK).max(n));
        }
        self.chunk.extend_from_slice(encoded);
        self.chunk.split().freeze()
    }
}

thread_local! {
    /// Where events are encoded before the log's lock is taken; reused, so encoding allocates nothing.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The append-only, numbered event log of one run.
pub struct EventLog {
    inner: Mutex<LogInner>,
    appended: Notify,
    /// Wakes writers waiting for room.
    room: Notify,
    /// True while more than `MAX_UNSTORED` events are not yet durable: the writers' fast path reads only this.
    full: AtomicBool,
    encoder: Arc<dyn EventEncoder>,
    /// Set for a gated log: where appends are queued for storage, and the run they belong to.
    persist: Option<(Arc<str>, Arc<Persister>)>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("last_seq", &self.last_seq()).finish_non_exhaustive()
    }
}

impl EventLog {
    /// An ungated log: readers see each event as soon as it is appended.
    pub fn new(encoder: Arc<dyn EventEncoder>) -> Self {
        Self::with_persist(encoder, None)
    }

    /// A gated log of run `run_id`: appends go to `persister`, readers see them once it has committed them.
    pub(super) fn gated(encoder: Arc<dyn EventEncoder>, run_id: Arc<str>, persister: Arc<Persister>) -> Self {
        Self::with_persist(encoder, Some((run_id, persister)))
    }

    fn with_persist(encoder: Arc<dyn EventEncoder>, persist: Option<(Arc<str>, Arc<Persister>)>) -> Self {
        Self {
            inner: Mutex::default(),
            appended: Notify::new(),
            room: Notify::new(),
            full: AtomicBool::new(false),
            encoder,
            persist,
        }
    }

    /// A log loaded from the store: every event in it is durable. `events` have consecutive seqs: the newest part
    /// of the log (see [`WINDOW`]); `events_from` is the first seq the store keeps (above 1 when retention trimmed
    /// the log), and readers of the seqs in between read them from the store.
    pub(super) fn restore(
        encoder: Arc<dyn EventEncoder>,
        run_id: Arc<str>,
        persister: Arc<Persister>,
        events: Vec<StoredEvent>,
        events_from: u64,
    ) -> Self {
        let log = Self::gated(encoder, run_id, persister);
        {
            let mut inner = log.lock();
            // The events from `events_from` up to the first one given are in the store only.
            let trimmed = events_from.saturating_sub(1);
            inner.base = events.first().map_or(trimmed, |e| e.seq.saturating_sub(1));
            inner.trimmed = trimmed.min(inner.base);
            // Those are no newer than the first one given: retention drops them once it would drop that one.
            inner.shed_at_secs = events.first().map_or(0, |e| unix_secs(e.time));
            inner.stored = events.iter().map(|e| e.body.len()).sum();
            inner.resident_bytes = inner.stored;
            inner.entries = events
                .into_iter()
                .map(|e| Stored { bytes: e.body, finish: e.finish, at_secs: unix_secs(e.time) })
                .collect();
            inner.durable = inner.base + inner.entries.len() as u64;
            inner.shed();
        }
        log
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding this lock cannot leave the log half-written (each push is one mutation after the
        // bytes are stored), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event, giving it the next seq. Never blocks on readers. The log keeps only the event's encoding:
    /// callers drop or reuse the event.
    pub fn append(&self, event: &Event, time: SystemTime) -> u64 {
        self.append_with(event, time, None)
    }

    /// [`append`](Self::append), with a write the store must commit together with the event (a gated log queues
    /// both in one operation; an ungated log has no store and drops `with`).
    pub(super) fn append_with(&self, event: &Event, time: SystemTime, with: Option<WithEvent>) -> u64 {
        self.append_encoded(event, time, with, false).unwrap_or_default()
    }

    /// [`append_with`](Self::append_with), unless the encoder finds the event too large
    /// ([`EventEncoder::check_size`]): then nothing is appended (nor `with` queued).
    pub(super) fn try_append_with(
        &self,
        event: &Event,
        time: SystemTime,
        with: Option<WithEvent>,
    ) -> Result<u64, EventTooLarge> {
        self.append_encoded(event, time, with, true)
    }

    fn append_encoded(
        &self,
        event: &Event,
        time: SystemTime,
        with: Option<WithEvent>,
        checked: bool,
    ) -> Result<u64, EventTooLarge> {
        let finish = match &event.kind {
            EventKind::WorkflowFinish { status, .. } => Some(*status),
            _ => None,
        };
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            self.encoder.encode(time, event, scratch);
            if checked && let Err(too_large) = self.encoder.check_size(scratch.len()) {
                *scratch = Vec::new();
                return Err(too_large);
            }
            let (seq, wake) = {
                let mut inner = self.lock();
                let bytes = inner.store(scratch);
                let seq = inner.base + inner.entries.len() as u64 + 1;
                let wake = match &self.persist {
                    // Queued under the lock, so the persister gets each run's events in seq order.
                    Some((run_id, persister)) => {
                        persister.event(run_id, seq, time, bytes.clone(), finish, with);
                        if seq.saturating_sub(inner.durable) > MAX_UNSTORED {
                            self.full.store(true, Ordering::Release);
                        }
                        false
                    }
                    None => {
                        inner.durable = seq;
                        std::mem::take(&mut inner.reader_waiting)
                    }
                };
                inner.entries.push(Stored { bytes, finish, at_secs: unix_secs(time) });
                (seq, wake)
            };
            if wake {
                self.appended.notify_waiters();
            }
            if scratch.capacity() > MAX_CHUNK {
                // One huge event must not pin its size in every thread that ever encoded one.
                *scratch = Vec::new();
            }
            Ok(seq)
        })
    }

    /// Appends `events` with consecutive seqs, queued for storage as one operation together with `with`: the store
    /// commits all of them in one transaction (a `workflow_canceled` and the `workflow_finish` after it, with the
    /// state they end the run in). Returns the seq of the last one.
    pub(super) fn append_group(&self, events: &[&Event], time: SystemTime, with: Option<WithEvent>) -> u64 {
        let encoded: Vec<(Vec<u8>, Option<RunStatus>)> = events
            .iter()
            .map(|event| {
                let mut bytes = Vec::new();
                self.encoder.encode(time, event, &mut bytes);
                let finish = match &event.kind {
                    EventKind::WorkflowFinish { status, .. } => Some(*status),
                    _ => None,
                };
                (bytes, finish)
            })
            .collect();
        let (seq, wake) = {
            let mut inner = self.lock();
            let mut stored = Vec::with_capacity(encoded.len());
            for (bytes, finish) in &encoded {
                let bytes = inner.store(bytes);
                let seq = inner.base + inner.entries.len() as u64 + 1;
                inner.entries.push(Stored { bytes: bytes.clone(), finish: *finish, at_secs: unix_secs(time) });
                stored.push(StoredEvent { seq, time, body: bytes, finish: *finish });
            }
            let seq = inner.base + inner.entries.len() as u64;
            let wake = match &self.persist {
                Some((run_id, persister)) => {
                    persister.events(run_id, stored, with);
                    false
                }
                None => {
                    inner.durable = seq;
                    std::mem::take(&mut inner.reader_waiting)
                }
            };
            (seq, wake)
        };
        if wake {
            self.appended.notify_waiters();
        }
        seq
    }

    /// Seq of the last event readers can see (the last durable one), 0 when there is none.
    pub fn last_seq(&self) -> u64 {
        self.lock().durable
    }

    /// Seq of the last event appended, durable or not.
    pub fn appended_seq(&self) -> u64 {
        let inner = self.lock();
        inner.base + inner.entries.len() as u64
    }

    /// The oldest seq still kept, in memory or in the store (1 unless retention trimmed the log).
    pub fn first_seq(&self) -> u64 {
        self.lock().trimmed + 1
    }

    /// Drops the events appended before `cutoff`, but never the last one (a run's newest event, its finish when
    /// it has one, stays replayable). Returns the new first seq if anything was dropped. Readers whose cursor falls
    /// below it end with an "expired" mark (see [`LogReader::expired`]), never with a silent gap.
    pub(super) fn trim_before(&self, cutoff: SystemTime) -> Option<u64> {
        let cutoff = unix_secs(cutoff);
        let mut inner = self.lock();
        let before = inner.trimmed;
        // Events only in the store (shed from memory) are older than the cutoff if the newest of them is; if not,
        // some may still be, and they are kept until it is (retention errs on keeping).
        if inner.trimmed < inner.base && inner.shed_at_secs < cutoff {
            inner.trimmed = inner.base;
        }
        if inner.trimmed == inner.base {
            // Only durable events: the persister still has to store the others.
            let visible =
                usize::try_from(inner.durable.saturating_sub(inner.base)).unwrap_or(0).min(inner.entries.len());
            let old = inner.entries[..visible.saturating_sub(1)].iter().take_while(|e| e.at_secs < cutoff).count();
            if old > 0 {
                let dropped: usize = inner.entries.drain(..old).map(|e| e.bytes.len()).sum();
                inner.resident_bytes -= dropped;
                inner.base += old as u64;
                inner.trimmed = inner.base;
            }
        }
        (inner.trimmed > before).then_some(inner.trimmed + 1)
    }

    /// Called by the persister once the events up to `seq` are committed: readers may now see them, and writers
    /// waiting for room may go on if there is room now.
    pub(super) fn mark_durable(&self, seq: u64) {
        let (wake_readers, wake_writers) = {
            let mut inner = self.lock();
            inner.durable = inner.durable.max(seq);
            inner.shed();
            let room = inner.unstored() <= MAX_UNSTORED;
            if room {
                // Under the lock, so a writer that finds the log full (and then waits) cannot miss this change.
                self.full.store(false, Ordering::Release);
            }
            (std::mem::take(&mut inner.reader_waiting), room && std::mem::take(&mut inner.writer_waiting))
        };
        if wake_readers {
            self.appended.notify_waiters();
        }
        if wake_writers {
            self.room.notify_waiters();
        }
    }

    /// `None` when a writer may append now; otherwise a future that completes once no more than [`MAX_UNSTORED`]
    /// events are waiting for the store. An ungated log is never full. Lock-free unless the log is full.
    pub(super) fn room(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        if !self.full.load(Ordering::Acquire) {
            return None;
        }
        Some(Box::pin(async move {
            loop {
                // Registered before looking, as readers do, so a commit between the look and the wait wakes us.
                let notified = self.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut inner = self.lock();
                    if inner.unstored() <= MAX_UNSTORED {
                        return;
                    }
                    inner.writer_waiting = true;
                }
                notified.await;
            }
        }))
    }

    /// True once the last durable event is a terminal `workflow_finish`: nothing more will be appended.
    pub(super) fn is_finished(&self) -> bool {
        let inner = self.lock();
        let durable = inner.durable.saturating_sub(inner.base) as usize;
        durable == inner.entries.len()
            && inner.entries.last().and_then(|e| e.finish).is_some_and(RunStatus::is_terminal)
    }

    /// Copies up to `READ_BATCH` entries after `after_seq` into `out`. Returns the log's last seq at that moment
    /// and the finish status of that last event. When there is nothing after `after_seq`, marks a reader as
    /// waiting, so that the next append wakes it (the caller registered for the wake-up before calling).
    fn read_after(&self, after_seq: u64, out: &mut VecDeque<LoggedEvent>) -> Result<(u64, Option<RunStatus>), Behind> {
        let mut inner = self.lock();
        if after_seq < inner.trimmed {
            // Retention dropped events this reader has not read: say so rather than skip them.
            return Err(Behind::Expired(inner.trimmed + 1));
        }
        if after_seq < inner.base {
            return Err(Behind::InStore);
        }
        // Indexes into `entries` of the visible (durable) events; a cursor below `base` reads from the oldest kept
        // (the registry refuses such cursors before creating a reader, so this only bounds the arithmetic).
        let visible =
            usize::try_from(inner.durable.saturating_sub(inner.base)).unwrap_or(usize::MAX).min(inner.entries.len());
        let start = usize::try_from(after_seq.saturating_sub(inner.base)).unwrap_or(usize::MAX).min(visible);
        let end = start.saturating_add(READ_BATCH).min(visible);
        let first_seq = inner.base + start as u64 + 1;
        out.extend(inner.entries[start..end].iter().zip(first_seq..).map(|(stored, seq)| LoggedEvent {
            seq,
            bytes: stored.bytes.clone(),
            finish: stored.finish,
        }));
        if start == end {
            inner.reader_waiting = true;
        }
        let last_finish = visible.checked_sub(1).and_then(|i| inner.entries[i].finish);
        Ok((inner.base + visible as u64, last_finish))
    }
}

/// Why [`EventLog::read_after`] has nothing for a cursor below what is in memory.
#[derive(Debug)]
enum Behind {
    /// Retention dropped the events after the cursor; the first seq kept.
    Expired(u64),
    /// They are in the store only (shed from memory).
    InStore,
}

impl LogInner {
    /// Lets the oldest durable events go from memory once the log holds twice its window (see [`WINDOW_EVENTS`]):
    /// they are in the store. Only for a log with a store: the caller knows.
    fn shed(&mut self) {
        if self.entries.len() <= 2 * WINDOW_EVENTS && self.resident_bytes <= 2 * WINDOW_BYTES {
            return;
        }
        let durable = usize::try_from(self.durable.saturating_sub(self.base)).unwrap_or(0).min(self.entries.len());
        let (mut shed, mut bytes) = (0, self.resident_bytes);
        // The newest event always stays (it says whether the run has finished).
        while shed < durable
            && self.entries.len() - shed > 1
            && (self.entries.len() - shed > WINDOW_EVENTS || bytes > WINDOW_BYTES)
        {
            bytes -= self.entries[shed].bytes.len();
            shed += 1;
        }
        if shed == 0 {
            return;
        }
        self.shed_at_secs = self.entries[shed - 1].at_secs;
        self.entries.drain(..shed);
        self.base += shed as u64;
        self.resident_bytes = bytes;
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
    buffer: VecDeque<LoggedEvent>,
    /// The log's last seq when `buffer` was filled.
    tip_at_fill: u64,
    until: ReadUntil,
    done: bool,
    /// Set when retention dropped events after the cursor: the first seq still kept.
    expired: Option<u64>,
    /// Set when reading events no longer in memory from the store failed.
    failed: Option<RegistryError>,
}

impl LogReader {
    /// A reader that yields the events with seq > `after_seq`.
    pub fn new(log: Arc<EventLog>, after_seq: u64, until: ReadUntil) -> Self {
        Self {
            log,
            after_seq,
            buffer: VecDeque::new(),
            tip_at_fill: 0,
            until,
            done: false,
            expired: None,
            failed: None,
        }
    }

    /// After `next` returned `None`: why, if the reader ended because the store could not give it events no longer
    /// in memory (the caller must report that, not end the stream as if it were complete).
    pub fn failed(&mut self) -> Option<RegistryError> {
        self.failed.take()
    }

    /// After `next` returned `None`: `Some(first kept seq)` if the reader ended because retention dropped events
    /// it had not read yet (the caller must report that, not end the stream as if it were complete).
    pub fn expired(&self) -> Option<u64> {
        self.expired
    }

    /// The seq of the last event this reader yielded (its cursor).
    pub fn cursor(&self) -> u64 {
        self.after_seq
    }

    /// The next event, waiting for it if needed; `None` once the stream is over.
    pub async fn next(&mut self) -> Option<LoggedEvent> {
        if self.done {
            return None;
        }
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        self.next_buffered()
    }

    /// The next event if one is already buffered: the fast path, with no waiting and no lock.
    pub fn next_buffered(&mut self) -> Option<LoggedEvent> {
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

    /// Reads the next events after the cursor from the store: they are no longer in memory. Ends the reader (with
    /// the reason kept) if the store fails, or if retention dropped them meanwhile.
    async fn read_store(&mut self) -> Option<()> {
        let Some((run_id, persister)) = &self.log.persist else {
            // Only a log with a store sheds events; nothing to read otherwise.
            self.done = true;
            return None;
        };
        let (id, after) = (run_id.clone(), self.after_seq);
        let read = persister.read(move |store| store.read_events(&id, after, READ_BATCH)).await;
        let store_ref = persister.store().as_ref();
        let events = match super::read_result(store_ref, read) {
            Ok(events) => events,
            Err(e) => {
                self.failed = Some(e);
                self.done = true;
                return None;
            }
        };
        if events.first().map(|e| e.seq) != Some(after + 1) {
            // Retention dropped them since the log said they were in the store.
            self.expired = Some(events.first().map_or_else(|| self.log.first_seq(), |e| e.seq));
            self.done = true;
            return None;
        }
        self.tip_at_fill = self.log.last_seq();
        self.buffer.extend(events.into_iter().map(|e| LoggedEvent { seq: e.seq, bytes: e.body, finish: e.finish }));
        Some(())
    }

    /// Waits until there is something after the cursor. `None` when the stream must end without further events:
    /// the reader is at the end of a run that is over (or suspended, when that closes this reader).
    async fn fill(&mut self) -> Option<()> {
        loop {
            // Register for the wake-up *before* looking, so an append between the look and the wait is not missed.
            // Through a handle of its own, so that the reader can be used mutably (a store read) meanwhile.
            let log = self.log.clone();
            let appended = log.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();

            let (tip, last_finish) = match self.log.read_after(self.after_seq, &mut self.buffer) {
                Ok(read) => read,
                Err(Behind::Expired(first_seq)) => {
                    self.expired = Some(first_seq);
                    self.done = true;
                    return None;
                }
                Err(Behind::InStore) => {
                    self.read_store().await?;
                    return Some(());
                }
            };
            self.tip_at_fill = tip;
            if !self.buffer.is_empty() {
                return Some(());
            }
            // Nothing new: decide from the newest event whether more can come for this reader.
            if let Some(status) = last_finish {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::engine::{EventSource, Usage};

    /// Stores the event's debug form, so tests can tell events apart by their bytes.
    struct DebugEncoder;
    impl EventEncoder for DebugEncoder {
        fn encode(&self, _time: SystemTime, event: &Event, out: &mut Vec<u8>) {
            out.extend_from_slice(format!("{:?}", event.kind).as_bytes());
        }
    }

    fn output(i: u64) -> Event {
        Event { source: EventSource::User, kind: EventKind::StepOutput { step_id: "s".into(), output: json!(i) } }
    }

    fn finish(status: RunStatus) -> Event {
        Event {
            source: EventSource::Workflow,
            kind: EventKind::WorkflowFinish { status, result: None, error: None, usage: Usage::default() },
        }
    }

    #[test]
    fn entries_share_chunks_and_keep_their_bytes() {
        let log = EventLog::new(Arc::new(DebugEncoder));
        let big = "x".repeat(MAX_CHUNK);
        for i in 0..100 {
            assert_eq!(log.append(&output(i), SystemTime::now()), i + 1);
        }
        let large = EventKind::StepOutput { step_id: "s".into(), output: json!(big) };
        log.append(&Event { source: EventSource::User, kind: large }, SystemTime::now());
        log.append(&finish(RunStatus::Success), SystemTime::now());
        let mut out = VecDeque::new();
        let (tip, last) = log.read_after(0, &mut out).expect("nothing trimmed");
        assert_eq!((tip, last), (102, Some(RunStatus::Success)));
        let seqs: Vec<u64> = out.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=102).collect::<Vec<_>>());
        for (i, entry) in out.iter().take(100).enumerate() {
            assert_eq!(entry.bytes, format!("{:?}", output(i as u64).kind).as_bytes());
            assert_eq!(entry.finish_status(), None);
        }
        assert!(out[100].bytes.len() > MAX_CHUNK, "a large event is stored whole");
        assert_eq!(out[101].finish_status(), Some(RunStatus::Success));
        // Neighbours share a chunk: one allocation for many small events.
        let (a, b) = (&out[1].bytes, &out[2].bytes);
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_the_next_append() {
        let log = Arc::new(EventLog::new(Arc::new(DebugEncoder)));
        let mut reader = LogReader::new(log.clone(), 0, ReadUntil::Run { close_on_suspend: true });
        let read = tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Some(entry) = reader.next().await {
                seqs.push(entry.seq);
            }
            seqs
        });
        for i in 0..1000 {
            log.append(&output(i), SystemTime::now());
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        log.append(&finish(RunStatus::Success), SystemTime::now());
        let seqs = tokio::time::timeout(Duration::from_secs(10), read).await.expect("reader ends").expect("no panic");
        assert_eq!(seqs, (1..=1001).collect::<Vec<_>>());
    }
}
