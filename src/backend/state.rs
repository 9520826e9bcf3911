//! State values and the changes a commit makes to them: versioned values, read
//! checks, writes and commutative adds.

use std::sync::Arc;

/// A stored value: JSON bytes as the engine wrote them.
pub type Value = Arc<[u8]>;

/// A value with the version it was written at. Versions only grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Value,
    /// Bumped by every write of the key.
    pub version: u64,
}

/// A key the handler read, and the version it saw (`None`: the key was absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadCheck {
    /// The state key.
    pub key: String,
    /// The version read, or `None` if the key did not exist.
    pub version: Option<u64>,
}

/// A state write: a new value, or `None` to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The state key.
    pub key: String,
    /// The new value, or `None` to delete the key.
    pub value: Option<Value>,
}

/// A blind, commutative increment of an integer key: see [`Action::Commit`](crate::backend::Action::Commit).
///
/// An add reads nothing the handler saw, so it records no read check and never
/// conflicts with another add; the key's stored value must be a JSON integer
/// (absent counts as 0), and the sum must fit in an `i64`.
///
/// A *bounded* add (`floor: Some(f)`) is an escrow: it applies only if the key
/// holds at least `f` once it has, checked against the value committed when the
/// commit applies, not against anything the handler read. "Take 3 units if at
/// least 3 remain" is `delta: -3, floor: Some(0)`. A bound that would break
/// fails the whole completion with [`Outcome::Conflict`](crate::backend::Outcome::Conflict),
/// so the handler runs again and sees the shortfall; bounded adds that all fit
/// never conflict, however many run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The state key.
    pub key: String,
    /// What to add (may be negative).
    pub delta: i64,
    /// The least the key may hold after the add; `None`: no bound.
    pub floor: Option<i64>,
}

impl Add {
    /// The new value of the key, given the bytes it holds now (`None`: absent,
    /// which counts as 0). Backends call this for each add of a commit, in order.
    ///
    /// ```
    /// use flowline::backend::{Add, AddError};
    /// let add = Add { key: "orders/paid".into(), delta: 2, floor: None };
    /// assert_eq!(add.apply_to(None), Ok(2));
    /// assert_eq!(add.apply_to(Some(b"40")), Ok(42));
    /// assert!(matches!(add.apply_to(Some(br#""x""#)), Err(AddError::NotAnInteger { .. })));
    ///
    /// let take = Add { key: "stock/lamp".into(), delta: -3, floor: Some(0) };
    /// assert_eq!(take.apply_to(Some(b"3")), Ok(0));
    /// assert!(matches!(take.apply_to(Some(b"2")), Err(AddError::BelowFloor { .. })));
    /// ```
    ///
    /// # Errors
    /// The stored value is not a JSON integer in the `i64` range, the sum
    /// overflows an `i64`, or it is below the add's floor.
    pub fn apply_to(&self, stored: Option<&[u8]>) -> Result<i64, AddError> {
        let current = match stored {
            None => 0,
            Some(bytes) => {
                serde_json::from_slice::<i64>(bytes).map_err(|_| AddError::NotAnInteger {
                    key: self.key.clone(),
                    delta: self.delta,
                })?
            }
        };
        self.sum(current)
    }

    /// `current + delta`, within `i64` and at least the floor.
    fn sum(&self, current: i64) -> Result<i64, AddError> {
        let sum = current
            .checked_add(self.delta)
            .ok_or_else(|| AddError::Overflow {
                key: self.key.clone(),
                current,
                delta: self.delta,
            })?;
        match self.floor {
            Some(floor) if sum < floor => Err(AddError::BelowFloor {
                key: self.key.clone(),
                current,
                delta: self.delta,
                floor,
            }),
            _ => Ok(sum),
        }
    }
}

/// Why the adds of a commit could not apply ([`Outcome::Rejected`](crate::backend::Outcome::Rejected)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    /// The key holds something other than a JSON integer in the `i64` range.
    #[error("cannot add {delta} to state key {key:?}: its stored value is not a JSON integer in the i64 range")]
    NotAnInteger {
        /// The state key.
        key: String,
        /// The delta that could not be added.
        delta: i64,
    },
    /// The sum does not fit in an `i64`.
    #[error("cannot add {delta} to state key {key:?}: {current} + {delta} overflows i64")]
    Overflow {
        /// The state key.
        key: String,
        /// The value stored (after the commit's earlier writes and adds).
        current: i64,
        /// The delta that could not be added.
        delta: i64,
    },
    /// A bounded add would take the key below its floor. Unlike the others this
    /// is no error of the handler's: the completion conflicts and runs again
    /// ([`AddError::outcome`](crate::backend::AddError::outcome)).
    #[error(
        "cannot add {delta} to state key {key:?}: {current} + {delta} is below the floor {floor}"
    )]
    BelowFloor {
        /// The state key.
        key: String,
        /// The value stored (after the commit's earlier writes and adds).
        current: i64,
        /// The delta that could not be added.
        delta: i64,
        /// The add's floor.
        floor: i64,
    },
}

/// The new values of the keys `adds` change, in the order of their first add,
/// each computed by [`Add::apply_to`] on the value the key has once `writes` (in
/// order) and the adds before it have applied; `stored` reads a key's committed
/// bytes. Allocates nothing when `adds` is empty.
pub fn sum_adds<E>(
    adds: &[Add],
    writes: &[Write],
    mut stored: impl FnMut(&str) -> Result<Option<Value>, E>,
) -> Result<Result<Vec<(String, i64)>, AddError>, E> {
    let mut sums: Vec<(String, i64)> = Vec::new();
    for add in adds {
        if let Some(at) = sums.iter().position(|(key, _)| *key == add.key) {
            match add.sum(sums[at].1) {
                Ok(sum) => sums[at].1 = sum,
                Err(err) => return Ok(Err(err)),
            }
            continue;
        }
        let base = match writes.iter().rev().find(|w| w.key == add.key) {
            Some(write) => write.value.clone(),
            None => stored(&add.key)?,
        };
        match add.apply_to(base.as_deref()) {
            Ok(sum) => sums.push((add.key.clone(), sum)),
            Err(err) => return Ok(Err(err)),
        }
    }
    Ok(Ok(sums))
}

/// The bytes a counter's value is stored as: its JSON.
pub fn counter_bytes(value: i64) -> Value {
    Arc::from(value.to_string().into_bytes())
}
