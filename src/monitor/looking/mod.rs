//! The loop over one run's directory: changes from notify, files closed by their writer or
//! settled, finished uploads, log ticks, until the run ends; then the final sweep and the
//! record for a later attempt. What becomes of an artifact is `artifacts`, of a log file `logs`.

mod artifacts;
mod logs;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Map;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use self::artifacts::{Finished, Ready};
use super::beneath::{BeneathError, EntryKind, RunDir};
use super::classify::{Class, Kind, classify};
use super::record::{self, Record, Version};
use super::settle::Settler;
use super::tail::LogTail;
use super::watch::{self, Change};
use super::{Report, Settings};
use crate::capture::queue;
use crate::emit::{Draft, RunStream};
use crate::event::payload::ArtifactFailed;
use crate::run::RunId;

/// How often log files with news are read, and progress bars and tracebacks in them looked at.
const LOG_TICK: Duration = Duration::from_millis(250);

/// A file that never stops changing is still uploaded this often.
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(60);

/// A new folder is scanned again this long after it appeared (or after the settle time, if
/// shorter), for files written into it before notify watched it.
const FOLDER_RESCAN: Duration = Duration::from_millis(250);

/// The record of what was reported is written at most this often (and at the end).
const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// What the monitor knows of one artifact file (keyed by its path in the run directory).
#[derive(Debug)]
struct FileState {
    kind: Kind,
    /// `ai.artifact.detected` was sent.
    detected: bool,
    /// The version last stored (or listed by the record of an earlier attempt).
    stored: Option<Version>,
    in_flight: bool,
    /// Changed while its upload was going: look again when it ends.
    dirty: bool,
    /// Waiting for an upload slot.
    queued: bool,
    /// An upload on close was started: later changes are rewrites, which wait to settle.
    closed_once: bool,
}

/// The monitor's state for one run. Paths are relative to the run directory.
pub(super) struct Looking {
    settings: Settings,
    run_id: RunId,
    dir: RunDir,
    stream: RunStream,
    /// `None` once the run ended, or when the directory could not be watched.
    watcher: Option<watch::DirWatcher>,
    files: HashMap<PathBuf, FileState>,
    settler: Settler<PathBuf>,
    /// New folders (the empty path: all of them), scanned again once they settled (see
    /// `watch::Change::Folder`).
    folders: Settler<PathBuf>,
    tails: HashMap<PathBuf, LogTail>,
    /// How far each log was reported, as the record says (updated at the end).
    log_offsets: BTreeMap<PathBuf, u64>,
    /// Links already reported as `ai.artifact.failed`.
    refused: HashSet<PathBuf>,
    /// Something new to write in the record, and when it was last written.
    record_dirty: bool,
    record_saved: Instant,
    record_failed: bool,
    /// Logs with news since they were last read.
    logs_pending: HashSet<PathBuf>,
    uploads: JoinSet<Finished>,
    waiting: VecDeque<(PathBuf, Ready)>,
    /// The values of `metrics.json` already sent as `ai.run.stage_metric`.
    reported_metrics: BTreeMap<String, f64>,
    /// The run ended: a file changed during its upload is uploaded again at once.
    ending: bool,
    pub(super) report: Report,
}

impl Looking {
    pub(super) fn new(settings: Settings, run_id: RunId, dir: RunDir, stream: RunStream) -> Looking {
        let settle = settings.settle;
        Looking {
            settings,
            run_id,
            dir,
            stream,
            watcher: None,
            files: HashMap::new(),
            settler: Settler::new(settle, MAX_SETTLE_WAIT),
            folders: Settler::new(FOLDER_RESCAN.min(settle), settle),
            tails: HashMap::new(),
            log_offsets: BTreeMap::new(),
            refused: HashSet::new(),
            record_dirty: false,
            record_saved: Instant::now(),
            record_failed: false,
            logs_pending: HashSet::new(),
            uploads: JoinSet::new(),
            waiting: VecDeque::new(),
            reported_metrics: BTreeMap::new(),
            ending: false,
            report: Report::default(),
        }
    }

