//! Events: the envelope, typed events, and the validated names they carry.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use super::priority::{Priority, UnknownPriority};
use crate::time::Timestamp;
use crate::vocab::BoxError;

pub(crate) use super::headers::cancel_key;
use super::headers::payload_version;
pub use super::headers::{CANCEL_KEY_HEADER, VERSION_HEADER};
pub use super::names::InvalidName;
use super::names::{name_type, validate};
pub use super::payload::Payload;

name_type!(
    /// A tenant: every event and every state key belongs to exactly one.
    ///
    /// 1 to 64 characters of ASCII letters, digits, `-`, `_` and `.`; case-sensitive.
    /// The names in [`TenantId::RESERVED`] are refused, and no string can name
    /// the engine's own tenant, [`TenantId::system`]: it may emit into every
    /// tenant, so an outside caller must never be able to act as it.
    ///
    /// ```
    /// use flowline::TenantId;
    /// assert!(TenantId::new("store-X").is_ok());
    /// assert!(TenantId::new("").is_err());
    /// assert!(TenantId::new("a/b").is_err());
    /// assert!(TenantId::new("system").is_err());
    /// assert!(TenantId::new(TenantId::system().as_str()).is_err());
    /// ```
    TenantId,
    "tenant id",
    64,
    |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
    "may hold only ASCII letters, digits, '-', '_' and '.'",
    |name: &str| {
        if TenantId::is_reserved(name) {
            Err("is reserved for the engine's own work")
        } else {
            Ok(())
        }
    }
);

impl TenantId {
    /// Wraps a name the engine itself chose, unchecked (the system tenant's).
    pub(super) fn unchecked(name: &'static str) -> Self {
        TenantId(Arc::from(name))
    }
}

name_type!(
    /// A topic events are published on, e.g. `order.created`.
    ///
    /// 1 to 128 characters of lowercase ASCII letters, digits, `.`, `_` and `-`.
    ///
    /// ```
    /// use flowline::Topic;
    /// assert!(Topic::new("order.created").is_ok());
    /// assert!(Topic::new("Order Created").is_err());
    /// ```
    Topic,
    "topic",
    128,
    |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'),
    "may hold only lowercase ASCII letters, digits, '.', '_' and '-'"
);

name_type!(
    /// The unique name of a step in a flow, e.g. `charge-payment`.
    ///
    /// 1 to 64 characters of ASCII letters, digits, `.`, `_` and `-`.
    StepName,
    "step name",
    64,
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    "may hold only ASCII letters, digits, '.', '_' and '-'"
);

/// The longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;

/// Checks event headers: names are 1 to 128 characters of ASCII letters, digits,
/// `-`, `_` and `.`; values are at most [`MAX_HEADER_VALUE_LEN`] bytes with no
/// control characters.
///
/// # Errors
/// [`InvalidName`] for the first bad header.
pub fn validate_headers(headers: &[(String, String)]) -> Result<(), InvalidName> {
    for (name, value) in headers {
        validate(
            "header name",
            name,
            128,
            |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            "may hold only ASCII letters, digits, '-', '_' and '.'",
        )?;
        if value.len() > MAX_HEADER_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(InvalidName {
                kind: "header value",
                value: value.chars().take(80).collect(),
                reason: "must be at most 4096 bytes with no control characters",
            });
        }
    }
    Ok(())
}

/// The longest FIFO group key, in bytes.
pub const MAX_GROUP_LEN: usize = 512;

/// Checks a FIFO group key ([`EmitOptions::group`]): 1 to [`MAX_GROUP_LEN`]
/// bytes with no control characters (which some backends cannot store).
///
/// ```
/// assert!(flowline::event::validate_group("order-42").is_ok());
/// assert!(flowline::event::validate_group("a\0b").is_err());
/// ```
///
/// # Errors
/// [`InvalidName`] with kind `"group key"`.
pub fn validate_group(group: &str) -> Result<(), InvalidName> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(InvalidName {
            kind: "group key",
            value: group.chars().take(80).collect(),
            reason: "must be 1 to 512 bytes with no control characters",
        });
    }
    Ok(())
}

