//! Every log tail of the run, read together off the async threads; their records become
//! `ai.run.log` events.

use std::path::PathBuf;
use std::time::Instant;

use super::Looking;
use crate::capture::{MAX_LINE_BYTES, Record as LogRecord, log_draft, queue};
use crate::monitor::beneath::BeneathError;
use crate::monitor::tail::LogTail;

/// Longer log lines are cut (as the relay does with the child's output).
const MAX_LOG_MESSAGE: usize = MAX_LINE_BYTES;

impl Looking {
    /// Reads the logs with news (all of them, to their end, when `to_end`), off the async
    /// threads, and queues their records.
    pub(super) async fn read_logs(&mut self, to_end: bool) {
        if self.tails.is_empty() {
            return;
        }
        // Every tail is visited, news or not: a progress bar or a traceback in a log may be
        // waiting on time alone.
        let names: Vec<PathBuf> = self.tails.keys().cloned().collect();
        let dir = self.dir.clone();
        let mut tails: Vec<(PathBuf, LogTail, bool)> = names
            .into_iter()
            .filter_map(|name| {
                let pending = self.logs_pending.remove(&name) || to_end;
                self.tails.remove(&name).map(|tail| (name, tail, pending))
            })
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            let mut records: Vec<(String, LogRecord)> = Vec::new();
            let mut more = Vec::new();
            let mut refusals = Vec::new();
            for (name, tail, pending) in &mut tails {
                let mut out = Vec::new();
                if *pending {
                    loop {
                        match tail.read(&dir, now, &mut out) {
                            Ok(true) if to_end => continue,
                            Ok(true) => more.push(name.clone()),
                            Ok(false) => {}
                            Err(err @ BeneathError::Link { .. }) => refusals.push(err),
                            Err(err) => {
                                tracing::debug!(file = %tail.path().display(), error = %err, "cannot read a log file");
                            }
                        }
                        break;
                    }
                } else {
                    tail.tick(now, &mut out);
                }
                if to_end {
                    tail.finish(&mut out);
                }
                let source = name.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                records.extend(out.into_iter().map(|record| (source.clone(), record)));
            }
            (tails, records, more, refusals)
        })
        .await;
        let Ok((tails, records, more, refusals)) = read else {
            tracing::error!("reading log files failed");
            return;
        };
        for (name, tail, _) in tails {
            self.tails.insert(name, tail);
        }
        for refusal in refusals {
            self.refuse(&refusal).await;
        }
        // A log with more to read than one step allows is read again at the next tick.
        self.logs_pending.extend(more);
        for (source, record) in records {
            self.report.log_records += 1;
            let mut record = record;
            if record.message.len() > MAX_LOG_MESSAGE {
                let mut cut = MAX_LOG_MESSAGE;
                while !record.message.is_char_boundary(cut) {
                    cut -= 1;
                }
                record.message.truncate(cut);
            }
            queue(&self.stream, log_draft(record, &source)).await;
        }
    }
}
