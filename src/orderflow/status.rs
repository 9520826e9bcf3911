//! The order and delivery state machines: a move that is not allowed is an
//! error, never a silent overwrite (the seed's last-writer-wins, SEED_SPEC §8.4).

use serde::{Deserialize, Serialize};

/// A move between two states that the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal {machine} transition: {from} -> {to}")]
pub struct IllegalTransition {
    /// Which state machine ("order" or "delivery").
    pub machine: &'static str,
    /// The current state.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// Where an order is in its lifecycle.
///
/// ```text
/// pending ──► flagged ──► (released) reserved | failed | rejected
///    │
///    ├──► reserved ──► paid ──► fulfilled ──► shipped ──► delivered
///    │        │          │                        └──► returned
///    │        └► failed  └► failed (refunded)
///    └──► failed (out of stock)        any non-terminal ──► cancelled
/// ```
///
/// ```
/// use flowline::orderflow::OrderStatus;
/// let paid = OrderStatus::Reserved.transition(OrderStatus::Paid)?;
/// assert!(paid.transition(OrderStatus::Pending).is_err());
/// # Ok::<(), flowline::orderflow::IllegalTransition>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OrderStatus {
    /// Accepted, waiting for fraud screening or stock.
    Pending,
    /// Held by fraud screening until a review releases or rejects it.
    Flagged,
    /// Every line's stock is reserved; waiting for payment.
    Reserved,
    /// The charge was captured.
    Paid,
    /// Picked, packed and ready to ship.
    Fulfilled,
    /// Handed to the carrier.
    Shipped,
    /// Delivered to the customer (terminal).
    Delivered,
    /// Sent back after failed delivery attempts (terminal).
    Returned,
    /// Out of stock, declined or failed in fulfilment; stock released and any
    /// charge refunded (terminal).
    Failed,
    /// Rejected by fraud review (terminal).
    Rejected,
    /// Cancelled before shipping (terminal).
    Cancelled,
}

impl OrderStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [OrderStatus; 11] = [
        OrderStatus::Pending,
        OrderStatus::Flagged,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Returned,
        OrderStatus::Failed,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    /// The status as it is stored and shown (`"pending"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Flagged => "flagged",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Returned => "returned",
            OrderStatus::Failed => "failed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// No move leads out of it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Delivered
                | OrderStatus::Returned
                | OrderStatus::Failed
                | OrderStatus::Rejected
                | OrderStatus::Cancelled
        )
    }

    /// Whether the state machine allows moving from `self` to `next`.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        if next == Cancelled {
            // Cancelling is allowed until the parcel has left.
            return matches!(self, Pending | Flagged | Reserved | Paid | Fulfilled);
        }
        matches!(
            (self, next),
            (Pending, Flagged | Reserved | Failed)
                | (Flagged, Reserved | Failed | Rejected)
                | (Reserved, Paid | Failed)
                | (Paid, Fulfilled | Failed)
                | (Fulfilled, Shipped)
                | (Shipped, Delivered | Returned)
        )
    }

    /// Moves to `next` if the state machine allows it.
    ///
    /// # Errors
    /// [`IllegalTransition`] naming both states.
    pub fn transition(self, next: OrderStatus) -> Result<OrderStatus, IllegalTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                machine: "order",
                from: self.as_str(),
                to: next.as_str(),
            })
        }
    }

    /// How the seed's dashboard groups it: `completed`, `failed`, `pending` or
    /// `processing` (SEED_SPEC §2.3).
    pub fn display_group(self) -> &'static str {
        match self {
            OrderStatus::Delivered => "completed",
            OrderStatus::Failed
            | OrderStatus::Rejected
            | OrderStatus::Cancelled
            | OrderStatus::Returned => "failed",
            OrderStatus::Pending => "pending",
            _ => "processing",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a parcel is.
///
/// ```text
/// label_created ──► shipped ──► in_transit ──► out_for_delivery ──► delivered
///                                                   │      ▲
///                                                   ▼      │ (retry)
///                                             attempt_failed ──► returned
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// The carrier issued a label and a tracking number.
    LabelCreated,
    /// The carrier picked the parcel up.
    Shipped,
    /// On its way.
    InTransit,
    /// With the courier for delivery today.
    OutForDelivery,
    /// A delivery attempt failed; it will be retried or returned.
    AttemptFailed,
    /// Delivered (terminal).
    Delivered,
    /// Sent back to the store (terminal).
    Returned,
}