/// Checks what an emit's options carry: its headers and its group key.
pub(crate) fn validate_options(options: &EmitOptions) -> Result<(), InvalidName> {
    validate_headers(&options.headers)?;
    options.group.as_deref().map_or(Ok(()), validate_group)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7).
            pub fn new() -> Self {
                $name(crate::vocab::chance::uuid_v7())
            }

            /// The id as a UUID.
            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }

            /// Wraps an existing UUID (e.g. read back from storage).
            pub fn from_uuid(id: uuid::Uuid) -> Self {
                $name(id)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            /// Parses the UUID's text form (hyphenated, simple, or braced).
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                uuid::Uuid::parse_str(s).map($name)
            }
        }
    };
}

uuid_id!(
    /// The id of one event: a UUIDv7, so ids sort by creation time.
    EventId
);
uuid_id!(
    /// Shared by everything one API call or cron tick caused, directly or not.
    TraceId
);

/// An event as the engine carries it: a payload plus where it belongs and where it came from.
///
/// Envelopes are made by the engine (from [`Engine::emit`](crate::Engine::emit) or a
/// handler's [`StepContext::emit`](crate::StepContext::emit)) and shared read-only
/// between every delivery of the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique, time-ordered id.
    pub id: EventId,
    /// What the event is about; subscribers are chosen by it.
    pub topic: Topic,
    /// The tenant the event belongs to. Deserializing an envelope restores
    /// what an adapter stored, the [system tenant](TenantId::system)
    /// included: never deserialize one from outside input.
    #[serde(deserialize_with = "TenantId::deserialize_stored")]
    pub tenant: TenantId,
    /// Shared by everything one API call or cron tick caused.
    pub trace_id: TraceId,
    /// The event whose handler emitted this one, if any.
    pub causation_id: Option<EventId>,
    /// FIFO lane: deliveries with the same key run one at a time, in emit order,
    /// for steps that ask for ordering.
    pub group_key: Option<Arc<str>>,
    /// When the event was emitted.
    pub emitted_at: Timestamp,
    /// Not delivered before this time.
    pub deliver_at: Option<Timestamp>,
    /// Free-form metadata, e.g. a correlation id from the host.
    pub headers: Vec<(String, String)>,
    /// How urgent it is among its tenant's work (left out of the JSON when normal).
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// The JSON payload.
    pub payload: Payload,
}

impl Envelope {
    /// Decodes the payload as a typed event.
    ///
    /// # Errors
    /// [`DecodeError`] if the topic is not `T::TOPIC` or the payload does not fit `T`.
    pub fn decode<T: Event>(&self) -> Result<T, DecodeError> {
        if self.topic.as_str() != T::TOPIC {
            return Err(DecodeError::UnexpectedTopic {
                expected: vec![T::TOPIC],
                found: self.topic.clone(),
            });
        }
        let mismatch = |source| DecodeError::Payload {
            topic: self.topic.clone(),
            source: Arc::new(source),
        };
        let version = payload_version(&self.headers).unwrap_or(0);
        if version == T::VERSION {
            return self.payload.decode().map_err(mismatch);
        }
        let refused = |version, reason: String| DecodeError::Version {
            topic: self.topic.clone(),
            version,
            current: T::VERSION,
            reason,
        };
        if version == 0 || version > T::VERSION {
            let reason = "written by a newer build, or the version is not a number".to_string();
            return Err(refused(version, reason));
        }
        let old: serde_json::Value = self.payload.decode().map_err(mismatch)?;
        let current =
            T::upcast(version, old).map_err(|err| refused(version, format!("upcast: {err}")))?;
        serde_json::from_value(current).map_err(mismatch)
    }

    /// The first header with this name (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// When the event becomes deliverable.
    pub fn due_at(&self) -> Timestamp {
        self.deliver_at.unwrap_or(self.emitted_at)
    }
}

