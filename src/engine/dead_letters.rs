//! The engine's dead-letter operations: listing, replaying (as they are or
//! corrected) and purging, by id or by query.

use super::error::EngineError;
use super::handle::Engine;
use crate::backend::{DeadLetter, DeadLetterQuery};
use crate::event::{Event, Payload, VERSION_HEADER};

/// How many dead letters one round of a by-query operation reads.
const PAGE: usize = 500;

impl Engine {
    /// Lists dead letters, oldest first, filtered by step, tenant, kind and
    /// time, a page at a time with [`DeadLetterQuery::after`].
    ///
    /// ```
    /// # use flowline::{testing::TestHarness, Flow, Step, Event, StepContext, StepError};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # impl Event for Ping { const TOPIC: &'static str = "ping"; }
    /// use flowline::{DeadLetterQuery, FailureKind};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), flowline::EngineError> {
    /// # let flow = Flow::builder().external::<Ping>().step(Step::event::<Ping>("pong")
    /// #     .handle(|_ctx: StepContext, _p: Ping| async { Ok(()) })).build().unwrap();
    /// # let h = TestHarness::start(flow).await?;
    /// # let engine = h.engine();
    /// let mut query = DeadLetterQuery::new().kind(FailureKind::Exhausted).limit(100);
    /// loop {
    ///     let page = engine.dead_letters(&query).await?;
    ///     let Some(last) = page.last() else { break };
    ///     for letter in &page {
    ///         println!("{} failed: {}", letter.step, letter.last_error);
    ///     }
    ///     query = query.after(last.id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The backend failed.
    pub async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, EngineError> {
        Ok(self.shared.backend.dead_letters(query).await?)
    }

    /// The dead letter `id`, if it is kept.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, EngineError> {
        let Some(before) = id.checked_sub(1) else {
            return Ok(None);
        };
        let query = DeadLetterQuery::new().after(before).limit(1);
        let found = self.shared.backend.dead_letters(&query).await?;
        Ok(found.into_iter().find(|d| d.id == id))
    }

    /// Puts dead letters back in the queue; their steps run them again from
    /// attempt 1. Unknown ids are skipped; returns how many went back.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn replay_dead_letters(&self, ids: &[u64]) -> Result<usize, EngineError> {
        let n = self
            .shared
            .backend
            .replay_dead_letters(ids, self.shared.clock.now())
            .await?;
        self.shared.wake.notify_one();
        Ok(n)
    }

    /// Replays every dead letter that matches `query` when the call starts
    /// (its limit caps how many): one that fails again while this runs is a
    /// new dead letter, and is not replayed a second time.
    ///
    /// # Errors
    /// The backend failed; the dead letters replayed before it did stay
    /// replayed.
    pub async fn replay_matching(&self, query: &DeadLetterQuery) -> Result<usize, EngineError> {
        let mut replayed = 0;
        for ids in self.matching_ids(query).await?.chunks(PAGE) {
            replayed += self.replay_dead_letters(ids).await?;
        }
        Ok(replayed)
    }

    /// Replays dead letter `id` with its event's payload replaced by
    /// `event`: for a payload that no retry could handle (a field the
    /// step's input type no longer reads, say) and that an operator
    /// corrected. The event keeps its id, topic, tenant and trace. Returns
    /// false if there is no such dead letter.
    ///
    /// # Errors
    /// [`EngineError::WrongTopic`] if the dead letter's event is not an `E`,
    /// [`EngineError::Encode`] if `event` does not serialize, or the backend
    /// failed.
    pub async fn replay_corrected<E: Event>(
        &self,
        id: u64,
        event: &E,
    ) -> Result<bool, EngineError> {
        let Some(letter) = self.dead_letter(id).await? else {
            return Ok(false);
        };
        if letter.event.topic.as_str() != E::TOPIC {
            return Err(EngineError::WrongTopic {
                expected: letter.event.topic.to_string(),
                given: E::TOPIC.to_string(),
            });
        }
        // The event keeps its headers, its payload version among them: a
        // payload in today's shape fits only a dead letter of today's version.
        let recorded = letter.event.header(VERSION_HEADER).unwrap_or("1");
        if recorded != E::VERSION.to_string() {
            return Err(EngineError::WrongTopic {
                expected: format!("{} version {recorded}", letter.event.topic),
                given: format!("{} version {}", E::TOPIC, E::VERSION),
            });
        }
        self.replay_corrected_json(id, Payload::encode(event)?)
            .await
    }

    /// As [`replay_corrected`](Self::replay_corrected), with the payload as
    /// JSON (from an operator's tool, say); the step decodes it when it runs.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn replay_corrected_json(
        &self,
        id: u64,
        payload: Payload,
    ) -> Result<bool, EngineError> {
        if !self.shared.backend.amend_dead_letter(id, payload).await? {
            return Ok(false);
        }
        Ok(self.replay_dead_letters(&[id]).await? == 1)
    }

    /// Deletes dead letters. Unknown ids are skipped; returns how many went.
    ///
    /// # Errors
    /// The backend failed.
    pub async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, EngineError> {
        Ok(self.shared.backend.purge_dead_letters(ids).await?)
    }

    /// Deletes every dead letter that matches `query` when the call starts
    /// (its limit caps how many).
    ///
    /// # Errors
    /// The backend failed; the dead letters deleted before it did stay
    /// deleted.
    pub async fn purge_matching(&self, query: &DeadLetterQuery) -> Result<usize, EngineError> {
        let mut purged = 0;
        for ids in self.matching_ids(query).await?.chunks(PAGE) {
            purged += self.purge_dead_letters(ids).await?;
        }
        Ok(purged)
    }

    /// The ids of the dead letters that match `query` now, read a page at a
    /// time, up to its limit.
    async fn matching_ids(&self, query: &DeadLetterQuery) -> Result<Vec<u64>, EngineError> {
        let cap = query.limit.unwrap_or(usize::MAX);
        let mut ids = Vec::new();
        let mut page = query.clone();
        while ids.len() < cap {
            page.limit = Some(PAGE.min(cap - ids.len()));
            let found = self.shared.backend.dead_letters(&page).await?;
            let Some(last) = found.last() else { break };
            page.after = Some(last.id);
            ids.extend(found.iter().map(|d| d.id));
        }
        Ok(ids)
    }
}
