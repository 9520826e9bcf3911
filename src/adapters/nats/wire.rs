//! What deliveries look like on the wire: a message's subject, its id and its
//! JSON body.
//!
//! One message carries the deliveries of one step that one relay pass sent (a
//! *parcel*), as a JSON array of [`Body`]s, so the server stores, hands out
//! and forgets one message where it would handle hundreds. A message whose
//! body is a single JSON object is one delivery, as earlier versions sent
//! them; both are read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A parcel ready to publish.
#[derive(Debug)]
pub(super) struct Parcel {
    /// `<prefix>.d.<step>.<tenant>`, or `<prefix>.d.<step>.+` when it holds
    /// deliveries of more than one tenant (`+` is in no tenant's token).
    pub(super) subject: String,
    /// Its `Nats-Msg-Id`: the one delivery's key, or a SHA-256 digest of all
    /// of them. A relay that sends the same deliveries again after a crash
    /// packs them the same way if it claimed them the same way, and the server
    /// drops the copy; packed otherwise, the copy is delivered and the store's
    /// markers make each of its deliveries apply nothing.
    pub(super) id: String,
    /// How many deliveries it holds.
    pub(super) parts: usize,
    pub(super) payload: Vec<u8>,
}

/// Packs `messages` into parcels: one per step (in the order the steps first
/// appear), split where a payload would pass `max_bytes`. A delivery larger
/// than `max_bytes` travels alone (and the server refuses it, as it would).
pub(super) fn pack(
    prefix: &str,
    messages: Vec<Outgoing>,
    max_bytes: usize,
) -> Result<Vec<Parcel>, serde_json::Error> {
    let mut by_step: Vec<(StepName, Vec<Outgoing>)> = Vec::new();
    for m in messages {
        match by_step.iter_mut().find(|(step, _)| *step == m.step) {
            Some((_, list)) => list.push(m),
            None => by_step.push((m.step.clone(), vec![m])),
        }
    }
    let mut parcels = Vec::new();
    for (step, list) in by_step {
        let mut open = Packing::default();
        for m in list {
            let part = (m.key.clone(), m.event.tenant.clone());
            let body = serde_json::to_vec(&Body::of(m))?;
            // The payload with this body: a separator before it, `]` after.
            if !open.parts.is_empty() && open.payload.len() + body.len() + 2 > max_bytes {
                parcels.push(std::mem::take(&mut open).seal(prefix, &step));
            }
            open.push(part, &body);
        }
        if !open.parts.is_empty() {
            parcels.push(open.seal(prefix, &step));
        }
    }
    Ok(parcels)
}

/// The deliveries of a parcel being filled, with their keys and tenants.
#[derive(Default)]
struct Packing {
    parts: Vec<(Arc<str>, TenantId)>,
    payload: Vec<u8>,
}

impl Packing {
    fn push(&mut self, part: (Arc<str>, TenantId), body: &[u8]) {
        self.payload
            .push(if self.parts.is_empty() { b'[' } else { b',' });
        self.payload.extend_from_slice(body);
        self.parts.push(part);
    }

    fn seal(mut self, prefix: &str, step: &StepName) -> Parcel {
        self.payload.push(b']');
        let first = &self.parts[0].1;
        let subject = if self.parts.iter().all(|(_, t)| t == first) {
            delivery_subject(prefix, step, first)
        } else {
            format!("{prefix}.d.{}.+", token(step.as_str()))
        };
        let id = match self.parts.as_slice() {
            [(key, _)] => key.to_string(),
            parts => {
                let mut digest = Sha256::new();
                for (key, _) in parts {
                    digest.update(key.as_bytes());
                    digest.update(b"\n");
                }
                format!("p-{:x}", digest.finalize())
            }
        };
        Parcel {
            subject,
            id,
            parts: self.parts.len(),
            payload: self.payload,
        }
    }
}

/// A step name or tenant id as one subject token. Both allow only
/// `A-Z a-z 0-9 - _ .`; a subject splits on `.`, so it becomes `~`, which
/// neither allows (the mapping is one to one).
pub(super) fn token(name: &str) -> String {
    name.replace('.', "~")
}

/// Reads a message's deliveries: a parcel's, or the one of a message that an
/// earlier version sent alone.
pub(super) fn unpack(payload: &[u8]) -> Result<Vec<Body>, serde_json::Error> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(payload),
        _ => serde_json::from_slice(payload).map(|one| vec![one]),
    }
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

    fn outgoing(n: u64, step: &str, tenant: &str) -> Outgoing {
        let event = Arc::new(crate::event::build_envelope(
            Timestamp::from_millis(0),
            crate::event::Topic::new("work.job").unwrap(),
            TenantId::new(tenant).unwrap(),
            crate::event::TraceId::new(),
            None,
            crate::event::Payload::encode(&n).unwrap(),
            crate::event::EmitOptions::default(),
        ));
        Outgoing {
            key: Arc::from(format!("k{n}")),
            step: StepName::new(step).unwrap(),
            event,
            attempt: 1,
            first_attempt_at: Timestamp::from_millis(0),
            last_error: None,
        }
    }

    fn keys(bodies: &[Body]) -> Vec<&str> {
        bodies.iter().map(|b| b.key.as_ref()).collect()
    }

    #[test]
    fn a_step_s_deliveries_travel_as_one_parcel_and_read_back_in_order() {
        let sent = vec![
            outgoing(1, "a", "t1"),
            outgoing(2, "b", "t1"),
            outgoing(3, "a", "t2"),
        ];
        let parcels = pack("fl", sent, 1 << 20).unwrap();
        assert_eq!(parcels.len(), 2);
        assert_eq!(parcels[0].subject, "fl.d.a.+", "two tenants");
        assert_eq!(parcels[1].subject, "fl.d.b.t1");
        assert_eq!(parcels[0].parts, 2);
        assert_eq!(keys(&unpack(&parcels[0].payload).unwrap()), ["k1", "k3"]);
        assert!(parcels[0].id.starts_with("p-"), "{}", parcels[0].id);
        assert_eq!(parcels[1].id, "k2", "a parcel of one keeps its key");
        let again = pack(
            "fl",
            vec![outgoing(1, "a", "t1"), outgoing(3, "a", "t2")],
            1 << 20,
        );
        assert_eq!(
            again.unwrap()[0].id,
            parcels[0].id,
            "packed alike, named alike"
        );
    }

    #[test]
    fn a_parcel_splits_before_it_outgrows_the_limit() {
        let one = pack("fl", vec![outgoing(1, "a", "t")], usize::MAX).unwrap();
        let size = one[0].payload.len();
        let sent: Vec<_> = (0..5).map(|n| outgoing(n, "a", "t")).collect();
        // Room for two (each body is `size - 2` bytes, plus `[`, `,`, `]`).
        let parcels = pack("fl", sent, 2 * size).unwrap();
        let sizes: Vec<_> = parcels.iter().map(|p| p.parts).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(parcels.iter().all(|p| p.payload.len() <= 2 * size));
        let all: Vec<Body> = parcels
            .iter()
            .flat_map(|p| unpack(&p.payload).unwrap())
            .collect();
        assert_eq!(keys(&all), ["k0", "k1", "k2", "k3", "k4"]);
    }

    #[test]
    fn a_message_of_one_delivery_from_an_earlier_version_still_reads() {
        let body = serde_json::to_vec(&Body::of(outgoing(9, "a", "t"))).unwrap();
        assert_eq!(keys(&unpack(&body).unwrap()), ["k9"]);
        assert!(unpack(b"{not json").is_err());
    }
}
