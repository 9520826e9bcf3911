//! Where the webhooks' records live in a tenant's state: its endpoints,
//! each endpoint's failing stretch, and (in `log.rs`) its delivery log.

use super::log::ROOT;

/// The most endpoints one tenant may register.
pub const MAX_ENDPOINTS: usize = 50;

/// Where a tenant's endpoints are kept.
pub(super) fn endpoints_prefix() -> String {
    format!("{ROOT}endpoint/")
}

/// An endpoint's record.
pub(super) fn endpoint_key(id: &str) -> String {
    format!("{}{id}", endpoints_prefix())
}

/// `ep_` and 16 lowercase hex digits.
pub(super) fn is_endpoint_id(id: &str) -> bool {
    id.strip_prefix("ep_").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Where an endpoint's failing stretch is kept.
pub(super) fn health_key(id: &str) -> String {
    format!("{}health/{id}", ROOT)
}
