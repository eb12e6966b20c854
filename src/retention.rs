//! Log retention (`--retain-logs`): a background task that deletes log events older than the
//! retention, a bounded batch at a time, so that ingest is never held up. Run documents,
//! lifecycle and progress events and artifacts are kept whatever their age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{self, Store};
use crate::time::Timestamp;

/// Log events deleted per store call: one short write each.
const BATCH: usize = 1_000;

/// How often old logs are looked for; each round walks the events once.
pub const EVERY: Duration = Duration::from_secs(60 * 60);

/// Deletes every log event received before `cutoff`; returns how many it deleted.
pub async fn prune_once(store: &dyn Store, cutoff: Timestamp) -> store::Result<u64> {
    let (mut deleted, mut from) = (0, None);
    loop {
        let pruned = store.prune_logs(cutoff, from, BATCH).await?;
        deleted += pruned.deleted;
        match pruned.next {
            Some(next) => from = Some(next),
            None => return Ok(deleted),
        }
        // Let the requests waiting on the store go first.
        tokio::task::yield_now().await;
    }
}

/// The time retention goes by: the wall clock, but never further ahead than the store's
/// newest receipt time (read once, at start) plus what the monotonic clock has measured
/// since. A host clock that jumps ahead (booted in year 9999, a bad NTP step) would
/// otherwise make every log look old and delete them all; the worst this costs is that
/// logs are kept longer after a quiet spell before a restart.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    known: Timestamp,
    read_at: Instant,
}

impl Clock {
    /// Reads the store's record of the time (an empty store has none: the wall clock then).
    pub async fn from_store(store: &dyn Store) -> store::Result<Clock> {
        let known = store.last_received_at().await?.unwrap_or_else(Timestamp::now);
        Ok(Clock { known, read_at: Instant::now() })
    }

    /// The trusted time when the wall clock reads `wall`.
    pub fn now(&self, wall: Timestamp) -> Timestamp {
        let elapsed = i64::try_from(self.read_at.elapsed().as_millis()).unwrap_or(i64::MAX);
        let bound = Timestamp::from_millis(self.known.millis().saturating_add(elapsed));
        if wall > bound.plus_seconds(60 * 60) {
            tracing::warn!(
                clock = %wall, trusted = %bound,
                "the host clock is ahead of the store's newest event by more than the time measured since; \
                 log retention goes by the store's time (check the host's clock and NTP)"
            );
        }
        wall.min(bound)
    }
}

/// One round: deletes the log events older than `retain` at the trusted time for `wall`.
pub async fn prune_round(store: &dyn Store, clock: &Clock, retain: Duration, wall: Timestamp) -> store::Result<u64> {
    let retain_seconds = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
    prune_once(store, clock.now(wall).plus_seconds(-retain_seconds)).await
}

/// Every [`EVERY`], deletes the log events older than `retain`. Runs until aborted.
pub async fn keep_pruning(store: Arc<dyn Store>, retain: Duration) {
    let mut clock = None;
    loop {
        if clock.is_none() {
            match Clock::from_store(&*store).await {
                Ok(read) => clock = Some(read),
                Err(err) => {
                    tracing::warn!(error = %err, "log retention could not read the store's time; retrying at the next round")
                }
            }
        }
        if let Some(clock) = &clock {
            match prune_round(&*store, clock, retain, Timestamp::now()).await {
                Ok(0) => tracing::debug!("no log events past the retention"),
                Ok(deleted) => tracing::info!(deleted, "deleted log events past the retention"),
                Err(err) => tracing::warn!(error = %err, "log retention failed; retrying at the next round"),
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}
