//! The two steps: the dispatcher turns each event a tenant's endpoints want
//! into one durable delivery per endpoint; the sender makes the attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::endpoint::{check_url, EndpointRecord};
use super::log::{self, Attempt, DeliveryRecord, DeliveryState, ATTEMPTS_KEPT, LOG_CAP};
use super::options::WebhookOptions;
use super::records::{endpoint_key, endpoints_prefix, health_key, MAX_ENDPOINTS};
use super::sender::{self, Message};
use super::stats::{DeliveryOutcome, DeliveryStats};
use super::transport::WebhookTransport;
use crate::engine::flow_control::{Limit, LimitKey};
use crate::engine::{Step, StepContext, StepError};
use crate::event::{EmitOptions, Envelope, Event};
use crate::retry::RetryPolicy;
use crate::time::Timestamp;

/// How long an attempt may take beyond its POST's timeout: the store's
/// reads and the commit of what came of it.
const STORE_ROOM: Duration = Duration::from_secs(30);

/// One message due at one endpoint: what the sender delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDue {
    /// The endpoint's id (the flow-control key: a limit per endpoint).
    pub endpoint: String,
    /// The `webhook-id`, the same on every attempt.
    pub message_id: String,
    /// The event's topic.
    pub topic: String,
    /// The event's id.
    pub event_id: String,
    /// When the dispatcher made the message.
    pub created_at: Timestamp,
    /// The body sent, the same on every attempt.
    pub body: String,
    /// Which attempt this is, 1 for the first.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

/// A message given up on: its last attempt, for the log step. The message
/// itself is in the engine's dead letters, whence a replay tries it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookGaveUp {
    /// The message.
    pub due: WebhookDue,
    /// Its last attempt.
    pub last: Attempt,
}

impl Event for WebhookGaveUp {
    const TOPIC: &'static str = "flowline.webhook.gave_up";
}

impl Event for WebhookDue {
    const TOPIC: &'static str = "flowline.webhook.due";
}

/// An endpoint disabled after its deliveries failed for too long: for the
/// host's alerts. Re-enable it with
/// [`WebhookEndpoints::set_enabled`](super::WebhookEndpoints::set_enabled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointDisabled {
    /// The endpoint's id.
    pub endpoint: String,
    /// Its URL.
    pub url: String,
    /// Why.
    pub reason: String,
    /// Since when every delivery failed.
    pub failing_since: Timestamp,
}

impl Event for WebhookEndpointDisabled {
    const TOPIC: &'static str = "webhook.endpoint_disabled";
}

/// An endpoint's failing stretch, kept beside it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    failing_since: Option<Timestamp>,
}

/// The dispatcher on `topics`.
pub(super) fn dispatcher(name: &str, topics: &[String]) -> Step {
    Step::topics(name, topics.iter().cloned())
        .emits::<WebhookDue>()
        .handle(|ctx: StepContext, event: Envelope| async move {
            let endpoints: Vec<(String, EndpointRecord)> =
                ctx.scan(&endpoints_prefix(), MAX_ENDPOINTS).await?;
            for (_, endpoint) in endpoints {
                if !endpoint.enabled || !endpoint.topics.matches(event.topic.as_str()) {
                    continue;
                }
                let due = WebhookDue {
                    message_id: format!(
                        "msg_{}_{}",
                        event.id.as_uuid().simple(),
                        &endpoint.id[3..]
                    ),
                    endpoint: endpoint.id.clone(),
                    topic: event.topic.to_string(),
                    event_id: event.id.to_string(),
                    created_at: ctx.now(),
                    body: body_of(&event),
                    attempt: 1,
                };
                ctx.emit(&due)?;
                // Now and then, the endpoint's log is cut to its newest
                // messages; here, where a re-run sends nothing.
                if crate::vocab::chance::next_u64().is_multiple_of(64) {
                    trim_log(&ctx, &endpoint.id).await?;
                }
            }
            Ok::<_, StepError>(())
        })
}

/// The body every attempt sends: `{"type", "timestamp", "eventId", "data"}`.
fn body_of(event: &Envelope) -> String {
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        r#"{{"type":{},"timestamp":{},"eventId":{},"data":{}}}"#,
        quoted(event.topic.as_str()),
        quoted(
            &event
                .emitted_at
                .to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        quoted(&event.id.to_string()),
        event.payload.as_json(),
    )
}

async fn trim_log(ctx: &StepContext, endpoint: &str) -> Result<(), StepError> {
    let records: Vec<(String, serde_json::Value)> =
        ctx.scan(&log::prefix(endpoint), usize::MAX).await?;
    for (key, _) in records.iter().skip(LOG_CAP) {
        ctx.delete(key)?;
    }
    Ok(())
}

/// The last attempts of messages given up on, from the sender's handler to
/// its failure hook (same process, same delivery, one after the other).
type LastAttempts = Arc<Mutex<HashMap<String, Attempt>>>;

