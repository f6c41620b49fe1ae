//! [`RunStore`] in memory: the contract without a disk. A registry opened on the same `MemoryStore` again sees what
//! the previous one committed, which is how tests simulate a restart in-process.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use super::{
    DefinitionRecord, LoadedRun, RunQuery, RunRecord, RunStore, RunSummary, StepCheckpoint, StoreError, StoredEvent,
    Tail, Write, is_active,
};

/// A [`RunStore`] in memory: runs outlive a registry (a new one opened on the same store sees them), not the
/// process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: Mutex<BTreeMap<String, Stored>>,
    definitions: Mutex<Vec<DefinitionRecord>>,
}

#[derive(Debug)]
struct Stored {
    /// Insertion order: orders runs of the same creation order (as SQLite's rowid does).
    order: u64,
    record: RunRecord,
    events: Vec<StoredEvent>,
    checkpoints: Vec<StepCheckpoint>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Stored>> {
        // Each write below is applied to a copy and swapped in whole, so a poisoned lock is still consistent.
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryStore {
    /// The runs whose record passes `keep`, oldest first.
    fn load_where(&self, keep: impl Fn(&RunRecord) -> bool) -> Vec<LoadedRun> {
        let runs = self.lock();
        let mut matching: Vec<&Stored> = runs.values().filter(|s| keep(&s.record)).collect();
        matching.sort_by_key(|s| s.key());
        matching.into_iter().map(Stored::loaded).collect()
    }
}

impl Stored {
    /// Oldest first: by creation order, then as stored.
    fn key(&self) -> (u64, u64) {
        (self.record.created_order, self.order)
    }

    /// The run as `load` gives it: checkpoints of its current phase only.
    fn loaded(&self) -> LoadedRun {
        let phase = self.record.state.phase;
        LoadedRun {
            record: self.record.clone(),
            events: self.events.clone(),
            events_from: self.events.first().map_or(1, |e| e.seq),
            checkpoints: self.checkpoints.iter().filter(|c| c.phase == phase).cloned().collect(),
        }
    }
}

impl RunStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn load(&self) -> Result<Vec<LoadedRun>, StoreError> {
        Ok(self.load_where(|_| true))
    }

    fn load_active(&self, tail: Tail) -> Result<Vec<LoadedRun>, StoreError> {
        let mut runs = self.load_where(|record| is_active(record.state.status));
        for run in &mut runs {
            tail.cut(&mut run.events);
        }
        Ok(runs)
    }

    fn load_run(&self, run_id: &str, tail: Tail) -> Result<Option<LoadedRun>, StoreError> {
        let mut run = self.lock().get(run_id).map(Stored::loaded);
        if let Some(run) = &mut run {
            tail.cut(&mut run.events);
        }
        Ok(run)
    }

    fn list_runs(&self, query: &RunQuery, before_order: u64, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let runs = self.lock();
        let mut matching: Vec<&Stored> = runs
            .values()
            .filter(|s| (before_order == 0 || s.record.created_order < before_order) && query.matches(&s.record))
            .collect();
        matching.sort_by_key(|s| std::cmp::Reverse(s.key()));
        let summary =
            |s: &Stored| RunSummary { record: s.record.clone(), last_seq: s.events.last().map_or(0, |e| e.seq) };
        Ok(matching.into_iter().take(limit).map(summary).collect())
    }

    fn read_events(&self, run_id: &str, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let runs = self.lock();
        let Some(stored) = runs.get(run_id) else { return Ok(Vec::new()) };
        Ok(stored.events.iter().filter(|e| e.seq > after_seq).take(limit).cloned().collect())
    }

    fn max_order(&self) -> Result<u64, StoreError> {
        Ok(self.lock().values().map(|s| s.record.created_order).max().unwrap_or(0))
    }

    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        Ok(self.definitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut runs = self.lock();
        // Taken after `runs`, as everywhere: definitions are appended only when the whole batch applies.
        let mut definitions = self.definitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut new_definitions = Vec::new();
        // Atomic: apply to a copy of the touched runs, then swap them in.
        let mut next_order = runs.values().map(|s| s.order + 1).max().unwrap_or(0);
        let mut work: BTreeMap<String, Option<Stored>> = BTreeMap::new();
        for write in writes {
            let run_id = match write {
                Write::Definition(record) => {
                    new_definitions.push((**record).clone());
                    continue;
                }
                Write::ExpireRuns { ended_before } => {
                    let ended = |record: &RunRecord| {
                        record.state.status.is_terminal() && record.state.updated_at < *ended_before
                    };
                    // Runs this batch touched already are judged by their copy in `work`.
                    let gone: Vec<String> = runs
                        .iter()
                        .filter(|(id, s)| ended(&s.record) && !work.contains_key(*id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    work.extend(gone.into_iter().map(|id| (id, None)));
                    for slot in work.values_mut() {
                        if slot.as_ref().is_some_and(|s| ended(&s.record)) {
                            *slot = None;
                        }
                    }
                    continue;
                }
                Write::CreateRun(record) => record.run_id.clone(),
                Write::Events { run_id, .. }
                | Write::Step { run_id, .. }
                | Write::State { run_id, .. }
                | Write::DeleteRun { run_id }
                | Write::TrimEvents { run_id, .. } => run_id.clone(),
            };
            let slot = work.entry(run_id.clone()).or_insert_with(|| {
                runs.get(&run_id).map(|s| Stored {
                    order: s.order,
                    record: s.record.clone(),
                    events: s.events.clone(),
                    checkpoints: s.checkpoints.clone(),
                })
            });
            let missing = || StoreError::Io { location: "memory".into(), reason: format!("no run '{run_id}'") };
            match write {
                Write::CreateRun(record) => {
                    *slot = Some(Stored {
                        order: next_order,
                        record: (**record).clone(),
                        events: Vec::new(),
                        checkpoints: Vec::new(),
                    });
                    next_order += 1;
                }
                Write::Events { events, .. } => {
                    let stored = slot.as_mut().ok_or_else(missing)?;
                    let expected = stored.events.last().map_or(1, |e| e.seq + 1);
                    if events.first().is_some_and(|e| e.seq != expected && !stored.events.is_empty()) {
                        return Err(StoreError::Io {
                            location: "memory".into(),
                            reason: format!("run '{run_id}': events must follow seq {}", expected - 1),
                        });
                    }
                    stored.events.extend(events.iter().cloned());
                }
                Write::Step { checkpoint, .. } => {
                    let stored = slot.as_mut().ok_or_else(missing)?;
                    stored.checkpoints.retain(|c| !(c.phase == checkpoint.phase && c.path == checkpoint.path));
                    stored.checkpoints.push((**checkpoint).clone());
                }
                Write::State { state, .. } => {
                    let stored = slot.as_mut().ok_or_else(missing)?;
                    stored.record.state = (**state).clone();
                    let phase = state.phase;
                    stored.checkpoints.retain(|c| c.phase >= phase);
                }
                Write::DeleteRun { .. } => *slot = None,
                Write::Definition(_) | Write::ExpireRuns { .. } => {}
                Write::TrimEvents { before_seq, .. } => {
                    if let Some(stored) = slot.as_mut() {
                        stored.events.retain(|e| e.seq >= *before_seq);
                    }
                }
            }
        }
        definitions.extend(new_definitions);
        for (run_id, stored) in work {
            match stored {
                Some(stored) => runs.insert(run_id, stored),
                None => runs.remove(&run_id),
            };
        }
        Ok(())
    }
}
