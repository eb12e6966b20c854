//! The order of a run's events on MongoDB, which every `serve` replica agrees on.
//!
//! `_id`s are ObjectIds made by each client, and a batch committed late can land below one a
//! reader has already passed. So each stored event of a run carries `storeSeq`, reserved from
//! the run's counter document in `event_sequences` (one `findOneAndUpdate` `$inc` per run per
//! batch, which reserves a range), and listings order by it. A counter per run rather than one
//! for the store keeps each run's numbers dense: a reader spots a gap from the run's own
//! events, and a slow writer of one run never holds back the tail of another.
//!
//! A reservation is written a moment after it is taken, so a reader may see seq 7 before
//! seq 6. It hands out nothing past such a gap until the gap is filled, or until it is
//! plainly dead: the first event stored above it arrived more than [`GAP_GRACE`] ago, or this
//! process has been waiting on it that long (a writer that crashed between reserving and
//! inserting, or an insert refused as a duplicate, leaves a gap that is never filled). The
//! first rule is what lets a fresh process, such as `runs logs`, pass old dead gaps at once.
//!
//! Events stored before `storeSeq` existed (or by an older replica) have none: they sort
//! first, by `_id`, as they always did, and their cursors stay ObjectId hex.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;

use super::bson::{corrupt, is_duplicate_key};
use super::{EVENT_RECEIVED_AT, EVENT_RUN_ID, EVENT_SEQ, MongoStore};
use crate::run::RunId;
use crate::store::{Error, Result, lock};
use crate::time::Timestamp;

/// The collection of per-run counters: `{ _id: runId, last: <highest seq reserved> }`.
pub(super) const SEQUENCE_COLLECTION: &str = "event_sequences";

/// How long a reader waits for a reserved seq to be written before passing its gap. A live
/// writer fills a gap within one insert's round trip; only a dead one takes longer.
pub const GAP_GRACE: Duration = Duration::from_secs(3);

/// How often a reader that could hand out nothing, because of a gap, looks again.
const GAP_POLL: Duration = Duration::from_millis(100);

/// Gaps remembered at most; the oldest are forgotten first (a forgotten gap that is still
/// open costs one more grace period).
const MAX_TRACKED_GAPS: usize = 4096;

/// Where a listing stands in a run's order: an event of the old, ObjectId-ordered prefix,
/// or one with a seq. Clients see it as an opaque string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventCursor {
    Legacy(ObjectId),
    Seq(i64),
}

impl EventCursor {
    pub(super) fn parse(cursor: &str) -> Result<Self> {
        let invalid = || Error::InvalidCursor(cursor.to_owned());
        // An ObjectId is 24 hex digits; a seq (an i64) has at most 19 decimal ones.
        if cursor.len() == 24 {
            return ObjectId::parse_str(cursor).map(EventCursor::Legacy).map_err(|_| invalid());
        }
        match cursor.parse::<i64>() {
            Ok(seq) if seq > 0 && cursor.bytes().all(|byte| byte.is_ascii_digit()) => Ok(EventCursor::Seq(seq)),
            _ => Err(invalid()),
        }
    }

    pub(super) fn render(self) -> String {
        match self {
            EventCursor::Legacy(id) => id.to_hex(),
            EventCursor::Seq(seq) => seq.to_string(),
        }
    }

    /// The query condition for the events after (`forward`) or before this position.
    pub(super) fn beyond(self, forward: bool) -> Document {
        let no_seq = doc! { EVENT_SEQ: { "$exists": false } };
        match (self, forward) {
            (EventCursor::Legacy(id), true) => {
                doc! { "$or": [{ EVENT_SEQ: { "$exists": false }, "_id": { "$gt": id } }, { EVENT_SEQ: { "$exists": true } }] }
            }
            (EventCursor::Legacy(id), false) => doc! { EVENT_SEQ: { "$exists": false }, "_id": { "$lt": id } },
            (EventCursor::Seq(seq), true) => doc! { EVENT_SEQ: { "$gt": seq } },
            (EventCursor::Seq(seq), false) => doc! { "$or": [{ EVENT_SEQ: { "$lt": seq } }, no_seq] },
        }
    }

    /// The seq a listing after this position counts gaps from (the legacy prefix is before
    /// seq 1).
    pub(super) fn seq_floor(cursor: Option<Self>) -> i64 {
        match cursor {
            Some(EventCursor::Seq(seq)) => seq,
            _ => 0,
        }
    }
}

/// When this process first saw each open gap, so that each costs at most one grace period.
#[derive(Default)]
pub(super) struct Gaps {
    first_seen: Mutex<HashMap<(RunId, i64), Instant>>,
}

impl Gaps {
    /// How long a reader must still hold back at the gap just below event `seq` of `run`;
    /// zero once it may pass.
    fn wait_left(&self, run: &RunId, seq: i64) -> Duration {
        let mut first_seen = lock(&self.first_seen);
        if first_seen.len() >= MAX_TRACKED_GAPS && !first_seen.contains_key(&(run.clone(), seq)) {
            let oldest = first_seen.iter().min_by_key(|(_, seen)| **seen).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                first_seen.remove(&oldest);
            }
        }
        let seen = *first_seen.entry((run.clone(), seq)).or_insert_with(Instant::now);
        GAP_GRACE.saturating_sub(seen.elapsed())
    }

    /// Whether a reader has begun a grace period at the gap just below `seq` of `run`.
    #[cfg(test)]
    pub(super) fn waiting_at(&self, run: &RunId, seq: i64) -> bool {
        lock(&self.first_seen).contains_key(&(run.clone(), seq))
    }
}

