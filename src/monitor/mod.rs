//! The run-directory monitor: while a run's pipeline runs, the worker watches its directory
//! (notify, no polling), uploads artifacts as soon as their writer closed them and nobody
//! else writes them, or once they settle (a file kept open, a rewrite; and again when their
//! content changes) and tails `*.log` files into `ai.run.log` events; when the run ends a final
//! sweep catches what was written last. It owns no process and never blocks the child:
//! it only reads files and queues events on the run's stream.
//!
//! Nothing outside the run directory is read, watched, tailed or uploaded: every file and
//! folder is opened through `beneath` (no symbolic link is ever followed, and the opened
//! descriptor is what is checked), and the watch does not enter linked folders. A link is
//! reported once, as `ai.artifact.failed`.
//!
//! `classify` (which files), `settle` (debouncing), `watch` (notify), `writers` (whether a
//! file is still open for writing), `beneath` (opening without links), `tail` (one log
//! file), `metrics` (`metrics.json` values), `record` (what earlier attempts reported);
//! uploads go through `crate::artifacts` (object_store, sha256). The loop over one
//! run is `looking` (with its artifact uploads in `looking::artifacts` and its log tails in
//! `looking::logs`); this file is the monitor's face: settings, start, finish, report.

pub mod beneath;
pub mod classify;
mod looking;
pub mod metrics;
pub mod record;
pub mod settle;
pub mod tail;
pub mod watch;
pub mod writers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use beneath::{BeneathError, RunDir, open_beneath};
pub use classify::{Class, Kind, classify};

use self::looking::Looking;
use crate::artifacts::ArtifactStore;
use crate::emit::RunStream;
use crate::run::RunId;

/// The monitor's settings, shared by every run of a worker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where artifacts go; `None`: they are detected but not uploaded.
    pub artifacts: Option<ArtifactStore>,
    /// A file nobody closed (or that is rewritten) is uploaded once no change was seen on it
    /// for this long.
    pub settle: Duration,
    /// Files uploaded at once.
    pub uploads: usize,
}

impl Settings {
    pub fn new(artifacts: Option<ArtifactStore>) -> Settings {
        Settings { artifacts, settle: Duration::from_secs(2), uploads: 4 }
    }
}

/// What the monitor did for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `ai.artifact.registered` events (new content).
    pub registered: usize,
    /// `ai.artifact.failed` events.
    pub failed: usize,
    /// `ai.run.log` events from log files.
    pub log_records: u64,
    /// Uploads the end of the run could not wait for (each also reported as failed).
    pub unfinished: usize,
}

/// A running monitor; [`Monitor::finish`] ends it.
pub struct Monitor {
    finish: oneshot::Sender<Instant>,
    watching: Option<oneshot::Receiver<()>>,
    task: tokio::task::JoinHandle<Report>,
}

impl Monitor {
    /// Starts watching `dir`, the run's directory, reporting on `stream`. Files already there
    /// are looked at like new ones, except what the record of earlier attempts lists
    /// (`record`): an unchanged artifact is not uploaded again, and a log is tailed from
    /// where they stopped.
    pub fn start(settings: Settings, run_id: RunId, dir: PathBuf, stream: RunStream) -> Monitor {
        let (finish, finished) = oneshot::channel();
        let (watching_tx, watching) = oneshot::channel();
        let task = tokio::spawn(async move {
            let dir = match RunDir::open(&dir) {
                Ok(dir) => dir,
                Err(err) => {
                    crate::notice!(
                        warn,
                        "scientist work: cannot open the run directory {} ({err}); no artifacts or log files \
                         are collected for this run",
                        dir.display()
                    );
                    let _ = finished.await;
                    return Report::default();
                }
            };
            let mut looking = Looking::new(settings, run_id, dir, stream);
            looking.run(watching_tx, finished).await;
            looking.report
        });
        Monitor { finish, watching: Some(watching), task }
    }

    /// Waits until the run directory is watched and what was already in it listed: a file
    /// written from then on raises an event (tests and benchmarks write then). Returns at
    /// once when the directory could not be opened.
    pub async fn watching(&mut self) {
        if let Some(watching) = self.watching.take() {
            let _ = watching.await;
        }
    }

    /// The run ended: sweeps the directory for what no event announced yet, reads the logs
    /// to their end, and waits up to `within` for uploads. Uploads still going then are
    /// abandoned and reported as `ai.artifact.failed`.
    pub async fn finish(self, within: Duration) -> Report {
        let _ = self.finish.send(Instant::now() + within);
        match self.task.await {
            Ok(report) => report,
            Err(err) => {
                tracing::error!(error = %err, "the run-directory monitor failed");
                Report::default()
            }
        }
    }
}
