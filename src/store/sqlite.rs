//! [`RunStore`] in one SQLite file: the embedded default (`--data-dir`, file `runstream.db`).
//!
//! - WAL journal with `synchronous = NORMAL`: a commit is in the WAL file before `commit` returns, so it survives
//!   the process being killed (kill -9, a panic, OOM); it is fsynced at checkpoints, so an OS crash or power loss
//!   may lose the last commits (not corrupt the file). `--sync full` fsyncs every commit instead.
//! - One server per data dir: the store holds an exclusive lock on `runstream.lock` beside the database for as long
//!   as it is open, so a second server on the same data dir fails at start, naming the file, instead of two
//!   writers interleaving runs. The database itself uses SQLite's normal locking, so that other processes can read
//!   it while the server runs (`runstream backup`, [`super::backup`]).
//! - The WAL is folded into the database (checkpointed) by a thread of its own with a connection of its own
//!   (`fold.rs`), not inside the commit that makes it long: that commit's checkpoint, with its fsync, stalled every
//!   client waiting for a commit (issue 12).
//! - A clean stop folds the WAL into the database ([`RunStore::checkpoint`], and when the store is dropped), so
//!   that `runstream.db` alone then holds every run; only a killed server leaves a `-wal` to be read at next start.
//! - Opening never repairs or wipes anything: a file that is not a runstream store, or is damaged, is an error
//!   naming the file ([`StoreError::Corrupt`]) that says what to do. Checked at open, before anything is written:
//!   a missing or empty database beside a non-empty WAL (the WAL alone is not a store); a WAL one of whose frames
//!   fails its checksum with frames of the same WAL after it (SQLite would silently drop every commit from that
//!   frame on); an empty database where `runstream.lock` shows a server has run before (a new store is never
//!   empty: an empty file there was truncated). These checks read the WAL at most, so a start does not slow down as
//!   the store grows.
//! - After an unclean stop (a non-empty WAL at open) the database is also read whole by `PRAGMA quick_check`, but
//!   not before the server is ready: that scan grows with the store (38 s for 4.5 GB, issue 12), so it runs in the
//!   background on a read-only connection of its own, beside the writer (`BackgroundCheck`). If it finds damage,
//!   the store is left as it is from then on: commits are refused ([`StoreError::Corrupt`], so that calls needing a
//!   write answer UNAVAILABLE and health turns NOT_SERVING) and the WAL is not folded in; reads of what is stored
//!   go on. A stop before the check ends leaves the WAL too, so that the next start checks again.
//!
//! Times are stored as JSON inside the state record; run creation time also as milliseconds. The registry's
//! creation order and the run's status (the one in its state) have columns of their own, indexed, so that a start
//! reads only in-flight runs and other runs are read or listed one page at a time (issue 12: lazy runs).
//!
//! Events are stored packed: one row per run per commit (`events`: the run, the first and last seq it holds, and
//! the events one after the other in `data`), not one row per event. A profile of a flood showed the writer
//! thread spending most of its time inserting per-event rows into the `(run_id, seq)` index; a packed row costs one
//! index insert for a whole batch. Retention drops whole rows, and `runs.events_from` says from which seq the
//! events are still kept (a row may straddle it).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, config::DbConfig, params};
use serde_json::Value;

use super::{
    DefinitionRecord, LoadedRun, RunQuery, RunRecord, RunStore, RunSummary, StateRecord, StepCheckpoint, StoreError,
    StoredEvent, Tail, Write, fold::Folder,
};
use crate::engine::{RunStatus, StepRecord};

/// The store's file name inside the data dir.
pub const FILE_NAME: &str = "runstream.db";

/// Bumped when the tables change; a store of another version is refused, not migrated silently.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    workflow_version INTEGER NOT NULL DEFAULT 0,
    input TEXT NOT NULL,
    request_context TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    events_from INTEGER NOT NULL DEFAULT 1,
    created_order INTEGER,
    status TEXT,
    tenant TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    phase INTEGER NOT NULL,
    path TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, phase, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS definitions (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, kind, id, version)
);
";

/// Brings a store of schema version 2 to 3: runs learn the version of the registered workflow they run (0, a
/// built-in one, for every run stored before), and `definitions` (created by [`SCHEMA`]) keeps registered ones.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE runs ADD COLUMN workflow_version INTEGER NOT NULL DEFAULT 0;
UPDATE meta SET value = '3' WHERE key = 'schema_version';
";

/// Brings a store of schema version 3 to 4 (issue 12: lazy runs): runs keep the registry's creation order (the
/// rowid order is the order they were created in) and their status beside the state that holds it, each indexed,
/// so that a start reads only in-flight runs and ListRuns pages through stored runs, newest first, without
/// reading every state. `RunStatus` serializes as its variant name (`"Running"`), which `status` holds.
const MIGRATE_3_TO_4: &str = "
ALTER TABLE runs ADD COLUMN created_order INTEGER;
ALTER TABLE runs ADD COLUMN status TEXT;
UPDATE runs SET created_order = rowid, status = json_extract(state, '$.status');
UPDATE meta SET value = '4' WHERE key = 'schema_version';
";

/// Brings a store of schema version 4 to 5 (issue 13: tenants): each run and each registered definition keeps the
/// tenant that made it; what was stored before belongs to the default tenant (`''`), that of a server without
/// authentication. The definitions' key gains the tenant, so their table is made anew by [`SCHEMA`] and filled
/// from the old one, in registration order.
fn migrate_4_to_5() -> String {
    format!(
        "ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
        ALTER TABLE definitions RENAME TO definitions_4;
        {SCHEMA}
        INSERT INTO definitions (kind, id, version, body, registered_at_ms)
            SELECT kind, id, version, body, registered_at_ms FROM definitions_4 ORDER BY rowid;
        DROP TABLE definitions_4;
        UPDATE meta SET value = '5' WHERE key = 'schema_version';"
    )
}

/// Newest-first listing by creation order (SQLite walks an index backwards), and the in-flight lookup by status
/// (its runs oldest first; a status filter of ListRuns newest first), and a tenant's runs newest first (ListRuns).
/// Created by the migrations and with a new store.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS runs_by_order ON runs (created_order);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_order);
CREATE INDEX IF NOT EXISTS runs_by_created_at ON runs (created_at_ms);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_order);
";

/// The runs `Write::ExpireRuns` removes: finished (?1..?4: the terminal statuses) before ?5 (UNIX seconds), hence
/// created before ?6 (ms). See the commit for why the query has this shape.
const EXPIRED_RUNS: &str = "SELECT run_id FROM runs WHERE created_at_ms < ?6 AND +status IN (?1, ?2, ?3, ?4) \
                            AND json_extract(state, '$.updated_at.secs_since_epoch') < ?5";

