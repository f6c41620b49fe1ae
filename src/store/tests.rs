//! The store contract, run against both implementations, and SQLite's refusals (a damaged file, a second user).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::{sqlite::Sync, *};
use crate::engine::{RunSnapshot, StepStatus};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("runstream-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Millisecond precision, as SQLite keeps creation and event times.
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn state(status: RunStatus, phase: u32) -> StateRecord {
    StateRecord {
        status,
        phase,
        snapshot: RunSnapshot::default(),
        result: None,
        error: None,
        updated_at: at(5),
        resuming: None,
        recovering: None,
    }
}

fn record(run_id: &str) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        workflow_id: "chain".into(),
        workflow_version: 0,
        input: json!({ "value": 1 }),
        request_context: json!({ "tenant": "t" }).as_object().cloned().unwrap_or_default(),
        resource_id: "user-1".into(),
        tenant: String::new(),
        created_at: at(1),
        created_order: 1,
        state: state(RunStatus::Running, 1),
    }
}

fn event(seq: u64, finish: Option<RunStatus>) -> StoredEvent {
    StoredEvent { seq, time: at(seq), body: format!("event {seq}").into_bytes().into(), finish }
}

fn checkpoint(phase: u32, path: &str) -> StepCheckpoint {
    let record = StepRecord {
        status: StepStatus::Success,
        input: json!(null),
        output: Some(json!({ "value": 2 })),
        error: None,
        suspend_payload: None,
        resume_data: None,
        attempts: 1,
        started_at: at(2),
        ended_at: Some(at(3)),
        suspended_at: None,
        resumed_at: None,
    };
    StepCheckpoint { phase, path: path.into(), record }
}

/// The contract: batches apply in order, `load` returns runs oldest first with their logs and the checkpoints of
/// their current phase only; deletes and trims apply.
fn contract(store: &dyn RunStore) {
    store
        .commit(&[
            Write::CreateRun(Box::new(record("a"))),
            Write::Events { run_id: "a".into(), events: vec![event(1, None), event(2, None)] },
            Write::Step { run_id: "a".into(), checkpoint: Box::new(checkpoint(1, "step-1")) },
            Write::CreateRun(Box::new(record("b"))),
        ])
        .unwrap();
    store
        .commit(&[
            Write::Events { run_id: "a".into(), events: vec![event(3, Some(RunStatus::Suspended))] },
            Write::State { run_id: "a".into(), state: Box::new(state(RunStatus::Suspended, 1)) },
            Write::Events { run_id: "b".into(), events: vec![event(1, None)] },
        ])
        .unwrap();
    let loaded = store.load().unwrap();
    let ids: Vec<&str> = loaded.iter().map(|r| r.record.run_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let a = &loaded[0];
    assert_eq!(a.record, RunRecord { state: state(RunStatus::Suspended, 1), ..record("a") });
    assert_eq!(a.events, [event(1, None), event(2, None), event(3, Some(RunStatus::Suspended))]);
    assert_eq!(a.checkpoints, [checkpoint(1, "step-1")]);

    // A new phase: the old phase's checkpoints are gone (its outcome is in the snapshot).
    store.commit(&[Write::State { run_id: "a".into(), state: Box::new(state(RunStatus::Running, 2)) }]).unwrap();
    assert!(store.load().unwrap()[0].checkpoints.is_empty());

    store
        .commit(&[Write::TrimEvents { run_id: "a".into(), before_seq: 3 }, Write::DeleteRun { run_id: "b".into() }])
        .unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].events, [event(3, Some(RunStatus::Suspended))]);

    // Definitions load in the order they were registered, with a run that names its version.
    store
        .commit(&[
            Write::Definition(Box::new(definition("wf", 1))),
            Write::Definition(Box::new(definition("other", 1))),
            Write::CreateRun(Box::new(RunRecord { workflow_version: 2, ..record("c") })),
        ])
        .unwrap();
    store.commit(&[Write::Definition(Box::new(definition("wf", 2)))]).unwrap();
    assert_eq!(store.load_definitions().unwrap(), [definition("wf", 1), definition("other", 1), definition("wf", 2)]);
    assert_eq!(store.load().unwrap()[1].record.workflow_version, 2);
}

