//! Where an unfinished delivery is, and how many are in each place: the shared
//! vocabulary of the in-memory queue indexes (the memory backend's, and the
//! SQLite backend's).

use super::delivery::QueueDepth;

/// Where an unfinished delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Claimable now.
    Ready,
    /// Waiting for its due time.
    Delayed,
    /// Waiting behind the head of its FIFO group.
    Waiting,
    /// Claimed, under a lease.
    Leased,
}

/// How many deliveries are in each [`Place`].
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) ready: u64,
    pub(crate) delayed: u64,
    pub(crate) waiting: u64,
    pub(crate) leased: u64,
}

impl Counts {
    /// The counter of one place.
    pub(crate) fn slot(&mut self, place: Place) -> &mut u64 {
        match place {
            Place::Ready => &mut self.ready,
            Place::Delayed => &mut self.delayed,
            Place::Waiting => &mut self.waiting,
            Place::Leased => &mut self.leased,
        }
    }

    /// Moves one delivery from `place` to `to`, updating both counts.
    pub(crate) fn relocate(&mut self, place: &mut Place, to: Place) {
        *self.slot(*place) -= 1;
        *place = to;
        *self.slot(to) += 1;
    }

    /// The counts as a [`QueueDepth`], with `dead` dead letters.
    pub(crate) fn depth(&self, dead: u64) -> QueueDepth {
        QueueDepth {
            ready: self.ready,
            delayed: self.delayed,
            waiting: self.waiting,
            in_flight: self.leased,
            dead,
        }
    }
}
