//! The messages this process fetched and not yet acknowledged: which are
//! waiting, which are leased to a worker and until when (in engine time), and
//! which to hand out next, fairly across tenants. (FIFO groups never reach a
//! broker: the split backend runs them from the store.)
//!
//! JetStream's own timers run on the server's clock; the contract's leases run
//! on the engine's (`ClaimRequest::now`). So the server only learns that a
//! message is done (an ack) or that this process is gone (its ack wait passes
//! without the progress acks this process sends); leases, their expiry and
//! the attempt count they add are kept here.

use std::collections::{BTreeMap, HashMap};

use super::wire::Body;
use crate::backend::lane::ReadyLane;
use crate::backend::{Claimed, LeaseRef, Received, StepClaim};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

/// One delivery of a held message.
#[derive(Debug)]
struct Entry {
    /// The stream sequence of the message it came in.
    seq: u64,
    body: Body,
    /// Leases that ended here without a completion: each counts as an attempt.
    expiries: u32,
    lease: Option<(u64, Timestamp)>,
}

impl Entry {
    /// `delivered` is its message's [`Message::delivered`].
    fn attempt(&self, delivered: u32) -> u32 {
        self.body
            .attempt
            .saturating_add(delivered.saturating_sub(1))
            .saturating_add(self.expiries)
    }

    fn leased_at(&self, now: Timestamp) -> bool {
        self.lease.is_some_and(|(_, until)| until > now)
    }
}

/// A message of the stream: acknowledged once the last of its deliveries is
/// settled.
#[derive(Debug)]
struct Message<A> {
    acker: A,
    /// The server's delivery count when this process last received it: each
    /// delivery past the first is an ack wait that passed (a process died
    /// holding it), and counts as an attempt.
    delivered: u32,
    /// Its deliveries still held (not settled).
    parts: usize,
}

/// The held deliveries, by a number given in the order they arrived (the
/// order they were sent in), and the messages they came in, by stream
/// sequence.
#[derive(Debug)]
pub(super) struct Held<A> {
    entries: BTreeMap<u64, Entry>,
    messages: HashMap<u64, Message<A>>,
    /// Deliveries per message in the last message of each step: how many
    /// messages a fetch asks for.
    parcel_size: HashMap<StepName, usize>,
    next_part: u64,
    next_token: u64,
}

impl<A> Default for Held<A> {
    fn default() -> Self {
        Held {
            entries: BTreeMap::new(),
            messages: HashMap::new(),
            parcel_size: HashMap::new(),
            next_part: 0,
            next_token: 0,
        }
    }
}

impl<A> Held<A> {
    /// Deliveries of `claim.step` that a claim at `now` could hand out.
    pub(super) fn available(&self, claim: &StepClaim, now: Timestamp) -> usize {
        self.entries
            .values()
            .filter(|e| e.body.step == claim.step && !e.leased_at(now))
            .count()
    }

    /// How many messages of `step` to fetch for `want` more deliveries: as
    /// many as the step's last message held go to one, and at least one.
    pub(super) fn messages_for(&self, step: &StepName, want: usize) -> usize {
        let size = self.parcel_size.get(step).copied().unwrap_or(1).max(1);
        want.div_ceil(size).max(1)
    }

    /// Takes a message the server delivered, with its deliveries (at least
    /// one). One this process already holds (the server delivered it again)
    /// keeps its deliveries' leases, and those already settled stay settled;
    /// its new acker replaces the old one.
    pub(super) fn insert(&mut self, seq: u64, bodies: Vec<Body>, delivered: u32, acker: A) {
        if let Some(message) = self.messages.get_mut(&seq) {
            message.acker = acker;
            message.delivered = delivered;
            return;
        }
        if let Some(first) = bodies.first() {
            self.parcel_size.insert(first.step.clone(), bodies.len());
        }
        self.messages.insert(
            seq,
            Message {
                acker,
                delivered,
                parts: bodies.len(),
            },
        );
        for body in bodies {
            self.next_part += 1;
            self.entries.insert(
                self.next_part,
                Entry {
                    seq,
                    body,
                    expiries: 0,
                    lease: None,
                },
            );
        }
    }

