//! What a key may do (its scopes) and whom it acts for (its owner).

use serde::{Deserialize, Serialize};

use super::error::KeyError;
use crate::event::TenantId;

/// A permission a key carries, such as `orders:read`.
///
/// Lowercase ASCII letters, digits and `:`, `_`, `.`, `-`; 1 to 64
/// characters. [`Scope::admin`] allows every scope in the key's store.
///
/// ```
/// use flowline::http::Scope;
/// assert!(Scope::new("orders:write").is_ok());
/// assert!(Scope::new("Orders Write").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// The longest scope, in bytes.
    pub const MAX_LEN: usize = 64;

    /// A scope, checked.
    ///
    /// # Errors
    /// [`KeyError::InvalidScope`] for an empty, long or odd name.
    pub fn new(scope: impl Into<String>) -> Result<Self, KeyError> {
        let scope = scope.into();
        let reason = if scope.is_empty() {
            Some("is empty")
        } else if scope.len() > Self::MAX_LEN {
            Some("is longer than 64 bytes")
        } else if !scope
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b':' | b'_' | b'.' | b'-'))
        {
            Some("may hold only a-z, 0-9, ':', '_', '.' and '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(KeyError::InvalidScope {
                scope: scope.chars().take(Self::MAX_LEN).collect(),
                reason,
            }),
            None => Ok(Scope(scope)),
        }
    }

    /// `admin`: every scope, in the key's own store.
    pub fn admin() -> Self {
        Scope::known("admin")
    }

    /// A scope this crate names, valid by construction.
    pub(super) fn known(name: &'static str) -> Self {
        debug_assert!(Scope::new(name).is_ok(), "{name}");
        Scope(name.to_string())
    }

    /// The scope's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Scope {
    type Error = KeyError;
    fn try_from(scope: String) -> Result<Self, KeyError> {
        Scope::new(scope)
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.0
    }
}

/// Whom a key acts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// One store, within its scopes.
    Store(TenantId),
    /// The operator: every store, the workbench, the admin API.
    Operator,
}

impl KeyOwner {
    /// The store, for a store's key.
    pub fn store(&self) -> Option<&TenantId> {
        match self {
            KeyOwner::Store(store) => Some(store),
            KeyOwner::Operator => None,
        }
    }
}
