//! The queue histories ETA estimates are drawn from (`run::eta`), read through the
//! operator's store or API and kept for a minute in this process (the follow view reads
//! the run every second; the history changes only as runs complete).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::control::Operator;
use crate::run::{HISTORY_RUNS, History, Run, RunStatus};
use crate::store::RunFilter;

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
            if self.by_queue.get(&run.queue).is_some_and(|(read_at, _)| read_at.elapsed() < HISTORY_FRESH) {
                continue;
            }
            let filter = RunFilter {
                statuses: vec![RunStatus::Completed],
                queue: Some(run.queue.clone()),
                limit: HISTORY_RUNS,
                cursor: None,
            };
            match store.list(&filter).await {
                Ok(page) => {
                    self.by_queue.insert(run.queue.clone(), (Instant::now(), History::from_runs(&page.items)));
                }
                Err(err) => {
                    tracing::warn!(queue = %run.queue, error = %err, "cannot read the queue's history; no ETA estimate")
                }
            }
        }
    }

    /// The queue's history, empty when none was read.
    pub fn of(&self, queue: &str) -> &History {
        static EMPTY: std::sync::OnceLock<History> = std::sync::OnceLock::new();
        self.by_queue.get(queue).map_or_else(|| EMPTY.get_or_init(History::default), |(_, history)| history)
    }
}