fn definition(id: &str, version: u32) -> DefinitionRecord {
    DefinitionRecord {
        tenant: String::new(),
        kind: "workflow".into(),
        id: id.into(),
        version,
        body: json!({"id": id, "steps": [{"sleep": {"id": "s", "ms": version}}]}),
        registered_at: at(u64::from(version)),
    }
}

/// A data dir written before definitions existed (schema version 2) is migrated: its runs run built-in workflows
/// (version 0), and definitions can be registered.
#[test]
fn a_version_2_store_is_migrated() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    store.commit(&[Write::CreateRun(Box::new(record("old")))]).unwrap();
    drop(store);
    {
        let conn = rusqlite::Connection::open(dir.0.join(sqlite::FILE_NAME)).unwrap();
        conn.execute_batch(&format!(
            "{TO_VERSION_3} ALTER TABLE runs DROP COLUMN workflow_version; DROP TABLE definitions; \
             UPDATE meta SET value = '2' WHERE key = 'schema_version';"
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    // Its creation order is its rowid, 1 here, as `record` has it.
    assert_eq!(store.load().unwrap()[0].record, record("old"));
    assert_eq!(store.load_active(Tail::ALL).unwrap().len(), 1, "its status is filled in");
    store.commit(&[Write::Definition(Box::new(definition("wf", 1)))]).unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    assert_eq!(store.load_definitions().unwrap(), [definition("wf", 1)]);
}

#[test]
fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::new());
}

/// Runs for the lazy reads: (id, creation order, status, workflow, owner), stored in an order other than their
/// creation order (as concurrent starts may commit them).
const LAZY_RUNS: [(&str, u64, RunStatus, &str, &str); 6] = [
    ("a", 1, RunStatus::Running, "chain", "user-1"),
    ("c", 3, RunStatus::Pending, "chain", "user-1"),
    ("b", 2, RunStatus::Suspended, "chain", "user-2"),
    ("d", 4, RunStatus::Success, "other", "user-2"),
    ("e", 5, RunStatus::Waiting, "other", "user-1"),
    ("f", 6, RunStatus::Failed, "chain", "user-1"),
];

fn ids_of_loaded(runs: &[LoadedRun]) -> Vec<&str> {
    runs.iter().map(|r| r.record.run_id.as_str()).collect()
}

fn ids_of(runs: &[RunSummary]) -> Vec<&str> {
    runs.iter().map(|r| r.record.run_id.as_str()).collect()
}