    /// Hands out up to `claim.max` messages of the step under new leases:
    /// highest priority first within a tenant, then oldest first; tenants in
    /// turns of `quantum`.
    pub(super) fn pick(
        &mut self,
        claim: &StepClaim,
        now: Timestamp,
        quantum: usize,
    ) -> Vec<Received> {
        let mut lanes: Vec<ReadyLane> = Vec::new();
        let mut lane_of: HashMap<TenantId, usize> = HashMap::new();
        for (&part, e) in &self.entries {
            if e.body.step != claim.step || e.leased_at(now) {
                continue;
            }
            let tenant = &e.body.event.tenant;
            let lane = *lane_of.entry(tenant.clone()).or_insert_with(|| {
                lanes.push(ReadyLane::default());
                lanes.len() - 1
            });
            lanes[lane].push(part, e.body.event.priority);
        }
        let mut picked = Vec::new();
        let quantum = quantum.max(1);
        while picked.len() < claim.max && lanes.iter().any(|lane| !lane.is_empty()) {
            for lane in &mut lanes {
                let room = quantum.min(claim.max - picked.len());
                lane.take_into(room, &mut picked);
            }
        }
        picked
            .into_iter()
            .filter_map(|part| self.lease(part, now + claim.lease, now))
            .collect()
    }

    fn lease(&mut self, part: u64, until: Timestamp, now: Timestamp) -> Option<Received> {
        self.next_token += 1;
        let token = self.next_token;
        let entry = self.entries.get_mut(&part)?;
        let delivered = self.messages.get(&entry.seq).map_or(1, |m| m.delivered);
        if entry.lease.is_some_and(|(_, ended)| ended <= now) {
            entry.expiries += 1;
        }
        entry.lease = Some((token, until));
        let b = &entry.body;
        let claimed = Claimed::new(
            LeaseRef { id: part, token },
            b.step.clone(),
            b.event.clone(),
            entry.attempt(delivered),
            b.first_attempt_at,
            b.last_error.clone(),
        );
        Some(Received {
            key: b.key.clone(),
            claimed,
        })
    }

    /// Removes a delivery leased under `lease`. Returns its message's acker
    /// when that was the message's last delivery held: the message is done.
    pub(super) fn settle(&mut self, lease: &LeaseRef) -> Option<A> {
        let current = self
            .entries
            .get(&lease.id)
            .is_some_and(|e| e.lease.is_some_and(|(token, _)| token == lease.token));
        if !current {
            return None;
        }
        let seq = self.entries.remove(&lease.id)?.seq;
        let message = self.messages.get_mut(&seq)?;
        message.parts = message.parts.saturating_sub(1);
        if message.parts > 0 {
            return None;
        }
        self.messages.remove(&seq).map(|m| m.acker)
    }

    /// Makes a delivery leased under `lease` available again, no attempt counted.
    pub(super) fn release(&mut self, lease: &LeaseRef) {
        if let Some(e) = self.entries.get_mut(&lease.id) {
            if e.lease.is_some_and(|(token, _)| token == lease.token) {
                e.lease = None;
            }
        }
    }

    /// How many deliveries are held and not leased as of `now`, and how many
    /// messages are held.
    pub(super) fn waiting(&self, now: Timestamp) -> (u64, u64) {
        let waiting = self.entries.values().filter(|e| !e.leased_at(now)).count();
        (waiting as u64, self.messages.len() as u64)
    }

    /// How many are leased as of `now`.
    pub(super) fn leased(&self, now: Timestamp) -> u64 {
        self.entries.values().filter(|e| e.leased_at(now)).count() as u64
    }

