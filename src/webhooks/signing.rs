//! Signatures per the [Standard Webhooks] specification: an endpoint's
//! secret is `whsec_` and the base64 of 24 to 64 random bytes; a message is
//! signed as HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, sent
//! as `v1,<base64>` in `webhook-signature`, several separated by spaces
//! while a rotated secret's overlap lasts.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/
//!
//! ```
//! use flowline::webhooks::{verify, WebhookSecret, Signed};
//! let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let body = br#"{"test": 2432232314}"#;
//! let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
//! assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
//! let signed = Signed { id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signatures: &signature };
//! verify(&[secret], &signed, body, 1614265330)?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::Sha256;

/// What a secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest random bytes a secret may hold.
pub const MIN_SECRET_BYTES: usize = 24;
/// The most random bytes a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a receiver lets a timestamp be from its clock: five minutes.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// The secret an endpoint's messages are signed with.
///
/// Its `Debug` never shows it; [`WebhookSecret::expose`] does, for the one
/// time it is handed to the endpoint's owner.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a secret, or a signed message, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not `whsec_` followed by base64.
    #[error("a webhook secret is `whsec_` followed by base64")]
    MalformedSecret,
    /// Fewer than 24 or more than 64 bytes.
    #[error("a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {0}")]
    SecretSize(usize),
    /// The operating system's random generator failed.
    #[error("no random bits for a secret: {0}")]
    Random(String),
    /// The `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not a number of seconds")]
    MalformedTimestamp,
    /// The timestamp is more than five minutes away from now: a replay, or
    /// a clock far off.
    #[error("webhook-timestamp is {0} s away from now; at most 300 s is accepted")]
    StaleTimestamp(i64),
    /// No `v1` signature matched any secret.
    #[error("no signature matches")]
    NoMatch,
}

impl WebhookSecret {
    /// A new secret of 32 bytes from the operating system's generator.
    ///
    /// # Errors
    /// [`SignatureError::Random`] if the generator failed.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut key = vec![0u8; 32];
        OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| SignatureError::Random(e.to_string()))?;
        Ok(WebhookSecret { key })
    }

    /// Reads `whsec_<base64>`.
    ///
    /// # Errors
    /// [`SignatureError::MalformedSecret`] or [`SignatureError::SecretSize`].
    pub fn parse(secret: &str) -> Result<Self, SignatureError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SignatureError::MalformedSecret)?;
        // Checked before decoding, so that an enormous string costs nothing.
        if encoded.len() > MAX_SECRET_BYTES.div_ceil(3) * 4 {
            return Err(SignatureError::SecretSize(encoded.len() / 4 * 3));
        }
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SignatureError::MalformedSecret)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SignatureError::SecretSize(key.len()));
        }
        Ok(WebhookSecret { key })
    }

    /// The secret as `whsec_<base64>`: for its owner, once.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.keyed(id, &timestamp.to_string(), body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The HMAC of a message, not finalized yet.
    fn keyed(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header: one `v1,…` per secret, by spaces.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A received message's three headers, as they came.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-timestamp`.
    pub timestamp: &'a str,
    /// `webhook-signature`.
    pub signatures: &'a str,
}

/// Checks a received message: its timestamp within five minutes of `now`
/// (seconds since the epoch), and one of its `v1` signatures made by one of
/// `secrets`, compared in constant time.
///
/// # Errors
/// [`SignatureError::MalformedTimestamp`], [`SignatureError::StaleTimestamp`]
/// or [`SignatureError::NoMatch`].
pub fn verify(
    secrets: &[WebhookSecret],
    signed: &Signed<'_>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let timestamp: i64 = signed
        .timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::MalformedTimestamp)?;
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::StaleTimestamp(skew));
    }
    let given: Vec<Vec<u8>> = signed
        .signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    for secret in secrets {
        let mac = secret.keyed(signed.id, signed.timestamp.trim(), body);
        // `verify_slice` compares in constant time.
        if given
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}