/// The columns a [`RunRecord`] is read from, in the order [`SqliteStore::read_records`] reads them.
const RECORD_COLUMNS: &str = "run_id, workflow_id, input, request_context, resource_id, created_at_ms, state, \
                              events_from, workflow_version, created_order, tenant";

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    /// Survives the process dying (the default; see the module docs).
    #[default]
    Normal,
    /// Also survives the OS dying: fsync per commit.
    Full,
}

/// The embedded [`RunStore`]: one SQLite file, `runstream.db`, under the data directory.
pub struct SqliteStore {
    path: PathBuf,
    // Dropped before `_lock` (field order): the lock outlives the last write.
    conn: Mutex<Connection>,
    /// Reading it found damage: it is left as it is (see [`SqliteStore::noting_damage`]).
    damaged: Arc<AtomicBool>,
    /// Folds the WAL into the database off the commit path; taken (stopped) by a clean stop's checkpoint.
    folder: Mutex<Option<Folder>>,
    /// After an unclean stop: the check of the whole file.
    check: Option<BackgroundCheck>,
    _lock: DirLock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path, sync: Sync) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let location = path.display().to_string();
        let open_error = |reason: String| StoreError::Open { location: location.clone(), reason };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_error(format!("cannot create the data dir {}: {e}", data_dir.display())))?;
        let lock = DirLock::acquire(data_dir, &location)?;
        let damaged = Arc::new(AtomicBool::new(false));
        match Self::open_locked(path, sync, lock.existed, &damaged) {
            Ok((path, conn, folder, check)) => {
                Ok(Self { path, conn: Mutex::new(conn), damaged, folder: Mutex::new(Some(folder)), check, _lock: lock })
            }
            Err(e) => {
                lock.discard();
                Err(e)
            }
        }
    }

    /// Checks the files, opens the database and prepares it, and starts the check of the whole file if the last stop
    /// was unclean; `lock_existed`: a server used the data dir before.
    fn open_locked(
        path: PathBuf,
        sync: Sync,
        lock_existed: bool,
        damaged: &Arc<AtomicBool>,
    ) -> Result<(PathBuf, Connection, Folder, Option<BackgroundCheck>), StoreError> {
        let location = path.display().to_string();
        let unclean = check_files(&path, lock_existed)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| StoreError::Open { location: location.clone(), reason: e.to_string() })?;
        // Closing the last connection folds the WAL into the database: not while the files may be found damaged.
        let no_checkpoint_on_close = |on: bool| {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, on)
                .map(|_| ())
                .map_err(|e| classify(&location, e))
        };
        no_checkpoint_on_close(true)?;
        prepare(&conn, &location, sync)?;
        let check = if unclean { Some(BackgroundCheck::start(&path)?) } else { None };
        let (damaged, found) = (Arc::clone(damaged), check.as_ref().map(|check| Arc::clone(&check.found)));
        let hold = move || damaged.load(Ordering::Relaxed) || found.as_ref().is_some_and(|found| found.get().is_some());
        let folder = Folder::start(&path, &mut conn, sync_pragma(sync), Arc::new(hold)).inspect_err(|_| {
            if let Some(check) = &check {
                check.stop.store(true, Ordering::Relaxed);
            }
        })?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false).map_err(|e| classify(&location, e))?;
        Ok((path, conn, folder, check))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction leaves the transaction to be rolled back by SQLite; the connection is fine.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn classify(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.location(), e)
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt { location: self.location(), reason }
    }
}

/// The lock file's name inside the data dir.
pub const LOCK_FILE_NAME: &str = "runstream.lock";

/// `runstream.lock` in the data dir, held exclusively while the store is open. It is a SQLite file because that is
/// the file lock at hand with neither unsafe code nor another dependency: a connection in exclusive locking mode
/// keeps the lock it took to write until it is closed, and the OS drops it when the process dies.
struct DirLock {
    // Behind a mutex only to be Sync (the store is shared between threads); never locked but to drop it.
    conn: Mutex<Option<Connection>>,
    path: PathBuf,
    /// The file was there before: a server has used this data dir.
    existed: bool,
}

impl DirLock {
    /// Takes the lock, or fails naming `location` (the database) if another process holds it.
    fn acquire(data_dir: &Path, location: &str) -> Result<Self, StoreError> {
        let path = data_dir.join(LOCK_FILE_NAME);
        let existed = path.exists();
        let fail = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => StoreError::Open {
                location: location.to_owned(),
                reason: format!(
                    "another process has it open (is another runstream using this --data-dir? it holds \
                     {LOCK_FILE_NAME})"
                ),
            },
            _ => StoreError::Open {
                location: location.to_owned(),
                reason: format!("cannot lock {}: {e}", path.display()),
            },
        };
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(Duration::ZERO).map_err(fail)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(fail)?;
        conn.query_row("PRAGMA journal_mode = OFF", [], |_| Ok(())).map_err(fail)?;
        // The write takes the exclusive lock, which exclusive locking mode then keeps.
        conn.pragma_update(None, "user_version", 1).map_err(fail)?;
        Ok(Self { conn: Mutex::new(Some(conn)), path, existed })
    }

    /// Releases the lock and, if this start created the file, removes it: a failed start leaves nothing behind.
    fn discard(self) {
        drop(self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        if !self.existed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The file `suffix` names beside the database (`-wal`, `-shm`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The length of the file at `path`, `None` if there is none.
fn file_len(path: &Path) -> Result<Option<u64>, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { location: path.display().to_string(), reason: e.to_string() }),
    }
}

/// What the files say before SQLite opens them (see the module docs); `Ok(true)` if the last stop was unclean
/// (a non-empty WAL).
fn check_files(path: &Path, lock_existed: bool) -> Result<bool, StoreError> {
    let location = path.display().to_string();
    let wal = sibling(path, "-wal");
    let db_len = file_len(path)?;
    let wal_len = file_len(&wal)?.unwrap_or(0);
    let damaged = |reason: String| StoreError::Corrupt { location: location.clone(), reason };
    if wal_len > 0 && db_len.unwrap_or(0) == 0 {
        let what = if db_len.is_none() { "missing" } else { "empty (0 bytes)" };
        return Err(damaged(format!(
            "the database is {what}, but {FILE_NAME}-wal beside it holds {wal_len} bytes of changes to it: a WAL \
             alone is not a store, and opening it would start an empty one"
        )));
    }
    if db_len == Some(0) && lock_existed {
        return Err(damaged(format!(
            "the database is empty (0 bytes), but {LOCK_FILE_NAME} beside it shows a server has used this data dir, \
             and a store, once created, is never empty: the file was cut short"
        )));
    }
    if wal_len == 0 {
        return Ok(false);
    }
    let reason =
        check_wal(&wal).map_err(|e| StoreError::Io { location: wal.display().to_string(), reason: e.to_string() })?;
    match reason {
        None => Ok(true),
        Some(reason) => Err(damaged(format!(
            "{FILE_NAME}-wal beside it is damaged: {reason}; SQLite would silently drop every commit from there on \
             (to start from what the database alone holds, losing those commits, move {FILE_NAME}-wal and \
             {FILE_NAME}-shm aside)"
        ))),
    }
}

