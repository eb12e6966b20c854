//! The queue histories ETA estimates are drawn from (`run::eta`), read through the
//! operator's store or API and kept for a minute in this process (the follow view reads
//! the run every second; the history changes only as runs complete).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::control::Operator;
use crate::run::{Eta, HISTORY_RUNS, History, Run, RunStatus};
use crate::store::RunFilter;
use crate::time::Timestamp;

/// How long a queue's history is used before it is read again.
const HISTORY_FRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Histories {
    by_queue: HashMap<String, (Instant, History)>,
}

impl Histories {
    /// Reads the history of every queue of a RUNNING run in `runs` that is not fresh here.
    /// A failed read leaves the queue without one (no estimate), with a warning.
    pub async fn load(&mut self, store: &dyn Operator, runs: &[Run]) {
        for run in runs.iter().filter(|run| run.status == RunStatus::Running) {
            self.load_queue(store, &run.queue).await;
        }
    }

    /// Reads `queue`'s history unless it is fresh here.
    pub async fn load_queue(&mut self, store: &dyn Operator, queue: &str) {
        if self.by_queue.get(queue).is_some_and(|(read_at, _)| read_at.elapsed() < HISTORY_FRESH) {
            return;
        }
        let filter = RunFilter {
            statuses: vec![RunStatus::Completed],
            queue: Some(queue.to_owned()),
            limit: HISTORY_RUNS,
            cursor: None,
        };
        match store.list(&filter).await {
            Ok(page) => {
                self.by_queue.insert(queue.to_owned(), (Instant::now(), History::from_runs(&page.items)));
            }
            Err(err) => tracing::warn!(queue, error = %err, "cannot read the queue's history; no ETA estimate"),
        }
    }

    /// `run`'s remaining time by its queue's history as read here (`Run::eta`).
    pub fn eta(&self, run: &Run, now: Timestamp) -> Option<Eta> {
        run.eta(self.of(&run.queue), now)
    }

    /// The queue's history, empty when none was read.
    pub fn of(&self, queue: &str) -> &History {
        static EMPTY: std::sync::OnceLock<History> = std::sync::OnceLock::new();
        self.by_queue.get(queue).map_or_else(|| EMPTY.get_or_init(History::default), |(_, history)| history)
    }
}

/// `run` as JSON with what the command estimated beside the document's own fields: `etaS`
/// (the whole run's remaining seconds), `etaStageS` (the current stage's) and `etaEstimated`
/// (false when the pipeline sent the figure), when an ETA is known.
pub(crate) fn with_eta(run: &Run, eta: Option<Eta>) -> serde_json::Result<serde_json::Value> {
    let mut value = serde_json::to_value(run)?;
    if let (Some(eta), Some(fields)) = (eta, value.as_object_mut()) {
        fields.insert("etaS".into(), serde_json::json!(eta.run_s));
        fields.insert("etaStageS".into(), serde_json::json!(eta.stage_s));
        fields.insert("etaEstimated".into(), serde_json::json!(eta.estimated));
    }
    Ok(value)
}