/// An event payload was not what the receiving step expects.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    /// The step does not subscribe to this topic.
    #[error("unexpected topic {found}, expected one of {expected:?}")]
    UnexpectedTopic {
        /// The topics the step accepts.
        expected: Vec<&'static str>,
        /// The topic of the event.
        found: Topic,
    },
    /// The payload does not deserialize into the step's event type.
    #[error("payload of {topic} does not match the event type: {source}")]
    Payload {
        /// The topic of the event.
        topic: Topic,
        /// The deserialization error, with line and column.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The payload's version is newer than the type's, or the type's
    /// [`Event::upcast`] refused it (or the version header is not a number,
    /// read as version 0).
    #[error("payload of {topic} is version {version}, which the event type (version {current}) cannot read: {reason}")]
    Version {
        /// The topic of the event.
        topic: Topic,
        /// The payload's version.
        version: u32,
        /// The event type's version.
        current: u32,
        /// Why: the upcaster's error, or that the payload is newer.
        reason: String,
    },
}

/// A typed event: a payload type that names its topic once.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderCreated { order_id: String, total_cents: i64 }
///
/// impl flowline::Event for OrderCreated {
///     const TOPIC: &'static str = "order.created";
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a flowline event",
    label = "not an event",
    note = "derive `Serialize` and `Deserialize` for `{Self}` and implement `flowline::Event` for it: `impl Event for {Self} {{ const TOPIC: &'static str = \"...\"; }}`"
)]
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The topic this event is published on. Must be a valid [`Topic`].
    const TOPIC: &'static str;

    /// The version of the payload's shape; emits carry it (in
    /// [`VERSION_HEADER`], when not 1). Raise it when a change of the type
    /// cannot read older payloads, and say in [`upcast`](Self::upcast) how.
    const VERSION: u32 = 1;

    /// Turns a payload written at `version` (below [`VERSION`](Self::VERSION))
    /// into the current shape, before it is decoded: how deliveries queued
    /// or dead-lettered by an older build still run. The default keeps it.
    ///
    /// ```
    /// use flowline::{BoxError, Event};
    /// use serde::{Deserialize, Serialize};
    ///
    /// // Version 1 had `name`; version 2 splits it.
    /// #[derive(Serialize, Deserialize)]
    /// struct SignedUp { first: String, last: String }
    /// impl Event for SignedUp {
    ///     const TOPIC: &'static str = "user.signed_up";
    ///     const VERSION: u32 = 2;
    ///     fn upcast(version: u32, mut old: serde_json::Value) -> Result<serde_json::Value, BoxError> {
    ///         if version == 1 {
    ///             let name = old["name"].as_str().ok_or("no name")?.to_string();
    ///             let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
    ///             old = serde_json::json!({ "first": first, "last": last });
    ///         }
    ///         Ok(old)
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    /// The payload cannot be brought up to date: the delivery dead-letters
    /// as undecodable ([`DecodeError::Version`]).
    fn upcast(version: u32, payload: serde_json::Value) -> Result<serde_json::Value, BoxError> {
        let _ = version;
        Ok(payload)
    }
}

impl EmitOptions {
    /// These options with `E`'s payload version in its header, if not 1.
    pub(crate) fn versioned<E: Event>(self) -> Self {
        match E::VERSION {
            1 => self,
            version => self.header(VERSION_HEADER, version.to_string()),
        }
    }
}

/// What an event step accepts: one typed event, or an enum over several.
///
/// Every [`Event`] is an `Inbound` for its own topic. Implement it by hand for an
/// enum when a step subscribes to several topics:
///
/// ```
/// use flowline::{DecodeError, Envelope, Event, Inbound};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Paid { order: String }
/// # impl Event for Paid { const TOPIC: &'static str = "payment.processed"; }
/// # #[derive(Serialize, Deserialize)] struct Declined { order: String }
/// # impl Event for Declined { const TOPIC: &'static str = "payment.failed"; }
/// enum PaymentOutcome { Paid(Paid), Declined(Declined) }
///
/// impl Inbound for PaymentOutcome {
///     fn topics() -> Vec<&'static str> { vec![Paid::TOPIC, Declined::TOPIC] }
///     fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
///         match envelope.topic.as_str() {
///             Paid::TOPIC => envelope.decode().map(PaymentOutcome::Paid),
///             _ => envelope.decode().map(PaymentOutcome::Declined),
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be what a step takes in",
    label = "not an event, nor an enum of events",
    note = "a step takes one event type (`impl flowline::Event`), or an enum over several declared with `flowline::inbound!`"
)]
pub trait Inbound: Sized + Send + 'static {
    /// The topics the step subscribes to.
    fn topics() -> Vec<&'static str>;
    /// Decodes one delivered envelope.
    ///
    /// # Errors
    /// The envelope's topic or payload does not fit.
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError>;
}

