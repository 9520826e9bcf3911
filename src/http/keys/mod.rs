//! API keys per store: created, listed, rotated with an overlap, revoked,
//! and checked before any step runs.
//!
//! A key belongs to one store (a tenant) and carries scopes, such as
//! `orders:read`, `orders:write` or `admin` (which allows every scope in
//! its store), or it is an **operator** key, which allows everything: every
//! store, the workbench and the admin API. It is shown once, when it is
//! created, and kept only as a SHA-256 digest (why that hash: `secret.rs`,
//! and [`ApiKeys`]), in the engine's own state, so every backend keeps keys
//! and every process sharing a database sees the same ones.
//!
//! | file | its one job |
//! |---|---|
//! | `error.rs` | what can go wrong ([`KeyError`], [`AuthError`]) |
//! | `secret.rs` | a key's shape, its random bits, its digest, the constant-time comparison |
//! | `scope.rs` | scopes and owners, validated |
//! | `store.rs` | the records: create, list, rotate, revoke, authenticate ([`ApiKeys`]) |
//! | `guard.rs` | the check on a request: `401`, `403`, or on to the step |
//! | `admin.rs` | the admin HTTP API over [`ApiKeys`] ([`admin_router`]) |
//!
//! ```
//! use flowline::http::{ApiKeys, KeyOwner, Scope};
//! # use flowline::{Engine, Flow, MemoryBackend, TenantId};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let engine = Engine::builder(Flow::builder().build()?).backend(MemoryBackend::new()).start().await?;
//! let keys = ApiKeys::new(engine);
//! let store = TenantId::new("X")?;
//! let created = keys
//!     .create(KeyOwner::Store(store.clone()), &[Scope::new("orders:write")?], "checkout")
//!     .await?;
//! // `created.secret()` is the key to hand over; it is not stored anywhere.
//! let key = keys.authenticate(created.secret()).await?;
//! assert!(key.allows(&store, &Scope::new("orders:write")?));
//! assert!(!key.allows(&TenantId::new("Y")?, &Scope::new("orders:write")?));
//! # Ok(())
//! # }
//! ```

mod admin;
mod error;
mod guard;
mod scope;
mod secret;
mod store;

pub use admin::admin_router;
pub use error::{AuthError, KeyError};
pub(crate) use guard::{check_store_key, BEARER};
pub use guard::{operator_only, AuthOptions};
pub use scope::{KeyOwner, Scope};
pub use store::{ApiKey, ApiKeys, NewApiKey};
