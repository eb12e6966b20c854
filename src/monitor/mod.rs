//! The run-directory monitor: while a run's pipeline runs, the worker watches its directory
//! (notify, no polling), uploads artifacts once they settle (and again when their content
//! changes) and tails `*.log` files into `ai.run.log` events; when the run ends a final
//! sweep catches what was written last. It owns no process and never blocks the child:
//! it only reads files and queues events on the run's stream.
//!
//! Nothing outside the run directory is read, watched, tailed or uploaded: every file and
//! folder is opened through `beneath` (no symbolic link is ever followed, and the opened
//! descriptor is what is checked), and the watch does not enter linked folders. A link is
//! reported once, as `ai.artifact.failed`.
//!
//! `classify` (which files), `settle` (debouncing), `watch` (notify), `beneath` (opening
//! without links), `upload` (object_store, sha256), `tail` (log files), `metrics`
//! (`metrics.json` values), `record` (what earlier attempts reported). The loop is here.

pub mod beneath;
pub mod classify;
pub mod metrics;
pub mod record;
pub mod settle;
pub mod tail;
pub mod upload;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

pub use beneath::{BeneathError, RunDir, open_beneath};
pub use classify::{Class, Kind, classify};
pub use upload::{ArtifactStore, OpenError, UploadError, Uploaded};

use self::beneath::EntryKind;
use self::record::{Record, Version};
use self::settle::Settler;
use self::tail::LogTail;
use self::watch::Change;
use crate::emit::{Draft, RunStream};
use crate::run::{RunId, Stage};
use crate::worker::logs::Record as LogRecord;

/// How often log files with news are read, and progress bars and tracebacks in them looked at.
const LOG_TICK: Duration = Duration::from_millis(250);

/// A file that never stops changing is still uploaded this often.
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(60);

/// Longer log lines are cut (as the relay does with the child's output).
const MAX_LOG_MESSAGE: usize = crate::worker::lines::MAX_LINE_BYTES;

/// The record of what was reported is written at most this often (and at the end).
const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// The monitor's settings, shared by every run of a worker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where artifacts go; `None`: they are detected but not uploaded.
    pub artifacts: Option<ArtifactStore>,
    /// A file is uploaded once no change was seen on it for this long.
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
    task: tokio::task::JoinHandle<Report>,
}

impl Monitor {
    /// Starts watching `dir`, the run's directory, reporting on `stream`. Files already there
    /// are looked at like new ones, except what the record of earlier attempts lists
    /// (`record`): an unchanged artifact is not uploaded again, and a log is tailed from
    /// where they stopped.
    pub fn start(settings: Settings, run_id: RunId, dir: PathBuf, stream: RunStream) -> Monitor {
        let (finish, finished) = oneshot::channel();
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
            looking.run(finished).await;
            looking.report
        });
        Monitor { finish, task }
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
}

/// One upload's end, back in the loop.
struct Finished {
    relative: PathBuf,
    /// The file as it was before the upload started.
    version: Version,
    key: String,
    outcome: Result<Uploaded, UploadError>,
    /// `metrics.json`'s values, read after the upload.
    metrics: Option<metrics::Metrics>,
}

/// The monitor's state for one run. Paths are relative to the run directory.
struct Looking {
    settings: Settings,
    run_id: RunId,
    dir: RunDir,
    stream: RunStream,
    /// `None` once the run ended, or when the directory could not be watched.
    watcher: Option<watch::DirWatcher>,
    files: HashMap<PathBuf, FileState>,
    settler: Settler<PathBuf>,
    /// New folders (the empty path: all of them), scanned once they settled (see
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
    waiting: VecDeque<PathBuf>,
    /// The values of `metrics.json` already sent as `ai.run.stage_metric`.
    reported_metrics: BTreeMap<String, f64>,
    /// The run ended: a file changed during its upload is uploaded again at once.
    ending: bool,
    report: Report,
}

