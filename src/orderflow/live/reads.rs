//! One read of the store shared by every stream that wants it at once: a
//! thousand clients of one store's alerts, woken by the same commit, cost one
//! read of the store, not a thousand.
//!
//! A stream asks for an answer read *since* the moment it saw the event that
//! woke it. The event committed before the engine told its watchers, so any
//! read that started at or after that moment shows it: the last read is
//! reused when it started late enough, and streams that ask while a read is
//! in flight wait for it rather than starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::Engine;
use crate::event::TenantId;

/// The reads of the streams open now, one slot per store and path.
#[derive(Default)]
pub(super) struct SharedReads {
    slots: Mutex<HashMap<(TenantId, String), Weak<Slot>>>,
}

impl SharedReads {
    /// The slot of `path` in `store`, shared with the other streams that
    /// read it; it lives as long as one of them does.
    pub(super) fn slot(&self, engine: &Engine, store: &TenantId, path: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = (store.clone(), path.to_string());
        if let Some(slot) = slots.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        // Forget the slots of streams that all closed, now and then rather
        // than on every drop.
        if slots.len() >= 64 && slots.len().is_power_of_two() {
            slots.retain(|_, slot| slot.strong_count() > 0);
        }
        let slot = Arc::new(Slot {
            engine: engine.clone(),
            store: store.clone(),
            path: path.to_string(),
            last: tokio::sync::Mutex::new(None),
        });
        slots.insert(key, Arc::downgrade(&slot));
        slot
    }
}

/// One store's answer to one path, as last read.
pub(super) struct Slot {
    engine: Engine,
    store: TenantId,
    path: String,
    /// When the last read started, and its answer.
    last: tokio::sync::Mutex<Option<(Instant, Arc<ApiResponse>)>>,
}

impl Slot {
    /// The answer of a read that started at `since` or later: the last one
    /// if it did, else a new one (which the streams waiting behind it share).
    pub(super) async fn read_since(&self, since: Instant) -> Arc<ApiResponse> {
        let mut last = self.last.lock().await;
        if let Some((started, answer)) = &*last {
            if *started >= since {
                return answer.clone();
            }
        }
        let started = Instant::now();
        let answer = Arc::new(
            self.engine
                .call(ApiRequest::new(
                    Method::Get,
                    self.path.as_str(),
                    self.store.clone(),
                ))
                .await,
        );
        *last = Some((started, answer.clone()));
        answer
    }
}
