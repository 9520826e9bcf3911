//! Registering and managing a tenant's endpoints, and reading their logs.

use std::sync::Arc;
use std::time::Duration;

use super::destination::Destinations;
use super::endpoint::{
    check_url, Endpoint, EndpointRecord, StoredSecret, TopicFilter, WebhookError, MAX_DESCRIPTION,
};
use super::log::{self, DeliveryRecord};
use super::records::{endpoint_key, endpoints_prefix, health_key, is_endpoint_id, MAX_ENDPOINTS};
use super::signing::WebhookSecret;
use super::steps::WebhookDue;
use crate::backend::{DeadLetterQuery, ReadCheck};
use crate::engine::Engine;
use crate::event::{StepName, TenantId};

/// The longest overlap a rotated secret keeps signing: a week.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a merchant asks for: a URL, the topics, optionally its own secret.
#[derive(Clone, Debug, Default)]
pub struct EndpointSpec {
    /// Where deliveries go (`http` or `https`).
    pub url: String,
    /// Topic patterns: topics, `prefix.*` or `*`.
    pub topics: Vec<String>,
    /// A `whsec_` secret to sign with; a new one is made if `None`.
    pub secret: Option<String>,
    /// A note for people.
    pub description: String,
}

impl EndpointSpec {
    /// An endpoint at `url` for `topics`, with a new secret.
    pub fn new<T: Into<String>>(
        url: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        EndpointSpec {
            url: url.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            secret: None,
            description: String::new(),
        }
    }
}

/// An endpoint just registered, with its secret: shown this once.
#[derive(Clone)]
pub struct Registered {
    /// The endpoint.
    pub endpoint: Endpoint,
    secret: String,
}

impl Registered {
    /// The `whsec_` secret deliveries are signed with.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("endpoint", &self.endpoint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A tenant's endpoints: register, list, change, remove, and their logs.
/// From [`Webhooks::endpoints`](super::Webhooks::endpoints).
#[derive(Clone)]
pub struct WebhookEndpoints {
    pub(super) engine: Engine,
    pub(super) topics: Arc<Vec<String>>,
    pub(super) destinations: Destinations,
}

impl std::fmt::Debug for WebhookEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoints")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

fn encode(record: &EndpointRecord) -> crate::backend::Value {
    Arc::from(serde_json::to_vec(record).unwrap_or_default())
}

impl WebhookEndpoints {
    /// Registers an endpoint for `tenant`, checked before anything is kept.
    ///
    /// # Errors
    /// A [`WebhookError`] for a bad URL, scheme, destination, pattern,
    /// secret or description, or when the tenant has [`MAX_ENDPOINTS`].
    pub async fn register(
        &self,
        tenant: &TenantId,
        spec: EndpointSpec,
    ) -> Result<Registered, WebhookError> {
        let url = check_url(&spec.url, self.destinations)?;
        let topics = TopicFilter::new(&spec.topics, &self.topics)?;
        if spec.description.len() > MAX_DESCRIPTION {
            return Err(WebhookError::DescriptionTooLong);
        }
        let secret = match &spec.secret {
            Some(given) => WebhookSecret::parse(given)?,
            None => WebhookSecret::generate()?,
        };
        let existing = self.engine.state_scan(tenant, &endpoints_prefix()).await?;
        if existing.len() >= MAX_ENDPOINTS {
            return Err(WebhookError::TooMany(MAX_ENDPOINTS));
        }
        let record = EndpointRecord {
            // Not a secret: from the engine's source of chance, which a
            // simulation seeds (a run's endpoint ids are the same each time).
            id: format!("ep_{:016x}", crate::vocab::chance::next_u64()),
            url: url.to_string(),
            topics,
            description: spec.description,
            secrets: vec![StoredSecret {
                secret: secret.expose(),
                expires_at: None,
            }],
            enabled: true,
            disabled_reason: None,
            created_at: self.engine.clock().now(),
        };
        let key = endpoint_key(&record.id);
        let reads = vec![ReadCheck {
            key: key.clone(),
            version: None,
        }];
        if !self
            .engine
            .state_commit(tenant, reads, vec![(key, Some(encode(&record)))])
            .await?
        {
            return Err(WebhookError::Busy(record.id));
        }
        tracing::info!(%tenant, endpoint = %record.id, url = %record.url, "webhook endpoint registered");
        Ok(Registered {
            endpoint: record.view(),
            secret: secret.expose(),
        })
    }

