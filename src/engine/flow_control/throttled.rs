//! How often each key of each limit held work back, counted by the engine
//! that held it. Keys are payload values or tenants, so their number is
//! bounded: past [`KEYS_COUNTED`] keys, a limit's further keys count
//! together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Distinct keys one engine counts on their own, across every limit.
pub const KEYS_COUNTED: usize = 1_000;

/// Hold-backs of one key of one limit of one step, from
/// [`Engine::throttled_keys`](crate::Engine::throttled_keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ThrottledKey {
    /// The step.
    pub step: String,
    /// The limit's name.
    pub limit: String,
    /// The key; `None` for this limit's keys past the engine's count of
    /// [`KEYS_COUNTED`], together.
    pub key: Option<String>,
    /// Deliveries held back and API calls refused `429` on it.
    pub count: u64,
}

/// The counts, by (step index, limit index, key).
#[derive(Debug, Default)]
pub(super) struct ThrottledKeys {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_key: HashMap<(usize, usize, Arc<str>), u64>,
    other: HashMap<(usize, usize), u64>,
}

impl ThrottledKeys {
    /// Counts one hold-back on `key` of limit `limit` of step `step`.
    pub(super) fn add(&self, step: usize, limit: usize, key: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let Counts { by_key, other } = &mut *counts;
        if let Some(n) = by_key.get_mut(&(step, limit, Arc::from(key))) {
            *n += 1;
        } else if by_key.len() < KEYS_COUNTED {
            by_key.insert((step, limit, Arc::from(key)), 1);
        } else {
            *other.entry((step, limit)).or_default() += 1;
        }
    }

    /// Every count, named by `names` (step index, limit index -> names),
    /// ordered by step, limit and key, each limit's "other" last.
    pub(super) fn snapshot(
        &self,
        names: impl Fn(usize, usize) -> (String, String),
    ) -> Vec<ThrottledKey> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(usize, usize, Option<&str>, u64)> = counts
            .by_key
            .iter()
            .map(|((s, l, k), n)| (*s, *l, Some(&**k), *n))
            .chain(counts.other.iter().map(|((s, l), n)| (*s, *l, None, *n)))
            .collect();
        all.sort_by(|a, b| (a.0, a.1, a.2.is_none(), a.2).cmp(&(b.0, b.1, b.2.is_none(), b.2)));
        all.into_iter()
            .map(|(s, l, key, count)| {
                let (step, limit) = names(s, l);
                ThrottledKey {
                    step,
                    limit,
                    key: key.map(str::to_string),
                    count,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_past_the_cap_count_together_per_limit() {
        let throttled = ThrottledKeys::default();
        for key in 0..KEYS_COUNTED + 3 {
            throttled.add(0, 0, &format!("k{key:05}"));
        }
        throttled.add(0, 0, "k00000");
        throttled.add(1, 0, "late");
        let snapshot = throttled.snapshot(|s, l| (format!("s{s}"), format!("l{l}")));
        assert_eq!(snapshot.len(), KEYS_COUNTED + 2);
        assert_eq!(snapshot[0].key.as_deref(), Some("k00000"));
        assert_eq!(snapshot[0].count, 2);
        let others: Vec<(&str, Option<&str>, u64)> = snapshot[KEYS_COUNTED..]
            .iter()
            .map(|t| (t.step.as_str(), t.key.as_deref(), t.count))
            .collect();
        assert_eq!(others, [("s0", None, 3), ("s1", None, 1)]);
    }
}
