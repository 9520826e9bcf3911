//! What a key is made of: a public id to find its record by, and 256 random
//! bits that only a SHA-256 digest of is ever stored.
//!
//! A key reads `flk_<id>_<secret>`: `id` is 16 lowercase hex digits (64
//! random bits), `secret` 43 characters of URL-safe base64 (32 random bytes
//! from the operating system's generator). Why SHA-256 and not a password
//! hash (argon2, bcrypt, scrypt): those are slow on purpose, to make
//! guessing a *low-entropy* secret from a stolen hash expensive. A key's
//! secret is 256 random bits; no amount of guessing finds it, slow hash or
//! fast, so a slow hash would only add milliseconds to every request. A
//! stolen table of digests gives nothing to present: the digest is not the
//! key. The digest is compared in constant time (`subtle`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so that a leaked one is easy to recognise
/// (secret scanners match on such prefixes).
const PREFIX: &str = "flk_";
const ID_HEX: usize = 16;
const SECRET_BYTES: usize = 32;
/// The secret's length in URL-safe base64 without padding.
const SECRET_CHARS: usize = 43;

/// A key as handed out once: its id, the whole key, its digest.
pub(super) struct Minted {
    pub id: String,
    pub key: String,
    pub digest: [u8; 32],
}

/// A new key from the operating system's random generator.
pub(super) fn mint() -> Result<Minted, rand::rand_core::OsError> {
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.try_fill_bytes(&mut id)?;
    OsRng.try_fill_bytes(&mut secret)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    Ok(Minted {
        key: format!("{PREFIX}{id}_{secret}"),
        digest: digest(&secret),
        id,
    })
}

/// A presented key, split into its id and secret; `None` if it does not
/// have a key's shape (then it is simply not a key: `401`).
pub(super) fn split(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    // `_` is in base64's URL-safe alphabet, so the secret is the rest.
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (is_id(id) && secret_ok).then_some((id, secret))
}

/// Whether `id` has a key id's shape: 16 lowercase hex digits.
pub(super) fn is_id(id: &str) -> bool {
    id.len() == ID_HEX && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The digest stored for a secret.
pub(super) fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` is the one `stored` is the digest of, in time that does
/// not depend on where they differ.
pub(super) fn matches(secret: &str, stored: &[u8; 32]) -> bool {
    digest(secret).ct_eq(stored).into()
}

/// A digest as stored: lowercase hex.
pub(super) fn to_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored digest back to bytes; `None` if the record was tampered with.
pub(super) fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_splits_back_and_matches_only_its_digest() {
        let minted = mint().unwrap();
        assert!(minted.key.starts_with(PREFIX));
        let (id, secret) = split(&minted.key).unwrap();
        assert_eq!(id, minted.id);
        assert!(matches(secret, &minted.digest));
        let other = mint().unwrap();
        let (_, other_secret) = split(&other.key).unwrap();
        assert!(!matches(other_secret, &minted.digest));
        assert_eq!(from_hex(&to_hex(&minted.digest)), Some(minted.digest));
    }

    #[test]
    fn what_is_not_shaped_like_a_key_does_not_split() {
        let minted = mint().unwrap();
        for bad in [
            "",
            "flk_",
            "Bearer x",
            &minted.key[..minted.key.len() - 1],
            &minted.key.replace(PREFIX, "flx_"),
            &format!("{}=", minted.key),
            &minted.key.to_uppercase(),
            "flk_0123456789abcdef_ééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}
