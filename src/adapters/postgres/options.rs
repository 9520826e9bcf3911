//! How to open a PostgreSQL backend: the server, the schema, the pool.

use std::time::Duration;

use super::error::PostgresError;

/// The schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "flowline";

/// Options for [`PostgresBackend::connect_with`](super::PostgresBackend::connect_with).
///
/// ```
/// let options = flowline::PostgresOptions::new("postgres://postgres@127.0.0.1:5432/app")
///     .schema("orders")
///     .pool_size(16)
///     .acquire_timeout(std::time::Duration::from_secs(2));
/// assert_eq!(options.schema_name(), "orders");
/// ```
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    url: String,
    schema: String,
    pool_size: u32,
    acquire_timeout: Duration,
    dead_letter_retention: Option<Duration>,
}

impl PostgresOptions {
    /// Options for the server at `url` (`postgres://user:password@host:port/database`),
    /// schema [`DEFAULT_SCHEMA`], a pool of 8 connections, a 5 s acquire
    /// timeout, dead letters kept 30 days.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
            dead_letter_retention: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }

    /// The schema holding flowline's tables (created if missing). It must be a
    /// plain identifier: 1 to 63 characters of `a-z`, `0-9` and `_`, not starting
    /// with a digit or `pg_`; opening fails with
    /// [`PostgresError::InvalidSchemaName`] otherwise.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens (at least 1).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long an operation waits for a connection from the pool, opening
    /// one included, before it fails with a [`StoreError`](crate::StoreError)
    /// (at least 1 ms). While the server is unreachable, this bounds how long
    /// each call takes to say so; the engine backs off and retries its claims,
    /// and the pool reconnects once the server is back.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long dead letters are kept after they failed, in engine time;
    /// `None` keeps them until purged. 30 days by default. Pruning runs with
    /// the claims, at most once a minute per backend.
    pub fn dead_letter_retention(mut self, keep: Option<Duration>) -> Self {
        self.dead_letter_retention = keep;
        self
    }

    /// The dead letters' retention.
    pub fn dead_letter_retention_value(&self) -> Option<Duration> {
        self.dead_letter_retention
    }

    /// The acquire timeout.
    pub fn acquire_timeout_value(&self) -> Duration {
        self.acquire_timeout
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The pool size.
    pub fn pool_size_value(&self) -> u32 {
        self.pool_size
    }
}

/// Checks that `name` is a schema name that needs no quoting.
pub(super) fn validate_schema(name: &str) -> Result<(), PostgresError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 && !name.starts_with("pg_") {
        Ok(())
    } else {
        Err(PostgresError::InvalidSchemaName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::validate_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["flowline", "_x", "flowline_test_0af3", "a1"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "1a",
            "Flowline",
            "a-b",
            "a\"; DROP SCHEMA x; --",
            "pg_temp",
            &long,
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}