/// WAL file format (sqlite.org/fileformat2.html#walformat): a 32-byte header, then frames of a 24-byte header
/// and one page.
const WAL_HEADER: usize = 32;
const WAL_FRAME_HEADER: usize = 24;

/// Checks the WAL's checksums as SQLite does when it reads the WAL, but says what SQLite would silently skip:
/// `Some(what)` if a frame fails its checksum while frames of the same WAL (its salts) follow it. A bad last frame
/// is a commit cut short by a crash and is not reported: SQLite drops that one commit, as it should. Frames
/// with other salts after the valid ones are left over from before the WAL was last restarted, not damage.
fn check_wal(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut header = [0u8; WAL_HEADER];
    if let Err(e) = file.read_exact(&mut header) {
        // Shorter than its header: SQLite reads no commits from it, and none could have been written.
        return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    }
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let magic = be32(&header, 0);
    if magic & !1 != 0x377f_0682 {
        return Ok(Some("its header is not a WAL header".into()));
    }
    let big_endian = magic & 1 == 1;
    let page_size = match be32(&header, 8) {
        1 => 65_536,
        n if n.is_power_of_two() && (512..=32_768).contains(&n) => n as usize,
        n => return Ok(Some(format!("its header gives a page size of {n}"))),
    };
    let salts = [be32(&header, 16), be32(&header, 20)];
    let mut sum = wal_checksum(&header[..24], big_endian, (0, 0));
    if sum != (be32(&header, 24), be32(&header, 28)) {
        let has_frames = !std::io::BufRead::fill_buf(&mut file)?.is_empty();
        return Ok(has_frames.then(|| "its header fails its checksum, so SQLite would read none of its frames".into()));
    }
    let mut frame = vec![0u8; WAL_FRAME_HEADER + page_size];
    let mut index = 0u64;
    let mut bad_at = None;
    let mut later_of_same_wal = 0u64;
    loop {
        match file.read_exact(&mut frame) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        index += 1;
        let same_wal = [be32(&frame, 8), be32(&frame, 12)] == salts;
        match bad_at {
            None => {
                sum = wal_checksum(&frame[..8], big_endian, sum);
                sum = wal_checksum(&frame[WAL_FRAME_HEADER..], big_endian, sum);
                if !same_wal || sum != (be32(&frame, 16), be32(&frame, 20)) {
                    bad_at = Some(index);
                }
            }
            Some(_) if same_wal => later_of_same_wal += 1,
            Some(_) => {}
        }
    }
    Ok(match bad_at {
        Some(at) if later_of_same_wal > 0 => Some(format!(
            "frame {at} of {index} fails its checksum and {later_of_same_wal} later frames of the same WAL follow it"
        )),
        _ => None,
    })
}

/// The WAL checksum: over 32-bit words in the byte order the WAL's magic number says, two at a time.
fn wal_checksum(data: &[u8], big_endian: bool, (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    let word = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    };
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

/// `PRAGMA synchronous` for `sync`.
fn sync_pragma(sync: Sync) -> &'static str {
    match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    }
}

/// Settings, schema and version check. The first statement reads the file header: a file that is not a database
/// fails here, before anything is written.
fn prepare(conn: &Connection, location: &str, sync: Sync) -> Result<(), StoreError> {
    let corrupt = |e: rusqlite::Error| classify(location, e);
    // Only a reader (runstream backup) shares the file, and a reader holds off a writer for moments at most.
    conn.busy_timeout(Duration::from_millis(200)).map_err(corrupt)?;
    conn.query_row("PRAGMA schema_version", [], |_| Ok(())).map_err(corrupt)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(corrupt)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            location: location.to_owned(),
            reason: format!("the file system refuses WAL journaling (journal mode stays {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", sync_pragma(sync)).map_err(corrupt)?;
    // No `wal_autocheckpoint`: the WAL is folded in by a thread of its own (`fold.rs`), whose hook replaces it.
    conn.execute_batch(SCHEMA).map_err(corrupt)?;
    let version: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |row| row.get(0))
        .optional()
        .map_err(corrupt)?;
    match version {
        None => {
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])
                .map_err(corrupt)?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) if v == "2" => {
            conn.execute_batch(&format!("BEGIN;{MIGRATE_2_TO_3}{MIGRATE_3_TO_4}{}{INDEXES}COMMIT;", migrate_4_to_5()))
                .map_err(corrupt)?;
            tracing::info!(store = %location, "migrated the store from schema version 2 to 5");
        }
        Some(v) if v == "3" => {
            conn.execute_batch(&format!("BEGIN;{MIGRATE_3_TO_4}{}{INDEXES}COMMIT;", migrate_4_to_5()))
                .map_err(corrupt)?;
            tracing::info!(store = %location, "migrated the store from schema version 3 to 5");
        }
        Some(v) if v == "4" => {
            conn.execute_batch(&format!("BEGIN;{}{INDEXES}COMMIT;", migrate_4_to_5())).map_err(corrupt)?;
            tracing::info!(store = %location, "migrated the store from schema version 4 to 5");
        }
        Some(v) => {
            return Err(StoreError::Open {
                location: location.to_owned(),
                reason: format!(
                    "it has schema version {v}, this runstream reads version {SCHEMA_VERSION}; run the runstream \
                     that wrote it, or use another --data-dir"
                ),
            });
        }
    }
    // A new store's (a migrated one has them already).
    conn.execute_batch(INDEXES).map_err(corrupt)?;
    Ok(())
}

/// `PRAGMA quick_check`: every page of the database and WAL read and its structure checked (not the indexes
/// against their tables, which `integrity_check` adds at many times the cost).
fn quick_check(conn: &Connection, location: &str) -> Result<(), StoreError> {
    let corrupt = |e: rusqlite::Error| match classify(location, e) {
        StoreError::Corrupt { location, reason } => {
            StoreError::Corrupt { location, reason: format!("SQLite's quick_check: {reason}") }
        }
        other => other,
    };
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(corrupt)?;
    let problems: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(corrupt)?
        .collect::<Result<_, _>>()
        .map_err(corrupt)?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        location: location.to_owned(),
        reason: format!("SQLite's quick_check finds it damaged: {}", problems.join("; ")),
    })
}

