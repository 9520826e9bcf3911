//! How urgent an event is among its tenant's own work.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The priority of an event, set per emit with
/// [`EmitOptions::priority`](crate::EmitOptions::priority).
///
/// A step claims a tenant's ready deliveries highest priority first, and in
/// emit order within one priority. Priorities order work *within* a tenant's
/// turn: the turns across tenants stay fair, so a tenant that marks
/// everything [`Highest`](Priority::Highest) gets no more than its share, and
/// a tenant's low-priority work still runs in its own turns. A FIFO group
/// keeps its emit order whatever its events' priorities.
///
/// Events emitted by a handler inherit the priority of the event it handles,
/// unless the emit names one: an urgent order stays urgent through its
/// payment and its shipping.
///
/// ```
/// use flowline::Priority;
/// assert!(Priority::High > Priority::Normal);
/// assert_eq!(Priority::default(), Priority::Normal);
/// assert_eq!("low".parse::<Priority>(), Ok(Priority::Low));
/// assert!("urgent".parse::<Priority>().is_err());
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs after every other priority of its tenant.
    Lowest,
    /// Runs after normal work.
    Low,
    /// What an event has unless it says otherwise.
    #[default]
    Normal,
    /// Runs before normal work.
    High,
    /// Runs before every other priority of its tenant.
    Highest,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 5] = [
        Priority::Lowest,
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Highest,
    ];

    /// The number adapters store: -2 (lowest) to 2 (highest), 0 for normal,
    /// so a column that defaults to 0 reads as normal.
    pub const fn as_i16(self) -> i16 {
        self as i16 - 2
    }

    /// The priority stored as [`as_i16`](Self::as_i16); `None` outside -2..=2.
    pub const fn from_i16(value: i16) -> Option<Priority> {
        match value {
            -2 => Some(Priority::Lowest),
            -1 => Some(Priority::Low),
            0 => Some(Priority::Normal),
            1 => Some(Priority::High),
            2 => Some(Priority::Highest),
            _ => None,
        }
    }

    /// The position in [`ALL`](Self::ALL): 0 (lowest) to 4 (highest).
    pub const fn rank(self) -> usize {
        self as usize
    }

    /// Whether this is [`Priority::Normal`] (envelopes leave it out of their JSON).
    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }

    /// The name it is written as: `lowest`, `low`, `normal`, `high`, `highest`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Lowest => "lowest",
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Highest => "highest",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is not one of [`Priority::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?}: expected lowest, low, normal, high or highest")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPriority(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers_round_trip_and_order_like_the_priorities() {
        for p in Priority::ALL {
            assert_eq!(Priority::from_i16(p.as_i16()), Some(p));
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        assert_eq!(Priority::Normal.as_i16(), 0);
        assert_eq!(Priority::from_i16(3), None);
        assert_eq!(Priority::from_i16(-3), None);
        assert!(Priority::ALL.windows(2).all(|w| w[0] < w[1]));
        assert!(Priority::ALL
            .windows(2)
            .all(|w| w[0].as_i16() < w[1].as_i16()));
    }

    #[test]
    fn json_uses_the_lowercase_names() {
        assert_eq!(serde_json::to_string(&Priority::High).unwrap(), "\"high\"");
        assert!(serde_json::from_str::<Priority>("\"HIGH\"").is_err());
        assert_eq!(" High ".parse::<Priority>(), Ok(Priority::High));
    }
}