impl DeliveryStatus {
    /// The status as it is stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::LabelCreated => "label_created",
            DeliveryStatus::Shipped => "shipped",
            DeliveryStatus::InTransit => "in_transit",
            DeliveryStatus::OutForDelivery => "out_for_delivery",
            DeliveryStatus::AttemptFailed => "attempt_failed",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Returned => "returned",
        }
    }

    /// No move leads out of it.
    pub fn is_terminal(self) -> bool {
        matches!(self, DeliveryStatus::Delivered | DeliveryStatus::Returned)
    }

    /// Whether the state machine allows moving from `self` to `next`.
    pub fn can_become(self, next: DeliveryStatus) -> bool {
        use DeliveryStatus::*;
        matches!(
            (self, next),
            (LabelCreated, Shipped)
                | (Shipped, InTransit)
                | (InTransit, OutForDelivery)
                | (OutForDelivery, Delivered | AttemptFailed)
                | (AttemptFailed, OutForDelivery | Returned)
        )
    }

    /// Moves to `next` if the state machine allows it.
    ///
    /// # Errors
    /// [`IllegalTransition`] naming both states.
    pub fn transition(self, next: DeliveryStatus) -> Result<DeliveryStatus, IllegalTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                machine: "delivery",
                from: self.as_str(),
                to: next.as_str(),
            })
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_legal_and_ends_terminal() {
        let path = [
            OrderStatus::Pending,
            OrderStatus::Reserved,
            OrderStatus::Paid,
            OrderStatus::Fulfilled,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ];
        let mut status = path[0];
        for next in &path[1..] {
            status = status.transition(*next).unwrap();
        }
        assert!(status.is_terminal());
    }

    #[test]
    fn terminal_statuses_have_no_way_out() {
        for from in OrderStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in OrderStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_seeds_races_are_refused() {
        // A late payment retry must not resurrect a failed order (§8.4), and
        // fraud must not flag an order that has already been paid.
        let err = OrderStatus::Failed
            .transition(OrderStatus::Paid)
            .unwrap_err();
        assert_eq!(err.to_string(), "illegal order transition: failed -> paid");
        assert!(OrderStatus::Paid.transition(OrderStatus::Flagged).is_err());
        assert!(OrderStatus::Pending.transition(OrderStatus::Paid).is_err());
        assert!(OrderStatus::Shipped
            .transition(OrderStatus::Cancelled)
            .is_err());
    }

    #[test]
    fn every_non_terminal_status_leads_somewhere() {
        for from in OrderStatus::ALL.iter().filter(|s| !s.is_terminal()) {
            assert!(
                OrderStatus::ALL.iter().any(|to| from.can_become(*to)),
                "{from} is a dead end"
            );
        }
    }

    #[test]
    fn statuses_serialize_as_their_names() {
        for status in OrderStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
    }

    #[test]
    fn a_failed_delivery_attempt_is_retried_or_returned() {
        use DeliveryStatus::*;
        let retried = OutForDelivery
            .transition(AttemptFailed)
            .and_then(|s| s.transition(OutForDelivery))
            .and_then(|s| s.transition(Delivered))
            .unwrap();
        assert!(retried.is_terminal());
        assert!(AttemptFailed.transition(Returned).unwrap().is_terminal());
        assert!(Delivered.transition(OutForDelivery).is_err());
        assert!(LabelCreated.transition(Delivered).is_err());
    }
}
