//! The sender: delivers pending events in stream order, in batches (at `batch_events`, once
//! the oldest waited `flush_every`, or at once for a prompt event), retrying with backoff; acknowledged events leave
//! the ledger (and their segment, once it holds nothing undelivered).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ledger::Shared;
use super::{BACKOFF_FIRST, BACKOFF_MAX, MAX_REQUEST_EVENTS, StreamConfig, StreamStats};
use crate::backoff::Backoff;
use crate::control::ControlPlane;
use crate::emit::spool::{REJECTED_FILE, SpoolDir};

/// Delivers pending events in order until the stream is closed and nothing waits.
pub(super) async fn send_loop(
    shared: Arc<Shared>,
    plane: Arc<dyn ControlPlane>,
    spool: SpoolDir,
    config: StreamConfig,
    stats: Arc<StreamStats>,
) {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    let mut failing_since: Option<Instant> = None;
    loop {
        enum Next {
            Done,
            Send(Vec<Arc<str>>),
            /// Wait for more events, or for the oldest to come due.
            Wait(Option<Duration>),
        }
        let next = {
            let ledger = shared.lock();
            match ledger.pending.front().map(|pending| pending.since.elapsed()) {
                None if ledger.closing => Next::Done,
                None => Next::Wait(None),
                Some(age)
                    if ledger.closing
                        || ledger.prompt > 0
                        || ledger.pending.len() >= config.batch_events
                        || age >= config.flush_every =>
                {
                    Next::Send(
                        ledger.pending.iter().take(MAX_REQUEST_EVENTS).map(|pending| pending.line.clone()).collect(),
                    )
                }
                Some(age) => Next::Wait(Some(config.flush_every - age)),
            }
        };
        let batch = match next {
            Next::Done => return,
            Next::Send(batch) => batch,
            // Cancel-safe: a wake-up sent meanwhile is kept by Notify as a permit.
            Next::Wait(None) => {
                shared.wake.notified().await;
                continue;
            }
            Next::Wait(Some(due)) => {
                let _ = tokio::time::timeout(due, shared.wake.notified()).await;
                continue;
            }
        };
        match plane.send_lines(&batch).await {
            Ok(answer) => {
                let rejected = answer.rejected;
                if let Some(since) = failing_since.take() {
                    tracing::warn!(to = %plane.describe(), after = ?since.elapsed(), "events are being delivered again");
                }
                if !rejected.is_empty() {
                    set_aside(&spool, rejected.iter().filter_map(|r| batch.get(r.line.wrapping_sub(1))));
                    for refused in &rejected {
                        tracing::warn!(reason = %refused.reason, "an event was refused for good; kept in {REJECTED_FILE}");
                    }
                }
                stats.delivered.fetch_add((batch.len() - rejected.len()) as u64, Ordering::Relaxed);
                stats.refused.fetch_add(rejected.len() as u64, Ordering::Relaxed);
                shared.lock().acknowledge(batch.len());
                backoff.reset();
            }
            Err(err) if err.is_retryable() => {
                if failing_since.is_none() {
                    tracing::warn!(to = %plane.describe(), error = %crate::errors::chain(&err),
                        "cannot deliver events; they stay in the spool and are retried with backoff");
                    failing_since = Some(Instant::now());
                } else {
                    tracing::debug!(error = %crate::errors::chain(&err), "delivery retry failed");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, events = batch.len(), "the control plane refused a whole batch; kept in {REJECTED_FILE}");
                set_aside(&spool, batch.iter());
                stats.refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared.lock().acknowledge(batch.len());
            }
        }
    }
}

/// Keeps events refused for good in the spool's [`REJECTED_FILE`]; a failure is logged.
fn set_aside<'a>(spool: &SpoolDir, lines: impl Iterator<Item = &'a Arc<str>>) {
    if let Err(err) = spool.set_aside(lines.map(|line| &**line)) {
        tracing::error!(error = %err, "could not keep refused events in {REJECTED_FILE}");
    }
}
