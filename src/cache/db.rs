//! The one sled database holding the answer cache and the cost ledger (in separate trees).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures::channel::oneshot;

use super::store::Tally;

use crate::error::{Error, Result};

/// A flush request: the database to flush (weakly: a request whose caller gave up, left in
/// the queue, must not keep the database open), answered once a flush that started after the
/// request has completed.
type FlushRequest = (
    Weak<Shared>,
    oneshot::Sender<std::result::Result<(), String>>,
);

/// An open sled database plus its path (for error messages).
///
/// Cheap to clone (one shared handle). Only one process can hold the database: sled takes an
/// exclusive file lock, and a second process gets an [`Error::Storage`] saying so. Within one
/// process, [`Database::open`] of a directory that is already open returns the open database,
/// so several routers (two policies, say) can share one home, its cache and its budget.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
}

struct Shared {
    db: sled::Db,
    path: PathBuf,
    /// Group-commit flusher thread, started on the first [`Database::flush_async`].
    flusher: OnceLock<mpsc::Sender<FlushRequest>>,
    /// The counts the answer caches open on this database share (see [`Database::cache_tally`]).
    cache_tally: Mutex<Weak<Tally>>,
    /// The bytes of the teacher logs open on this database (see [`Database::teacher_bytes`]).
    teacher_bytes: Mutex<Weak<Mutex<u64>>>,
}

/// The databases [`Database::open`] has open in this process, by directory.
static OPEN: Mutex<Vec<(PathBuf, Weak<Shared>)>> = Mutex::new(Vec::new());

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.shared.path)
            .finish()
    }
}

impl Database {
    /// Opens (creating if needed) the database directory at `path`, e.g.
    /// [`crate::home::db_dir`]. Crash recovery runs here. A directory this process already
    /// has open is shared, not opened twice.
    pub fn open(path: &Path) -> Result<Self> {
        if let Err(e) = crate::home::create_private_dirs(path) {
            return Err(Error::Storage {
                path: path.to_path_buf(),
                message: format!(
                    "cannot create the database directory: {e}{}",
                    unusable_home_fix(e.kind())
                ),
            });
        }
        let id = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        // Held while opening, so two threads opening one directory share one database.
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(shared) = open
            .iter()
            .find(|(p, _)| *p == id)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(Database { shared });
        }
        // sled's background threads hold the file lock for a moment after the last handle is
        // dropped, so reopening right after a close (a new Router on the same home) retries
        // briefly before reporting the lock.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(open_error(path, e)),
            }
        };
        let database = Database::from_sled(db, path);
        open.push((id, Arc::downgrade(&database.shared)));
        Ok(database)
    }

    /// Wraps a sled database the app opened itself; `path` is only used in error messages.
    pub fn from_sled(db: sled::Db, path: impl Into<PathBuf>) -> Self {
        Database {
            shared: Arc::new(Shared {
                db,
                path: path.into(),
                flusher: OnceLock::new(),
                cache_tally: Mutex::new(Weak::new()),
                teacher_bytes: Mutex::new(Weak::new()),
            }),
        }
    }

    /// The underlying sled database.
    pub fn sled(&self) -> &sled::Db {
        &self.shared.db
    }

    /// The counts shared by the answer caches open on this database, and whether this call
    /// made them: when no cache is open here, a new one counts the entries afresh (and
    /// repairs what a crash left), and the caches opened while it lives share its counts.
    pub(crate) fn cache_tally(&self) -> (Arc<Tally>, bool) {
        let mut slot = self
            .shared
            .cache_tally
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tally) = slot.upgrade() {
            return (tally, false);
        }
        let tally = Arc::new(Tally::default());
        *slot = Arc::downgrade(&tally);
        (tally, true)
    }

    /// The byte count shared by the teacher logs open on this database. When none is open,
    /// `count` gives the first value, worked out while no other log can open here.
    pub(crate) fn teacher_bytes(
        &self,
        count: impl FnOnce() -> Result<u64>,
    ) -> Result<Arc<Mutex<u64>>> {
        let mut slot = self
            .shared
            .teacher_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = slot.upgrade() {
            return Ok(bytes);
        }
        let bytes = Arc::new(Mutex::new(count()?));
        *slot = Arc::downgrade(&bytes);
        Ok(bytes)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Flushes every tree to disk (fsync). sled also flushes by itself every 500 ms.
    pub fn flush(&self) -> Result<()> {
        self.sled()
            .flush()
            .map(|_| ())
            .map_err(|e| storage(self.path(), e))
    }

    /// Flushes to disk without blocking the async executor, on a dedicated thread that batches
    /// concurrent requests into one fsync (group commit). Executor-agnostic. Should that
    /// thread fail to start (the system out of threads), it flushes in place, blocking,
    /// for the life of the process.
    ///
    /// (sled's own `flush_async` runs on sled's small I/O thread pool; many concurrent calls
    /// can occupy every pool thread while the log writes they wait for queue behind them, which
    /// deadlocks — observed with 8 concurrent ledger reservations.)
    pub async fn flush_async(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let sender = self.shared.flusher.get_or_init(spawn_flusher);
        let failed = |message: String| Error::Storage {
            path: self.path().to_path_buf(),
            message,
        };
        // Without a flusher thread (it could not be started, or it is gone), flush here,
        // blocking, rather than fail every write that needs to be durable.
        if sender.send((Arc::downgrade(&self.shared), tx)).is_err() {
            return self.flush();
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(failed(message)),
            Err(_) => self.flush(),
        }
    }
}

