//! Shipping: the [`Carrier`] trait the delivery step books parcels through, and
//! [`MockCarrier`], a seeded stand-in whose delivery attempts sometimes fail.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::dice;
use crate::event::TenantId;

/// A parcel to ship.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The store (tenant).
    pub store: TenantId,
    /// The order.
    pub order_id: String,
}

/// A shipping label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The carrier's tracking number.
    pub tracking_number: String,
    /// The carrier's name.
    pub carrier: String,
}

/// The carrier could not do it now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CarrierError {
    /// The carrier's system is down; try again later.
    #[error("the carrier is unavailable")]
    Unavailable,
    /// The carrier will not take this parcel (e.g. an address it does not
    /// serve): final for this order.
    #[error("the carrier refused the parcel: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
}

impl CarrierError {
    /// Worth trying again later (the carrier is down); a refusal is final.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CarrierError::Unavailable)
    }
}

/// Where parcels are booked and delivered. Implement it over your carrier's API.
#[async_trait]
pub trait Carrier: Send + Sync + 'static {
    /// Books a parcel; booking the same shipment again returns the same label.
    async fn create_label(&self, shipment: &Shipment) -> Result<Label, CarrierError>;

    /// Tries to deliver: `Ok(true)` delivered, `Ok(false)` nobody home (the
    /// attempt failed and may be retried).
    async fn attempt_delivery(
        &self,
        tracking_number: &str,
        attempt: u32,
    ) -> Result<bool, CarrierError>;
}

/// A seeded stand-in carrier ("Motia Express", tracking numbers `MOT-…`).
///
/// ```
/// use flowline::orderflow::MockCarrier;
/// let carrier = MockCarrier::new(7).failed_attempt_rate(0.2);
/// # let _ = carrier;
/// ```
#[derive(Clone, Debug)]
pub struct MockCarrier {
    seed: u64,
    failed_attempt_rate: f64,
    refusal_rate: f64,
}

impl MockCarrier {
    /// A carrier that always delivers at the first attempt.
    pub fn new(seed: u64) -> Self {
        MockCarrier {
            seed,
            failed_attempt_rate: 0.0,
            refusal_rate: 0.0,
        }
    }

    /// The share of shipments the carrier refuses to book (clamped to 0..=1).
    pub fn refusal_rate(mut self, rate: f64) -> Self {
        self.refusal_rate = share(rate);
        self
    }

    /// The share of delivery attempts that fail (clamped to 0..=1).
    pub fn failed_attempt_rate(mut self, rate: f64) -> Self {
        self.failed_attempt_rate = share(rate);
        self
    }
}

/// A rate as a share in 0..=1 (NaN: none).
fn share(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

#[async_trait]
impl Carrier for MockCarrier {
    async fn create_label(&self, shipment: &Shipment) -> Result<Label, CarrierError> {
        let parts = [
            shipment.store.as_str().as_bytes(),
            shipment.order_id.as_bytes(),
            b"refuse",
        ];
        if dice::roll(self.seed, &parts) < self.refusal_rate {
            return Err(CarrierError::Refused {
                reason: "address not served".into(),
            });
        }
        let number = dice::hash(
            self.seed,
            &[
                shipment.store.as_str().as_bytes(),
                shipment.order_id.as_bytes(),
            ],
        );
        Ok(Label {
            tracking_number: format!("MOT-{:010}", number % 10_000_000_000),
            carrier: "Motia Express".to_string(),
        })
    }

    async fn attempt_delivery(
        &self,
        tracking_number: &str,
        attempt: u32,
    ) -> Result<bool, CarrierError> {
        let roll = dice::roll(
            self.seed,
            &[tracking_number.as_bytes(), &attempt.to_le_bytes()],
        );
        Ok(roll >= self.failed_attempt_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn labels_are_stable_per_shipment() {
        let carrier = MockCarrier::new(1);
        let shipment = Shipment {
            store: TenantId::new("Y").unwrap(),
            order_id: "o-1".into(),
        };
        let label = carrier.create_label(&shipment).await.unwrap();
        assert_eq!(label, carrier.create_label(&shipment).await.unwrap());
        assert!(label.tracking_number.starts_with("MOT-"));
        let other = Shipment {
            store: TenantId::new("Z").unwrap(),
            order_id: "o-1".into(),
        };
        assert_ne!(label, carrier.create_label(&other).await.unwrap());
    }

    #[tokio::test]
    async fn attempts_fail_at_the_configured_rate() {
        let always = MockCarrier::new(1);
        assert!(always.attempt_delivery("MOT-1", 1).await.unwrap());
        let never = MockCarrier::new(1).failed_attempt_rate(1.0);
        assert!(!never.attempt_delivery("MOT-1", 1).await.unwrap());
        let some = MockCarrier::new(3).failed_attempt_rate(0.25);
        let mut failed = 0;
        for n in 0..2_000 {
            if !some.attempt_delivery(&format!("MOT-{n}"), 1).await.unwrap() {
                failed += 1;
            }
        }
        assert!((400..600).contains(&failed), "{failed}");
    }
}
