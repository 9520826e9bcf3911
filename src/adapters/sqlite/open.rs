//! Opening a file: its lock, the schema check and migration, the pragmas, and
//! the writer and threads the backend's clones share.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use super::acks::{Acks, DurableMark};
use super::cache::StateCache;
use super::checkpoint::Checkpointer;
use super::commit::GroupCommit;
use super::error::SqliteError;
use super::options::{configure, Durability, SqliteOptions};
use super::readers::Readers;
use super::schema;
use super::unsynced::Unsynced;
use super::writer::{Retention, Writer};

/// What the clones of one [`SqliteBackend`](super::SqliteBackend) share.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) commit: GroupCommit,
    pub(super) readers: Readers,
    /// Committed state values, so most reads skip the read connections.
    pub(super) cache: Arc<StateCache>,
    /// How far commits are durable: a read returns nothing less durable.
    pub(super) durable: DurableMark,
    /// The keys of groups not yet synced: which reads must wait, and for what.
    pub(super) unsynced: Arc<Unsynced>,
    /// Stopped before the lock is let go, so that no connection outlives it.
    _checkpointer: Checkpointer,
    /// Held for the backend's lifetime: the kernel drops it if the process dies.
    _lock: File,
}

impl Shared {
    /// Opens a file for [`SqliteBackend::open_with`](super::SqliteBackend::open_with).
    pub(super) fn open(path: &Path, options: SqliteOptions) -> Result<Self, SqliteError> {
        let path = path.to_path_buf();
        let lock = take_lock(&path)?;
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| SqliteError::from_sqlite(&path, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(SqliteError::ReadOnly {
                path,
                detail: "the file cannot be written".into(),
            });
        }
        let sqlite = |e| SqliteError::from_sqlite(&path, e);
        // Connection settings only: nothing in the file changes yet.
        configure(&conn, &options).map_err(sqlite)?;
        match schema::inspect(&conn).map_err(sqlite)? {
            schema::Found::Foreign { application_id } => {
                return Err(SqliteError::NotFlowline {
                    path,
                    reason: format!(
                        "another program's SQLite database (application id {application_id:#x})"
                    ),
                })
            }
            schema::Found::Flowline(found) if found > schema::CURRENT_VERSION => {
                return Err(SqliteError::NewerSchema {
                    path,
                    found,
                    supported: schema::CURRENT_VERSION,
                })
            }
            schema::Found::Flowline(found) if found == schema::CURRENT_VERSION => {}
            schema::Found::Flowline(found) => schema::migrate(&mut conn, found).map_err(sqlite)?,
            schema::Found::Empty => schema::migrate(&mut conn, 0).map_err(sqlite)?,
        }
        // Only now that the file is known to be ours is anything about it changed.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::ReadOnly {
                path,
                detail: format!("could not switch to WAL mode (journal mode is {mode})"),
            });
        }
        // `Full` syncs the log after each commit too, but off the writer's path
        // (`acks.rs`); SQLite itself syncs only at checkpoints either way.
        let synchronous = "NORMAL";
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sqlite)?;
        let checkpointer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            configure(&c, &options)?;
            c.pragma_update(None, "synchronous", synchronous)?;
            Ok(c)
        })
        .map_err(sqlite)?;
        let checkpointer = Checkpointer::start(checkpointer).map_err(|source| SqliteError::Io {
            path: path.clone(),
            source,
        })?;
        // Replaces SQLite's automatic checkpoint on the writer (`checkpoint.rs`).
        conn.wal_hook(Some(checkpointer.hook())).map_err(sqlite)?;
        // After a checkpoint the log is cut back to this size, so one burst of
        // writes does not leave a large -wal file behind for good.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(sqlite)?;
        let retention = Retention {
            dead_letters: options.dead_letter_retention,
        };
        let cache = Arc::new(StateCache::new(
            usize::try_from(options.state_cache_kib)
                .unwrap_or(usize::MAX / 1024)
                .saturating_mul(1024),
        ));
        // Where SQLite keeps the log: next to the file as SQLite resolved its
        // path (through symbolic links, say), which need not be `path`.
        let log_path = match conn.path() {
            Some(main) if !main.is_empty() => PathBuf::from(format!("{main}-wal")),
            _ => {
                let mut log = path.as_os_str().to_owned();
                log.push("-wal");
                PathBuf::from(log)
            }
        };
        let (advance_durable, durable) = DurableMark::new();
        let unsynced = Arc::new(Unsynced::default());
        let writer = Writer::load(
            conn,
            retention,
            Arc::clone(&cache),
            (options.durability == Durability::Full).then(|| Arc::clone(&unsynced)),
            durable.clone(),
        )
        .map_err(|e| SqliteError::from_store(&path, e))?;
        // The writer has run a transaction in WAL mode, so the log exists now.
        let acks = match options.durability {
            Durability::Full => File::options()
                .read(true)
                .write(true)
                .open(&log_path)
                .and_then(|log| Acks::synced(Box::new(move || log.sync_data()), advance_durable)),
            Durability::Normal => Ok(Acks::immediate(advance_durable)),
        }
        .map_err(|source| SqliteError::Io {
            path: path.clone(),
            source,
        })?;
        tracing::debug!(path = %path.display(), ?options, "opened the SQLite backend");
        Ok(Shared {
            readers: Readers {
                path: path.clone(),
                options,
                idle: Mutex::new(Vec::new()),
            },
            cache,
            durable,
            unsynced,
            path,
            commit: GroupCommit::new(writer, acks),
            _checkpointer: checkpointer,
            _lock: lock,
        })
    }
}

/// The file a path names, through symbolic links (as SQLite follows them), so
/// that every way of naming one file takes one lock. The file need not exist
/// yet, nor the target of a link to it.
fn resolved(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // The kernel's own bound on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            // A relative target is relative to the link's directory; `join`
            // with an absolute one gives the target itself.
            Ok(target) => {
                path = path
                    .parent()
                    .map_or(target.clone(), |dir| dir.join(&target))
            }
            Err(_) => break, // not a link
        }
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir).map_or(path.clone(), |dir| dir.join(name))
        }
        _ => path,
    }
}

/// Takes the exclusive lock that makes this process the file's one owner.
fn take_lock(path: &Path) -> Result<File, SqliteError> {
    let mut lock_path = resolved(path).into_os_string();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                SqliteError::ReadOnly {
                    path: path.to_path_buf(),
                    detail: format!(
                        "cannot create {}: {source}",
                        Path::new(&lock_path).display()
                    ),
                }
            }
            _ => SqliteError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SqliteError::InUse {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(SqliteError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
