//! The key records, in the system tenant's state: one per key, at
//! `flowline.api_key/<id>`, holding its owner, scopes, label, times and the
//! digest of its secret (never the secret).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{AuthError, KeyError};
use super::scope::{KeyOwner, Scope};
use super::secret;
use crate::backend::ReadCheck;
use crate::engine::Engine;
use crate::event::TenantId;
use crate::time::Timestamp;

const PREFIX: &str = "flowline.api_key/";
/// The longest label, in bytes.
const MAX_LABEL: usize = 200;
/// How often a rotation retries when the record moved under it.
const RETRIES: usize = 3;

/// A key as listed: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Its public id (the part after `flk_`).
    pub id: String,
    /// Whom it acts for.
    pub owner: KeyOwner,
    /// What it may do (an operator key may do everything).
    pub scopes: Vec<Scope>,
    /// A note for people (which integration holds it).
    pub label: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops working, if it was rotated.
    pub expires_at: Option<Timestamp>,
}

impl ApiKey {
    /// Whether the key may act with `scope` in `store`: an operator key
    /// always, a store's key in its own store with that scope or `admin`.
    pub fn allows(&self, store: &TenantId, scope: &Scope) -> bool {
        match &self.owner {
            KeyOwner::Operator => true,
            KeyOwner::Store(own) => {
                own == store
                    && self
                        .scopes
                        .iter()
                        .any(|s| s == scope || *s == Scope::admin())
            }
        }
    }

    /// Whether it is an operator key.
    pub fn is_operator(&self) -> bool {
        self.owner == KeyOwner::Operator
    }
}

/// A key just created: its record and the key itself, shown this once.
#[derive(Clone)]
pub struct NewApiKey {
    /// The key's record.
    pub key: ApiKey,
    secret: String,
}

impl NewApiKey {
    /// The key to give its holder (`flk_…`). Nothing can show it again.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The stored record.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    /// `None` for an operator key.
    store: Option<String>,
    scopes: Vec<Scope>,
    label: String,
    digest: String,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
}