/// `load_active`, `load_run`, `list_runs` and `max_order` (issue 12: lazy runs): each agrees with `load`, and a
/// state write moves a run between statuses for them.
fn lazy_reads(store: &dyn RunStore) {
    assert_eq!(store.max_order().unwrap(), 0, "an empty store");
    assert!(store.load_active(Tail::ALL).unwrap().is_empty());
    assert!(store.list_runs(&RunQuery::default(), 0, 10).unwrap().is_empty());
    let mut writes = Vec::new();
    for (id, order, status, workflow, owner) in LAZY_RUNS {
        let record = RunRecord {
            workflow_id: workflow.into(),
            resource_id: owner.into(),
            created_order: order,
            state: state(status, 2),
            ..record(id)
        };
        writes.push(Write::CreateRun(Box::new(record)));
        writes.push(Write::Events { run_id: id.into(), events: vec![event(1, None), event(2, None)] });
        writes.push(Write::Step { run_id: id.into(), checkpoint: Box::new(checkpoint(1, "old-phase")) });
        writes.push(Write::Step { run_id: id.into(), checkpoint: Box::new(checkpoint(2, "step-1")) });
    }
    store.commit(&writes).unwrap();
    let all = store.load().unwrap();
    assert_eq!(ids_of_loaded(&all), ["a", "b", "c", "d", "e", "f"], "oldest first by creation order");
    assert_eq!(store.max_order().unwrap(), 6);

    let active = store.load_active(Tail::ALL).unwrap();
    assert_eq!(ids_of_loaded(&active), ["a", "c", "e"], "in flight, oldest first");
    for run in &active {
        assert_eq!(run.events, [event(1, None), event(2, None)]);
        assert_eq!(run.checkpoints, [checkpoint(2, "step-1")], "the current phase's only");
    }
    for run in &all {
        assert_eq!(
            store.load_run(&run.record.run_id, Tail::ALL).unwrap().as_ref(),
            Some(run),
            "one run as `load` gives it"
        );
    }
    assert_eq!(store.load_run("nobody", Tail::ALL).unwrap(), None);
    assert_eq!(store.read_events("a", 0, 10).unwrap(), [event(1, None), event(2, None)]);
    assert_eq!(store.read_events("a", 1, 10).unwrap(), [event(2, None)], "after a cursor");
    assert_eq!(store.read_events("a", 0, 1).unwrap(), [event(1, None)], "at most the limit");
    assert_eq!(store.read_events("a", 2, 10).unwrap(), [], "nothing after the last");
    assert_eq!(store.read_events("nobody", 0, 10).unwrap(), []);

    let query = |workflow: Option<&str>, status: Option<RunStatus>, owner: Option<&str>| RunQuery {
        workflow_id: workflow.map(Into::into),
        status,
        resource_id: owner.map(Into::into),
        ..RunQuery::default()
    };
    let list = |q: &RunQuery, before: u64, limit: usize| {
        let runs = store.list_runs(q, before, limit).unwrap();
        assert!(runs.iter().all(|run| run.last_seq == 2), "each with its last stored seq");
        runs
    };
    let everything = list(&RunQuery::default(), 0, 100);
    assert_eq!(ids_of(&everything), ["f", "e", "d", "c", "b", "a"], "newest first");
    let by_id = |id: &str| all.iter().find(|r| r.record.run_id == id).map(|r| r.record.clone());
    assert_eq!(Some(everything[1].record.clone()), by_id("e"), "the records `load` gives");
    assert_eq!(ids_of(&list(&RunQuery::default(), 0, 2)), ["f", "e"]);
    assert_eq!(ids_of(&list(&RunQuery::default(), 5, 2)), ["d", "c"], "a page before order 5");
    assert_eq!(ids_of(&list(&RunQuery::default(), 1, 10)), Vec::<&str>::new());
    assert_eq!(ids_of(&list(&RunQuery::default(), 4, 0)), Vec::<&str>::new(), "limit 0");
    assert_eq!(ids_of(&list(&query(Some("chain"), None, None), 0, 10)), ["f", "c", "b", "a"]);
    assert_eq!(ids_of(&list(&query(None, Some(RunStatus::Waiting), None), 0, 10)), ["e"]);
    assert_eq!(ids_of(&list(&query(None, None, Some("user-2")), 0, 10)), ["d", "b"]);
    assert_eq!(ids_of(&list(&query(Some("chain"), None, Some("user-1")), 6, 10)), ["c", "a"], "filters ANDed");
    assert_eq!(ids_of(&list(&query(Some("other"), Some(RunStatus::Running), None), 0, 10)), Vec::<&str>::new());

    // A state write changes the status the reads see; a deleted run is gone from them.
    store
        .commit(&[
            Write::State { run_id: "a".into(), state: Box::new(state(RunStatus::Success, 2)) },
            Write::State { run_id: "b".into(), state: Box::new(state(RunStatus::Running, 3)) },
            Write::DeleteRun { run_id: "f".into() },
        ])
        .unwrap();
    assert_eq!(ids_of_loaded(&store.load_active(Tail::ALL).unwrap()), ["b", "c", "e"]);
    assert_eq!(ids_of(&list(&query(None, Some(RunStatus::Success), None), 0, 10)), ["d", "a"]);
    assert_eq!(store.load_run("f", Tail::ALL).unwrap(), None);
    assert_eq!(store.max_order().unwrap(), 5);

    // Retention of runs only in the store (whole seconds): those that ended before the cutoff go, with their events; runs in
    // flight, suspended ones and runs that ended later stay.
    let late = StateRecord { updated_at: at(50_000), ..state(RunStatus::Failed, 1) };
    store.commit(&[Write::State { run_id: "d".into(), state: Box::new(late) }]).unwrap();
    store.commit(&[Write::ExpireRuns { ended_before: at(10_000) }]).unwrap();
    assert_eq!(ids_of_loaded(&store.load().unwrap()), ["b", "c", "d", "e"], "a (ended at 5) is gone");
    assert_eq!(store.load_run("a", Tail::ALL).unwrap(), None);
    store.commit(&[Write::ExpireRuns { ended_before: at(100_000) }]).unwrap();
    assert_eq!(ids_of_loaded(&store.load().unwrap()), ["b", "c", "e"], "then d");
}