/// After an unclean stop, [`quick_check`] of the whole file in a thread of its own, on a read-only connection of its
/// own: WAL lets it read one snapshot of the file while the writer commits, so the server is ready at once instead
/// of after a scan that grows with the store.
struct BackgroundCheck {
    /// The damage it found: commits are refused with it from then on.
    found: Arc<OnceLock<String>>,
    /// Asks it to stop: a stop does not wait for a scan of the whole file.
    stop: Arc<AtomicBool>,
    /// Its thread until joined, which answers whether the file passed.
    thread: Mutex<Option<std::thread::JoinHandle<bool>>>,
}

impl BackgroundCheck {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let found = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (to_check, finding, stopping) = (path.to_owned(), Arc::clone(&found), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("store-check".into())
            .spawn(move || check_whole_file(&to_check, &finding, &stopping))
            .map_err(|e| StoreError::Io {
                location: path.display().to_string(),
                reason: format!("cannot start a thread to check it: {e}"),
            })?;
        Ok(Self { found, stop, thread: Mutex::new(Some(thread)) })
    }
}

/// [`BackgroundCheck`]'s thread: `true` if the file passed; damage found is set in `found`.
fn check_whole_file(path: &Path, found: &OnceLock<String>, stop: &Arc<AtomicBool>) -> bool {
    let location = path.display().to_string();
    tracing::info!(store = %location, "the last stop was unclean: checking the whole file (quick_check) while serving");
    let started = Instant::now();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let checked = Connection::open_with_flags(path, flags).map_err(|e| classify(&location, e)).and_then(|mut conn| {
        let stopping = Arc::clone(stop);
        // SQLite's check asks about every 100 pages (a quick_check statement is one VM instruction).
        conn.progress_handler(100, Some(move || stopping.load(Ordering::Relaxed)))
            .map_err(|e| classify(&location, e))?;
        quick_check(&conn, &location)
    });
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match checked {
        Ok(()) => {
            tracing::info!(store = %location, took_ms, "the whole file passed its check");
            true
        }
        Err(StoreError::Corrupt { location, reason }) => {
            let _ = found.set(reason.clone());
            let error = StoreError::Corrupt { location, reason };
            tracing::error!(%error, "the store refuses writes from now on; reads of stored runs go on");
            false
        }
        Err(_) if stop.load(Ordering::Relaxed) => {
            let stopped = "the check of the whole file stopped with the server; the next start checks again";
            tracing::info!(store = %location, took_ms, "{stopped}");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "the whole file could not be checked; the next start checks again");
            false
        }
    }
}

/// Sorts SQLite's errors into "the file is bad" and "something else failed", with the file named.
fn classify(location: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let location = location.to_owned();
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::DatabaseCorrupt) => StoreError::Corrupt { location, reason: e.to_string() },
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Open {
            location,
            reason: "another process has it open (is another runstream using this --data-dir?)".into(),
        },
        _ => StoreError::Io { location, reason: e.to_string() },
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// [`millis`] read back: a negative column (never written) is the epoch.
fn time_of_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Runs `sql` through the connection's statement cache: the writer runs the same few statements for every run.
fn exec(tx: &rusqlite::Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A status as the `status` column holds it: as serde writes it in the state JSON (the migration to schema 4
/// extracts it from there), i.e. the variant's name.
fn status_text(status: RunStatus) -> String {
    match serde_json::to_value(status) {
        Ok(Value::String(text)) => text,
        // Unreachable for a fieldless enum; the name is what serde would have written.
        _ => format!("{status:?}"),
    }
}

/// A finish status as stored in a packed event (0 is "not a finish"). These numbers are on disk: never change
/// one; a new status gets a new number (the match makes adding a status without one a compile error).
fn status_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Pending => 1,
        RunStatus::Running => 2,
        RunStatus::Waiting => 3,
        RunStatus::Suspended => 4,
        RunStatus::Paused => 5,
        RunStatus::Success => 6,
        RunStatus::Failed => 7,
        RunStatus::Canceled => 8,
        RunStatus::Tripwire => 9,
    }
}

fn status_of_code(code: u8) -> Option<RunStatus> {
    use RunStatus as S;
    [S::Pending, S::Running, S::Waiting, S::Suspended, S::Paused, S::Success, S::Failed, S::Canceled, S::Tripwire]
        .into_iter()
        .find(|s| status_code(*s) == code)
}

/// Consecutive events, one after the other: per event its time (ms, u64 LE), its finish status code (u8), its
/// body's length (u32 LE) and its body. Seqs are implied: the row's first seq, +1 per event.
fn pack(events: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| 13 + e.body.len()).sum());
    for event in events {
        out.extend_from_slice(&u64::try_from(millis(event.time)).unwrap_or(0).to_le_bytes());
        out.push(event.finish.map_or(0, status_code));
        out.extend_from_slice(&u32::try_from(event.body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&event.body);
    }
    out
}

/// The events of a packed row starting at `first_seq`; `None` if the bytes are not a whole number of events.
fn unpack(first_seq: u64, all: &bytes::Bytes) -> Option<Vec<StoredEvent>> {
    let mut data = &all[..];
    let mut events = Vec::new();
    let mut seq = first_seq;
    while !data.is_empty() {
        let time_ms = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        let finish = match *data.get(8)? {
            0 => None,
            code => Some(status_of_code(code)?),
        };
        let len = usize::try_from(u32::from_le_bytes(data.get(9..13)?.try_into().ok()?)).ok()?;
        let body = data.get(13..13 + len)?;
        let time = UNIX_EPOCH + Duration::from_millis(time_ms);
        // A slice of the row's one buffer, as the log keeps events in shared chunks.
        events.push(StoredEvent { seq, time, body: all.slice_ref(body), finish });
        seq += 1;
        data = &data[13 + len..];
    }
    Some(events)
}

