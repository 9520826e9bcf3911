//! One tenant's ready deliveries of one step in claim order: highest
//! [`Priority`] first, oldest first within a priority. Shared by the in-memory
//! queue indexes (the memory backend's, the SQLite backend's, and what a
//! broker's process holds).

use std::collections::VecDeque;

use crate::event::Priority;

/// Ids in claim order. A lane whose work is all [`Priority::Normal`] behaves
/// (and costs) like the single queue it replaces: one `VecDeque` in use, the
/// others empty and unallocated.
#[derive(Debug, Default)]
pub(crate) struct ReadyLane {
    /// One queue per priority, lowest first (indexed by [`Priority::rank`]).
    levels: [VecDeque<u64>; Priority::ALL.len()],
    len: usize,
}

impl ReadyLane {
    /// Queues `id` behind the lane's other ids of `priority`.
    pub(crate) fn push(&mut self, id: u64, priority: Priority) {
        self.levels[priority.rank()].push_back(id);
        self.len += 1;
    }

    /// Whether the lane holds no id.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves up to `n` ids, in claim order, to the end of `out`.
    pub(crate) fn take_into(&mut self, n: usize, out: &mut Vec<u64>) {
        let mut left = n.min(self.len);
        self.len -= left;
        for level in self.levels.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let k = left.min(level.len());
            out.extend(level.drain(..k));
            left -= k;
        }
    }

    /// Removes `id` wherever it is.
    #[cfg(any(feature = "sqlite", test))]
    pub(crate) fn remove(&mut self, id: u64) {
        for level in &mut self.levels {
            let before = level.len();
            level.retain(|other| *other != id);
            self.len -= before - level.len();
        }
    }

    /// Gives back the memory of long queues once the lane is empty; short
    /// ones are kept for reuse.
    pub(crate) fn trim(&mut self) {
        for level in &mut self.levels {
            if level.is_empty() && level.capacity() > 1024 {
                *level = VecDeque::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(lane: &mut ReadyLane, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        lane.take_into(n, &mut out);
        out
    }

    #[test]
    fn higher_priorities_come_first_and_each_in_arrival_order() {
        let mut lane = ReadyLane::default();
        lane.push(1, Priority::Low);
        lane.push(2, Priority::Normal);
        lane.push(3, Priority::Highest);
        lane.push(4, Priority::Normal);
        lane.push(5, Priority::High);
        lane.push(6, Priority::Lowest);
        lane.push(7, Priority::Highest);
        assert_eq!(take(&mut lane, 3), [3, 7, 5]);
        assert_eq!(take(&mut lane, 10), [2, 4, 1, 6]);
        assert!(lane.is_empty());
    }

    #[test]
    fn removing_an_id_keeps_the_count() {
        let mut lane = ReadyLane::default();
        lane.push(1, Priority::High);
        lane.push(2, Priority::Normal);
        lane.remove(1);
        lane.remove(9);
        assert_eq!(take(&mut lane, 5), [2]);
        lane.trim();
        assert!(lane.is_empty());
    }
}
