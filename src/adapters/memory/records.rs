//! The deliveries by id, in a dense window over the recent ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::backend::place::Place;
use crate::event::Envelope;
use crate::time::Timestamp;

/// One delivery: its step, where it is, and its attempts so far.
#[derive(Debug)]
pub(super) struct Record {
    /// Index into `Queue::steps`.
    pub(super) step: u32,
    pub(super) place: Place,
    pub(super) attempt: u32,
    pub(super) event: Arc<Envelope>,
    pub(super) group: Option<Arc<str>>,
    pub(super) due_at: Timestamp,
    pub(super) first_attempt_at: Option<Timestamp>,
    pub(super) last_error: Option<String>,
    pub(super) token: u64,
    /// The cancel key, if the delivery has one.
    pub(super) key: Option<Arc<str>>,
}

/// The deliveries by id.
///
/// Ids are handed out in sequence and most deliveries finish roughly in that order,
/// so live records sit in a dense window indexed by `id - base`: a lookup is an
/// index, and claims walk memory in order instead of hopping around a hash table.
/// A record that stays while the window moves on far past it (a long delay, a
/// retry backoff, a parked FIFO group) moves to `old`, so the window stays at most
/// a few times the number of live records in it.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// The id of `window[0]`; every id in `old` is below it.
    base: u64,
    window: VecDeque<Option<Record>>,
    in_window: usize,
    old: HashMap<u64, Record>,
}

impl Records {
    #[inline]
    pub(super) fn get(&self, id: u64) -> Option<&Record> {
        if id >= self.base {
            let offset = usize::try_from(id - self.base).ok()?;
            self.window.get(offset)?.as_ref()
        } else {
            self.old.get(&id)
        }
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Record> {
        if id >= self.base {
            let offset = usize::try_from(id - self.base).ok()?;
            self.window.get_mut(offset)?.as_mut()
        } else {
            self.old.get_mut(&id)
        }
    }

    /// Adds a record; `id` is above every id added before.
    #[inline]
    pub(super) fn insert(&mut self, id: u64, rec: Record) {
        if self.window.is_empty() {
            self.base = id;
        }
        let offset = usize::try_from(id - self.base).unwrap_or(usize::MAX);
        while self.window.len() < offset {
            self.window.push_back(None);
        }
        self.window.push_back(Some(rec));
        self.in_window += 1;
        if self.window.len() > 4 * self.in_window + 1024 {
            self.compact();
        }
    }

    #[inline]
    pub(super) fn remove(&mut self, id: u64) -> Option<Record> {
        if id < self.base {
            return self.old.remove(&id);
        }
        let offset = usize::try_from(id - self.base).ok()?;
        let rec = self.window.get_mut(offset)?.take()?;
        self.in_window -= 1;
        self.trim();
        Some(rec)
    }

    fn trim(&mut self) {
        while matches!(self.window.front(), Some(None)) {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Every record, with its id, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Record)> {
        let base = self.base;
        self.window
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| r.as_ref().map(|r| (base + i as u64, r)))
            .chain(self.old.iter().map(|(id, r)| (*id, r)))
    }

    /// Moves the oldest live records out of the window until it is at most half empty.
    fn compact(&mut self) {
        while self.window.len() > 2 * self.in_window {
            if let Some(Some(rec)) = self.window.pop_front() {
                self.old.insert(self.base, rec);
                self.in_window -= 1;
            }
            self.base += 1;
        }
        self.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TenantId;

    fn record(n: u32) -> Record {
        let event = crate::event::build_envelope(
            Timestamp::EPOCH,
            crate::event::Topic::new("t").unwrap(),
            TenantId::new("a").unwrap(),
            crate::event::TraceId::new(),
            None,
            crate::event::Payload::encode(&n).unwrap(),
            crate::event::EmitOptions::default(),
        );
        Record {
            step: 0,
            place: Place::Waiting,
            attempt: n,
            event: Arc::new(event),
            group: None,
            due_at: Timestamp::EPOCH,
            first_attempt_at: None,
            last_error: None,
            token: 0,
            key: None,
        }
    }

    #[test]
    fn records_survive_the_window_moving_past_them() {
        let mut records = Records::default();
        let mut live = std::collections::BTreeSet::new();
        for id in 1..=20_000u64 {
            records.insert(id, record(u32::try_from(id).unwrap()));
            live.insert(id);
            // Finish everything but every 97th record, a little behind the newest.
            if id > 10 && (id - 10) % 97 != 0 {
                assert!(records.remove(id - 10).is_some());
                live.remove(&(id - 10));
            }
        }
        assert!(!records.old.is_empty(), "the window never moved on");
        assert!(records.window.len() <= 4 * records.in_window + 1024);
        for id in 0..=20_001u64 {
            let found = records.get(id).map(|r| u64::from(r.attempt));
            assert_eq!(found, live.contains(&id).then_some(id), "id {id}");
        }
        records.get_mut(194).unwrap().token = 7;
        assert_eq!(records.get(194).unwrap().token, 7);
        for &id in &live {
            assert_eq!(records.remove(id).map(|r| u64::from(r.attempt)), Some(id));
            assert!(records.remove(id).is_none());
        }
        assert!(records.old.is_empty() && records.window.is_empty());
        records.insert(30_000, record(30_000));
        assert_eq!(records.get(30_000).map(|r| r.attempt), Some(30_000));
    }
}
