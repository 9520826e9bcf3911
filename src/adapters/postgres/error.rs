//! The errors of opening a PostgreSQL backend, and how database errors become
//! the adapter contract's [`StoreError`].

use crate::backend::StoreError;

/// Opening a [`PostgresBackend`](super::PostgresBackend) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The schema name is not a plain lower-case SQL identifier.
    #[error(
        "invalid schema name {name:?}: use 1 to 63 characters of a-z, 0-9 and _, \
         not starting with a digit or pg_"
    )]
    InvalidSchemaName {
        /// The name given.
        name: String,
    },
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server could not be reached, or refused the connection.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// Creating or migrating the schema failed.
    #[error("cannot migrate the flowline schema: {0}")]
    Migrate(#[source] sqlx::Error),
    /// The backend's own runtime (where its database work runs) could not start
    /// or stopped.
    #[error("the PostgreSQL backend's runtime failed: {0}")]
    Runtime(String),
    /// The schema was written by a newer flowline: this build does not know its
    /// format and refuses to touch it.
    #[error(
        "the flowline schema is at version {found}, newer than this build supports ({supported})"
    )]
    SchemaTooNew {
        /// The version recorded in the schema.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
}

/// A database error as the contract's error.
pub(super) fn store_error(err: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// Stored data that does not decode.
pub(super) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

impl From<crate::backend::RuntimeStopped> for PostgresError {
    fn from(stopped: crate::backend::RuntimeStopped) -> Self {
        PostgresError::Runtime(stopped.to_string())
    }
}