/// The sender: one attempt per execution, alone (a slow endpoint holds up
/// no other commit), at most `per_endpoint` in flight for one endpoint.
///
/// A failed attempt commits its log record and schedules the next attempt
/// (a delayed message) in the same commit, so the log keeps every attempt.
/// The last one fails the execution for good: the message goes to the
/// engine's dead letters, and the failure hook hands its attempt to the log
/// step.
pub(super) fn sender(
    name: &str,
    options: Arc<WebhookOptions>,
    transport: Arc<dyn WebhookTransport>,
    stats: Arc<DeliveryStats>,
) -> Step {
    let last_attempts: LastAttempts = Arc::default();
    let handed = last_attempts.clone();
    Step::event::<WebhookDue>(name)
        .emits::<WebhookDue>()
        .emits::<WebhookEndpointDisabled>()
        .emits::<WebhookGaveUp>()
        .solo()
        // The engine's retries are for the store failing under an attempt
        // (the receiver's failures are retried by the sender itself): as
        // patient as any step's, and room for slow reads beside the POST.
        .retry(RetryPolicy::default())
        .timeout(options.timeout + STORE_ROOM)
        .limit(
            Limit::concurrency(options.per_endpoint)
                .per(LimitKey::field("endpoint"))
                .named("per-endpoint"),
        )
        .handle(move |ctx: StepContext, due: WebhookDue| {
            let (options, transport, last, stats) = (
                options.clone(),
                transport.clone(),
                last_attempts.clone(),
                stats.clone(),
            );
            async move { send(&ctx, &due, &options, &*transport, &last, &stats).await }
        })
        .on_failure(move |cx, failure| {
            let due: WebhookDue = failure.input().map_err(StepError::permanent)?;
            let taken = handed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&due.message_id);
            // Without the handler's attempt (it panicked, timed out, or
            // could not read its state), the failure is the attempt.
            let last = taken.unwrap_or_else(|| Attempt {
                attempt: due.attempt,
                at: cx.now(),
                status: None,
                latency_ms: 0,
                error: Some(log::capped(failure.error(), 300)),
                body: None,
            });
            cx.emit(&WebhookGaveUp { due, last })?;
            Ok(())
        })
}

/// The log step: records a message given up on, and what that means for
/// its endpoint.
pub(super) fn logger(name: &str, options: Arc<WebhookOptions>) -> Step {
    Step::event::<WebhookGaveUp>(name)
        .emits::<WebhookEndpointDisabled>()
        .handle(move |ctx: StepContext, gave_up: WebhookGaveUp| {
            let options = options.clone();
            async move { failed(&ctx, &gave_up.due, gave_up.last, None, &options).await }
        })
}

async fn send(
    ctx: &StepContext,
    due: &WebhookDue,
    options: &WebhookOptions,
    transport: &dyn WebhookTransport,
    last_attempts: &LastAttempts,
    stats: &DeliveryStats,
) -> Result<(), StepError> {
    let now = ctx.now();
    let number = due.attempt.max(1);
    // Read without a read check: an endpoint changed meanwhile must not
    // make this attempt conflict, run again and send again.
    let endpoint = ctx
        .peek::<EndpointRecord>(&endpoint_key(&due.endpoint))
        .await?;
    let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
        let mut record = log_record(ctx, due).await?;
        record.state = DeliveryState::Skipped;
        record.next_try_at = None;
        ctx.put(
            &log::key(&due.endpoint, due.created_at, &due.message_id),
            &record,
        )?;
        return Ok(());
    };
    let checked = check_url(&endpoint.url, options.destinations);
    let refused = checked.is_err();
    let answer = match checked {
        Ok(url) => {
            let message = Message {
                id: &due.message_id,
                timestamp: now.as_millis() / 1000,
                body: &due.body,
            };
            let secrets = endpoint.signing_secrets(now);
            sender::attempt(
                transport,
                url,
                &secrets,
                &message,
                options,
                ctx.trace_parent(),
            )
            .await
        }
        Err(refused) => sender::Answer {
            status: None,
            latency: Duration::ZERO,
            error: Some(refused.to_string()),
            body: None,
            retry_after: None,
        },
    };
    let outcome = match answer.status {
        _ if refused => DeliveryOutcome::Refused,
        _ if answer.delivered() => DeliveryOutcome::Delivered,
        Some(_) => DeliveryOutcome::Rejected,
        None => DeliveryOutcome::Unreachable,
    };
    stats.add(ctx.tenant(), &due.endpoint, outcome);
    let attempt = Attempt {
        attempt: number,
        at: now,
        status: answer.status,
        latency_ms: u64::try_from(answer.latency.as_millis()).unwrap_or(u64::MAX),
        error: answer.error.clone(),
        body: answer.body.clone(),
    };
    if answer.delivered() {
        let mut record = log_record(ctx, due).await?;
        push(&mut record, attempt);
        record.state = DeliveryState::Delivered;
        record.next_try_at = None;
        ctx.put(
            &log::key(&due.endpoint, due.created_at, &due.message_id),
            &record,
        )?;
        let health_key = health_key(&due.endpoint);
        if ctx.peek::<Health>(&health_key).await?.is_some() {
            ctx.delete(&health_key)?;
        }
        return Ok(());
    }

    let wait = backoff(options, number).max(answer.retry_after.unwrap_or_default());
    let age = now.saturating_since(due.created_at);
    let gone = answer.status == Some(410);
    if gone || number >= options.max_attempts || age + wait > options.max_age {
        let error = answer.error.unwrap_or_else(|| "failed".to_string());
        stats.add(ctx.tenant(), &due.endpoint, DeliveryOutcome::GaveUp);
        last_attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(due.message_id.clone(), attempt);
        return Err(StepError::permanent(format!(
            "gave up after {number} attempts over {} s: {error}",
            age.as_secs()
        )));
    }
    let next = WebhookDue {
        attempt: number + 1,
        ..due.clone()
    };
    ctx.emit_with(&next, EmitOptions::new().delay(wait))?;
    failed(ctx, due, attempt, Some(now + wait), options).await
}

