//! What opening a file can fail with.

use std::path::{Path, PathBuf};

use crate::backend::StoreError;

/// Opening a file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The file is not a flowline database: another program's SQLite file, or not
    /// SQLite at all. Nothing was written to it.
    #[error("{path}: not a flowline database ({reason}); nothing was changed")]
    NotFlowline {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file was written by a newer flowline, with a schema this build does not know.
    #[error("{path}: schema version {found} is newer than this build of flowline supports ({supported}); upgrade flowline")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file is damaged.
    #[error("{path}: the database is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The file or its directory cannot be written.
    #[error("{path}: read-only: {detail}")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Another process (or another backend in this one) has the file open.
    #[error("{path}: already open elsewhere; a file has one owning process at a time (share one SqliteBackend by cloning it)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed for another reason.
    #[error("{path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl SqliteError {
    pub(super) fn from_sqlite(path: &Path, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        let code = match &source {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        match code {
            Some(rusqlite::ErrorCode::NotADatabase) => SqliteError::NotFlowline {
                path,
                reason: "not a SQLite database".into(),
            },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => SqliteError::Corrupt {
                path,
                detail: source.to_string(),
            },
            Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
                SqliteError::ReadOnly {
                    path,
                    detail: source.to_string(),
                }
            }
            _ => SqliteError::Sqlite { path, source },
        }
    }

    pub(super) fn from_store(path: &Path, error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(detail) => SqliteError::Corrupt {
                path: path.to_path_buf(),
                detail,
            },
            StoreError::Backend(source) => match source.downcast::<rusqlite::Error>() {
                Ok(sqlite) => SqliteError::from_sqlite(path, *sqlite),
                Err(other) => SqliteError::Corrupt {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            },
        }
    }
}