/// A list never crosses tenants, with or without other filters, and a run keeps its tenant (issue 13).
fn tenants_apart(store: &dyn RunStore) {
    let runs = [("a", ""), ("b", "acme"), ("c", "globex"), ("d", "acme")];
    let writes: Vec<Write> = runs
        .iter()
        .zip(1..)
        .map(|((id, tenant), order)| {
            Write::CreateRun(Box::new(RunRecord { tenant: (*tenant).into(), created_order: order, ..record(id) }))
        })
        .collect();
    store.commit(&writes).unwrap();
    let of = |tenant: &str, status: Option<RunStatus>| {
        let query = RunQuery { tenant: tenant.into(), status, ..RunQuery::default() };
        ids_of(&store.list_runs(&query, 0, 10).unwrap()).into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(of("acme", None), ["d", "b"]);
    assert_eq!(of("acme", Some(RunStatus::Running)), ["d", "b"]);
    assert_eq!(of("globex", None), ["c"]);
    assert_eq!(of("", None), ["a"], "the default tenant is a tenant too");
    assert_eq!(of("initech", None), Vec::<String>::new());
    assert_eq!(store.load_run("b", Tail::ALL).unwrap().map(|run| run.record.tenant), Some("acme".to_owned()));
}

#[test]
fn memory_store_keeps_tenants_apart() {
    tenants_apart(&MemoryStore::new());
}

#[test]
fn sqlite_store_keeps_tenants_apart() {
    let dir = TempDir::new();
    tenants_apart(&SqliteStore::open(&dir.0, Sync::Normal).unwrap());
}

#[test]
fn memory_store_reads_runs_lazily() {
    lazy_reads(&MemoryStore::new());
}

#[test]
fn sqlite_store_reads_runs_lazily_and_across_reopening() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    lazy_reads(&store);
    let loaded = store.load().unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    assert_eq!(store.load().unwrap(), loaded);
    assert_eq!(ids_of_loaded(&store.load_active(Tail::ALL).unwrap()), ["b", "c", "e"]);
    assert_eq!(store.max_order().unwrap(), 5);
}

/// A tail of a run's log: its newest events up to a count or a size, whole rows read, exactly the tail returned,
/// with the first seq the store keeps; after retention trimmed the log, never an event from before it.
fn tail_reads(store: &dyn RunStore) {
    store.commit(&[Write::CreateRun(Box::new(record("long")))]).unwrap();
    // Three rows of four events (one commit each), then one event.
    for first in [1, 5, 9, 13] {
        let last = if first == 13 { 13 } else { first + 3 };
        let events = (first..=last).map(|seq| event(seq, None)).collect();
        store.commit(&[Write::Events { run_id: "long".into(), events }]).unwrap();
    }
    let seqs = |tail: Tail| {
        let run = store.load_run("long", tail).unwrap().unwrap();
        (run.events.iter().map(|e| e.seq).collect::<Vec<_>>(), run.events_from)
    };
    assert_eq!(seqs(Tail::ALL), ((1..=13).collect(), 1));
    assert_eq!(seqs(Tail { events: 6, bytes: usize::MAX }), ((8..=13).collect(), 1));
    // Each body is "event N": 7 or 8 bytes; 20 bytes take three events (the last one crosses it).
    assert_eq!(seqs(Tail { events: usize::MAX, bytes: 20 }), ((11..=13).collect(), 1));
    assert_eq!(seqs(Tail { events: 0, bytes: 0 }), (vec![13], 1), "at least the newest event");
    let active = store.load_active(Tail { events: 2, bytes: usize::MAX }).unwrap();
    let long = active.iter().find(|run| run.record.run_id == "long").unwrap();
    assert_eq!(long.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [12, 13]);
    // Retention keeps seq 7 on: the row 5..=8 straddles it.
    store.commit(&[Write::TrimEvents { run_id: "long".into(), before_seq: 7 }]).unwrap();
    let (kept, from) = seqs(Tail::ALL);
    assert_eq!(kept, (7..=13).collect::<Vec<_>>());
    assert!(from <= 7, "kept from {from}");
    assert_eq!(seqs(Tail { events: 9, bytes: usize::MAX }).0, (7..=13).collect::<Vec<_>>());
}

