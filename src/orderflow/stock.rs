//! Stock of one product in one store: reserve before payment, commit on payment,
//! release on decline, rejection or cancel, restock. Counts never go negative,
//! and `available + reserved + sold = initial + restocked` always holds
//! (SEED_SPEC §8.2–8.3: no decrement after the charge, no unconditional `$inc`).
//!
//! [`Stock`] is the model of those counts, with its invariants. The inventory
//! step stores them as a [`StockRecord`](super::StockRecord) and two escrow
//! counters beside it (units on the shelf and units sold), so that many
//! orders reserve one product at once without conflicting; a multi-line
//! reservation still applies all or nothing, in one commit.

use serde::{Deserialize, Serialize};

/// A stock operation that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StockError {
    /// Fewer units available than asked for.
    #[error("{product}: {wanted} wanted, {available} available")]
    Insufficient {
        /// The product.
        product: String,
        /// Units asked for.
        wanted: u32,
        /// Units available.
        available: u32,
    },
    /// Releasing or committing more than is reserved (a bookkeeping bug upstream).
    #[error("{product}: {wanted} to settle, {reserved} reserved")]
    NotReserved {
        /// The product.
        product: String,
        /// Units to settle.
        wanted: u32,
        /// Units reserved.
        reserved: u32,
    },
    /// The stored counters of a product do not add up to what it had.
    #[error("{product}: {available} available and {sold} sold of {had} units")]
    Unbalanced {
        /// The product.
        product: String,
        /// Units it started with and was restocked with.
        had: i64,
        /// The shelf counter.
        available: i64,
        /// The sold counter.
        sold: i64,
    },
    /// A count would pass `u32::MAX`.
    #[error("{product}: stock count out of range")]
    Overflow {
        /// The product.
        product: String,
    },
}

/// Where a product's units are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// The product's id.
    pub product: String,
    /// On the shelf, free to reserve.
    pub available: u32,
    /// Held for orders waiting for payment.
    pub reserved: u32,
    /// Paid for.
    pub sold: u32,
    /// Units it started with.
    pub initial: u32,
    /// Units added since.
    pub restocked: u32,
    /// Below this many available, the product is low on stock.
    pub threshold: u32,
}

/// How an operation moved a product against its low-stock threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    /// Available fell below the threshold: raise one low-stock alert.
    FellBelow,
    /// Available came back to the threshold or above: resolve the alert.
    RoseAbove,
}

impl Stock {
    /// A product with `initial` units.
    pub fn new(product: impl Into<String>, initial: u32, threshold: u32) -> Self {
        Stock {
            product: product.into(),
            available: initial,
            initial,
            threshold,
            ..Stock::default()
        }
    }

    /// Below its threshold.
    pub fn is_low(&self) -> bool {
        self.available < self.threshold
    }

    /// `available + reserved + sold == initial + restocked`.
    pub fn is_balanced(&self) -> bool {
        let held = u64::from(self.available) + u64::from(self.reserved) + u64::from(self.sold);
        held == u64::from(self.initial) + u64::from(self.restocked)
    }

    fn crossing(&self, was_low: bool) -> Option<Crossing> {
        match (was_low, self.is_low()) {
            (false, true) => Some(Crossing::FellBelow),
            (true, false) => Some(Crossing::RoseAbove),
            _ => None,
        }
    }

    /// Holds `quantity` units for an order.
    ///
    /// # Errors
    /// [`StockError::Insufficient`]; nothing changes.
    pub fn reserve(&mut self, quantity: u32) -> Result<Option<Crossing>, StockError> {
        if quantity > self.available {
            return Err(StockError::Insufficient {
                product: self.product.clone(),
                wanted: quantity,
                available: self.available,
            });
        }
        let was_low = self.is_low();
        self.available -= quantity;
        self.reserved += quantity;
        Ok(self.crossing(was_low))
    }

    fn settle(&mut self, quantity: u32) -> Result<(), StockError> {
        if quantity > self.reserved {
            return Err(StockError::NotReserved {
                product: self.product.clone(),
                wanted: quantity,
                reserved: self.reserved,
            });
        }
        self.reserved -= quantity;
        Ok(())
    }

    /// The order paid: its reserved units are sold.
    ///
    /// # Errors
    /// [`StockError::NotReserved`]; nothing changes.
    pub fn commit(&mut self, quantity: u32) -> Result<(), StockError> {
        self.settle(quantity)?;
        self.sold += quantity;
        Ok(())
    }

    /// Reserved units go back on the shelf: the order will not pay, or (once
    /// its committed units are un-committed) it failed or came back after payment.
    ///
    /// # Errors
    /// [`StockError::NotReserved`] or [`StockError::Overflow`]; nothing changes.
    pub fn release(&mut self, quantity: u32) -> Result<Option<Crossing>, StockError> {
        let available = self
            .available
            .checked_add(quantity)
            .ok_or(StockError::Overflow {
                product: self.product.clone(),
            })?;
        let was_low = self.is_low();
        self.settle(quantity)?;
        self.available = available;
        Ok(self.crossing(was_low))
    }

