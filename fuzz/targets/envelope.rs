//! Envelope and payload decoding: an envelope as adapters and the NATS wire
//! carry it (JSON), then its payload decoded as each event type a step of the
//! order system reads, and as an event at payload version 3 that upcasts
//! older shapes.
//!
//! Whatever decodes must encode again and decode to the same envelope; a
//! payload decodes only as the type of its own topic.

use flowline::orderflow::{
    DeliveryAdvance, FraudVerified, InventoryReserved, OrderCancelled, OrderCreated, OrderFailed,
    PaymentProcessed, PaymentRetryDue, RestockRequested, StoreInit,
};
use flowline::{BoxError, DecodeError, Envelope, Event, Payload};
use serde::{Deserialize, Serialize};

/// Decodes `data` as an envelope and its payload.
pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        // Payload text is checked to be JSON and kept as it is.
        if let Ok(payload) = Payload::from_json(text) {
            assert_eq!(payload.as_json(), text);
        }
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    let again = serde_json::to_vec(&envelope).expect("a decoded envelope encodes");
    let decoded: Envelope = serde_json::from_slice(&again).expect("an encoded envelope decodes");
    assert_eq!(decoded, envelope, "the envelope survives its round trip");
    let _ = envelope.header("flowline-version");
    let _ = envelope.due_at();

    decodes_only_as_its_topic::<OrderCreated>(&envelope);
    decodes_only_as_its_topic::<FraudVerified>(&envelope);
    decodes_only_as_its_topic::<InventoryReserved>(&envelope);
    decodes_only_as_its_topic::<PaymentProcessed>(&envelope);
    decodes_only_as_its_topic::<PaymentRetryDue>(&envelope);
    decodes_only_as_its_topic::<OrderFailed>(&envelope);
    decodes_only_as_its_topic::<OrderCancelled>(&envelope);
    decodes_only_as_its_topic::<DeliveryAdvance>(&envelope);
    decodes_only_as_its_topic::<RestockRequested>(&envelope);
    decodes_only_as_its_topic::<StoreInit>(&envelope);
    decodes_only_as_its_topic::<Renamed>(&envelope);
}

fn decodes_only_as_its_topic<T: Event>(envelope: &Envelope) {
    match envelope.decode::<T>() {
        Ok(value) => {
            assert_eq!(envelope.topic.as_str(), T::TOPIC);
            serde_json::to_string(&value).expect("a decoded event encodes");
        }
        Err(DecodeError::UnexpectedTopic { .. }) => assert_ne!(envelope.topic.as_str(), T::TOPIC),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}

/// An event at version 3: version 1 had `name`, version 2 `first` and
/// `last`, version 3 adds `display`.
#[derive(Serialize, Deserialize)]
struct Renamed {
    first: String,
    last: String,
    display: String,
}

impl Event for Renamed {
    const TOPIC: &'static str = "fuzz.renamed";
    const VERSION: u32 = 3;

    fn upcast(version: u32, mut old: serde_json::Value) -> Result<serde_json::Value, BoxError> {
        if version == 1 {
            let name = old["name"].as_str().ok_or("no name")?.to_string();
            let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
            old = serde_json::json!({ "first": first, "last": last });
        }
        let display = format!(
            "{} {}",
            old["first"].as_str().ok_or("no first")?,
            old["last"].as_str().ok_or("no last")?
        );
        old["display"] = display.into();
        Ok(old)
    }
}