#[test]
fn memory_store_reads_the_tail_of_a_log() {
    tail_reads(&MemoryStore::new());
}

#[test]
fn sqlite_store_reads_the_tail_of_a_log() {
    let dir = TempDir::new();
    tail_reads(&SqliteStore::open(&dir.0, Sync::Normal).unwrap());
}

/// SQL that takes a schema 5 store back to schema 3 (indexes first: SQLite drops no indexed column).
const TO_VERSION_3: &str = "DROP INDEX runs_by_order; DROP INDEX runs_by_status; DROP INDEX runs_by_tenant; \
     ALTER TABLE runs DROP COLUMN created_order; ALTER TABLE runs DROP COLUMN status; \
     ALTER TABLE runs DROP COLUMN tenant; \
     CREATE TABLE definitions_3 (kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, \
     registered_at_ms INTEGER NOT NULL, PRIMARY KEY (kind, id, version)); \
     INSERT INTO definitions_3 SELECT kind, id, version, body, registered_at_ms FROM definitions; \
     DROP TABLE definitions; ALTER TABLE definitions_3 RENAME TO definitions; \
     UPDATE meta SET value = '3' WHERE key = 'schema_version';";

/// A store of schema version 3 (built here from a version 5 one) is migrated: creation orders from the rowid
/// (the order runs were stored in), statuses from the state JSON, so that the lazy reads work on it.
#[test]
fn a_version_3_store_is_migrated() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    let statuses = [RunStatus::Success, RunStatus::Running, RunStatus::Suspended, RunStatus::Waiting];
    let writes: Vec<Write> = ["w", "x", "y", "z"]
        .iter()
        .zip(statuses)
        .map(|(id, status)| {
            let record = RunRecord { created_order: 99, state: state(status, 1), ..record(id) };
            Write::CreateRun(Box::new(record))
        })
        .collect();
    store.commit(&writes).unwrap();
    store.commit(&[Write::Events { run_id: "x".into(), events: vec![event(1, None)] }]).unwrap();
    let registered = [definition("d", 1), definition("d", 2), definition("c", 1)];
    let writes: Vec<Write> = registered.iter().map(|d| Write::Definition(Box::new(d.clone()))).collect();
    store.commit(&writes).unwrap();
    drop(store);
    {
        let conn = rusqlite::Connection::open(dir.0.join(sqlite::FILE_NAME)).unwrap();
        conn.execute_batch(TO_VERSION_3).unwrap();
        let columns: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('runs') WHERE name IN ('created_order', 'status')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0, "a version 3 runs table");
    }
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    let orders: Vec<(String, u64)> =
        store.load().unwrap().into_iter().map(|r| (r.record.run_id, r.record.created_order)).collect();
    let expected: Vec<(String, u64)> = [("w", 1), ("x", 2), ("y", 3), ("z", 4)].map(|(id, n)| (id.into(), n)).into();
    assert_eq!(orders, expected);
    assert_eq!(store.max_order().unwrap(), 4);
    assert_eq!(store.load_definitions().unwrap(), registered, "definitions kept, in registration order");
    let active = store.load_active(Tail::ALL).unwrap();
    assert_eq!(ids_of_loaded(&active), ["x", "z"]);
    assert_eq!(active[0].events, [event(1, None)]);
    let suspended = RunQuery { status: Some(RunStatus::Suspended), ..RunQuery::default() };
    assert_eq!(ids_of(&store.list_runs(&suspended, 0, 10).unwrap()), ["y"]);
    assert_eq!(ids_of(&store.list_runs(&RunQuery::default(), 3, 10).unwrap()), ["x", "w"]);
    drop(store);
    let conn = rusqlite::Connection::open(dir.0.join(sqlite::FILE_NAME)).unwrap();
    let version: String =
        conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, "5");
    let indexes: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'runs_by_%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(indexes, 4, "by order, by status, by creation time, by tenant");
}

