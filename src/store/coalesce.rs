//! Fewer rows per batch: the writes of one run in a batch merged before the store commits them (issue 12, "durable
//! at memory speed"). A short run queues a record, a state per change, a checkpoint per step and its events
//! between them; committed as queued, that is a dozen statements and an index update per write. Merged, a run
//! that starts and ends within one batch is one `runs` row and one `events` row.
//!
//! The batch is one transaction, so what a crash can leave is unchanged: all of it or none. What a merged batch
//! stores is what the writes in order would have stored, except the checkpoints a state makes useless (below).

use std::collections::HashMap;

use super::{RunRecord, StateRecord, StepCheckpoint, StoredEvent, Write, is_active};

/// The writes of one run within a batch (between barriers), as they will be committed.
struct RunWrites {
    run_id: String,
    create: Option<Box<RunRecord>>,
    events: Vec<StoredEvent>,
    state: Option<Box<StateRecord>>,
    /// Checkpoints queued after `state`, or that `state` does not make useless; one per (phase, path). Boxed as
    /// `Write::Step` holds them, so that they go back into it without a copy.
    #[allow(clippy::vec_box)]
    steps: Vec<Box<StepCheckpoint>>,
}

impl RunWrites {
    fn step(&mut self, checkpoint: Box<StepCheckpoint>) {
        // The store replaces a checkpoint of the same phase and path: only the last counts.
        self.steps.retain(|s| !(s.phase == checkpoint.phase && s.path == checkpoint.path));
        self.steps.push(checkpoint);
    }

    fn state(&mut self, state: Box<StateRecord>) {
        // A state drops the stored checkpoints of earlier phases; those queued before it go now. A state that is
        // not in flight (finished, suspended) also makes its own phase's useless: checkpoints are read only to
        // recover a run in flight, its snapshot holds the phase's steps, and the state that puts the run in flight
        // again starts a later phase, which drops them. So a step's result is still committed with what records
        // it, the snapshot instead of the checkpoint.
        let through = if is_active(state.status) { state.phase.saturating_sub(1) } else { state.phase };
        self.steps.retain(|s| s.phase > through);
        // Each state replaces the whole stored one: only the last counts.
        self.state = Some(state);
    }

    /// The writes to commit, in an order that stores what the original order did: the record first (its final
    /// state in it), the events, the state (whose delete of older checkpoints then spares only later ones), the
    /// checkpoints queued after it.
    fn into_writes(self, out: &mut Vec<Write>) {
        let Self { run_id, create, events, state, steps } = self;
        let state = match (create, state) {
            (Some(mut record), state) => {
                // Nothing of a run created in this batch is stored yet: its checkpoints of earlier phases are the
                // ones `state` already dropped here.
                if let Some(state) = state {
                    record.state = *state;
                }
                out.push(Write::CreateRun(record));
                None
            }
            (None, state) => state,
        };
        if !events.is_empty() {
            out.push(Write::Events { run_id: run_id.clone(), events });
        }
        if let Some(state) = state {
            out.push(Write::State { run_id: run_id.clone(), state });
        }
        for checkpoint in steps {
            out.push(Write::Step { run_id: run_id.clone(), checkpoint });
        }
    }
}

/// The runs of a batch since the last barrier, in the order they first appear.
#[derive(Default)]
struct Runs {
    runs: Vec<RunWrites>,
    index: HashMap<String, usize>,
}

impl Runs {
    fn of(&mut self, run_id: &str) -> &mut RunWrites {
        let runs = &mut self.runs;
        let i = *self.index.entry(run_id.to_owned()).or_insert_with(|| {
            runs.push(RunWrites {
                run_id: run_id.to_owned(),
                create: None,
                events: Vec::new(),
                state: None,
                steps: Vec::new(),
            });
            runs.len() - 1
        });
        &mut runs[i]
    }

    fn flush(&mut self, out: &mut Vec<Write>) {
        self.index.clear();
        for run in self.runs.drain(..) {
            run.into_writes(out);
        }
    }
}

/// Merges the writes of each run in `writes`: per run, one record (with its last state) or one state, one write of
/// its events (in seq order, as queued), and the checkpoints still of use. Runs come out in the order they first
/// appear. Writes that concern more than one run's rows, or a run's past (deletes, trims, expiry, definitions),
/// are barriers: everything queued before them is committed before them, as queued.
pub fn coalesce(writes: Vec<Write>) -> Vec<Write> {
    let mut out = Vec::with_capacity(writes.len());
    let mut runs = Runs::default();
    for write in writes {
        match write {
            Write::CreateRun(record) => {
                let run = runs.of(&record.run_id);
                run.create = Some(record);
            }
            Write::Events { run_id, events } => runs.of(&run_id).events.extend(events),
            Write::Step { run_id, checkpoint } => runs.of(&run_id).step(checkpoint),
            Write::State { run_id, state } => runs.of(&run_id).state(state),
            barrier @ (Write::DeleteRun { .. }
            | Write::Definition(_)
            | Write::ExpireRuns { .. }
            | Write::TrimEvents { .. }) => {
                runs.flush(&mut out);
                out.push(barrier);
            }
        }
    }
    runs.flush(&mut out);
    out
}