impl Record {
    fn to_key(&self) -> Option<ApiKey> {
        let owner = match &self.store {
            None => KeyOwner::Operator,
            Some(store) => KeyOwner::Store(TenantId::new(store).ok()?),
        };
        Some(ApiKey {
            id: self.id.clone(),
            owner,
            scopes: self.scopes.clone(),
            label: self.label.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }

    fn live_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    fn encode(&self) -> crate::backend::Value {
        Arc::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The API keys of an engine's stores: a handle, cheap to clone.
///
/// Keys are 256 random bits and only their SHA-256 digest is stored. A
/// password hash (argon2, bcrypt) is slow on purpose, to make guessing a
/// low-entropy secret from a stolen hash expensive; 256 random bits cannot
/// be guessed however fast the hash, so a slow one would only add
/// milliseconds to every request.
#[derive(Clone)]
pub struct ApiKeys {
    engine: Engine,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// The keys kept by `engine`'s backend.
    pub fn new(engine: Engine) -> Self {
        ApiKeys { engine }
    }

    /// Creates a key for `owner` with `scopes` (an operator key needs none)
    /// and a `label` for people. The returned [`NewApiKey::secret`] is the
    /// only copy of the key.
    ///
    /// # Errors
    /// [`KeyError::NoScopes`], [`KeyError::LabelTooLong`], or the backend's
    /// or random generator's failure.
    pub async fn create(
        &self,
        owner: KeyOwner,
        scopes: &[Scope],
        label: &str,
    ) -> Result<NewApiKey, KeyError> {
        if owner != KeyOwner::Operator && scopes.is_empty() {
            return Err(KeyError::NoScopes);
        }
        if label.len() > MAX_LABEL {
            return Err(KeyError::LabelTooLong);
        }
        let (record, secret) = self.mint(&owner, scopes.to_vec(), label.to_string())?;
        let reads = vec![ReadCheck {
            key: record_key(&record.id),
            version: None,
        }];
        let writes = vec![(record_key(&record.id), Some(record.encode()))];
        if !self.engine.system_commit(reads, writes).await? {
            // 64 random bits collided with a live id: astronomically rare.
            return Err(KeyError::Busy(record.id));
        }
        let key = ApiKey {
            owner,
            ..record.to_key().ok_or(KeyError::NoScopes)?
        };
        tracing::info!(key = %key.id, owner = ?key.owner, "API key created");
        Ok(NewApiKey { key, secret })
    }

    fn mint(
        &self,
        owner: &KeyOwner,
        mut scopes: Vec<Scope>,
        label: String,
    ) -> Result<(Record, String), KeyError> {
        let minted = secret::mint().map_err(|e| KeyError::Random(e.to_string()))?;
        scopes.sort();
        scopes.dedup();
        let record = Record {
            id: minted.id,
            store: owner.store().map(|s| s.as_str().to_string()),
            scopes,
            label,
            digest: secret::to_hex(&minted.digest),
            created_at: self.engine.clock().now(),
            expires_at: None,
        };
        Ok((record, minted.key))
    }

    /// The live keys, of one store or (with `None`) of all stores and the
    /// operator, in id order.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn list(&self, store: Option<&TenantId>) -> Result<Vec<ApiKey>, KeyError> {
        let now = self.engine.clock().now();
        let records = self.engine.system_scan(PREFIX).await?;
        Ok(records
            .iter()
            .filter_map(|(_, stored)| serde_json::from_slice::<Record>(&stored.value).ok())
            .filter(|r| r.live_at(now))
            .filter_map(|r| r.to_key())
            .filter(|k| store.is_none_or(|s| k.owner.store() == Some(s)))
            .collect())
    }

    /// Replaces key `id` with a new one of the same owner, scopes and label;
    /// the old one keeps working for `overlap` (zero: it stops now), so its
    /// holders can move over.
    ///
    /// # Errors
    /// [`KeyError::NotFound`] if no live key has that id; the backend's or
    /// random generator's failure.
    pub async fn rotate(&self, id: &str, overlap: Duration) -> Result<NewApiKey, KeyError> {
        for _ in 0..RETRIES {
            let now = self.engine.clock().now();
            let (mut old, version) = self.live_record(id, now).await?;
            let owner = old
                .to_key()
                .ok_or_else(|| KeyError::NotFound(id.to_string()))?
                .owner;
            let (record, secret) = self.mint(&owner, old.scopes.clone(), old.label.clone())?;
            let ends = now + overlap;
            old.expires_at = Some(old.expires_at.map_or(ends, |at| at.min(ends)));
            let reads = vec![
                ReadCheck {
                    key: record_key(&old.id),
                    version: Some(version),
                },
                ReadCheck {
                    key: record_key(&record.id),
                    version: None,
                },
            ];
            let writes = vec![
                (record_key(&old.id), Some(old.encode())),
                (record_key(&record.id), Some(record.encode())),
            ];
            if self.engine.system_commit(reads, writes).await? {
                let key = record
                    .to_key()
                    .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
                tracing::info!(old = %old.id, new = %key.id, ?overlap, "API key rotated");
                return Ok(NewApiKey { key, secret });
            }
        }
        Err(KeyError::Busy(id.to_string()))
    }

    /// Revokes key `id` at once; `false` if there was no such key.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn revoke(&self, id: &str) -> Result<bool, KeyError> {
        if !secret::is_id(id) {
            return Ok(false);
        }
        let existed = self.engine.system_get(&record_key(id)).await?.is_some();
        if existed {
            self.engine
                .system_commit(Vec::new(), vec![(record_key(id), None)])
                .await?;
            tracing::info!(key = %id, "API key revoked");
        }
        Ok(existed)
    }

    /// The key `presented` (a whole `flk_…` key) if it is live and its
    /// secret matches, compared in constant time.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] for anything else; the backend's
    /// failure.
    pub async fn authenticate(&self, presented: &str) -> Result<ApiKey, AuthError> {
        let (id, given) = secret::split(presented).ok_or(AuthError::Unauthenticated)?;
        let stored = self.engine.system_get(&record_key(id)).await?;
        let record = stored.and_then(|s| serde_json::from_slice::<Record>(&s.value).ok());
        let digest = record.as_ref().and_then(|r| secret::from_hex(&r.digest));
        // Compared even when there is no record, so that an unknown id and
        // a wrong secret take the same work.
        let matched = secret::matches(given, &digest.unwrap_or([0; 32])) && digest.is_some();
        let now = self.engine.clock().now();
        match record {
            Some(record) if matched && record.live_at(now) => {
                record.to_key().ok_or(AuthError::Unauthenticated)
            }
            _ => Err(AuthError::Unauthenticated),
        }
    }

    async fn live_record(&self, id: &str, now: Timestamp) -> Result<(Record, u64), KeyError> {
        if !secret::is_id(id) {
            return Err(KeyError::NotFound(id.chars().take(64).collect()));
        }
        let stored = self
            .engine
            .system_get(&record_key(id))
            .await?
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        match serde_json::from_slice::<Record>(&stored.value) {
            Ok(record) if record.live_at(now) => Ok((record, stored.version)),
            _ => Err(KeyError::NotFound(id.to_string())),
        }
    }
}

fn record_key(id: &str) -> String {
    format!("{PREFIX}{id}")
}
