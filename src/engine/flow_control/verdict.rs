//! A claimed delivery's verdict over its limits' budgets: the budget keys a
//! transaction reads, and taking a unit of each or of none.

use std::borrow::Cow;
use std::collections::HashMap;

use super::budget::{Budget, Holder};
use super::ledger::budget_key;
use super::limits::{Limit, Quota};
use crate::time::Timestamp;

/// A delivery's verdict.
pub(super) enum Verdict {
    Run,
    /// Out of budget until the time; the refusing (limit, budget slot).
    Wait(Timestamp, (usize, usize)),
}

/// The budget keys one transaction reads, each once, by position.
#[derive(Default)]
pub(super) struct Keys<'e> {
    pub(super) names: Vec<String>,
    pub(super) by_name: HashMap<String, usize>,
    /// A claim's keys come in runs of one tenant: a (step, limit, key) seen
    /// before is found without making its budget key again.
    by_parts: HashMap<(usize, usize, Cow<'e, str>), usize>,
}

impl<'e> Keys<'e> {
    /// The slot of budget key `name`, added if new.
    pub(super) fn slot(&mut self, name: &str) -> usize {
        if let Some(slot) = self.by_name.get(name) {
            return *slot;
        }
        self.names.push(name.to_string());
        self.by_name.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    /// The slot of key `key` under limit `l` (of `limits`) of step `index`, named `step`.
    pub(super) fn slot_of(
        &mut self,
        step: &str,
        limits: &[Limit],
        index: usize,
        l: usize,
        key: Cow<'e, str>,
    ) -> usize {
        let parts = (index, l, key);
        if let Some(slot) = self.by_parts.get(&parts) {
            return *slot;
        }
        let name = budget_key(step, &limits[l].name, &parts.2);
        let slot = self.slot(&name);
        self.by_parts.insert(parts, slot);
        slot
    }
}

/// Takes a unit of each limit from its budget, or, if any refuses, none:
/// the budgets are left as they were but for the refusing ones' marks.
pub(super) fn take_all(
    limits: &[Limit],
    pairs: &[(usize, usize)],
    budgets: &mut [Budget],
    holder: Holder,
    now: Timestamp,
    take: fn(&mut Budget, Quota, Option<Holder>, Timestamp) -> Result<(), Timestamp>,
) -> Verdict {
    let take_one = |budgets: &mut [Budget], (limit, slot): (usize, usize)| {
        let (quota, _) = budgets[slot].quota_in_force(limits[limit].quota);
        take(&mut budgets[slot], quota, Some(holder), now)
    };
    // One limit (the usual case): nothing to undo if it refuses.
    if let [pair] = pairs {
        return match take_one(budgets, *pair) {
            Ok(()) => Verdict::Run,
            Err(at) => Verdict::Wait(at, *pair),
        };
    }
    let before: Vec<Budget> = pairs
        .iter()
        .map(|(_, slot)| budgets[*slot].clone())
        .collect();
    let mut wait: Option<(Timestamp, (usize, usize))> = None;
    let mut refused = Vec::new();
    for pair in pairs {
        if let Err(at) = take_one(budgets, *pair) {
            // The latest refusal is the one the delivery waits for.
            if wait.is_none_or(|(w, _)| at > w) {
                wait = Some((at, *pair));
            }
            refused.push(pair.1);
        }
    }
    let Some((at, pair)) = wait else {
        return Verdict::Run;
    };
    for ((_, slot), budget) in pairs.iter().zip(before) {
        if !refused.contains(slot) {
            budgets[*slot] = budget;
        }
    }
    Verdict::Wait(at, pair)
}