    /// When the next lease running at `now` ends.
    pub(super) fn next_lease_end(&self, now: Timestamp) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(|e| e.lease.map(|(_, until)| until))
            .filter(|until| *until > now)
            .min()
    }

    /// The ackers of everything held, to keep it alive on the server.
    pub(super) fn ackers(&self) -> impl Iterator<Item = &A> {
        self.messages.values().map(|m| &m.acker)
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::event::StepName;

    fn body(n: u64, tenant: &str) -> Body {
        let tenant = TenantId::new(tenant).unwrap();
        let event = Arc::new(crate::event::build_envelope(
            at(0),
            crate::event::Topic::new("work.job").unwrap(),
            tenant,
            crate::event::TraceId::new(),
            None,
            crate::event::Payload::encode(&n).unwrap(),
            crate::event::EmitOptions::default(),
        ));
        Body {
            key: Arc::from(format!("k{n}")),
            step: StepName::new("work").unwrap(),
            event,
            attempt: 1,
            first_attempt_at: Timestamp::from_millis(0),
            last_error: None,
        }
    }

    fn claim(max: usize) -> StepClaim {
        StepClaim {
            step: StepName::new("work").unwrap(),
            max,
            lease: Duration::from_secs(30),
        }
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_millis(0) + Duration::from_secs(secs)
    }

    /// The lease ids of what was handed out: deliveries are numbered in the
    /// order they arrived, from 1.
    fn seqs(received: &[Received]) -> Vec<u64> {
        received.iter().map(|r| r.claimed.lease.id).collect()
    }

    #[test]
    fn tenants_take_turns_oldest_first() {
        let mut held = Held::default();
        for (seq, tenant) in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "c")] {
            held.insert(seq, vec![body(seq, tenant)], 1, ());
        }
        // Quantum 1: one of each tenant per turn, each tenant's oldest first.
        let first = held.pick(&claim(4), at(0), 1);
        assert_eq!(seqs(&first), vec![1, 4, 6, 2]);
        let second = held.pick(&claim(10), at(1), 1);
        assert_eq!(
            seqs(&second),
            vec![3, 5],
            "the leased ones are not handed out again"
        );
        assert!(held.settle(&first[1].claimed.lease).is_some());
        assert!(held.pick(&claim(10), at(2), 1).is_empty());
    }

    #[test]
    fn a_tenants_higher_priorities_come_first_within_its_turn() {
        use crate::event::Priority;
        let mut held = Held::default();
        let urgent = |seq: u64, tenant: &str, priority: Priority| {
            let mut b = body(seq, tenant);
            let mut event = (*b.event).clone();
            event.priority = priority;
            b.event = Arc::new(event);
            b
        };
        held.insert(1, vec![urgent(1, "a", Priority::Low)], 1, ());
        held.insert(2, vec![urgent(2, "a", Priority::Normal)], 1, ());
        held.insert(3, vec![urgent(3, "a", Priority::Highest)], 1, ());
        held.insert(4, vec![urgent(4, "b", Priority::Lowest)], 1, ());
        // Quantum 1: a's highest, b's only one, then a's in priority order.
        assert_eq!(seqs(&held.pick(&claim(10), at(0), 1)), vec![3, 4, 2, 1]);
    }

    #[test]
    fn an_expired_lease_counts_an_attempt_and_fences_the_old_token() {
        let mut held = Held::default();
        held.insert(7, vec![body(7, "a")], 1, ());
        let first = held.pick(&claim(1), at(0), 1);
        assert_eq!(first[0].claimed.attempt, 1);
        assert!(held.pick(&claim(1), at(29), 1).is_empty(), "leased");
        let again = held.pick(&claim(1), at(31), 1);
        assert_eq!(again[0].claimed.attempt, 2);
        assert!(
            held.settle(&first[0].claimed.lease).is_none(),
            "stale token"
        );
        // Released: back at once, no attempt counted.
        held.release(&again[0].claimed.lease);
        let third = held.pick(&claim(1), at(32), 1);
        assert_eq!(third[0].claimed.attempt, 2);
        // The server delivered it again (its ack wait passed): one more.
        held.insert(7, vec![body(7, "a")], 2, ());
        held.release(&third[0].claimed.lease);
        assert_eq!(held.pick(&claim(1), at(33), 1)[0].claimed.attempt, 3);
    }

    #[test]
    fn a_parcel_is_acknowledged_once_its_last_delivery_settles() {
        let mut held = Held::default();
        let parts = vec![body(1, "a"), body(2, "b"), body(3, "a")];
        held.insert(40, parts, 1, "acker of 40");
        assert_eq!(held.messages_for(&claim(1).step, 300), 100);
        let all = held.pick(&claim(10), at(0), 1);
        assert_eq!(all.len(), 3);
        assert_eq!(held.settle(&all[0].claimed.lease), None);
        assert_eq!(held.settle(&all[2].claimed.lease), None);
        // The server hands the message out again: the settled deliveries stay
        // settled, the one still held keeps its lease.
        held.insert(
            40,
            vec![body(1, "a"), body(2, "b"), body(3, "a")],
            2,
            "acker 2",
        );
        assert!(held.pick(&claim(10), at(1), 1).is_empty());
        assert_eq!(held.waiting(at(1)), (0, 1));
        assert_eq!(held.settle(&all[1].claimed.lease), Some("acker 2"));
        assert!(held.is_empty());
    }
}