impl SqliteStore {
    /// A store found damaged is left as it is: neither this store nor SQLite closing it folds its WAL in.
    fn noting_damage<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Corrupt { .. }) = &result {
            self.leave_as_is();
        }
        result
    }

    fn leave_as_is(&self) {
        self.damaged.store(true, Ordering::Relaxed);
        let _ = self.lock().set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
    }

    /// The damage the check of the whole file found, if it did.
    fn found_damage(&self) -> Option<String> {
        self.check.as_ref().and_then(|check| check.found.get().cloned())
    }

    /// Waits for the check of the whole file to end (`stop`: asking it to stop first); unless the file passed, it is
    /// left as it is (the WAL kept, so that the next start checks again).
    fn end_check(&self, stop: bool) {
        let Some(check) = &self.check else { return };
        let Some(thread) = check.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else { return };
        if stop {
            check.stop.store(true, Ordering::Relaxed);
        }
        if !thread.join().unwrap_or(false) {
            self.leave_as_is();
        }
    }

    /// The records of `SELECT {RECORD_COLUMNS} FROM runs {tail}`, each with the seq its kept events start from.
    fn read_records(
        &self,
        conn: &Connection,
        tail: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<(RunRecord, u64)>, StoreError> {
        let err = |e: rusqlite::Error| self.classify(e);
        let mut stmt = conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM runs {tail}")).map_err(err)?;
        let rows = stmt
            .query_map(params, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, i64>(8)?,
                    row.get::<_, Option<i64>>(9)?,
                    row.get::<_, String>(10)?,
                ))
            })
            .map_err(err)?;
        rows.map(|row| {
            let (
                run_id,
                workflow_id,
                input,
                request_context,
                resource_id,
                created_ms,
                state,
                events_from,
                version,
                order,
                tenant,
            ) = row.map_err(err)?;
            let workflow_version = u32::try_from(version)
                .map_err(|_| self.corrupt(format!("run '{run_id}': its workflow version {version} is out of range")))?;
            let created_order = u64::try_from(order.unwrap_or(0))
                .map_err(|_| self.corrupt(format!("run '{run_id}': its creation order {order:?} is out of range")))?;
            let bad = |what: &str, e: serde_json::Error| self.corrupt(format!("run '{run_id}': its {what}: {e}"));
            let input: Value = serde_json::from_str(&input).map_err(|e| bad("input", e))?;
            let request_context = serde_json::from_str(&request_context).map_err(|e| bad("request context", e))?;
            let state: StateRecord = serde_json::from_str(&state).map_err(|e| bad("state", e))?;
            let record = RunRecord {
                run_id,
                workflow_id,
                workflow_version,
                input,
                request_context,
                resource_id,
                tenant,
                created_at: time_of_millis(created_ms),
                created_order,
                state,
            };
            Ok((record, u64::try_from(events_from).unwrap_or(1)))
        })
        .collect()
    }

    /// The runs `tail` selects (see [`Self::read_records`]), each with its kept events and the checkpoints of its
    /// current phase.
    fn read_runs(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
        tail: Tail,
    ) -> Result<Vec<LoadedRun>, StoreError> {
        let conn = self.lock();
        let err = |e: rusqlite::Error| self.classify(e);
        let records = self.read_records(&conn, filter, params)?;
        // Newest rows first: a tail stops reading once it has what it asked for.
        let mut events_stmt = conn
            .prepare_cached("SELECT first_seq, last_seq, data FROM events WHERE run_id = ?1 ORDER BY first_seq DESC")
            .map_err(err)?;
        let mut steps_stmt = conn
            .prepare_cached("SELECT path, record FROM steps WHERE run_id = ?1 AND phase = ?2 ORDER BY path")
            .map_err(err)?;
        let mut loaded = Vec::with_capacity(records.len());
        for (record, events_from) in records {
            let run_id = &record.run_id;
            let mut rows: Vec<Vec<StoredEvent>> = Vec::new();
            let (mut count, mut bytes) = (0usize, 0usize);
            let mut found = events_stmt
                .query_map([run_id], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Vec<u8>>(2)?))
                })
                .map_err(err)?;
            while rows.is_empty() || (count < tail.events && bytes < tail.bytes) {
                let Some(row) = found.next() else { break };
                let mut unpacked = self.unpack_row(run_id, row.map_err(err)?)?;
                unpacked.retain(|e| e.seq >= events_from);
                count += unpacked.len();
                bytes = unpacked.iter().fold(bytes, |sum, e| sum.saturating_add(e.body.len()));
                let older_than_kept = unpacked.is_empty();
                rows.push(unpacked);
                if older_than_kept {
                    break;
                }
            }
            drop(found);
            let mut events: Vec<StoredEvent> = rows.into_iter().rev().flatten().collect();
            tail.cut(&mut events);
            if let Some(gap) = events.windows(2).find(|w| w[1].seq != w[0].seq + 1) {
                return Err(
                    self.corrupt(format!("run '{run_id}': its log jumps from seq {} to {}", gap[0].seq, gap[1].seq))
                );
            }
            let phase = record.state.phase;
            let checkpoints = steps_stmt
                .query_map(params![run_id, phase], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
                .map_err(err)?
                .map(|row| {
                    let (path, step) = row.map_err(err)?;
                    let step: StepRecord = serde_json::from_str(&step)
                        .map_err(|e| self.corrupt(format!("run '{run_id}': its step record: {e}")))?;
                    Ok(StepCheckpoint { phase, path, record: step })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            loaded.push(LoadedRun { record, events, events_from, checkpoints });
        }
        Ok(loaded)
    }

    /// The events of one packed row of run `run_id` (its first seq, last seq and data), checked against its seqs.
    fn unpack_row(
        &self,
        run_id: &str,
        (first_seq, last_seq, data): (i64, i64, Vec<u8>),
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let first_seq = u64::try_from(first_seq).unwrap_or(0);
        unpack(first_seq, &bytes::Bytes::from(data))
            .filter(|e| e.last().map(|e| e.seq) == u64::try_from(last_seq).ok())
            .ok_or_else(|| self.corrupt(format!("run '{run_id}': its events {first_seq}..={last_seq} are damaged")))
    }

    /// [`RunStore::read_events`]: the packed rows holding seqs after `after_seq`, unpacked until `limit` events.
    fn read_event_rows(&self, run_id: &str, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.lock();
        let err = |e: rusqlite::Error| self.classify(e);
        let events_from: Option<i64> = conn
            .prepare_cached("SELECT events_from FROM runs WHERE run_id = ?1")
            .map_err(err)?
            .query_row([run_id], |row| row.get(0))
            .optional()
            .map_err(err)?;
        let Some(events_from) = events_from else { return Ok(Vec::new()) };
        let events_from = u64::try_from(events_from).unwrap_or(1);
        let mut stmt = conn
            .prepare_cached(
                "SELECT first_seq, last_seq, data FROM events WHERE run_id = ?1 AND last_seq > ?2 ORDER BY first_seq",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![run_id, seq_i64(after_seq)], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Vec<u8>>(2)?))
            })
            .map_err(err)?;
        let mut events = Vec::new();
        for row in rows {
            let unpacked = self.unpack_row(run_id, row.map_err(err)?)?;
            let wanted = unpacked.into_iter().filter(|e| e.seq > after_seq && e.seq >= events_from);
            events.extend(wanted.take(limit - events.len()));
            if events.len() >= limit {
                break;
            }
        }
        Ok(events)
    }

    /// [`RunStore::list_runs`]: the filters set become conditions, so that SQLite can use an index for them.
    fn list_records(&self, query: &RunQuery, before_order: u64, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let status = query.status.map(status_text);
        let before = seq_i64(before_order);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tail = String::from("WHERE 1");
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::new();
        let conditions: [(&str, Option<&dyn rusqlite::ToSql>); 5] = [
            (" AND tenant = ?", Some(&query.tenant as &dyn rusqlite::ToSql)),
            (" AND workflow_id = ?", query.workflow_id.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
            (" AND status = ?", status.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
            (" AND resource_id = ?", query.resource_id.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
            (" AND created_order < ?", (before_order != 0).then_some(&before as &dyn rusqlite::ToSql)),
        ];
        for (condition, value) in conditions {
            if let Some(value) = value {
                tail.push_str(condition);
                params.push(value);
            }
        }
        tail.push_str(" ORDER BY created_order DESC, rowid DESC LIMIT ?");
        params.push(&limit);
        let conn = self.lock();
        let records = self.read_records(&conn, &tail, &params)?;
        let mut last_seq_stmt = conn
            .prepare_cached("SELECT COALESCE(MAX(last_seq), 0) FROM events WHERE run_id = ?1")
            .map_err(|e| self.classify(e))?;
        records
            .into_iter()
            .map(|(record, _)| {
                let last: i64 =
                    last_seq_stmt.query_row([&record.run_id], |row| row.get(0)).map_err(|e| self.classify(e))?;
                Ok(RunSummary { record, last_seq: u64::try_from(last).unwrap_or(0) })
            })
            .collect()
    }

    fn load_definition_records(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        let conn = self.lock();
        let err = |e: rusqlite::Error| self.classify(e);
        let mut stmt = conn
            // rowid: registration order.
            .prepare("SELECT kind, id, version, body, registered_at_ms, tenant FROM definitions ORDER BY rowid")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(err)?;
        rows.map(|row| {
            let (kind, id, version, body, registered_ms, tenant) = row.map_err(err)?;
            let body = serde_json::from_str(&body)
                .map_err(|e| self.corrupt(format!("{kind} definition '{id}' version {version}: {e}")))?;
            let registered_at = time_of_millis(registered_ms);
            Ok(DefinitionRecord { tenant, kind, id, version, body, registered_at })
        })
        .collect()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.end_check(true);
        if self.damaged.load(Ordering::Relaxed) {
            return;
        }
        // SQLite folds the WAL in as it closes the last connection too, but says nothing if it cannot.
        if let Err(e) = RunStore::checkpoint(self) {
            tracing::warn!(error = %e, "the store closes with its WAL not folded in; the next start reads it");
        }
    }
}

impl RunStore for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.location())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        // Also so that no reader holds the WAL back from being folded in.
        self.end_check(true);
        if let Some(mut folder) = self.folder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            folder.stop();
        }
        if let Some(found) = self.found_damage() {
            return Err(self.corrupt(found));
        }
        if self.damaged.load(Ordering::Relaxed) {
            return Err(StoreError::Io {
                location: self.location(),
                reason: "it is left as it is, its WAL not folded in: it was found damaged, or the check of the whole \
                         file after an unclean stop did not end (the next start checks again)"
                    .into(),
            });
        }
        let conn = self.lock();
        let (busy, pages, folded): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(|e| self.classify(e))?;
        if busy != 0 {
            return Err(StoreError::Io {
                location: self.location(),
                reason: format!(
                    "only {folded} of the {pages} pages of its WAL could be folded into it: another process (a \
                     backup?) was reading it; the WAL stays beside it and is read at the next start"
                ),
            });
        }
        Ok(())
    }

    fn load(&self) -> Result<Vec<LoadedRun>, StoreError> {
        self.noting_damage(self.read_runs("ORDER BY created_order, rowid", &[], Tail::ALL))
    }

    fn load_active(&self, tail: Tail) -> Result<Vec<LoadedRun>, StoreError> {
        let [a, b, c] = [RunStatus::Pending, RunStatus::Running, RunStatus::Waiting].map(status_text);
        let filter = "WHERE status IN (?1, ?2, ?3) ORDER BY created_order, rowid";
        self.noting_damage(self.read_runs(filter, &[&a, &b, &c], tail))
    }

    fn load_run(&self, run_id: &str, tail: Tail) -> Result<Option<LoadedRun>, StoreError> {
        let mut runs = self.noting_damage(self.read_runs("WHERE run_id = ?1", &[&run_id], tail))?;
        Ok(runs.pop())
    }

    fn list_runs(&self, query: &RunQuery, before_order: u64, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        self.noting_damage(self.list_records(query, before_order, limit))
    }

    fn read_events(&self, run_id: &str, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.noting_damage(self.read_event_rows(run_id, after_seq, limit))
    }

    fn max_order(&self) -> Result<u64, StoreError> {
        let max: i64 = self
            .lock()
            .query_row("SELECT COALESCE(MAX(created_order), 0) FROM runs", [], |row| row.get(0))
            .map_err(|e| self.classify(e))?;
        Ok(u64::try_from(max).unwrap_or(0))
    }

    fn load_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.noting_damage(self.load_definition_records())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if let Some(found) = self.found_damage() {
            return self.noting_damage(Err(self.corrupt(found)));
        }
        let mut conn = self.lock();
        let err = |e: rusqlite::Error| self.classify(e);
        let json =
            |v: &dyn erased::Json| v.to_json().map_err(|e| StoreError::Io { location: self.location(), reason: e });
        let tx = conn.transaction().map_err(err)?;
        {
            let mut insert_events = tx
                .prepare_cached("INSERT INTO events (run_id, first_seq, last_seq, data) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            for write in writes {
                match write {
                    Write::CreateRun(run) => {
                        exec(
                            &tx,
                            "INSERT INTO runs (run_id, workflow_id, input, request_context, resource_id, created_at_ms, \
                             state, workflow_version, created_order, status, tenant) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                            params![
                                run.run_id,
                                run.workflow_id,
                                json(&run.input)?,
                                json(&run.request_context)?,
                                run.resource_id,
                                millis(run.created_at),
                                json(&run.state)?,
                                run.workflow_version,
                                seq_i64(run.created_order),
                                status_text(run.state.status),
                                run.tenant,
                            ],
                        )
                        .map_err(err)?;
                    }
                    Write::Events { run_id, events } => {
                        if let (Some(first), Some(last)) = (events.first(), events.last()) {
                            let (first, last) = (seq_i64(first.seq), seq_i64(last.seq));
                            insert_events.execute(params![run_id, first, last, pack(events)]).map_err(err)?;
                        }
                    }
                    Write::Step { run_id, checkpoint } => {
                        exec(
                            &tx,
                            "INSERT OR REPLACE INTO steps (run_id, phase, path, record) VALUES (?1, ?2, ?3, ?4)",
                            params![run_id, checkpoint.phase, checkpoint.path, json(&checkpoint.record)?],
                        )
                        .map_err(err)?;
                    }
                    Write::State { run_id, state } => {
                        exec(
                            &tx,
                            "UPDATE runs SET state = ?2, status = ?3 WHERE run_id = ?1",
                            params![run_id, json(&**state)?, status_text(state.status)],
                        )
                        .map_err(err)?;
                        // Checkpoints of finished phases are in the snapshot now. Phases start at 1: a first
                        // phase's state (most of them) has none to drop, and skips the index search.
                        if state.phase > 1 {
                            exec(
                                &tx,
                                "DELETE FROM steps WHERE run_id = ?1 AND phase < ?2",
                                params![run_id, state.phase],
                            )
                            .map_err(err)?;
                        }
                    }
                    Write::DeleteRun { run_id } => {
                        for table in ["events", "steps", "runs"] {
                            exec(&tx, &format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id]).map_err(err)?;
                        }
                    }
                    Write::ExpireRuns { ended_before } => {
                        // A run that ended before the cutoff was created before it: the creation-time index narrows
                        // the search to runs older than the retention (a scan of every state's JSON took 12 s on a
                        // million runs, and held up every write behind it). Their end time is read from the state
                        // (serde's `SystemTime` form); `+status` keeps SQLite off the status index, which would scan
                        // every finished run. Events and steps first: they are found through the run.
                        let ended = EXPIRED_RUNS;
                        let terminal =
                            [RunStatus::Success, RunStatus::Failed, RunStatus::Canceled, RunStatus::Tripwire]
                                .map(status_text);
                        let cutoff = ended_before.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        let cutoff = i64::try_from(cutoff).unwrap_or(i64::MAX);
                        for table in ["events", "steps", "runs"] {
                            exec(
                                &tx,
                                &format!("DELETE FROM {table} WHERE run_id IN ({ended})"),
                                params![
                                    terminal[0],
                                    terminal[1],
                                    terminal[2],
                                    terminal[3],
                                    cutoff,
                                    millis(*ended_before)
                                ],
                            )
                            .map_err(err)?;
                        }
                    }
                    Write::Definition(def) => {
                        exec(
                            &tx,
                            "INSERT INTO definitions (kind, id, version, body, registered_at_ms, tenant) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![
                                def.kind,
                                def.id,
                                def.version,
                                json(&def.body)?,
                                millis(def.registered_at),
                                def.tenant
                            ],
                        )
                        .map_err(err)?;
                    }
                    Write::TrimEvents { run_id, before_seq } => {
                        let before = seq_i64(*before_seq);
                        // Whole rows below the new start go; a row straddling it stays, filtered at load.
                        exec(&tx, "DELETE FROM events WHERE run_id = ?1 AND last_seq < ?2", params![run_id, before])
                            .map_err(err)?;
                        exec(
                            &tx,
                            "UPDATE runs SET events_from = MAX(events_from, ?2) WHERE run_id = ?1",
                            params![run_id, before],
                        )
                        .map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }
}