/// An envelope as it came, for steps on topics named at run time
/// ([`Step::topics`](crate::Step::topics)); as a type of
/// [`Step::event`](crate::Step::event) it subscribes to nothing.
impl Inbound for Envelope {
    fn topics() -> Vec<&'static str> {
        Vec::new()
    }
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
        Ok(envelope.clone())
    }
}

impl<T: Event> Inbound for T {
    fn topics() -> Vec<&'static str> {
        vec![T::TOPIC]
    }
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
        envelope.decode()
    }
}

/// Options for one emitted event.
///
/// ```
/// use std::time::Duration;
/// use flowline::EmitOptions;
/// let options = EmitOptions::new().delay(Duration::from_secs(60)).group("order-42");
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct EmitOptions {
    pub(crate) delay: Option<Duration>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) tenant: Option<TenantId>,
    pub(crate) priority: Option<Priority>,
}

impl EmitOptions {
    /// No delay, no group, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers no earlier than `delay` from now (durably: survives restarts).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Puts the event in a FIFO lane (honoured by steps declared `.fifo()`).
    /// The key is checked when the event is emitted ([`validate_group`]).
    pub fn group(mut self, key: impl AsRef<str>) -> Self {
        self.group = Some(Arc::from(key.as_ref()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Names the event's deliveries so that a handler of the same tenant can
    /// cancel them while they wait, with
    /// [`StepContext::cancel_emit`](crate::StepContext::cancel_emit): for a
    /// delayed reminder that an answer makes moot. The key travels in the
    /// [`CANCEL_KEY_HEADER`] header.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flowline::EmitOptions;
    /// let reminder = EmitOptions::new()
    ///     .delay(Duration::from_secs(600))
    ///     .cancel_key("remind/user-42");
    /// # let _ = reminder;
    /// ```
    pub fn cancel_key(self, key: impl Into<String>) -> Self {
        self.header(CANCEL_KEY_HEADER, key)
    }

    /// Addresses the event to `tenant` instead of the emitting execution's own.
    ///
    /// Only executions of [`TenantId::system`] (cron steps, unless they name a
    /// tenant) may address another tenant: that is how a platform-wide job fans
    /// work out to every tenant. A tenant's step that tries it gets
    /// [`EmitError::CrossTenant`](crate::EmitError::CrossTenant), so tenants never reach each other.
    /// [`Engine::emit_with`](crate::Engine::emit_with) names its tenant itself
    /// and ignores this option.
    ///
    /// ```
    /// use flowline::{EmitOptions, TenantId};
    /// let to_store = EmitOptions::new().tenant(TenantId::new("store-7").unwrap());
    /// # let _ = to_store;
    /// ```
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets the event's [`Priority`]: its tenant's work of a higher priority
    /// runs first. Without it, an event emitted by a handler takes the
    /// priority of the event being handled, and any other is
    /// [`Priority::Normal`].
    ///
    /// ```
    /// use flowline::{EmitOptions, Priority};
    /// let urgent = EmitOptions::new().priority(Priority::High);
    /// # let _ = urgent;
    /// ```
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// Builds envelopes with the engine clock (used by the engine and contexts).
pub(crate) fn build_envelope(
    now: Timestamp,
    topic: Topic,
    tenant: TenantId,
    trace_id: TraceId,
    causation_id: Option<EventId>,
    payload: Payload,
    options: EmitOptions,
) -> Envelope {
    Envelope {
        id: EventId::new(),
        topic,
        tenant,
        trace_id,
        causation_id,
        group_key: options.group,
        emitted_at: now,
        deliver_at: options.delay.map(|d| now + d),
        headers: options.headers,
        priority: options.priority.unwrap_or_default(),
        payload,
    }
}
