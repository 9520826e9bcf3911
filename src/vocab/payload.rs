//! An event's payload: its JSON text, shared between its deliveries.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The serialized payload of an event: JSON text, shared between deliveries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Serializes a value as a payload.
    ///
    /// # Errors
    /// The value's `Serialize` implementation failed (e.g. a map with non-string keys).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Payload(Arc::from(serde_json::to_string(value)?)))
    }

    /// Wraps JSON text as it is, checking only that it is well-formed JSON.
    ///
    /// # Errors
    /// The text is not JSON.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Payload(Arc::from(text)))
    }

    /// Wraps JSON text a backend wrote from a payload earlier, without checking it.
    #[cfg(feature = "sqlite")]
    pub(crate) fn from_stored(text: String) -> Self {
        Payload(Arc::from(text))
    }

    /// Deserializes the payload.
    ///
    /// # Errors
    /// The payload does not have the shape of `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
