//! What a delivery looks like on the wire: its subject and its JSON body.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Outgoing;
use crate::event::{Envelope, StepName, TenantId};
use crate::time::Timestamp;

/// The body of a delivery message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) key: Arc<str>,
    pub(super) step: StepName,
    pub(super) event: Arc<Envelope>,
    pub(super) attempt: u32,
    pub(super) first_attempt_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_error: Option<String>,
}

impl Body {
    pub(super) fn of(m: Outgoing) -> Self {
        Body {
            key: m.key,
            step: m.step,
            event: m.event,
            attempt: m.attempt,
            first_attempt_at: m.first_attempt_at,
            last_error: m.last_error,
        }
    }
}

/// A step name or tenant id as one subject token. Both allow only
/// `A-Z a-z 0-9 - _ .`; a subject splits on `.`, so it becomes `~`, which
/// neither allows (the mapping is one to one).
pub(super) fn token(name: &str) -> String {
    name.replace('.', "~")
}

/// The subject of `step`'s deliveries for `tenant`.
pub(super) fn delivery_subject(prefix: &str, step: &StepName, tenant: &TenantId) -> String {
    format!(
        "{prefix}.d.{}.{}",
        token(step.as_str()),
        token(tenant.as_str())
    )
}

/// What a step's consumer takes: every tenant's deliveries of the step.
pub(super) fn step_filter(prefix: &str, step: &StepName) -> String {
    format!("{prefix}.d.{}.*", token(step.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_stay_one_token_and_distinct() {
        let step = StepName::new("orders.reserve").unwrap();
        let tenant = TenantId::new("store.eu-1").unwrap();
        assert_eq!(
            delivery_subject("fl", &step, &tenant),
            "fl.d.orders~reserve.store~eu-1"
        );
        assert_eq!(step_filter("fl", &step), "fl.d.orders~reserve.*");
        assert_ne!(token("a.b"), token("a_b"));
    }
}
