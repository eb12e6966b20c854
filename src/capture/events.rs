//! The pod's events on a run's stream: the one way the worker and the monitor queue an
//! event (a failure is logged, never fatal), and the `ai.run.log` draft of a record.

use super::Record;
use crate::emit::{Draft, RunStream};

/// Queues an event on the run's stream. A stream that is gone means the worker is exiting,
/// and the spool already holds everything queued before: the failure is logged, not returned.
pub async fn queue(stream: &RunStream, draft: Draft) {
    let event_type = draft.event_type().to_owned();
    if let Err(err) = stream.emit(draft).await {
        tracing::warn!(error = %err, event_type, "could not queue an event of the run");
    }
}

/// The `ai.run.log` event of one record, from `source` (`stdout`, `stderr`, a log file's name).
pub fn log_draft(record: Record, source: &str) -> Draft {
    Draft::log(record.message, record.level, source.into())
}
