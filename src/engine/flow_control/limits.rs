//! What a step declares: its limits, their quotas and the key each is counted by.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{Envelope, TenantId};

/// The longest flow-control key, in bytes.
pub const MAX_LIMIT_KEY_LEN: usize = 256;

/// The most executions one concurrency limit may allow per key.
pub const MAX_CONCURRENCY: u32 = 10_000;

/// The longest period of a rate limit: a year.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// How much of a step's work one key may have: a rate or a number in flight.
///
/// A [`Limit`] declares one; [`Engine::set_limit`](crate::Engine::set_limit)
/// replaces it for one key at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
#[non_exhaustive]
pub enum Quota {
    /// At most `count` per `period` on average, and at most `burst` at once:
    /// a generic cell rate algorithm (GCRA) spaces executions `period / count`
    /// apart and lets up to `burst` of that spacing be used up front. In any
    /// window of length `w`, at most `burst + count * w / period` start.
    Rate {
        /// Executions per period (at least 1).
        count: u32,
        /// The period, in milliseconds (1 ms to a year).
        #[serde(rename = "periodMs", with = "millis")]
        period: Duration,
        /// How many may start at once (at least 1).
        burst: u32,
    },
    /// At most `max` executions in flight at once.
    Concurrency {
        /// Executions in flight (1 to [`MAX_CONCURRENCY`]).
        max: u32,
    },
}

impl Quota {
    /// A rate of `count` per `period`, evenly spaced (a burst of 1).
    pub fn rate(count: u32, period: Duration) -> Self {
        Quota::Rate {
            count,
            period,
            burst: 1,
        }
    }

    /// At most `max` in flight.
    pub fn concurrency(max: u32) -> Self {
        Quota::Concurrency { max }
    }

    /// Checks the numbers.
    ///
    /// # Errors
    /// [`LimitError`] for a zero count, period, burst or maximum, a period
    /// above [`MAX_PERIOD`] or a maximum above [`MAX_CONCURRENCY`].
    pub fn validate(&self) -> Result<(), LimitError> {
        match *self {
            Quota::Rate {
                count,
                period,
                burst,
            } => {
                if count == 0 {
                    return Err(LimitError::ZeroCount);
                }
                if period < Duration::from_millis(1) {
                    return Err(LimitError::PeriodTooShort(period));
                }
                if period > MAX_PERIOD {
                    return Err(LimitError::PeriodTooLong(period));
                }
                if burst == 0 {
                    return Err(LimitError::ZeroBurst);
                }
            }
            Quota::Concurrency { max } => {
                if max == 0 {
                    return Err(LimitError::ZeroConcurrency);
                }
                if max > MAX_CONCURRENCY {
                    return Err(LimitError::ConcurrencyTooHigh(max));
                }
            }
        }
        Ok(())
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Quota::Rate { .. } => "rate",
            Quota::Concurrency { .. } => "concurrency",
        }
    }
}

/// Why a limit or a quota is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A rate of zero per period would never run anything.
    #[error("a rate limit's count must be at least 1")]
    ZeroCount,
    /// The period is under a millisecond.
    #[error("a rate limit's period must be at least 1 ms, not {0:?}")]
    PeriodTooShort(Duration),
    /// The period is over a year.
    #[error("a rate limit's period must be at most a year, not {0:?}")]
    PeriodTooLong(Duration),
    /// A burst of zero would never run anything.
    #[error("a rate limit's burst must be at least 1")]
    ZeroBurst,
    /// A burst was set on a concurrency limit.
    #[error("a burst applies to rate limits only")]
    BurstWithoutRate,
    /// Zero in flight would never run anything.
    #[error("a concurrency limit must allow at least 1 in flight")]
    ZeroConcurrency,
    /// More in flight than one key's record holds.
    #[error("a concurrency limit may allow at most {MAX_CONCURRENCY} in flight, not {0}")]
    ConcurrencyTooHigh(u32),
    /// The limit's name is not 1 to 64 lowercase letters, digits, `-` and `_`.
    #[error("invalid limit name {0:?}: use 1 to 64 lowercase ASCII letters, digits, '-' and '_'")]
    InvalidName(String),
    /// Two limits of one step share a name.
    #[error("two limits are named {0:?}; name them apart with Limit::named")]
    DuplicateName(String),
    /// An API call has no event for a key function to read: key an API
    /// step's limit by tenant, globally or by a field of the request body.
    #[error(
        "an API step's limit cannot be keyed by LimitKey::from_fn; use tenant, global or field"
    )]
    FunctionOnApiStep,
    /// The limit was set on a cron step, which runs once per fire anyway.
    #[error("cron steps cannot be limited: each fire runs once")]
    CronStep,
    /// No limit of that name is declared on the step.
    #[error("step {step:?} declares no limit named {limit:?}")]
    UnknownLimit {
        /// The step.
        step: String,
        /// The limit asked for.
        limit: String,
    },
    /// A quota of one kind was given for a limit of the other.
    #[error("limit {limit:?} is a {declared} limit; a {given} quota cannot replace it")]
    KindMismatch {
        /// The limit.
        limit: String,
        /// Its declared kind.
        declared: &'static str,
        /// The kind given.
        given: &'static str,
    },
    /// A key is empty, too long or holds a control character.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A key function yielded no usable key for an event: the delivery
