//! Delivery attempts counted per endpoint and outcome, in this process's
//! memory, for an operator's metrics (the delivery log keeps each attempt;
//! these counts are what a scrape can afford to read).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::event::TenantId;

/// Endpoints one process counts on their own; attempts to later ones count
/// together (an endpoint of `None`).
pub const ENDPOINTS_COUNTED: usize = 1_000;

/// What one attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// The endpoint answered something else (4xx, 5xx, a redirect).
    Rejected,
    /// No answer: the connection failed or the attempt timed out.
    Unreachable,
    /// The destination guard refused the address; nothing was sent.
    Refused,
    /// The message was given up on after this attempt.
    GaveUp,
}

impl DeliveryOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [DeliveryOutcome; 5] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Rejected,
        DeliveryOutcome::Unreachable,
        DeliveryOutcome::Refused,
        DeliveryOutcome::GaveUp,
    ];

    /// The outcome's name, as a metric label: `delivered`, `rejected`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Rejected => "rejected",
            DeliveryOutcome::Unreachable => "unreachable",
            DeliveryOutcome::Refused => "refused",
            DeliveryOutcome::GaveUp => "gave_up",
        }
    }
}

/// Attempts to one endpoint by outcome, from [`Webhooks::delivery_counts`](super::Webhooks::delivery_counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointDeliveries {
    /// The endpoint's tenant and id; `None` for the endpoints past
    /// [`ENDPOINTS_COUNTED`], together.
    pub endpoint: Option<(TenantId, String)>,
    /// Attempts by outcome, in [`DeliveryOutcome::ALL`] order, zeros left out.
    pub outcomes: Vec<(DeliveryOutcome, u64)>,
}

/// The counts.
#[derive(Debug, Default)]
pub(super) struct DeliveryStats {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_endpoint: HashMap<(TenantId, String), [u64; 5]>,
    other: [u64; 5],
}

impl DeliveryStats {
    /// Counts one attempt to `endpoint` of `tenant`.
    pub(super) fn add(&self, tenant: &TenantId, endpoint: &str, outcome: DeliveryOutcome) {
        let slot = DeliveryOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let Counts { by_endpoint, other } = &mut *counts;
        let key = (tenant.clone(), endpoint.to_string());
        if let Some(row) = by_endpoint.get_mut(&key) {
            row[slot] += 1;
        } else if by_endpoint.len() < ENDPOINTS_COUNTED {
            let mut row = [0; 5];
            row[slot] = 1;
            by_endpoint.insert(key, row);
        } else {
            other[slot] += 1;
        }
    }

    /// Every endpoint's counts, ordered by tenant and endpoint id, the
    /// endpoints past the cap last.
    pub(super) fn snapshot(&self) -> Vec<EndpointDeliveries> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let outcomes = |row: &[u64; 5]| {
            DeliveryOutcome::ALL
                .iter()
                .zip(row)
                .filter(|(_, n)| **n > 0)
                .map(|(o, n)| (*o, *n))
                .collect()
        };
        let mut all: Vec<EndpointDeliveries> = counts
            .by_endpoint
            .iter()
            .map(|(key, row)| EndpointDeliveries {
                endpoint: Some(key.clone()),
                outcomes: outcomes(row),
            })
            .collect();
        all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        if counts.other.iter().any(|n| *n > 0) {
            all.push(EndpointDeliveries {
                endpoint: None,
                outcomes: outcomes(&counts.other),
            });
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_per_endpoint_and_outcome_up_to_the_cap() {
        let stats = DeliveryStats::default();
        let shop = TenantId::new("shop").expect("valid tenant");
        stats.add(&shop, "ep_b", DeliveryOutcome::Delivered);
        stats.add(&shop, "ep_a", DeliveryOutcome::Rejected);
        stats.add(&shop, "ep_a", DeliveryOutcome::Rejected);
        stats.add(&shop, "ep_a", DeliveryOutcome::GaveUp);
        for n in 0..ENDPOINTS_COUNTED {
            stats.add(&shop, &format!("ep_x{n:04}"), DeliveryOutcome::Unreachable);
        }
        let all = stats.snapshot();
        assert_eq!(all.len(), ENDPOINTS_COUNTED + 1);
        assert_eq!(
            all[0].outcomes,
            [(DeliveryOutcome::Rejected, 2), (DeliveryOutcome::GaveUp, 1)]
        );
        let other = all.last().expect("the other bucket");
        assert_eq!(other.endpoint, None);
        assert_eq!(other.outcomes, [(DeliveryOutcome::Unreachable, 2)]);
    }
}