    /// New units arrive.
    ///
    /// # Errors
    /// [`StockError::Overflow`]; nothing changes.
    pub fn restock(&mut self, quantity: u32) -> Result<Option<Crossing>, StockError> {
        let overflow = || StockError::Overflow {
            product: self.product.clone(),
        };
        let available = self.available.checked_add(quantity).ok_or_else(overflow)?;
        let restocked = self.restocked.checked_add(quantity).ok_or_else(overflow)?;
        let was_low = self.is_low();
        self.available = available;
        self.restocked = restocked;
        Ok(self.crossing(was_low))
    }
}

/// Reserves every line of an order, or none: `lines` are indexes into `stock`
/// with quantities. On error nothing has changed.
///
/// ```
/// use flowline::orderflow::{reserve_all, Stock};
/// let mut shelf = vec![Stock::new("a", 5, 1), Stock::new("b", 1, 1)];
/// assert!(reserve_all(&mut shelf, &[(0, 2), (1, 3)]).is_err());
/// assert_eq!((shelf[0].available, shelf[1].available), (5, 1), "nothing reserved");
/// reserve_all(&mut shelf, &[(0, 2), (1, 1)])?;
/// assert_eq!((shelf[0].reserved, shelf[1].reserved), (2, 1));
/// # Ok::<(), flowline::orderflow::StockError>(())
/// ```
///
/// # Errors
/// The first line that cannot be reserved, as [`StockError::Insufficient`].
pub fn reserve_all(
    stock: &mut [Stock],
    lines: &[(usize, u32)],
) -> Result<Vec<(usize, Crossing)>, StockError> {
    let mut trial = stock.to_vec();
    let mut crossings = Vec::new();
    for &(index, quantity) in lines {
        let Some(item) = trial.get_mut(index) else {
            return Err(StockError::Insufficient {
                product: format!("#{index}"),
                wanted: quantity,
                available: 0,
            });
        };
        if let Some(crossing) = item.reserve(quantity)? {
            crossings.push((index, crossing));
        }
    }
    stock.clone_from_slice(&trial);
    Ok(crossings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserving_below_the_threshold_crosses_once() {
        let mut watch = Stock::new("prod-x-001", 16, 15);
        assert_eq!(watch.reserve(1).unwrap(), None); // 15: not below yet
        assert_eq!(watch.reserve(1).unwrap(), Some(Crossing::FellBelow));
        assert_eq!(watch.reserve(1).unwrap(), None, "already low: no new alert");
        assert_eq!(watch.restock(10).unwrap(), Some(Crossing::RoseAbove));
        assert!(watch.is_balanced());
    }

    #[test]
    fn never_more_than_is_there() {
        let mut board = Stock::new("prod-x-004", 2, 5);
        let err = board.reserve(3).unwrap_err();
        assert_eq!(err.to_string(), "prod-x-004: 3 wanted, 2 available");
        assert_eq!(board, Stock::new("prod-x-004", 2, 5), "unchanged");
        assert!(board.commit(1).is_err(), "nothing reserved to commit");
        assert!(board.release(1).is_err());
        board.reserve(2).unwrap();
        board.commit(2).unwrap();
        assert_eq!((board.available, board.reserved, board.sold), (0, 0, 2));
        assert!(Stock::new("p", u32::MAX, 0).restock(1).is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(Vec<(usize, u32)>),
        Commit(usize),
        Release(usize),
        Restock(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec((0usize..3, 1u32..8), 1..4).prop_map(Op::Reserve),
            (0usize..8).prop_map(Op::Commit),
            (0usize..8).prop_map(Op::Release),
            (0usize..3, 0u32..20).prop_map(|(i, q)| Op::Restock(i, q)),
        ]
    }

    proptest! {
        #[test]
        fn stock_balances_and_never_goes_negative(ops in proptest::collection::vec(op(), 1..60)) {
            let mut shelf = vec![
                Stock::new("a", 10, 3),
                Stock::new("b", 5, 2),
                Stock::new("c", 0, 1),
            ];
            // Reservations made and not yet settled: (lines) per order.
            let mut open: Vec<Vec<(usize, u32)>> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(lines) => {
                        let before = shelf.clone();
                        match reserve_all(&mut shelf, &lines) {
                            Ok(_) => open.push(lines),
                            Err(_) => prop_assert_eq!(&shelf, &before, "a failed reservation changed stock"),
                        }
                    }
                    Op::Commit(pick) | Op::Release(pick) if !open.is_empty() => {
                        let lines = open.remove(pick % open.len());
                        for (i, q) in lines {
                            match op {
                                Op::Commit(_) => shelf[i].commit(q).unwrap(),
                                _ => { shelf[i].release(q).unwrap(); }
                            }
                        }
                    }
                    Op::Restock(i, q) => { shelf[i].restock(q).unwrap(); }
                    _ => {}
                }
                for item in &shelf {
                    prop_assert!(item.is_balanced(), "{:?}", item);
                }
            }
            // What is still reserved is exactly what open orders hold.
            for (i, item) in shelf.iter().enumerate() {
                let held: u32 = open.iter().flatten().filter(|(j, _)| *j == i).map(|(_, q)| q).sum();
                prop_assert_eq!(item.reserved, held);
            }
        }
    }
}
