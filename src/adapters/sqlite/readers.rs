//! The read connections, kept for reuse between reads.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::options::{configure, SqliteOptions};
use super::rows::store_error;
use crate::backend::StoreError;

/// Read connections: WAL lets them read while the writer writes.
pub(super) struct Readers {
    pub(super) path: PathBuf,
    pub(super) options: SqliteOptions,
    pub(super) idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 8;

impl Readers {
    pub(super) fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(store_error)?;
                configure(&conn, &self.options).map_err(store_error)?;
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}