/// JSON text of the serde values a row holds, with a plain-text error.
mod erased {
    pub(super) trait Json {
        fn to_json(&self) -> Result<String, String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<String, String> {
            serde_json::to_string(self).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention's search goes through the creation-time index, not every finished run (12 s on a million).
    #[test]
    fn expired_runs_are_found_through_the_creation_time_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(INDEXES).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {EXPIRED_RUNS}"))
            .unwrap()
            .query_map(params!["a", "b", "c", "d", 0, 0], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("runs_by_created_at")), "{plan:?}");
    }

    /// A WAL as SQLite leaves it when the process dies: several commits, nothing folded into the database.
    fn wal_of_commits(name: &str) -> (PathBuf, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("runstream-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = Connection::open(dir.join("db")).unwrap();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        for i in 0..5 {
            conn.execute("INSERT INTO t VALUES (?1)", [vec![i as u8; 3000]]).unwrap();
        }
        drop(conn);
        let wal = dir.join("db-wal");
        let bytes = std::fs::read(&wal).unwrap();
        (wal, bytes)
    }

    #[test]
    fn a_damaged_wal_frame_is_found_unless_it_is_the_last() {
        let (wal, bytes) = wal_of_commits("frames");
        let frame = WAL_FRAME_HEADER + 4096;
        let frames = (bytes.len() - WAL_HEADER) / frame;
        assert!(frames >= 5, "{frames} frames");
        assert_eq!(check_wal(&wal).unwrap(), None, "an intact WAL");

        let mut torn = bytes.clone();
        torn[WAL_HEADER + (frames - 1) * frame + WAL_FRAME_HEADER + 10] ^= 1;
        std::fs::write(&wal, &torn).unwrap();
        assert_eq!(check_wal(&wal).unwrap(), None, "a commit cut short by a crash is SQLite's to drop");

        let mut damaged = bytes.clone();
        damaged[WAL_HEADER + frame + WAL_FRAME_HEADER + 10] ^= 1;
        std::fs::write(&wal, &damaged).unwrap();
        let found = check_wal(&wal).unwrap().expect("damage in the middle is found");
        assert!(found.starts_with(&format!("frame 2 of {frames} fails its checksum")), "{found}");

        let mut header = bytes;
        header[12] ^= 1;
        std::fs::write(&wal, &header).unwrap();
        assert!(check_wal(&wal).unwrap().expect("a bad header").contains("header fails its checksum"));
        let _ = std::fs::remove_dir_all(wal.parent().unwrap());
    }

