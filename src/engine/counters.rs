//! A step's counters: commutative adds, and bounded adds (escrow) that take
//! from a key only while enough remains.

use super::context::{check_key, StateError, StepContext};

impl StepContext {
    /// Adds `delta` (which may be negative) to an integer key of this tenant's
    /// state, at commit: a commutative counter that never conflicts.
    ///
    /// Unlike a [`get`](Self::get) then a [`put`](Self::put), an add reads
    /// nothing, so it records no read check: any number of executions can add
    /// to one key at once without a single commit conflict or re-run. The add is
    /// buffered and applies at commit, atomically with the execution's writes,
    /// emits and the acknowledgement of its input, and only if that commit
    /// applies (a failed execution adds nothing). Several adds to one key in one
    /// execution sum.
    ///
    /// The stored value is a JSON integer: read it with `get::<i64>` or
    /// [`Engine::state::<i64>`](crate::Engine::state); an absent key counts as 0.
    ///
    /// - A [`get`](Self::get) in this execution does not see its own pending
    ///   adds. Reading a key still records a read check as always, so an
    ///   execution that reads a counter conflicts (and re-runs) when an add to it
    ///   commits first.
    /// - A key is a counter or a value within one execution: adding to a key this
    ///   execution has written or deleted, or writing one it has added to, is a
    ///   [`StateError::AddAndWrite`].
    /// - At commit, if the stored value is not a JSON integer in the `i64` range,
    ///   or the sum overflows an `i64`, nothing of the execution applies and it
    ///   fails permanently (it dead-letters at once; an API step answers 500)
    ///   with an error that names the key: see
    ///   [`AddError`](crate::backend::AddError).
    ///
    /// ```
    /// use flowline::prelude::*;
    /// use flowline::testing::TestHarness;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct OrderPaid { cents: i64 }
    /// impl Event for OrderPaid { const TOPIC: &'static str = "order.paid"; }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let flow = Flow::builder()
    ///     .external::<OrderPaid>()
    ///     .step(Step::event::<OrderPaid>("dashboard").handle(
    ///         |ctx: StepContext, paid: OrderPaid| async move {
    ///             ctx.add("orders/paid", 1)?;
    ///             ctx.add("revenue_cents", paid.cents)?;
    ///             Ok::<_, StepError>(())
    ///         },
    ///     ))
    ///     .build()
    ///     .unwrap();
    /// let harness = TestHarness::start(flow).await.unwrap();
    /// let shop = TenantId::new("shop-1").unwrap();
    /// for cents in [1250, 990, -200] {
    ///     harness.emit(&shop, &OrderPaid { cents }).await.unwrap();
    /// }
    /// harness.settle().await;
    /// assert_eq!(harness.state::<i64>(&shop, "orders/paid").await, Some(3));
    /// assert_eq!(harness.state::<i64>(&shop, "revenue_cents").await, Some(2040));
    /// harness.shutdown().await;
    /// # }
    /// ```
    ///
    /// # Errors
    /// The key is invalid, this execution wrote or deleted the key
    /// ([`StateError::AddAndWrite`]), or its adds to the key sum past the
    /// range of an `i64` ([`StateError::AddOverflow`]).
    pub fn add(&self, key: &str, delta: i64) -> Result<(), StateError> {
        self.add_bounded(key, delta, None)
    }