#[test]
fn sqlite_store_keeps_the_contract_across_reopening() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    contract(&store);
    drop(store);
    let store = SqliteStore::open(&dir.0, Sync::Full).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].record.state.phase, 2);
    assert_eq!(store.load_definitions().unwrap().len(), 3);
}

/// A run state as builds before issue 10 wrote it (its snapshot's usage in snake_case) loads with its usage.
#[test]
fn a_state_stored_with_snake_case_usage_loads_with_its_usage() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    store.commit(&[Write::CreateRun(Box::new(record("a")))]).unwrap();
    drop(store);
    let db = rusqlite::Connection::open(dir.0.join(sqlite::FILE_NAME)).unwrap();
    let state: String = db.query_row("SELECT state FROM runs WHERE run_id = 'a'", [], |row| row.get(0)).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&state).unwrap();
    state["snapshot"]["usage"] =
        json!({ "input_tokens": 3, "output_tokens": 4, "total_tokens": 7, "reasoning_tokens": 1 });
    db.execute("UPDATE runs SET state = ?1 WHERE run_id = 'a'", [state.to_string()]).unwrap();
    drop(db);
    let loaded = SqliteStore::open(&dir.0, Sync::Normal).unwrap().load().unwrap();
    let usage = crate::engine::Usage {
        input_tokens: 3,
        output_tokens: 4,
        total_tokens: 7,
        reasoning_tokens: 1,
        ..Default::default()
    };
    assert_eq!(loaded[0].record.state.snapshot.usage, usage);
}

#[test]
fn a_failed_batch_leaves_nothing_behind() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    store.commit(&[Write::CreateRun(Box::new(record("a")))]).unwrap();
    // The second write breaks the batch (seq 1 twice): the first must not be stored either.
    let bad = [
        Write::Events { run_id: "a".into(), events: vec![event(1, None)] },
        Write::Events { run_id: "a".into(), events: vec![event(1, None)] },
    ];
    assert!(store.commit(&bad).is_err());
    assert!(store.load().unwrap()[0].events.is_empty());
}

#[test]
fn a_damaged_file_is_an_error_naming_it_and_is_left_untouched() {
    let dir = TempDir::new();
    let file = dir.0.join(sqlite::FILE_NAME);
    let garbage = b"this is not a database, it is a shopping list: eggs, milk".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let error = SqliteStore::open(&dir.0, Sync::Normal).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&file.display().to_string()) && message.contains("untouched"), "{message}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
}

#[test]
fn a_second_user_of_the_file_is_refused_naming_it() {
    let dir = TempDir::new();
    let first = SqliteStore::open(&dir.0, Sync::Normal).unwrap();
    first.commit(&[Write::CreateRun(Box::new(record("a")))]).unwrap();
    let error = SqliteStore::open(&dir.0, Sync::Normal).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(sqlite::FILE_NAME) && message.contains("another"), "{message}");
}

fn events(run_id: &str, seqs: std::ops::RangeInclusive<u64>) -> Write {
    Write::Events { run_id: run_id.into(), events: seqs.map(|seq| event(seq, None)).collect() }
}

fn step(run_id: &str, phase: u32, path: &str) -> Write {
    Write::Step { run_id: run_id.into(), checkpoint: Box::new(checkpoint(phase, path)) }
}

fn set_state(run_id: &str, status: RunStatus, phase: u32) -> Write {
    Write::State { run_id: run_id.into(), state: Box::new(state(status, phase)) }
}

