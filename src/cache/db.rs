//! The one sled database holding the answer cache and the cost ledger (in separate trees).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use futures::channel::oneshot;

use crate::error::{Error, Result};

/// A flush request: the database to flush, answered once a flush that started after the
/// request has completed.
type FlushRequest = (sled::Db, oneshot::Sender<std::result::Result<(), String>>);

/// An open sled database plus its path (for error messages).
///
/// Cheap to clone (sled's `Db` is reference-counted). Only one process can hold the database:
/// sled takes an exclusive file lock; a second process gets an [`Error::Storage`] saying so.
#[derive(Clone)]
pub struct Database {
    db: sled::Db,
    path: PathBuf,
    /// Group-commit flusher thread, started on the first [`Database::flush_async`].
    flusher: Arc<OnceLock<mpsc::Sender<FlushRequest>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

impl Database {
    /// Opens (creating if needed) the database directory at `path`, e.g.
    /// [`crate::home::db_dir`]. Crash recovery runs here.
    pub fn open(path: &Path) -> Result<Self> {
        if let Err(e) = crate::home::create_private_dirs(path) {
            return Err(Error::Storage {
                path: path.to_path_buf(),
                message: format!("cannot create the database directory: {e}"),
            });
        }
        restrict_to_owner(path);
        // sled's background threads hold the file lock for a moment after the last handle is
        // dropped, so reopening right after a close (a new Router on the same home) retries
        // briefly before reporting the lock.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => return Ok(Database::from_sled(db, path)),
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(open_error(path, e)),
            }
        }
    }

    /// Wraps a sled database the app opened itself; `path` is only used in error messages.
    pub fn from_sled(db: sled::Db, path: impl Into<PathBuf>) -> Self {
        Database {
            db,
            path: path.into(),
            flusher: Arc::new(OnceLock::new()),
        }
    }

    /// The underlying sled database.
    pub fn sled(&self) -> &sled::Db {
        &self.db
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes every tree to disk (fsync). sled also flushes by itself every 500 ms.
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| storage(&self.path, e))
    }

    /// Flushes to disk without blocking the async executor, on a dedicated thread that batches
    /// concurrent requests into one fsync (group commit). Executor-agnostic.
    ///
    /// (sled's own `flush_async` runs on sled's small I/O thread pool; many concurrent calls
    /// can occupy every pool thread while the log writes they wait for queue behind them, which
    /// deadlocks — observed with 8 concurrent ledger reservations.)
    pub async fn flush_async(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let sender = self.flusher.get_or_init(spawn_flusher);
        let failed = |message: String| Error::Storage {
            path: self.path.clone(),
            message,
        };
        sender
            .send((self.db.clone(), tx))
            .map_err(|_| failed("the flusher thread has stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(failed(message)),
            Err(_) => Err(failed("the flusher thread has stopped".into())),
        }
    }
}

/// Starts the group-commit thread. It exits when every `Database` clone has been dropped.
///
/// The thread holds a `sled::Db` only while it flushes, and drops it before answering: sled
/// writes its last changes to disk when the last `Db` handle is dropped, and that must be the
/// app's own handle, dropped on the app's thread. (A flusher that kept a handle for its whole
/// life made the process exit with that final flush undone: cache entries and statistics
/// written after the last explicit flush were lost.)
fn spawn_flusher() -> mpsc::Sender<FlushRequest> {
    let (tx, rx) = mpsc::channel::<FlushRequest>();
    let spawned = std::thread::Builder::new()
        .name("edgeroute-flush".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let (dbs, waiting): (Vec<sled::Db>, Vec<_>) = batch.into_iter().unzip();
                let result = dbs.first().map_or(Ok(()), |db| {
                    db.flush().map(|_| ()).map_err(|e| e.to_string())
                });
                drop(dbs);
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the database flusher thread");
    }
    tx
}

/// Makes a database directory created by an earlier version (mode 0755, so its files were
/// readable by other users) readable by its owner only. Best effort: a directory the app
/// chose and shares on purpose may refuse, which is only worth a warning.
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            let owner_only = std::fs::Permissions::from_mode(meta.permissions().mode() & 0o700);
            if let Err(e) = std::fs::set_permissions(path, owner_only) {
                tracing::warn!(path = %path.display(), error = %e, "the database directory is readable by other users and could not be restricted; run chmod 700 on it");
            }
        }
    }
}

/// Shorthand for [`Database::open`].
pub fn open_db(path: &Path) -> Result<Database> {
    Database::open(path)
}

fn is_lock_error(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

fn open_error(path: &Path, e: sled::Error) -> Error {
    let text = e.to_string();
    let message = if text.contains("could not acquire lock") {
        "the database is locked by another edgeroute process; stop it, or point EDGEROUTE_HOME \
         (or the builder's home) somewhere else"
            .to_string()
    } else if matches!(e, sled::Error::Corruption { .. }) {
        format!("the database is corrupted ({text}); move the directory away to start afresh")
    } else {
        format!("cannot open the database: {text}")
    };
    Error::Storage {
        path: path.to_path_buf(),
        message,
    }
}

/// A sled error as [`Error::Storage`].
pub(crate) fn storage(path: &Path, e: sled::Error) -> Error {
    Error::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn second_open_in_another_process_reports_the_lock() {
        // sled's lock is per process (flock on Linux is per open file description, and sled
        // also refuses a second open in one process), so a second `open` here hits it too.
        let dir = tempfile::tempdir().unwrap();
        let _first = Database::open(dir.path()).unwrap();
        match Database::open(dir.path()) {
            Err(Error::Storage { message, .. }) => {
                assert!(
                    message.contains("locked by another edgeroute process"),
                    "{message}"
                )
            }
            other => panic!("expected a lock error, got {other:?}"),
        }
    }
}