impl Looking {
    fn new(settings: Settings, run_id: RunId, dir: RunDir, stream: RunStream) -> Looking {
        let settle = settings.settle;
        Looking {
            settings,
            run_id,
            dir,
            stream,
            watcher: None,
            files: HashMap::new(),
            settler: Settler::new(settle, MAX_SETTLE_WAIT),
            folders: Settler::new(settle, settle),
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

    async fn run(&mut self, mut finished: oneshot::Receiver<Instant>) {
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
                Some(change) = next_change(&mut changes) => self.on_change(change),
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

    /// Every file under `folder` counts as changed at `now`. A folder that turned out to be a
    /// link (swapped in after notify saw a folder there) loses its watch and is reported.
    async fn sweep(&mut self, folder: &Path, now: Instant) {
        match scan(&self.dir, folder) {
            Ok(found) => {
                for relative in found {
                    self.on_file(relative, now);
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

    fn on_change(&mut self, change: Change) {
        let now = Instant::now();
        let relative = |path: &Path| path.strip_prefix(self.dir.path()).ok().map(Path::to_owned);
        match change {
            Change::Files(paths) => {
                let paths: Vec<PathBuf> = paths.iter().filter_map(|path| relative(path)).collect();
                for path in paths {
                    self.on_file(path, now);
                }
            }
            Change::Folder(path) => {
                if let Some(folder) = relative(&path) {
                    self.folders.touch(folder, now);
                }
            }
            Change::Rescan => self.folders.touch(PathBuf::new(), now),
        }
    }

    /// A file changed (or was found): logs are read at the next tick, artifacts wait to settle.
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
            self.consider(relative).await;
        }
    }

    /// A settled file: uploaded if it differs from the version stored. The file is opened
    /// here, once: what is compared, uploaded and hashed is that open file.
    async fn consider(&mut self, relative: PathBuf) {
        let Some(state) = self.files.get_mut(&relative) else { return };
        if state.in_flight {
            state.dirty = true;
            return;
        }
        if state.queued {
            return;
        }
        let file = match self.dir.open_file(&relative) {
            Ok(file) => file,
            Err(err @ BeneathError::Link { .. }) => return self.refuse(&err).await,
            // Gone again (a temporary file) or not a regular file: nothing to upload.
            Err(_) => return,
        };
        let Ok(metadata) = file.metadata() else { return };
        let version = Version::of(&metadata);
        let Some(state) = self.files.get_mut(&relative) else { return };
        if state.stored.as_ref().is_some_and(|stored| stored.same_file(&version)) {
            return;
        }
        if !state.detected {
            state.detected = true;
            let data = json!({
                "path": path_text(&relative),
                "kind": state.kind.as_str(),
                "size_bytes": version.bytes,
            });
            self.emit(Draft::new("ai.artifact.detected", object(data))).await;
        }
        let Some(artifacts) = self.settings.artifacts.clone() else {
            // Nowhere to upload: detected is all there is to say.
            if let Some(state) = self.files.get_mut(&relative) {
                state.stored = Some(version);
                self.record_dirty = true;
            }
            return;
        };
        let Some(state) = self.files.get_mut(&relative) else { return };
        if self.uploads.len() >= self.settings.uploads.max(1) {
            state.queued = true;
            self.waiting.push_back(relative);
            return;
        }
        state.in_flight = true;
        let key = artifacts.key(&self.run_id, &relative);
        let is_metrics = relative.file_name().is_some_and(|name| name == classify::METRICS_FILE);
        self.uploads.spawn(async move {
            let content_type = classify::content_type(&relative);
            // A second descriptor of the same open file: the values are those of the version uploaded.
            let values = if is_metrics { file.try_clone().ok() } else { None };
            let outcome = artifacts.upload(file, &relative, &key, content_type).await;
            let metrics = match (&outcome, values) {
                (Ok(_), Some(mut values)) => {
                    tokio::task::spawn_blocking(move || metrics::read(&mut values)).await.ok().flatten()
                }
                _ => None,
            };
            Finished { relative, version, key: key.to_string(), outcome, metrics }
        });
    }

    async fn on_joined(&mut self, joined: Result<Finished, tokio::task::JoinError>) {
        let finished = match joined {
            Ok(finished) => finished,
            Err(err) => {
                // Only a panic in object_store could get here; the file is looked at again
                // at the final sweep.
                tracing::error!(error = %err, "an artifact upload task failed");
                return;
            }
        };
        let Finished { relative, mut version, key, outcome, metrics } = finished;
        let Some(state) = self.files.get_mut(&relative) else { return };
        state.in_flight = false;
        let kind = state.kind;
        match outcome {
            Ok(uploaded) => {
                let new = state.stored.as_ref().and_then(|stored| stored.sha256.as_ref()) != Some(&uploaded.sha256);
                version.sha256 = Some(uploaded.sha256.clone());
                state.stored = Some(version);
                self.record_dirty = true;
                if new {
                    self.report.registered += 1;
                    let data = json!({
                        "key": key,
                        "bytes": uploaded.bytes,
                        "sha256": uploaded.sha256,
                        "content_type": classify::content_type(&relative),
                        "kind": kind.as_str(),
                        "path": path_text(&relative),
                    });
                    self.emit(Draft::new("ai.artifact.registered", object(data))).await;
                    if let Some(metrics) = metrics {
                        self.emit_metrics(&metrics, &relative).await;
                    }
                }
            }
            Err(err) => {
                self.report.failed += 1;
                tracing::warn!(file = %relative.display(), error = %err, "artifact upload failed");
                let data = json!({ "path": path_text(&relative), "key": key, "error": err.to_string() });
                self.emit(Draft::new("ai.artifact.failed", object(data))).await;
            }
        }
        if let Some(state) = self.files.get_mut(&relative)
            && std::mem::take(&mut state.dirty)
        {
            if self.ending {
                self.consider(relative).await;
            } else {
                self.settler.touch(relative, Instant::now());
            }
        }
        while self.uploads.len() < self.settings.uploads.max(1)
            && let Some(next) = self.waiting.pop_front()
        {
            if let Some(state) = self.files.get_mut(&next) {
                state.queued = false;
            }
            self.consider(next).await;
        }
    }

    /// `metrics.json` values that changed, as `ai.run.stage_metric` events.
    async fn emit_metrics(&mut self, metrics: &metrics::Metrics, relative: &Path) {
        let stage = metrics.stage.clone().and_then(|name| Stage::try_from(name).ok());
        for (name, value) in metrics::changed(metrics, &self.reported_metrics) {
            let mut data = Map::new();
            data.insert("name".into(), Value::from(name.clone()));
            data.insert("value".into(), Value::from(value));
            if let Some(step) = metrics.step {
                data.insert("step".into(), Value::from(step));
            }
            if let Some(stage) = stage {
                data.insert("stage".into(), Value::from(stage.as_str()));
            }
            data.insert("source".into(), Value::from(path_text(relative)));
            self.emit(Draft::new("ai.run.stage_metric", data)).await;
            self.reported_metrics.insert(name, value);
        }
    }

    /// Reads the logs with news (all of them, to their end, when `to_end`), off the async
    /// threads, and queues their records.
    async fn read_logs(&mut self, to_end: bool) {
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
            let mut message = record.message;
            if message.len() > MAX_LOG_MESSAGE {
                let mut cut = MAX_LOG_MESSAGE;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            let mut data = Map::new();
            data.insert("message".into(), Value::from(message));
            data.insert("level".into(), serde_json::to_value(record.level).unwrap_or(Value::Null));
            data.insert("source".into(), Value::from(source));
            self.emit(Draft::new("ai.run.log", data)).await;
        }
    }

    /// The run ended: the last changes, a sweep, logs to their end, uploads until `deadline`,
    /// and the record of it all for a later attempt.
    async fn end(&mut self, mut changes: Option<watch::Changes>, deadline: Instant) {
        self.ending = true;
        self.watcher = None;
        if let Some(changes) = changes.as_mut() {
            while let Some(change) = changes.try_recv() {
                self.on_change(change);
            }
        }
        let now = Instant::now();
        // The sweep covers every folder, so pending folder scans are done with it.
        self.folders.take_all();
        self.sweep(Path::new(""), now).await;
        for relative in self.settler.take_all() {
            self.consider(relative).await;
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
            let data = json!({
                "path": path_text(&relative),
                "error": "the run ended before its upload finished (see --artifact-wait)",
            });
            self.emit(Draft::new("ai.artifact.failed", object(data))).await;
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
        let data = json!({ "path": path_text(link), "error": refusal.to_string() });
        self.emit(Draft::new("ai.artifact.failed", object(data))).await;
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

    /// Queues an event; a stream that is gone means the worker is exiting.
    async fn emit(&self, draft: Draft) {
        if let Err(err) = self.stream.emit(draft).await {
            tracing::debug!(error = %err, "could not queue a monitor event");
        }
    }
}

impl FileState {
    fn new(kind: Kind) -> FileState {
        FileState { kind, detected: false, stored: None, in_flight: false, dirty: false, queued: false }
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

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