/// dead-letters with this error, since no retry would change the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The payload has no such field.
    #[error("the payload has no field {0:?} to key the limit by")]
    MissingField(String),
    /// The field is not a string or an integer.
    #[error("the payload field {0:?} is neither a string nor an integer")]
    NotAKey(String),
    /// The payload is not JSON an object field can be read from.
    #[error("the payload is not a JSON object: {0}")]
    Payload(String),
    /// The key is empty, longer than [`MAX_LIMIT_KEY_LEN`] bytes, or holds a
    /// control character.
    #[error("invalid limit key {0:?}: must be 1 to 256 bytes with no control characters")]
    Invalid(String),
    /// A key function of the host's refused the event.
    #[error("the limit's key function failed: {0}")]
    Function(String),
}

/// Checks a key a function yielded.
pub(crate) fn validate_key(key: String) -> Result<String, KeyError> {
    if key.is_empty() || key.len() > MAX_LIMIT_KEY_LEN || key.chars().any(char::is_control) {
        return Err(KeyError::Invalid(key.chars().take(80).collect()));
    }
    Ok(key)
}

type KeyFn = dyn Fn(&Envelope) -> Result<String, String> + Send + Sync;

/// What a limit counts by: the event's tenant (the default), one key for
/// everything, a payload field, or a function of the event.
///
/// ```
/// use flowline::flow_control::LimitKey;
/// let per_store = LimitKey::tenant();
/// let per_account = LimitKey::field("account");
/// let per_region = LimitKey::from_fn(|event| Ok(event.header("region").unwrap_or("eu").to_string()));
/// # let _ = (per_store, per_account, per_region, LimitKey::global());
/// ```
#[derive(Clone)]
pub struct LimitKey(KeyOf);

#[derive(Clone)]
enum KeyOf {
    Tenant,
    Global,
    Field(Arc<str>),
    Function(Arc<KeyFn>),
}

impl fmt::Debug for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyOf::Tenant => f.write_str("LimitKey::tenant()"),
            KeyOf::Global => f.write_str("LimitKey::global()"),
            KeyOf::Field(name) => write!(f, "LimitKey::field({name:?})"),
            KeyOf::Function(_) => f.write_str("LimitKey::from_fn(..)"),
        }
    }
}

impl Default for LimitKey {
    fn default() -> Self {
        LimitKey::tenant()
    }
}

impl LimitKey {
    /// One budget per tenant (the default).
    pub fn tenant() -> Self {
        LimitKey(KeyOf::Tenant)
    }

    /// One budget for every event, across tenants (say, a partner API's own
    /// rate limit).
    pub fn global() -> Self {
        LimitKey(KeyOf::Global)
    }

    /// One budget per value of a payload field: a top-level field by name, or
    /// any field by JSON pointer (`"/payment/account"`). The value must be a
    /// string or an integer; an event without it dead-letters.
    pub fn field(name: impl Into<String>) -> Self {
        LimitKey(KeyOf::Field(Arc::from(name.into())))
    }

    /// One budget per key that `f` returns for the event; an `Err` (or an
    /// invalid key) dead-letters the event with that message.
    pub fn from_fn(
        f: impl Fn(&Envelope) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        LimitKey(KeyOf::Function(Arc::new(f)))
    }

    pub(crate) fn is_function(&self) -> bool {
        matches!(self.0, KeyOf::Function(_))
    }

    /// The key of an event.
    pub(crate) fn of_event<'e>(&self, event: &'e Envelope) -> Result<Cow<'e, str>, KeyError> {
        match &self.0 {
            KeyOf::Tenant => Ok(Cow::Borrowed(event.tenant.as_str())),
            KeyOf::Global => Ok(Cow::Borrowed(GLOBAL_KEY)),
            KeyOf::Field(name) => {
                let payload: serde_json::Value = event
                    .payload
                    .decode()
                    .map_err(|e| KeyError::Payload(e.to_string()))?;
                field_key(&payload, name).map(Cow::Owned)
            }
            KeyOf::Function(f) => f(event)
                .map_err(KeyError::Function)
                .and_then(validate_key)
                .map(Cow::Owned),
        }
    }

    /// The key of an API call: by tenant, globally, or by a field of its body.
    pub(crate) fn of_call(
        &self,
        tenant: &TenantId,
        body: &serde_json::Value,
    ) -> Result<String, KeyError> {
        match &self.0 {
            KeyOf::Tenant => Ok(tenant.as_str().to_string()),
            KeyOf::Global => Ok(GLOBAL_KEY.to_string()),
            KeyOf::Field(name) => field_key(body, name),
            // Refused at build (`LimitError::FunctionOnApiStep`).
            KeyOf::Function(_) => Err(KeyError::Function(
                "an API step's limit cannot be keyed by a function of an event".into(),
            )),
        }
    }
}