/// Starts the group-commit thread. It exits when every `Database` clone has been dropped.
///
/// The thread holds the database only while it flushes, and lets go before answering: sled
/// writes its last changes to disk when the last handle is dropped, and that must be the
/// app's own handle, dropped on the app's thread. (A flusher that kept a handle for its whole
/// life made the process exit with that final flush undone: cache entries and statistics
/// written after the last explicit flush were lost.) Requests hold the database weakly, so
/// one left in the queue by a caller that gave up keeps nothing open either.
fn spawn_flusher() -> mpsc::Sender<FlushRequest> {
    let (tx, rx) = mpsc::channel::<FlushRequest>();
    let spawned = std::thread::Builder::new()
        .name("edgeroute-flush".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let (dbs, waiting): (Vec<Weak<Shared>>, Vec<_>) = batch.into_iter().unzip();
                let result = match dbs.iter().find_map(Weak::upgrade) {
                    Some(shared) => {
                        let flushed = shared.db.flush().map(|_| ()).map_err(|e| e.to_string());
                        drop(shared);
                        flushed
                    }
                    // Nobody holds the database any more: its last drop flushed it.
                    None => Ok(()),
                };
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

/// Makes the edgeroute home's database directory readable by its owner only, when an earlier
/// version created it readable by everyone (mode 0755, files 0644). Only for the home's own
/// directory (the router's store): a directory an app opens itself keeps the mode it chose.
pub(crate) fn restrict_to_owner(path: &Path) {
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

/// The message of the error `Database::open` gives when another process holds the database.
const LOCKED: &str = "the database is locked by another edgeroute process";

fn is_lock_error(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

fn open_error(path: &Path, e: sled::Error) -> Error {
    let text = e.to_string();
    let message = if text.contains("could not acquire lock") {
        format!("{LOCKED}; stop it, or point EDGEROUTE_HOME (or the builder's home) somewhere else")
    } else if matches!(e, sled::Error::Corruption { .. }) {
        format!("the database is corrupted ({text}); move the directory away to start afresh")
    } else {
        let fix = match &e {
            sled::Error::Io(io) => unusable_home_fix(io.kind()),
            _ => "",
        };
        format!("cannot open the database: {text}{fix}")
    };
    Error::Storage {
        path: path.to_path_buf(),
        message,
    }
}

/// What to do about an I/O error that says the home cannot hold a database (no permission, a
/// read-only file system, a file where a directory should be); nothing for other errors.
fn unusable_home_fix(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind::*;
    match kind {
        PermissionDenied | ReadOnlyFilesystem | NotADirectory | AlreadyExists => {
            "; use a writable edgeroute home (--home, EDGEROUTE_HOME or RouterBuilder::home)"
        }
        _ => "",
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

    /// A database that cannot be created where the home says (here: under a regular file,
    /// which fails even for root) names the fix.
    #[test]
    fn an_unusable_home_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A file in the way of the home, and a file where the database directory should be.
        for db in [file.join("db"), file.clone()] {
            let err = Database::open(&db).err().unwrap();
            assert!(
                matches!(&err, Error::Storage { .. })
                    && err.to_string().contains("writable edgeroute home"),
                "{err}"
            );
        }
    }

    /// A second open in this process shares the open database (two routers on one home);
    /// once every handle is gone, the directory opens afresh. (Another process gets the lock
    /// error: tests/cache_crash.rs.)
    #[test]
    fn a_second_open_in_one_process_shares_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = Database::open(dir.path()).unwrap();
        let second = Database::open(&dir.path().join(".")).unwrap();
        first.sled().insert(b"k", b"v").unwrap();
        assert_eq!(second.sled().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop((first, second));
        let again = Database::open(dir.path()).unwrap();
        assert_eq!(again.sled().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
