//! `runstream backup`: a consistent copy of a store, taken while its server runs.
//!
//! SQLite's online backup API copies the database as one read transaction sees it (database and WAL together),
//! so the copy holds exactly the commits made before it began; the server keeps writing meanwhile (a WAL reader
//! does not block the writer). The copy is written beside the target as `FILE.partial` and renamed into place once
//! complete, so `FILE` is never a half-written store; it is a single file in rollback-journal mode, with no
//! `-wal` beside it, ready to be a data dir's `runstream.db`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{
    Connection, OpenFlags,
    backup::{Backup, StepResult},
};

use super::sqlite::FILE_NAME;

/// How long a store may stay locked before the backup gives up (a server locks it for moments only).
const BUSY_FOR_AT_MOST: Duration = Duration::from_secs(30);

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The database copied.
    pub source: PathBuf,
    /// The file written.
    pub target: PathBuf,
    /// Runs in the copy.
    pub runs: u64,
    /// Registered definition versions in the copy.
    pub definitions: u64,
    /// The copy's size.
    pub bytes: u64,
}

/// Why a backup was not made; each message says what to do. Nothing is left at the target when it fails.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The data dir holds no store.
    #[error(
        "there is no run store in {data_dir} (no {FILE_NAME} there): --data-dir must name the directory a server \
         was started with (its --data-dir, ./data by default)"
    )]
    NoStore {
        /// The data dir given.
        data_dir: PathBuf,
    },
    /// The target exists and `force` was not given.
    #[error("{target} already exists: name another file, or pass --force to replace it")]
    TargetExists {
        /// The target.
        target: PathBuf,
    },
    /// The target is a file of the store itself.
    #[error("{target} is the store itself: write the backup outside {data_dir}, or under another name")]
    TargetIsStore {
        /// The target.
        target: PathBuf,
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The source is not a runstream store.
    #[error("{source_file} is not a runstream store ({reason}); check --data-dir")]
    NotAStore {
        /// The database.
        source_file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the store or writing the copy failed.
    #[error("cannot back up {source_file} to {target}: {reason}")]
    Failed {
        /// The database.
        source_file: PathBuf,
        /// The target.
        target: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Copies the store in `data_dir` to `target` (replacing it only if `force`), while a server may be using it.
pub fn backup(data_dir: &Path, target: &Path, force: bool) -> Result<BackupReport, BackupError> {
    let source = data_dir.join(FILE_NAME);
    if !source.is_file() {
        return Err(BackupError::NoStore { data_dir: data_dir.to_owned() });
    }
    if same_file(&source, target)
        || target.parent().is_some_and(|dir| same_file(dir, data_dir)) && is_store_file(target)
    {
        return Err(BackupError::TargetIsStore { target: target.to_owned(), data_dir: data_dir.to_owned() });
    }
    if target.exists() && !force {
        return Err(BackupError::TargetExists { target: target.to_owned() });
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let failed =
        |reason: String| BackupError::Failed { source_file: source.clone(), target: target.to_owned(), reason };
    let copied = copy(&source, &partial).and_then(|(runs, definitions)| {
        let bytes = std::fs::metadata(&partial).map_err(|e| Failure::Io(e.to_string()))?.len();
        std::fs::rename(&partial, target).map_err(|e| Failure::Io(format!("cannot rename it into place: {e}")))?;
        Ok((runs, definitions, bytes))
    });
    match copied {
        Ok((runs, definitions, bytes)) => {
            Ok(BackupReport { source, target: target.to_owned(), runs, definitions, bytes })
        }
        Err(failure) => {
            let _ = std::fs::remove_file(&partial);
            Err(match failure {
                Failure::NotAStore(reason) => BackupError::NotAStore { source_file: source, reason },
                Failure::Io(reason) => failed(reason),
            })
        }
    }
}

enum Failure {
    NotAStore(String),
    Io(String),
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// `runstream.db` or one of the files SQLite and the server keep beside it.
fn is_store_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|name| {
        name == super::sqlite::LOCK_FILE_NAME
            || name.strip_prefix(FILE_NAME).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    })
}

/// Copies `source` into a new file `partial` and counts what the copy holds.
fn copy(source: &Path, partial: &Path) -> Result<(u64, u64), Failure> {
    let io = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Failure::NotAStore(e.to_string()),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => Failure::Io(format!(
            "{e}: the server holds the store exclusively (a runstream older than this one does); stop it and copy \
             {FILE_NAME} instead"
        )),
        _ => Failure::Io(e.to_string()),
    };
    let _ = std::fs::remove_file(partial);
    // Read-only: a backup never writes to the store (SQLite still needs the -shm beside it to read the WAL).
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(io)?;
    from.busy_timeout(Duration::from_secs(5)).map_err(io)?;
    let tables: i64 = from
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'runs', 'definitions')",
            [],
            |row| row.get(0),
        )
        .map_err(io)?;
    if tables != 3 {
        return Err(Failure::NotAStore("it lacks runstream's tables".into()));
    }
    let mut to = Connection::open(partial).map_err(io)?;
    {
        let backup = Backup::new(&from, &mut to).map_err(io)?;
        // All pages in one step: one read transaction, so one consistent state. In steps, every commit the
        // server made between two of them would restart the copy, and a busy server could starve it. A step that
        // finds the store busy for a moment is tried again.
        let deadline = Instant::now() + BUSY_FOR_AT_MOST;
        loop {
            match backup.step(-1).map_err(io)? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    return Err(Failure::Io(format!(
                        "the store stayed locked for {BUSY_FOR_AT_MOST:?}; try again, or stop its server and copy \
                         {FILE_NAME}"
                    )));
                }
            }
        }
    }
    // The copy is a store of its own: one file, no WAL beside it, until a server opens it.
    to.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(())).map_err(io)?;
    let count = |table: &str| -> Result<u64, Failure> {
        let n: i64 = to.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0)).map_err(io)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let runs = count("runs")?;
    let definitions = count("definitions")?;
    drop(to);
    // Durable before it takes the target's name.
    std::fs::File::open(partial).and_then(|f| f.sync_all()).map_err(|e| Failure::Io(e.to_string()))?;
    Ok((runs, definitions))
}