/// How far a listing may read in a run's order now.
pub(super) struct Horizon {
    /// The highest seq below which every seq is stored, or passed as dead.
    pub(super) seq: i64,
    /// Set when a gap just above `seq` is still in its grace period: how long to wait
    /// before looking again.
    pub(super) held_for: Option<Duration>,
}

impl MongoStore {
    /// Reserves `count` consecutive seqs of run `run_id`; the first of them.
    pub(super) async fn reserve_seqs(&self, run_id: &RunId, count: usize) -> Result<i64> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        // Two tries: the first finds no counter when this is the run's first batch, and
        // creates it. Not an upsert: SecantusDB answers a racing upsert with no document.
        for _ in 0..2 {
            let reserved = self
                .sequences
                .find_one_and_update(doc! { "_id": run_id.as_str() }, doc! { "$inc": { "last": count } })
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(counter) = reserved {
                let last = counter.get_i64("last").map_err(|err| corrupt("event sequence", err))?;
                return Ok(last - count + 1);
            }
            match self.sequences.insert_one(doc! { "_id": run_id.as_str(), "last": 0_i64 }).await {
                // A concurrent first batch created it: either way it exists now.
                Ok(_) => {}
                Err(err) if is_duplicate_key(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Contention(format!("the event sequence of run {run_id}")))
    }

    /// How far past `floor` the run's order is settled. Computed before the page is read
    /// and then bounding it, so an event written meanwhile below the bound cannot be missed:
    /// every seq up to it is stored already. One count when there is no gap; a binary search
    /// of counts for the lowest missing seq when there is.
    pub(super) async fn horizon(&self, run_id: &RunId, floor: i64) -> Result<Horizon> {
        let highest = self.highest_seq(run_id).await?.unwrap_or(floor);
        let mut floor = floor;
        while floor < highest {
            if self.stored_between(run_id, floor, highest + 1).await? == highest - floor {
                break;
            }
            // The lowest `missing` with fewer than `missing - floor` seqs stored above `floor`.
            let (mut low, mut high) = (floor + 1, highest);
            while low < high {
                let middle = low + (high - low) / 2;
                if self.stored_between(run_id, floor, middle + 1).await? < middle - floor {
                    high = middle;
                } else {
                    low = middle + 1;
                }
            }
            let missing = low;
            let left = if self.stored_long_above(run_id, missing).await? {
                Duration::ZERO
            } else {
                self.gaps.wait_left(run_id, missing)
            };
            if !left.is_zero() {
                return Ok(Horizon { seq: missing - 1, held_for: Some(left.min(GAP_POLL)) });
            }
            tracing::warn!(run = %run_id, seq = missing, "passing a gap in the event order: its writer never stored it");
            floor = missing;
        }
        Ok(Horizon { seq: highest, held_for: None })
    }

    /// Whether the first event stored above the gap at `missing` arrived more than
    /// [`GAP_GRACE`] ago: a writer still alive would have filled the gap by then.
    async fn stored_long_above(&self, run_id: &RunId, missing: i64) -> Result<bool> {
        let above = self
            .events
            .find_one(doc! { EVENT_RUN_ID: run_id.as_str(), EVENT_SEQ: { "$gt": missing } })
            .sort(doc! { EVENT_SEQ: 1 })
            .projection(doc! { EVENT_RECEIVED_AT: 1 })
            .await?;
        let Some(received) = above.as_ref().and_then(|document| document.get_datetime(EVENT_RECEIVED_AT).ok()) else {
            return Ok(false);
        };
        let grace_ms = i64::try_from(GAP_GRACE.as_millis()).unwrap_or(i64::MAX);
        Ok(received.timestamp_millis() < Timestamp::now().millis().saturating_sub(grace_ms))
    }

    async fn highest_seq(&self, run_id: &RunId) -> Result<Option<i64>> {
        let highest = self
            .events
            .find_one(doc! { EVENT_RUN_ID: run_id.as_str(), EVENT_SEQ: { "$exists": true } })
            .sort(doc! { EVENT_SEQ: -1 })
            .projection(doc! { EVENT_SEQ: 1 })
            .await?;
        Ok(highest.as_ref().and_then(stored_seq))
    }

    /// How many events of the run have a seq strictly between `after` and `before`. (`$lt`,
    /// never `$lte`: SecantusDB drops the upper bound of a two-sided `$lte` range on this
    /// compound index.)
    async fn stored_between(&self, run_id: &RunId, after: i64, before: i64) -> Result<i64> {
        let filter = doc! { EVENT_RUN_ID: run_id.as_str(), EVENT_SEQ: { "$gt": after, "$lt": before } };
        let count = self.events.count_documents(filter).await?;
        Ok(i64::try_from(count).unwrap_or(i64::MAX))
    }
}

/// The seq a stored event document carries, if any.
pub(super) fn stored_seq(document: &Document) -> Option<i64> {
    match document.get(EVENT_SEQ)? {
        Bson::Int64(seq) => Some(*seq),
        Bson::Int32(seq) => Some(i64::from(*seq)),
        _ => None,
    }
}
