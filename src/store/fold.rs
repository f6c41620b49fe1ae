//! Folds the SQLite store's WAL into its database on a thread of its own (issue 12).
//!
//! SQLite's own checkpoint runs inside the commit that crosses `wal_autocheckpoint` pages: that commit, and every
//! client waiting for its events, waits for 32 MB of page writes and an fsync (with 64 callers running short runs,
//! that stall was their p99: 155-184 ms, against 34-39 ms with this thread; docs/performance.md). Here the
//! writer's commit only notes how long the WAL has grown (SQLite's WAL hook) and wakes this thread, which checkpoints
//! with a connection of its own, `PASSIVE`: it copies committed pages while the writer goes on committing, and the
//! writer starts the WAL over once everything in it is folded in. If the WAL still grows past [`FORCE_PAGES`] (the
//! thread cannot keep up, or a reader holds it back), the commit folds it itself as SQLite would have.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender},
    },
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, hooks::Wal};

use super::StoreError;

/// WAL pages (4 KiB each) after which the thread is woken: SQLite's autocheckpoint size of before (32 MB).
const FOLD_PAGES: i32 = 8192;

/// WAL pages after which the committing connection folds the WAL itself (128 MB).
const FORCE_PAGES: i32 = 4 * FOLD_PAGES;

/// The thread, and the means to wake and stop it.
pub(super) struct Folder {
    /// The WAL's length in frames at the last checkpoint that folded all of it in (for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) whole: Arc<AtomicU64>,
    wake: SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Folder {
    /// Starts the thread, with a connection of its own to the database at `path`, and installs the WAL hook on the
    /// writer's connection `writer`. While `hold` answers true the files are left as they are (found damaged, or
    /// a check of the whole file found damage): nothing is folded.
    pub(super) fn start(
        path: &Path,
        writer: &mut Connection,
        sync: &str,
        hold: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let fail = |reason: String| StoreError::Open { location: location.clone(), reason };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| fail(format!("cannot open a connection to fold its WAL: {e}")))?;
        conn.busy_timeout(Duration::from_millis(200)).map_err(|e| fail(e.to_string()))?;
        // A checkpoint syncs as the writer's commits do (NORMAL: the WAL before copying, the database after).
        conn.pragma_update(None, "synchronous", sync).map_err(|e| fail(e.to_string()))?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, held) = (Arc::clone(&stop), Arc::clone(&hold));
        let whole = Arc::new(AtomicU64::new(0));
        let folded = Arc::clone(&whole);
        let thread = std::thread::Builder::new()
            .name("runstream-fold".into())
            .spawn(move || {
                while woken.recv().is_ok() && !stopping.load(Ordering::Relaxed) {
                    if held() {
                        continue;
                    }
                    match conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE) {
                        Ok((in_wal, done)) if in_wal == done => {
                            folded.store(u64::try_from(in_wal).unwrap_or(0), Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        // The committing connection is folding a long WAL itself (the thread fell behind): done
                        // then.
                        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                            tracing::debug!("the WAL is being folded in by the writer's connection");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot fold the store's WAL into it; the next commits retry")
                        }
                    }
                }
            })
            .map_err(|e| fail(format!("cannot start a thread to fold its WAL: {e}")))?;
        let waker = wake.clone();
        // The hook replaces SQLite's autocheckpoint. It must answer Ok: an error would fail a commit that happened.
        writer
            .wal_hook(Some(move |wal: &mut Wal, pages: i32| {
                if pages >= FORCE_PAGES && !hold() {
                    // Busy while the thread is folding: it is on it, then.
                    if let Err(e) = wal.checkpoint() {
                        tracing::debug!(error = %e, pages, "cannot fold the store's long WAL into it");
                    }
                } else if pages >= FOLD_PAGES {
                    // Full: a wake is pending already. Disconnected: stopped by a clean stop.
                    let _ = waker.try_send(());
                }
                Ok(())
            }))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self { whole, wake, stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for the checkpoint it is in, if any (before a clean stop folds the rest).
    pub(super) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(());
        if thread.join().is_err() {
            tracing::warn!("the thread folding the store's WAL panicked");
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        self.stop();
    }
}
