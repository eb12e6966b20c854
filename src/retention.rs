//! Log retention (`--retain-logs`): a background task that deletes log events older than the
//! retention, a bounded batch at a time, so that ingest is never held up. Run documents,
//! lifecycle and progress events and artifacts are kept whatever their age.

use std::sync::Arc;
use std::time::Duration;

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

/// Every [`EVERY`], deletes the log events older than `retain`. Runs until aborted.
pub async fn keep_pruning(store: Arc<dyn Store>, retain: Duration) {
    let retain_seconds = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
    loop {
        let cutoff = Timestamp::now().plus_seconds(-retain_seconds);
        match prune_once(&*store, cutoff).await {
            Ok(0) => tracing::debug!(%cutoff, "no log events past the retention"),
            Ok(deleted) => tracing::info!(deleted, %cutoff, "deleted log events past the retention"),
            Err(err) => tracing::warn!(error = %err, "log retention failed; retrying at the next round"),
        }
        tokio::time::sleep(EVERY).await;
    }
}