/// The message's record as it stands, or a new one.
async fn log_record(ctx: &StepContext, due: &WebhookDue) -> Result<DeliveryRecord, StepError> {
    // Only this message's executions write its record, one after another:
    // no read check needed, and none wanted (it could only cause re-sends).
    let key = log::key(&due.endpoint, due.created_at, &due.message_id);
    Ok(ctx
        .peek::<DeliveryRecord>(&key)
        .await?
        .unwrap_or_else(|| DeliveryRecord {
            message_id: due.message_id.clone(),
            endpoint: due.endpoint.clone(),
            topic: due.topic.clone(),
            event_id: due.event_id.clone(),
            created_at: due.created_at,
            state: DeliveryState::Retrying,
            next_try_at: None,
            attempts: Vec::new(),
        }))
}

fn push(record: &mut DeliveryRecord, attempt: Attempt) {
    record.attempts.push(attempt);
    if record.attempts.len() > ATTEMPTS_KEPT {
        record.attempts.remove(0);
    }
}

/// Records a failed attempt (to be tried again at `next_try`, or given up
/// on), and disables the endpoint once it has failed for too long or
/// answered `410 Gone`.
async fn failed(
    ctx: &StepContext,
    due: &WebhookDue,
    attempt: Attempt,
    next_try: Option<Timestamp>,
    options: &WebhookOptions,
) -> Result<(), StepError> {
    let now = ctx.now();
    let gone = attempt.status == Some(410);
    let mut record = log_record(ctx, due).await?;
    push(&mut record, attempt);
    record.state = if next_try.is_some() {
        DeliveryState::Retrying
    } else {
        DeliveryState::DeadLettered
    };
    record.next_try_at = next_try;
    ctx.put(
        &log::key(&due.endpoint, due.created_at, &due.message_id),
        &record,
    )?;

    let health_key = health_key(&due.endpoint);
    let mut health = ctx.peek::<Health>(&health_key).await?.unwrap_or_default();
    let failing_since = *health.failing_since.get_or_insert(now);
    ctx.put(&health_key, &health)?;
    if !gone && now.saturating_since(failing_since) < options.disable_after {
        return Ok(());
    }
    let key = endpoint_key(&due.endpoint);
    let Some(mut endpoint) = ctx
        .peek::<EndpointRecord>(&key)
        .await?
        .filter(|e| e.enabled)
    else {
        return Ok(());
    };
    let reason = if gone {
        "the endpoint answered 410 Gone".to_string()
    } else {
        format!(
            "every delivery failed since {}",
            failing_since.to_utc().to_rfc3339()
        )
    };
    endpoint.enabled = false;
    endpoint.disabled_reason = Some(reason.clone());
    ctx.put(&key, &endpoint)?;
    ctx.emit(&WebhookEndpointDisabled {
        endpoint: due.endpoint.clone(),
        url: endpoint.url.clone(),
        reason,
        failing_since,
    })?;
    tracing::warn!(tenant = %ctx.tenant(), endpoint = %due.endpoint, "webhook endpoint disabled");
    Ok(())
}

/// Exponential from the first retry to the longest, with half of it jitter.
fn backoff(options: &WebhookOptions, attempt: u32) -> Duration {
    let (low, high) =
        RetryPolicy::exponential(options.first_retry, options.longest_retry).delay_bounds(attempt);
    if high > low {
        // The engine's source: a simulation seeds it.
        crate::vocab::chance::with_rng(|rng| rng.random_range(low..=high))
    } else {
        high
    }
}