    /// Takes `units` from an integer key at commit, if at least `units` remain:
    /// an [`add_at_least`](Self::add_at_least) of `-units` with a floor of 0.
    ///
    /// The escrow of stock, seats or credit: any number of executions take from
    /// one key at once without a conflict, and the key never goes below zero.
    /// When the units are not there at commit, nothing of the execution applies
    /// and the handler runs again; read the key with [`peek`](Self::peek)
    /// first to decide what to do when they are not.
    ///
    /// ```
    /// use flowline::prelude::*;
    /// use flowline::testing::TestHarness;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct HallOpened { seats: i64 }
    /// impl Event for HallOpened { const TOPIC: &'static str = "hall.opened"; }
    /// #[derive(Serialize, Deserialize)]
    /// struct SeatWanted { who: String }
    /// impl Event for SeatWanted { const TOPIC: &'static str = "seat.wanted"; }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let flow = Flow::builder()
    ///     .external::<HallOpened>()
    ///     .external::<SeatWanted>()
    ///     .step(Step::event::<HallOpened>("open").handle(
    ///         |ctx: StepContext, opened: HallOpened| async move {
    ///             ctx.add("seats", opened.seats)?;
    ///             Ok::<_, StepError>(())
    ///         },
    ///     ))
    ///     .step(Step::event::<SeatWanted>("booking").handle(
    ///         |ctx: StepContext, wanted: SeatWanted| async move {
    ///             let free = ctx.peek::<i64>("seats").await?.unwrap_or(0);
    ///             let key = format!("booking/{}", wanted.who);
    ///             if free >= 1 {
    ///                 ctx.take("seats", 1)?;
    ///                 ctx.put(&key, "booked")?;
    ///             } else {
    ///                 ctx.put(&key, "sold out")?;
    ///             }
    ///             Ok::<_, StepError>(())
    ///         },
    ///     ))
    ///     .build()
    ///     .unwrap();
    /// let harness = TestHarness::start(flow).await.unwrap();
    /// let hall = TenantId::new("hall-1").unwrap();
    /// harness.emit(&hall, &HallOpened { seats: 2 }).await.unwrap();
    /// harness.settle().await;
    /// for who in ["ann", "bob", "cy"] {
    ///     harness.emit(&hall, &SeatWanted { who: who.into() }).await.unwrap();
    /// }
    /// harness.settle().await;
    /// assert_eq!(harness.state::<i64>(&hall, "seats").await, Some(0));
    /// let cy = harness.state::<String>(&hall, "booking/cy").await;
    /// assert_eq!(cy.as_deref(), Some("sold out"));
    /// harness.shutdown().await;
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`add_at_least`](Self::add_at_least); `units` above `i64::MAX` is a
    /// [`StateError::AddOverflow`].
    pub fn take(&self, key: &str, units: u64) -> Result<(), StateError> {
        let units = i64::try_from(units).map_err(|_| StateError::AddOverflow {
            key: key.to_string(),
        })?;
        self.add_bounded(key, -units, Some(0))
    }

    /// Adds `delta` to an integer key at commit if the key then holds at least
    /// `floor`: a bounded [`add`](Self::add), checked against the value
    /// committed when the commit applies (an escrow), never against a read.
    ///
    /// Bounded adds that fit never conflict, however many run at once. One that
    /// would take the key below `floor` fails the commit as a conflict: nothing
    /// of the execution applies and the handler runs again, so a handler that
    /// bounds an add also checks, with [`peek`](Self::peek) or
    /// [`get`](Self::get), what it does when the bound does not hold. Several
    /// adds to one key in one execution sum, and the highest of their floors
    /// bounds the sum. [`take`](Self::take) is the common case.
    ///
    /// A floor can also say something of the value *before* the add: adding
    /// `+n` with a floor of `t + n` applies only if the key held at least `t`.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    pub fn add_at_least(&self, key: &str, delta: i64, floor: i64) -> Result<(), StateError> {
        self.add_bounded(key, delta, Some(floor))
    }

    fn add_bounded(&self, key: &str, delta: i64, floor: Option<i64>) -> Result<(), StateError> {
        check_key(key)?;
        let mut txn = self.txn();
        if txn.writes.contains_key(key) {
            return Err(StateError::AddAndWrite {
                key: key.to_string(),
            });
        }
        let overflow = || StateError::AddOverflow {
            key: key.to_string(),
        };
        // The key is copied only the first time this execution adds to it.
        match txn.adds.get_mut(key) {
            Some((sum, bound)) => {
                *sum = sum.checked_add(delta).ok_or_else(overflow)?;
                // `None` orders below every `Some`: the highest floor wins.
                *bound = (*bound).max(floor);
            }
            None => {
                txn.adds.insert(key.to_string(), (delta, floor));
            }
        }
        Ok(())
    }
}