/// What `batches` leave in fresh stores (memory, then SQLite), committed as given and committed coalesced, without
/// the checkpoints of runs not in flight (never read, which is why coalescing may drop them). Asserts both ways
/// leave the same, and returns it.
fn as_queued_and_coalesced(batches: &[Vec<Write>]) -> Vec<LoadedRun> {
    let dirs = [TempDir::new(), TempDir::new()];
    let sqlite = |dir: &TempDir| -> Box<dyn RunStore> { Box::new(SqliteStore::open(&dir.0, Sync::Normal).unwrap()) };
    let pairs: [(Box<dyn RunStore>, Box<dyn RunStore>); 2] =
        [(Box::new(MemoryStore::new()), Box::new(MemoryStore::new())), (sqlite(&dirs[0]), sqlite(&dirs[1]))];
    let mut held = Vec::new();
    for (queued, coalesced) in &pairs {
        for batch in batches {
            queued.commit(batch).unwrap();
            coalesced.commit(&coalesce(batch.clone())).unwrap();
        }
        let read = |store: &dyn RunStore| {
            let mut runs = store.load().unwrap();
            for run in &mut runs {
                if !is_active(run.record.state.status) {
                    run.checkpoints.clear();
                }
            }
            runs
        };
        let got = read(&**coalesced);
        assert_eq!(got, read(&**queued), "{}", coalesced.describe());
        held = got;
    }
    held
}

#[test]
fn a_short_run_in_one_batch_is_one_record_and_one_row_of_events() {
    let batch = vec![
        Write::CreateRun(Box::new(record("a"))),
        events("a", 1..=2),
        step("a", 1, "one"),
        Write::CreateRun(Box::new(record("b"))),
        events("a", 3..=4),
        events("b", 1..=1),
        step("a", 1, "two"),
        events("a", 5..=5),
        set_state("a", RunStatus::Success, 1),
    ];
    let merged = coalesce(batch.clone());
    assert_eq!(
        merged,
        [
            Write::CreateRun(Box::new(RunRecord { state: state(RunStatus::Success, 1), ..record("a") })),
            events("a", 1..=5),
            Write::CreateRun(Box::new(record("b"))),
            events("b", 1..=1),
        ]
    );
    as_queued_and_coalesced(&[batch]);
}

#[test]
fn checkpoints_a_run_in_flight_needs_are_kept_and_the_last_of_each_wins() {
    let mut replaced = checkpoint(2, "one");
    replaced.record.attempts = 2;
    let batch = vec![
        step("a", 1, "old"),
        // A resume: phase 2 starts, phase 1's checkpoints go.
        set_state("a", RunStatus::Running, 2),
        step("a", 2, "one"),
        Write::Step { run_id: "a".into(), checkpoint: Box::new(replaced.clone()) },
        events("a", 7..=8),
        // A state of the phase in flight (a recovery mark cleared) keeps its checkpoints.
        set_state("a", RunStatus::Running, 2),
        step("a", 2, "two"),
    ];
    let merged = coalesce(batch.clone());
    assert_eq!(
        merged,
        [
            events("a", 7..=8),
            set_state("a", RunStatus::Running, 2),
            Write::Step { run_id: "a".into(), checkpoint: Box::new(replaced) },
            step("a", 2, "two"),
        ]
    );
    let first = vec![Write::CreateRun(Box::new(record("a"))), events("a", 1..=6), step("a", 1, "kept-until-resume")];
    let got = as_queued_and_coalesced(&[first, batch]);
    assert_eq!(got[0].checkpoints.len(), 2, "{:?}", got[0].checkpoints);
}

#[test]
fn a_phase_that_ends_drops_its_checkpoints_and_barriers_keep_their_place() {
    let batch = vec![
        events("a", 3..=3),
        step("a", 1, "one"),
        set_state("a", RunStatus::Suspended, 1),
        events("a", 4..=4),
        Write::TrimEvents { run_id: "a".into(), before_seq: 4 },
        events("a", 5..=5),
        set_state("b", RunStatus::Canceled, 1),
        Write::DeleteRun { run_id: "c".into() },
        events("a", 6..=6),
    ];
    let merged = coalesce(batch.clone());
    assert_eq!(
        merged,
        [
            events("a", 3..=4),
            set_state("a", RunStatus::Suspended, 1),
            Write::TrimEvents { run_id: "a".into(), before_seq: 4 },
            events("a", 5..=5),
            set_state("b", RunStatus::Canceled, 1),
            Write::DeleteRun { run_id: "c".into() },
            events("a", 6..=6),
        ]
    );
    let first = vec![
        Write::CreateRun(Box::new(record("a"))),
        events("a", 1..=2),
        Write::CreateRun(Box::new(record("b"))),
        step("b", 1, "one"),
        Write::CreateRun(Box::new(record("c"))),
    ];
    as_queued_and_coalesced(&[first, batch]);
}
