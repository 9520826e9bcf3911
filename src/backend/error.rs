//! The error every adapter method returns.

use crate::vocab::BoxError;

/// A storage backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not do the operation (I/O, connection, SQL error).
    #[error("storage backend error: {0}")]
    Backend(#[source] BoxError),
    /// Stored data could not be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}