/// The key [`LimitKey::global`] counts everything under.
const GLOBAL_KEY: &str = "*";

fn field_key(payload: &serde_json::Value, name: &str) -> Result<String, KeyError> {
    let value = if name.starts_with('/') {
        payload.pointer(name)
    } else {
        payload.get(name)
    };
    match value {
        None | Some(serde_json::Value::Null) => Err(KeyError::MissingField(name.to_string())),
        Some(serde_json::Value::String(s)) => validate_key(s.clone()),
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
            validate_key(n.to_string())
        }
        Some(_) => Err(KeyError::NotAKey(name.to_string())),
    }
}

/// A limit declared on a step: a quota per key, under a name that
/// [`Engine::set_limit`](crate::Engine::set_limit) addresses it by.
///
/// ```
/// use std::time::Duration;
/// use flowline::flow_control::{Limit, LimitKey};
///
/// // 10 a second per store, up to 20 at once.
/// let intake = Limit::rate(10, Duration::from_secs(1)).burst(20).named("intake");
/// // At most 2 charges in flight per payment account.
/// let charges = Limit::concurrency(2).per(LimitKey::field("account"));
/// # let _ = (intake, charges);
/// ```
#[derive(Clone, Debug)]
pub struct Limit {
    pub(crate) name: String,
    pub(crate) quota: Quota,
    pub(crate) key: LimitKey,
    burst_on_concurrency: bool,
}

impl Limit {
    /// At most `count` per `period` per key, evenly spaced; named `"rate"`.
    pub fn rate(count: u32, period: Duration) -> Self {
        Limit {
            name: "rate".into(),
            quota: Quota::rate(count, period),
            key: LimitKey::tenant(),
            burst_on_concurrency: false,
        }
    }

    /// At most `max` in flight per key; named `"concurrency"`.
    pub fn concurrency(max: u32) -> Self {
        Limit {
            name: "concurrency".into(),
            quota: Quota::concurrency(max),
            key: LimitKey::tenant(),
            burst_on_concurrency: false,
        }
    }

    /// Lets up to `burst` start at once (rate limits; default 1).
    pub fn burst(mut self, burst: u32) -> Self {
        match &mut self.quota {
            Quota::Rate { burst: b, .. } => *b = burst,
            Quota::Concurrency { .. } => self.burst_on_concurrency = true,
        }
        self
    }

    /// Counts by `key` instead of by tenant.
    pub fn per(mut self, key: LimitKey) -> Self {
        self.key = key;
        self
    }

    /// Names the limit (1 to 64 lowercase letters, digits, `-` and `_`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub(crate) fn validate(&self) -> Result<(), LimitError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err(LimitError::InvalidName(self.name.clone()));
        }
        if self.burst_on_concurrency {
            return Err(LimitError::BurstWithoutRate);
        }
        self.quota.validate()
    }
}

/// `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_quotas_are_typed_errors() {
        let second = Duration::from_secs(1);
        assert_eq!(
            Quota::rate(0, second).validate(),
            Err(LimitError::ZeroCount)
        );
        assert!(matches!(
            Quota::rate(1, Duration::ZERO).validate(),
            Err(LimitError::PeriodTooShort(_))
        ));
        assert_eq!(
            Limit::rate(1, second).burst(0).validate(),
            Err(LimitError::ZeroBurst)
        );
        assert_eq!(
            Limit::concurrency(2).burst(3).validate(),
            Err(LimitError::BurstWithoutRate)
        );
        assert_eq!(
            Quota::concurrency(0).validate(),
            Err(LimitError::ZeroConcurrency)
        );
        assert!(Limit::rate(1, second).named("Bad Name").validate().is_err());
        assert!(Limit::rate(5, second)
            .burst(10)
            .named("intake")
            .validate()
            .is_ok());
    }

    #[test]
    fn field_keys_take_strings_and_integers_only() {
        let body = serde_json::json!({"account": "acc-1", "n": 42, "f": 1.5, "deep": {"k": "v"}});
        assert_eq!(field_key(&body, "account").unwrap(), "acc-1");
        assert_eq!(field_key(&body, "n").unwrap(), "42");
        assert_eq!(field_key(&body, "/deep/k").unwrap(), "v");
        assert_eq!(field_key(&body, "f"), Err(KeyError::NotAKey("f".into())));
        assert_eq!(
            field_key(&body, "missing"),
            Err(KeyError::MissingField("missing".into()))
        );
        let bad = serde_json::json!({"account": "a\u{7}b"});
        assert!(matches!(
            field_key(&bad, "account"),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn quotas_round_trip_as_camel_case_json() {
        let rate = Quota::Rate {
            count: 5,
            period: Duration::from_secs(2),
            burst: 3,
        };
        let json = serde_json::to_value(rate).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "rate", "count": 5, "periodMs": 2000, "burst": 3})
        );
        assert_eq!(serde_json::from_value::<Quota>(json).unwrap(), rate);
    }
}
