//! How a file is opened: the options, and the settings every connection gets from them.

use std::time::Duration;

use rusqlite::Connection;

/// When a commit is synced to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is synced before it is acknowledged or read; survives power
    /// loss. (flowline syncs the log itself, off the writer's path, rather than
    /// through `PRAGMA synchronous = FULL`.)
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: synced at checkpoints; survives a process
    /// crash, and a power cut may lose the last commits.
    Normal,
}

/// How to open a file. `SqliteOptions::default()` is what [`SqliteBackend::open`] uses.
///
/// ```no_run
/// use std::time::Duration;
/// use flowline::{Durability, SqliteBackend, SqliteOptions};
///
/// let options = SqliteOptions::default()
///     .durability(Durability::Normal)
///     .dead_letter_retention(Some(Duration::from_secs(7 * 24 * 3600)));
/// let backend = SqliteBackend::open_with("orders.db", options)?;
/// # Ok::<(), flowline::SqliteError>(())
/// ```
///
/// [`SqliteBackend::open`]: super::SqliteBackend::open
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub(super) durability: Durability,
    pub(super) dead_letter_retention: Option<Duration>,
    cache_kib: u32,
    pub(super) state_cache_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            dead_letter_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            cache_kib: 2_000,
            state_cache_kib: 16 * 1024,
        }
    }
}

impl SqliteOptions {
    /// When commits reach the disk; [`Durability::Full`] by default.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long dead letters are kept after they failed, in engine time; `None`
    /// keeps them until purged. 30 days by default.
    pub fn dead_letter_retention(mut self, keep: Option<Duration>) -> Self {
        self.dead_letter_retention = keep;
        self
    }

    /// SQLite's page cache per connection, in KiB; 2,000 (SQLite's own default)
    /// unless set. The operating system caches the file as well, and a larger
    /// cache costs the writer time at every commit: on the exec benchmark (see
    /// docs/PERFORMANCE.md), 64 MiB was about 10% slower than 2,000 KiB, with or
    /// without a backlog of a million deliveries.
    pub fn cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }

    /// Memory for committed state values kept by the backend itself, in KiB;
    /// 16 MiB unless set, 0 turns it off.
    ///
    /// A read ([`Store::get`]) of a key this process wrote or read lately is
    /// answered from it without touching SQLite. It matters because a WAL read
    /// connection drops its page cache whenever the writer has committed, so
    /// under load a read on a connection re-reads its pages from the operating
    /// system. The cache is exact: the backend's one writer records every
    /// commit in it before anyone hears of the commit. It is kept in two
    /// halves; when the newer one is full, the older one is dropped.
    ///
    /// The writer checks the versions a commit read against the same cache,
    /// so with 0 every optimistic check of a commit queries the file.
    ///
    /// [`Store::get`]: crate::backend::Store::get
    pub fn state_cache_kib(mut self, kib: u32) -> Self {
        self.state_cache_kib = kib;
        self
    }
}

/// Settings every connection gets.
pub(super) fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}