    /// The tenant's endpoints, in id order.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Endpoint>, WebhookError> {
        let found = self.engine.state_scan(tenant, &endpoints_prefix()).await?;
        Ok(found
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<EndpointRecord>(&v.value).ok())
            .map(|r| r.view())
            .collect())
    }

    /// One endpoint.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`], or the backend failed.
    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Endpoint, WebhookError> {
        Ok(self.record(tenant, id).await?.0.view())
    }

    async fn record(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(EndpointRecord, u64), WebhookError> {
        let not_found = || WebhookError::NotFound(id.chars().take(64).collect());
        if !is_endpoint_id(id) {
            return Err(not_found());
        }
        let stored = self
            .engine
            .state_get(tenant, &endpoint_key(id))
            .await?
            .ok_or_else(not_found)?;
        let record = serde_json::from_slice(&stored.value).map_err(|_| not_found())?;
        Ok((record, stored.version))
    }

    /// Changes an endpoint with `change`, if it did not move meanwhile.
    async fn update(
        &self,
        tenant: &TenantId,
        id: &str,
        change: impl Fn(&mut EndpointRecord),
    ) -> Result<EndpointRecord, WebhookError> {
        for _ in 0..3 {
            let (mut record, version) = self.record(tenant, id).await?;
            change(&mut record);
            let key = endpoint_key(id);
            let reads = vec![ReadCheck {
                key: key.clone(),
                version: Some(version),
            }];
            if self
                .engine
                .state_commit(tenant, reads, vec![(key, Some(encode(&record)))])
                .await?
            {
                return Ok(record);
            }
        }
        Err(WebhookError::Busy(id.to_string()))
    }

    /// A new secret for the endpoint; the old ones keep signing beside it
    /// for `overlap` (at most [`MAX_SECRET_OVERLAP`]), so its receiver can
    /// move over. Returns the new secret, shown this once.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`], or the backend failed.
    pub async fn rotate_secret(
        &self,
        tenant: &TenantId,
        id: &str,
        overlap: Duration,
    ) -> Result<String, WebhookError> {
        let secret = WebhookSecret::generate()?.expose();
        let now = self.engine.clock().now();
        let ends = now + overlap.min(MAX_SECRET_OVERLAP);
        self.update(tenant, id, |record| {
            record
                .secrets
                .retain(|s| s.expires_at.is_none_or(|at| at > now));
            for old in &mut record.secrets {
                old.expires_at = Some(old.expires_at.map_or(ends, |at| at.min(ends)));
            }
            record.secrets.push(StoredSecret {
                secret: secret.clone(),
                expires_at: None,
            });
        })
        .await?;
        tracing::info!(%tenant, endpoint = %id, ?overlap, "webhook secret rotated");
        Ok(secret)
    }

    /// Turns deliveries to the endpoint on or off. Turning it on clears the
    /// reason it was disabled; events while it was off were not kept for it.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`], or the backend failed.
    pub async fn set_enabled(
        &self,
        tenant: &TenantId,
        id: &str,
        enabled: bool,
    ) -> Result<Endpoint, WebhookError> {
        let record = self
            .update(tenant, id, |record| {
                record.enabled = enabled;
                record.disabled_reason = (!enabled).then(|| "disabled by hand".to_string());
            })
            .await?;
        if enabled {
            // A new start: the failing stretch that disabled it is over.
            self.engine
                .state_commit(tenant, Vec::new(), vec![(health_key(id), None)])
                .await?;
        }
        Ok(record.view())
    }

    /// Removes the endpoint; `false` if there was none. Its queued
    /// deliveries are skipped when their turn comes.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn remove(&self, tenant: &TenantId, id: &str) -> Result<bool, WebhookError> {
        if !is_endpoint_id(id) {
            return Ok(false);
        }
        let existed = self
            .engine
            .state_get(tenant, &endpoint_key(id))
            .await?
            .is_some();
        if existed {
            self.engine
                .state_commit(
                    tenant,
                    Vec::new(),
                    vec![(endpoint_key(id), None), (health_key(id), None)],
                )
                .await?;
        }
        Ok(existed)
    }

    /// The endpoint's log, newest first: up to `limit` messages, after the
    /// message whose `cursor` a previous page ended with.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`] for an id of no endpoint's shape; the
    /// backend failed.
    pub async fn deliveries(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        if !is_endpoint_id(id) {
            return Err(WebhookError::NotFound(id.chars().take(64).collect()));
        }
        let found = self.engine.state_scan(tenant, &log::prefix(id)).await?;
        Ok(found
            .iter()
            .take(limit)
            .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
            .collect())
    }
}

impl WebhookEndpoints {
    /// Tries a message given up on once more: its dead letter (of the
    /// sender, in this tenant) is replayed. `false` if the message is not in
    /// the dead letters.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`] for an id of no endpoint's shape; the
    /// backend failed.
    pub async fn replay(
        &self,
        tenant: &TenantId,
        id: &str,
        message_id: &str,
    ) -> Result<bool, WebhookError> {
        if !is_endpoint_id(id) {
            return Err(WebhookError::NotFound(id.chars().take(64).collect()));
        }
        let sender = StepName::new(super::SENDER).map_err(|e| {
            WebhookError::Storage(crate::engine::EngineError::Store(
                crate::backend::StoreError::Backend(e.to_string().into()),
            ))
        })?;
        const PAGE: usize = 500;
        let mut query = DeadLetterQuery::default()
            .step(sender)
            .tenant(tenant.clone())
            .limit(PAGE);
        loop {
            let page = self.engine.dead_letters(&query).await?;
            let found = page.iter().find(|dead| {
                dead.event
                    .decode::<WebhookDue>()
                    .is_ok_and(|due| due.endpoint == id && due.message_id == message_id)
            });
            if let Some(dead) = found {
                return Ok(self.engine.replay_dead_letters(&[dead.id]).await? > 0);
            }
            match page.last() {
                Some(last) if page.len() >= PAGE => {
                    query = query.after(last.id);
                }
                _ => return Ok(false),
            }
        }
    }
}