    /// Watches until `finished` says the run ended; `watching` is told once the directory
    /// is watched and what was there already listed.
    pub(super) async fn run(&mut self, watching: oneshot::Sender<()>, mut finished: oneshot::Receiver<Instant>) {
        // Watch first, then take stock: a file written in between is seen twice, never missed.
        let mut changes = match watch::watch(self.dir.path()) {
            Ok((watcher, changes)) => {
                self.watcher = Some(watcher);
                Some(changes)
            }
            Err(err) => {
                crate::notice!(
                    warn,
                    "scientist work: cannot watch the run directory {} ({err}); artifacts and log files are \
                     collected when the run ends (raise fs.inotify.max_user_watches to watch again)",
                    self.dir.path().display()
                );
                None
            }
        };
        self.take_stock().await;
        let _ = watching.send(());
        let mut tick = tokio::time::interval(LOG_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let deadline = loop {
            let due = [self.settler.next_due(), self.folders.next_due()].into_iter().flatten().min();
            let due_sleep = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Cancel-safe: an mpsc receive. (The channel closes only with the watcher,
                // which lives until `end`.)
                Some(change) = next_change(&mut changes) => self.on_change(change).await,
                // Cancel-safe: a sleep, recreated each turn.
                () = due_sleep => self.on_due(Instant::now()).await,
                // Cancel-safe: a finished task stays in the set until joined.
                Some(joined) = self.uploads.join_next(), if !self.uploads.is_empty() => {
                    self.on_joined(joined).await;
                }
                // Cancel-safe: a missed tick is skipped.
                _ = tick.tick() => {
                    self.read_logs(false).await;
                    if self.record_dirty && self.record_saved.elapsed() >= RECORD_INTERVAL {
                        self.save_record();
                    }
                }
                // Cancel-safe: the receiver is polled by reference.
                deadline = &mut finished => match deadline {
                    Ok(deadline) => break deadline,
                    // The supervisor is gone without asking for an end: nothing to report to.
                    Err(_) => {
                        self.uploads.abort_all();
                        return;
                    }
                },
            }
        };
        self.end(changes, deadline).await;
    }

    /// What the run starts with: the record of what earlier attempts reported, then every file
    /// there now, looked at as if it had just changed. Only the record says what is old: a
    /// file the child wrote before this listing is new like any other.
    async fn take_stock(&mut self) {
        let Record { files, logs } = record::load(&self.dir);
        for (relative, version) in files {
            if let Some(Class::Artifact(kind)) = classify(&relative) {
                let mut state = FileState::new(kind);
                state.stored = Some(version);
                self.files.insert(relative, state);
            }
        }
        for (relative, offset) in logs {
            if classify(&relative) == Some(Class::Log) {
                self.tails.insert(relative.clone(), LogTail::new(relative.clone(), offset));
                self.log_offsets.insert(relative, offset);
            }
        }
        self.sweep(Path::new(""), Instant::now()).await;
    }

    /// Every file under `folder` counts as changed at `now`, and as closed: one that nobody
    /// has open for writing is looked at now (its close may have come before the watch, or
    /// been lost with the events of an overflow). A folder that turned out to be a link
    /// (swapped in after notify saw a folder there) loses its watch and is reported.
    async fn sweep(&mut self, folder: &Path, now: Instant) {
        match scan(&self.dir, folder) {
            Ok(found) => {
                for relative in found {
                    self.on_closed(relative, now).await;
                }
            }
            Err(err @ BeneathError::Link { .. }) => {
                if let Some(watcher) = self.watcher.as_mut() {
                    watcher.unwatch(&self.dir.path().join(folder));
                }
                self.refuse(&err).await;
            }
            // Gone again: nothing to look at.
            Err(_) => {}
        }
    }

    async fn on_change(&mut self, change: Change) {
        let now = Instant::now();
        let relative = |path: &Path| path.strip_prefix(self.dir.path()).ok().map(Path::to_owned);
        match change {
            Change::Files(paths) => {
                let paths: Vec<PathBuf> = paths.iter().filter_map(|path| relative(path)).collect();
                for path in paths {
                    self.on_file(path, now);
                }
            }
            Change::Closed(paths) => {
                let paths: Vec<PathBuf> = paths.iter().filter_map(|path| relative(path)).collect();
                for path in paths {
                    self.on_closed(path, now).await;
                }
            }
            Change::Folder(path) => {
                if let Some(folder) = relative(&path) {
                    // What is in it already is looked at now; what comes before notify
                    // watches it raises no event, and is found when it settled.
                    self.sweep(&folder, now).await;
                    self.folders.touch(folder, now);
                }
            }
            Change::Rescan => self.folders.touch(PathBuf::new(), now),
        }
    }

    /// A file changed (or was found): logs are read at the next tick, artifacts wait to settle
    /// (or for their writer to close them).
    fn on_file(&mut self, relative: PathBuf, now: Instant) {
        match classify(&relative) {
            Some(Class::Log) => {
                if !self.tails.contains_key(&relative) {
                    let tail = LogTail::new(relative.clone(), 0);
                    self.tails.insert(relative.clone(), tail);
                }
                self.logs_pending.insert(relative);
            }
            Some(Class::Artifact(kind)) => {
                self.files.entry(relative.clone()).or_insert_with(|| FileState::new(kind));
                self.settler.touch(relative, now);
            }
            None => {}
        }
    }

    async fn on_due(&mut self, now: Instant) {
        for folder in self.folders.take_due(now) {
            self.sweep(&folder, now).await;
        }
        for relative in self.settler.take_due(now) {
            self.consider(relative, Ready::Settled).await;
        }
    }

    /// The run ended: the last changes, a sweep, logs to their end, uploads until `deadline`,
    /// and the record of it all for a later attempt.
    async fn end(&mut self, mut changes: Option<watch::Changes>, deadline: Instant) {
        self.ending = true;
        self.watcher = None;
        if let Some(changes) = changes.as_mut() {
            while let Some(change) = changes.try_recv() {
                self.on_change(change).await;
            }
        }
        let now = Instant::now();
        // The sweep covers every folder, so pending folder scans are done with it.
        self.folders.take_all();
        self.sweep(Path::new(""), now).await;
        for relative in self.settler.take_all() {
            self.consider(relative, Ready::Settled).await;
        }
        self.read_logs(true).await;
        while !self.uploads.is_empty() {
            tokio::select! {
                // Cancel-safe: a finished task stays in the set until joined.
                Some(joined) = self.uploads.join_next() => self.on_joined(joined).await,
                () = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        self.uploads.abort_all();
        let mut abandoned: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, state)| state.in_flight || state.queued)
            .map(|(relative, _)| relative.clone())
            .collect();
        abandoned.sort();
        for relative in abandoned {
            self.report.unfinished += 1;
            self.report.failed += 1;
            let error = "the run ended before its upload finished (see --artifact-wait)";
            let failed = ArtifactFailed { path: path_text(&relative), error: Some(error.into()), extra: Map::new() };
            queue(&self.stream, Draft::of(&failed)).await;
        }
        for (relative, tail) in &self.tails {
            self.log_offsets.insert(relative.clone(), tail.offset());
        }
        self.save_record();
    }

    /// Reports a link the monitor will not follow, once per link (later events and rescans
    /// that meet it again say nothing new).
    async fn refuse(&mut self, refusal: &BeneathError) {
        let BeneathError::Link { link, .. } = refusal else { return };
        if !self.refused.insert(link.clone()) {
            return;
        }
        self.report.failed += 1;
        let failed = ArtifactFailed { path: path_text(link), error: Some(refusal.to_string()), extra: Map::new() };
        queue(&self.stream, Draft::of(&failed)).await;
    }

    /// Writes what was reported so far for a later attempt (see `record`); a failure is said
    /// once and costs only uploads repeated on a retry.
    fn save_record(&mut self) {
        let files = self
            .files
            .iter()
            .filter_map(|(relative, state)| state.stored.clone().map(|version| (relative.clone(), version)))
            .collect();
        let record = Record { files, logs: self.log_offsets.clone() };
        self.record_dirty = false;
        self.record_saved = Instant::now();
        if let Err(err) = record::save(&self.dir, &record)
            && !std::mem::replace(&mut self.record_failed, true)
        {
            crate::notice!(
                warn,
                "scientist work: cannot write the monitor's record ({err}); a retry of this run will upload its \
                 files again"
            );
        }
    }
}

impl FileState {
    fn new(kind: Kind) -> FileState {
        FileState {
            kind,
            detected: false,
            stored: None,
            in_flight: false,
            dirty: false,
            queued: false,
            closed_once: false,
        }
    }
}

/// The next change, or never when there is no watcher.
async fn next_change(changes: &mut Option<watch::Changes>) -> Option<Change> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// The paths under `folder` (relative to the run directory) whose names the monitor cares
/// about: regular files, and links (refused when opened, so that they are reported).
/// Hidden folders are not entered, nor are links to folders.
///
/// # Errors
/// When `folder` itself cannot be listed (a link, or gone); a sub-folder that cannot is
/// left out.
fn scan(dir: &RunDir, folder: &Path) -> Result<Vec<PathBuf>, BeneathError> {
    let mut found = Vec::new();
    let mut folders = vec![folder.to_owned()];
    let mut top = true;
    while let Some(folder) = folders.pop() {
        let entries = match dir.list(&folder) {
            Ok(entries) => entries,
            Err(err) if top => return Err(err),
            Err(_) => continue,
        };
        top = false;
        for (name, kind) in entries {
            let relative = folder.join(&name);
            match kind {
                EntryKind::Folder if !name.as_encoded_bytes().starts_with(b".") => folders.push(relative),
                EntryKind::File | EntryKind::Link if classify(&relative).is_some() => found.push(relative),
                _ => {}
            }
        }
    }
    Ok(found)
}

/// A relative path as events carry it (always `/`-separated).
fn path_text(relative: &Path) -> String {
    relative.to_string_lossy().into_owned()
}