    /// A crash image of a store: many definitions folded into the database by a clean stop, one more only in the
    /// WAL, the files copied while the store is open (as a killed server leaves them). Its data dir.
    fn crashed_store(name: &str) -> PathBuf {
        let base = std::env::temp_dir().join(format!("runstream-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (live, crashed) = (base.join("live"), base.join("crashed"));
        let definition = |id: usize| {
            let body = serde_json::json!({ "padding": "x".repeat(3000) });
            Write::Definition(Box::new(DefinitionRecord {
                tenant: String::new(),
                kind: "workflow".into(),
                id: format!("wf-{id}"),
                version: 1,
                body,
                registered_at: UNIX_EPOCH,
            }))
        };
        let store = SqliteStore::open(&live, Sync::Normal).unwrap();
        store.commit(&(0..100).map(definition).collect::<Vec<_>>()).unwrap();
        drop(store);
        let store = SqliteStore::open(&live, Sync::Normal).unwrap();
        store.commit(&[definition(100)]).unwrap();
        std::fs::create_dir_all(&crashed).unwrap();
        for file in [FILE_NAME.to_owned(), format!("{FILE_NAME}-wal")] {
            std::fs::copy(live.join(&file), crashed.join(&file)).unwrap();
        }
        crashed
    }

    /// After an unclean stop the store opens at once; the check of the whole file runs beside it. Damage it finds
    /// makes commits fail as `Corrupt`, and the files are left as they were.
    #[test]
    fn damage_found_after_an_unclean_stop_refuses_commits_and_leaves_the_files() {
        const PAGE: usize = 4096;
        let data_dir = crashed_store("damaged");
        let (db, wal) = (data_dir.join(FILE_NAME), sibling(&data_dir.join(FILE_NAME), "-wal"));
        let in_wal: Vec<u32> = std::fs::read(&wal).unwrap()[WAL_HEADER..]
            .chunks_exact(WAL_FRAME_HEADER + PAGE)
            .map(|frame| u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
            .collect();
        let mut bytes = std::fs::read(&db).unwrap();
        let page = (2..=bytes.len() / PAGE)
            .rev()
            .find(|p| !in_wal.contains(&(*p as u32)) && [0x0d, 0x0a, 0x05].contains(&bytes[(p - 1) * PAGE]))
            .expect("a b-tree page only the database holds");
        // A page type that does not exist.
        bytes[(page - 1) * PAGE] = 0x6b;
        std::fs::write(&db, &bytes).unwrap();
        let wal_bytes = std::fs::read(&wal).unwrap();

        let store = SqliteStore::open(&data_dir, Sync::Normal).expect("an unclean stop does not hold the start");
        store.end_check(false);
        let refused = store.commit(&[]).expect_err("a commit after the check found damage");
        assert!(matches!(refused, StoreError::Corrupt { .. }), "{refused:?}");
        let message = refused.to_string();
        assert!(message.contains(FILE_NAME) && message.contains("quick_check"), "{message}");
        assert!(RunStore::checkpoint(&store).is_err(), "a damaged store is not folded in");
        drop(store);
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "the database is left as it was");
        assert_eq!(std::fs::read(&wal).unwrap(), wal_bytes, "the WAL is left as it was");
        let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
    }

    /// An intact store after an unclean stop passes the check, takes commits, and a clean stop folds the WAL in.
    #[test]
    fn an_intact_store_after_an_unclean_stop_passes_the_check() {
        let data_dir = crashed_store("intact");
        let store = SqliteStore::open(&data_dir, Sync::Normal).unwrap();
        store.end_check(false);
        store.commit(&[]).expect("commits go on");
        assert_eq!(store.load_definitions().unwrap().len(), 101);
        RunStore::checkpoint(&store).expect("the WAL is folded in");
        drop(store);
        let wal = sibling(&data_dir.join(FILE_NAME), "-wal");
        assert_eq!(file_len(&wal).unwrap().unwrap_or(0), 0, "no WAL left");
        let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
    }

    /// The WAL is folded into the database by the store's own thread while the store is open, and starts over
    /// once folded: no commit waits for a checkpoint, and the WAL stays bounded under a steady load.
    #[test]
    fn the_wal_is_folded_in_off_the_commit_path() {
        let dir = std::env::temp_dir().join(format!("runstream-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir, Sync::Normal).unwrap();
        let (db, wal) = (dir.join(FILE_NAME), sibling(&dir.join(FILE_NAME), "-wal"));
        let body = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let mut seq = 0;
        // 4 MB a commit, 40 MB in all: over the 32 MB that wake the thread.
        let mut commit_40_mb = || {
            for _ in 0..10 {
                let events = (0..64)
                    .map(|_| {
                        seq += 1;
                        StoredEvent { seq, time: SystemTime::now(), body: body.clone(), finish: None }
                    })
                    .collect();
                store.commit(&[Write::Events { run_id: "r".into(), events }]).unwrap();
            }
        };
        commit_40_mb();
        let whole = Arc::clone(&store.folder.lock().unwrap().as_ref().unwrap().whole);
        let frames = (file_len(&wal).unwrap().unwrap_or(0) - WAL_HEADER as u64) / (WAL_FRAME_HEADER + 4096) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while whole.load(Ordering::Relaxed) != frames {
            assert!(Instant::now() < deadline, "the thread has not folded the WAL in");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(file_len(&db).unwrap().unwrap_or(0) >= 40 << 20, "the database holds the 40 MB committed");
        // All of it folded in: the next commits write the WAL from its start again.
        commit_40_mb();
        let wal_len = file_len(&wal).unwrap().unwrap_or(0);
        assert!(wal_len < 60 << 20, "the WAL started over once folded in: {wal_len} bytes");
        let stored: i64 =
            store.lock().query_row("SELECT SUM(last_seq - first_seq + 1) FROM events", [], |row| row.get(0)).unwrap();
        assert_eq!(stored, 20 * 64, "every event committed is there");
        RunStore::checkpoint(&store).expect("a clean stop folds in the rest");
        drop(store);
        assert_eq!(file_len(&wal).unwrap().unwrap_or(0), 0, "no WAL left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn packed_events_unpack_to_themselves_and_damage_is_detected() {
        let events: Vec<StoredEvent> = (7..10)
            .map(|seq| StoredEvent {
                seq,
                time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + seq),
                body: vec![seq as u8; seq as usize].into(),
                finish: (seq == 9).then_some(RunStatus::Suspended),
            })
            .collect();
        let data = pack(&events);
        let data = bytes::Bytes::from(data);
        assert_eq!(unpack(7, &data), Some(events));
        assert_eq!(unpack(7, &data.slice(..data.len() - 1)), None, "a cut-off event");
        let mut bad_status = data.to_vec();
        bad_status[8] = 200;
        assert_eq!(unpack(7, &bad_status.into()), None, "an unknown status code");
        assert_eq!(unpack(1, &bytes::Bytes::new()), Some(Vec::new()));
    }
}
