//! A worker's event stream: one ordered, sequenced, spooled stream of events to a [`Sink`].
//!
//! Every event is stamped (run, `attempt`, per-run `seq`), appended to a spool segment on
//! disk and synced by a dedicated writer thread, and only then handed to the sender task,
//! which delivers in order, in batches (flush at `batch_events` or after `flush_every`, up
//! to [`MAX_REQUEST_EVENTS`] when a backlog built up), retrying with backoff and jitter.
//! A segment file is removed once every event in it was acknowledged, so whatever a crash
//! or an outage of any length interrupts is found in the spool and sent by the next start
//! (the control plane ignores the duplicates by (`source`, `id`)).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot};

use super::sink::Sink;
use crate::event::redact;
use crate::limits::{self, MAX_BATCH_EVENTS};
use crate::run::RunId;
use crate::time::Timestamp;

/// Most events in one delivery: the control plane's batch limit.
pub const MAX_REQUEST_EVENTS: usize = MAX_BATCH_EVENTS;

/// Events waiting for the disk writer. A producer that finds it full either waits (the
/// worker's own events, the local endpoint) or buffers on its side (the output relay,
/// which must never stop reading the child's pipes).
const CHANNEL_CAPACITY: usize = 8192;

/// Events per spool segment: small enough that an acknowledged segment is removed soon,
/// large enough that rotation is rare (a busy run logs about 10,000 lines a second).
const SEGMENT_EVENTS: usize = 20_000;

/// Retry delays after a failed delivery: doubling from the first to the last, each with
/// up to half of it added at random so that many pods do not retry in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_EXTENSION: &str = "ndjson";
const LOCK_FILE: &str = "spool.lock";
/// Events refused for good are appended here, never lost and never retried.
const REJECTED_FILE: &str = "rejected.ndjson";

/// How the stream batches and where it spools.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The spool directory; one worker at a time (a lock file says so).
    pub spool_dir: PathBuf,
    /// The `source` of events that name none: `pod://<pod id>`.
    pub source: String,
    /// Deliver as soon as this many events wait…
    pub batch_events: usize,
    /// …or once the oldest has waited this long.
    pub flush_every: Duration,
}

impl StreamConfig {
    pub fn new(spool_dir: PathBuf, source: String) -> Self {
        StreamConfig { spool_dir, source, batch_events: 50, flush_every: Duration::from_secs(1) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot use the spool directory {path}")]
    Spool { path: PathBuf, source: io::Error },
    #[error(
        "the spool directory {0} is in use by another worker: give each worker its own (--spool-dir), or stop the other one"
    )]
    Locked(PathBuf),
    #[error("the event stream has stopped")]
    Closed,
    #[error("the event could not be written to the spool: {0}")]
    NotSpooled(String),
}

/// An event on its way in: its type and data, and any envelope attributes to keep (an
/// event from the child keeps its own `id`, `time` and `source`). The stream sets the run,
/// `attempt` and `seq`, and fills in what is missing.
#[derive(Debug, Clone)]
pub struct Draft {
    object: Map<String, Value>,
}

impl Draft {
    /// A new event of `event_type`, timed now.
    pub fn new(event_type: &str, data: Map<String, Value>) -> Draft {
        let mut object = Map::new();
        object.insert("type".into(), Value::from(event_type));
        object.insert("time".into(), Value::from(Timestamp::now().to_string()));
        object.insert("data".into(), Value::Object(data));
        Draft { object }
    }

    /// An event given whole (structured mode JSON); `seq` and `attempt` are replaced.
    pub fn from_object(object: Map<String, Value>) -> Draft {
        Draft { object }
    }

    pub fn event_type(&self) -> &str {
        self.object.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn data(&self) -> Option<&Map<String, Value>> {
        self.object.get("data").and_then(Value::as_object)
    }
}

/// Counters of the stream since it opened.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events written to the spool (or, when the disk failed, kept in memory).
    pub spooled: AtomicU64,
    /// Events the sink stored (or already had).
    pub delivered: AtomicU64,
    /// Events refused for good (set aside in `rejected.ndjson`).
    pub refused: AtomicU64,
}

/// What closing the stream left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    /// Events still in the spool: the next start of a worker on it sends them.
    pub undelivered: usize,
}

/// Answers a producer waiting for its event to reach the disk.
type SyncedReply = oneshot::Sender<Result<(), String>>;

enum Command {
    Begin { run_id: RunId, last_seq: u64 },
    Event { run_id: RunId, attempt: u32, draft: Draft, synced: Option<SyncedReply> },
    Close,
}

/// The stream: a disk writer thread and a sender task. Dropping it without
/// [`close`](EventStream::close) leaves undelivered events in the spool, which is safe.
pub struct EventStream {
    tx: mpsc::Sender<Command>,
    ledger: Arc<Shared>,
    stats: Arc<StreamStats>,
    sender: tokio::task::JoinHandle<()>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A handle that emits the events of one claim: stamped with its run and attempt.
#[derive(Clone)]
pub struct RunStream {
    tx: mpsc::Sender<Command>,
    run_id: RunId,
    attempt: u32,
}

impl EventStream {
    /// Opens the spool (taking its lock), queues what an earlier worker left in it, and
    /// starts delivering to `sink`.
    pub fn open(config: StreamConfig, sink: Arc<dyn Sink>) -> Result<EventStream, StreamError> {
        let dir = config.spool_dir.clone();
        let spool_error = |source| StreamError::Spool { path: dir.clone(), source };
        fs::create_dir_all(&dir).map_err(spool_error)?;
        let lock = lock_dir(&dir)?;
        let recovered = recover(&dir).map_err(spool_error)?;
        let stats = Arc::new(StreamStats::default());
        let shared = Arc::new(Shared { ledger: Mutex::new(Ledger::default()), wake: Notify::new() });
        let mut seqs = HashMap::new();
        {
            let mut ledger = shared.lock();
            for segment in &recovered {
                ledger.segments.insert(
                    segment.number,
                    Segment { path: segment.path.clone(), written: segment.lines.len(), acked: 0, open: false },
                );
                for (line, run_seq) in &segment.lines {
                    ledger.pending.push_back(Pending {
                        line: line.clone(),
                        segment: Some(segment.number),
                        since: Instant::now(),
                    });
                    if let Some((run_id, seq)) = run_seq {
                        let known = seqs.entry(run_id.clone()).or_insert(0);
                        *known = (*known).max(*seq);
                    }
                }
            }
            if !ledger.pending.is_empty() {
                tracing::info!(events = ledger.pending.len(), spool = %dir.display(), "sending events an earlier worker left in the spool");
            }
        }
        let next_segment = recovered.last().map_or(1, |segment| segment.number + 1);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer {
            dir: dir.clone(),
            source: config.source.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
            seqs,
            file: None,
            segment: next_segment,
            in_segment: 0,
            _lock: lock,
            failing: false,
        };
        let writer = std::thread::Builder::new()
            .name("scientist-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(spool_error)?;
        let sender = tokio::spawn(send_loop(shared.clone(), sink, config, stats.clone()));
        Ok(EventStream { tx, ledger: shared, stats, sender, writer: Some(writer) })
    }

    /// A handle for the events of `run_id`'s claim `attempt`. Sequence numbers continue
    /// after `last_seq` (the run's `lastEventSeq`), and after any this stream already used.
    pub async fn begin(&self, run_id: &RunId, attempt: u32, last_seq: u64) -> Result<RunStream, StreamError> {
        self.tx.send(Command::Begin { run_id: run_id.clone(), last_seq }).await.map_err(|_| StreamError::Closed)?;
        Ok(RunStream { tx: self.tx.clone(), run_id: run_id.clone(), attempt })
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }

    /// Events spooled and not yet acknowledged.
    pub fn undelivered(&self) -> usize {
        self.ledger.lock().pending.len()
    }

    /// Sends everything emitted so far, waiting at most `within`; what is still not
    /// delivered then stays in the spool for the next start.
    pub async fn close(mut self, within: Duration) -> Closing {
        let _ = self.tx.send(Command::Close).await;
        let finished = tokio::time::timeout(within, &mut self.sender).await.is_ok();
        if !finished {
            self.sender.abort();
        }
        if let Some(writer) = self.writer.take() {
            // The writer ends right after Close; joining it releases the spool lock.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        Closing { undelivered: self.ledger.lock().pending.len() }
    }
}

impl RunStream {
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Ok when `draft`, as this stream will send it, is within the event size limit (with
    /// the widest `seq`); else the refusal the control plane would give. An endpoint checks
    /// this before it accepts an event, so it never acknowledges one the next hop refuses.
    pub fn check_size(&self, draft: &Draft) -> Result<(), String> {
        // Events given whole carry their own `source`; the stream's only fills a missing one.
        let object = stamped(draft.clone(), &self.run_id, u64::MAX, self.attempt, "");
        limits::check_event(limits::json_len(&object))
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Queues an event, waiting only for room in the queue (never for the disk or network).
    pub async fn emit(&self, draft: Draft) -> Result<(), StreamError> {
        let command = Command::Event { run_id: self.run_id.clone(), attempt: self.attempt, draft, synced: None };
        self.tx.send(command).await.map_err(|_| StreamError::Closed)
    }

    /// Queues an event and waits until it is synced to the spool: from then on it is
    /// delivered even if the worker crashes.
    pub async fn emit_synced(&self, draft: Draft) -> Result<(), StreamError> {
        let (synced, written) = oneshot::channel();
        let command =
            Command::Event { run_id: self.run_id.clone(), attempt: self.attempt, draft, synced: Some(synced) };
        self.tx.send(command).await.map_err(|_| StreamError::Closed)?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StreamError::NotSpooled(reason)),
            Err(_) => Err(StreamError::Closed),
        }
    }

    /// Queues events in order and waits until all are synced to the spool.
    pub async fn emit_all_synced(&self, drafts: Vec<Draft>) -> Result<(), StreamError> {
        let mut waiting = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let (synced, written) = oneshot::channel();
            let command =
                Command::Event { run_id: self.run_id.clone(), attempt: self.attempt, draft, synced: Some(synced) };
            self.tx.send(command).await.map_err(|_| StreamError::Closed)?;
            waiting.push(written);
        }
        for written in waiting {
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(StreamError::NotSpooled(reason)),
                Err(_) => return Err(StreamError::Closed),
            }
        }
        Ok(())
    }

    /// Queues an event if there is room now; gives it back when the queue is full.
    pub fn try_emit(&self, draft: Draft) -> Result<(), Draft> {
        let command = Command::Event { run_id: self.run_id.clone(), attempt: self.attempt, draft, synced: None };
        self.tx.try_send(command).map_err(|err| match err.into_inner() {
            Command::Event { draft, .. } => draft,
            _ => unreachable!("try_send gives back the command it was given"),
        })
    }

    /// Waits for room in the queue (cancel-safe); the permit queues one event.
    pub async fn reserve(&self) -> Result<RunPermit<'_>, StreamError> {
        let permit = self.tx.reserve().await.map_err(|_| StreamError::Closed)?;
        Ok(RunPermit { permit, stream: self })
    }
}

/// Room for one event in the stream's queue.
pub struct RunPermit<'a> {
    permit: mpsc::Permit<'a, Command>,
    stream: &'a RunStream,
}

impl RunPermit<'_> {
    pub fn emit(self, draft: Draft) {
        let command =
            Command::Event { run_id: self.stream.run_id.clone(), attempt: self.stream.attempt, draft, synced: None };
        self.permit.send(command);
    }
}

/// What the writer and the sender share.
struct Shared {
    ledger: Mutex<Ledger>,
    /// Wakes the sender: new events, or the stream is closing.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Never held across an await; a panic while holding it leaves consistent data
        // (every update is a single push, pop or counter change).
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct Ledger {
    /// Spooled, not yet acknowledged, in stream order.
    pending: VecDeque<Pending>,
    segments: BTreeMap<u64, Segment>,
    /// No more events will come: deliver what waits without waiting for a full batch.
    closing: bool,
}

struct Pending {
    line: Arc<str>,
    /// The spool segment holding it; `None` when the disk failed and it lives in memory only.
    segment: Option<u64>,
    since: Instant,
}

struct Segment {
    path: PathBuf,
    written: usize,
    acked: usize,
    /// Still being appended to by the writer.
    open: bool,
}

impl Ledger {
    /// The first `count` pending events were acknowledged: forget them and remove the
    /// segments that hold nothing undelivered any more.
    fn acknowledge(&mut self, count: usize) {
        for pending in self.pending.drain(..count.min(self.pending.len())) {
            if let Some(segment) = pending.segment.and_then(|number| self.segments.get_mut(&number)) {
                segment.acked += 1;
            }
        }
        self.remove_delivered_segments();
    }

    fn remove_delivered_segments(&mut self) {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, segment)| !segment.open && segment.acked >= segment.written)
            .map(|(number, _)| *number)
            .collect();
        for number in done {
            if let Some(segment) = self.segments.remove(&number)
                && let Err(err) = fs::remove_file(&segment.path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %segment.path.display(), error = %err, "could not remove a delivered spool segment");
            }
        }
    }
}

/// The disk writer: owns the open segment file; runs on its own thread because every
/// group of events ends with an fsync.
struct Writer {
    dir: PathBuf,
    source: String,
    shared: Arc<Shared>,
    stats: Arc<StreamStats>,
    /// The last `seq` used per run.
    seqs: HashMap<RunId, u64>,
    file: Option<File>,
    segment: u64,
    in_segment: usize,
    _lock: File,
    /// The last write failed (logged once until it works again).
    failing: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else { break };
            // Group whatever else is already waiting: one write and one fsync for all.
            let mut commands = vec![first];
            while commands.len() < MAX_REQUEST_EVENTS {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            let mut lines = Vec::with_capacity(commands.len());
            let mut replies = Vec::new();
            for command in commands {
                match command {
                    Command::Begin { run_id, last_seq } => {
                        let seq = self.seqs.entry(run_id).or_insert(0);
                        *seq = (*seq).max(last_seq);
                    }
                    Command::Event { run_id, attempt, draft, synced } => {
                        let line = self.stamp(run_id, attempt, draft);
                        replies.push((lines.len(), synced));
                        lines.push(line);
                    }
                    Command::Close => closing = true,
                }
            }
            self.spool(lines, replies);
        }
        self.close_segment();
        let mut ledger = self.shared.lock();
        ledger.closing = true;
        ledger.remove_delivered_segments();
        drop(ledger);
        self.shared.wake.notify_one();
    }

    /// The event's final JSON line, with the run's next `seq`.
    fn stamp(&mut self, run_id: RunId, attempt: u32, draft: Draft) -> Arc<str> {
        let seq = self.seqs.entry(run_id.clone()).or_insert(0);
        *seq += 1;
        Arc::from(Value::Object(stamped(draft, &run_id, *seq, attempt, &self.source)).to_string())
    }

    /// Appends and syncs `lines`, then hands them to the sender and answers the waiters.
    fn spool(&mut self, lines: Vec<Arc<str>>, replies: Vec<(usize, Option<SyncedReply>)>) {
        if lines.is_empty() {
            return;
        }
        let written = self.append(&lines);
        let now = Instant::now();
        {
            let mut ledger = self.shared.lock();
            let segment = match &written {
                Ok(()) => {
                    let segment = ledger.segments.entry(self.segment).or_insert_with(|| Segment {
                        path: segment_path(&self.dir, self.segment),
                        written: 0,
                        acked: 0,
                        open: true,
                    });
                    segment.written += lines.len();
                    Some(self.segment)
                }
                Err(_) => None,
            };
            // An event whose producer waits for the disk is not queued when the disk failed:
            // the producer hears so and may send it again.
            let refused: std::collections::HashSet<usize> = match &written {
                Err(_) => replies.iter().filter(|(_, synced)| synced.is_some()).map(|(index, _)| *index).collect(),
                Ok(()) => Default::default(),
            };
            for (index, line) in lines.iter().enumerate() {
                if !refused.contains(&index) {
                    ledger.pending.push_back(Pending { line: line.clone(), segment, since: now });
                }
            }
            self.stats.spooled.fetch_add((lines.len() - refused.len()) as u64, Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
        let answer = written.as_ref().map(|_| ()).map_err(|err| err.to_string());
        for (_, synced) in replies {
            if let Some(synced) = synced {
                let _ = synced.send(answer.clone());
            }
        }
        if self.in_segment >= SEGMENT_EVENTS {
            self.close_segment();
        }
    }

    fn append(&mut self, lines: &[Arc<str>]) -> io::Result<()> {
        let result = self.try_append(lines);
        match &result {
            Err(err) if !self.failing => {
                tracing::error!(spool = %self.dir.display(), error = %err,
                    "cannot write the event spool: events are kept in memory only until the disk works again");
                self.failing = true;
                // Start a fresh segment next time rather than append after a torn write.
                self.file = None;
            }
            Ok(()) if self.failing => {
                tracing::info!(spool = %self.dir.display(), "the event spool is writable again");
                self.failing = false;
            }
            _ => {}
        }
        result
    }

    fn try_append(&mut self, lines: &[Arc<str>]) -> io::Result<()> {
        let mut buffer = String::with_capacity(lines.iter().map(|line| line.len() + 1).sum());
        for line in lines {
            buffer.push_str(line);
            buffer.push('\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let path = segment_path(&self.dir, self.segment);
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                // The new name must survive a crash too.
                File::open(&self.dir)?.sync_all()?;
                self.file.insert(file)
            }
        };
        file.write_all(buffer.as_bytes())?;
        file.sync_data()?;
        self.in_segment += lines.len();
        Ok(())
    }

    /// Stops appending to the current segment; the next event starts a new one.
    fn close_segment(&mut self) {
        self.file = None;
        self.in_segment = 0;
        let mut ledger = self.shared.lock();
        if let Some(segment) = ledger.segments.get_mut(&self.segment) {
            segment.open = false;
        }
        ledger.remove_delivered_segments();
        drop(ledger);
        self.segment += 1;
    }
}

/// The event as the stream sends it: run, attempt and `seq` set, the envelope filled in
/// (`source` when it has none), secrets redacted.
fn stamped(draft: Draft, run_id: &RunId, seq: u64, attempt: u32, source: &str) -> Map<String, Value> {
    let mut object = draft.object;
    let mut data = match object.remove("data") {
        Some(Value::Object(data)) => data,
        _ => Map::new(),
    };
    data.insert("run_id".into(), Value::from(run_id.as_str()));
    redact::redact_map(&mut data);
    object.insert("subject".into(), Value::from(format!("run/{run_id}")));
    object.insert("seq".into(), Value::from(seq));
    object.insert("attempt".into(), Value::from(attempt));
    object.insert("data".into(), Value::Object(data));
    super::fill_envelope(&mut object, source);
    object
}

/// Delivers pending events in order until the stream is closed and nothing waits.
async fn send_loop(shared: Arc<Shared>, sink: Arc<dyn Sink>, config: StreamConfig, stats: Arc<StreamStats>) {
    let mut backoff = Backoff::default();
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
                    if ledger.closing || ledger.pending.len() >= config.batch_events || age >= config.flush_every =>
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
        match sink.deliver(&batch).await {
            Ok(rejected) => {
                if let Some(since) = failing_since.take() {
                    tracing::warn!(to = %sink.describe(), after = ?since.elapsed(), "events are being delivered again");
                }
                if !rejected.is_empty() {
                    set_aside(&config.spool_dir, rejected.iter().filter_map(|r| batch.get(r.line.wrapping_sub(1))));
                    for refused in &rejected {
                        tracing::warn!(reason = %refused.reason, "an event was refused for good; kept in {REJECTED_FILE}");
                    }
                }
                stats.delivered.fetch_add((batch.len() - rejected.len()) as u64, Ordering::Relaxed);
                stats.refused.fetch_add(rejected.len() as u64, Ordering::Relaxed);
                shared.lock().acknowledge(batch.len());
                backoff = Backoff::default();
            }
            Err(err) if err.is_retryable() => {
                if failing_since.is_none() {
                    tracing::warn!(to = %sink.describe(), error = %err,
                        "cannot deliver events; they stay in the spool and are retried with backoff");
                    failing_since = Some(Instant::now());
                } else {
                    tracing::debug!(error = %err, "delivery retry failed");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, events = batch.len(), "the control plane refused a whole batch; kept in {REJECTED_FILE}");
                set_aside(&config.spool_dir, batch.iter());
                stats.refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared.lock().acknowledge(batch.len());
            }
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = BACKOFF_FIRST.saturating_mul(1 << self.attempts.min(16)).min(BACKOFF_MAX);
        self.attempts += 1;
        base + base.mul_f64(crate::emit::random_fraction() / 2.0)
    }
}

fn set_aside<'a>(dir: &Path, lines: impl Iterator<Item = &'a Arc<str>>) {
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(dir.join(REJECTED_FILE))?;
        for line in lines {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.sync_data()
    };
    if let Err(err) = write() {
        tracing::error!(error = %err, "could not keep refused events in {REJECTED_FILE}");
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{number:012}.{SEGMENT_EXTENSION}"))
}

/// Takes the directory's lock file, so two workers never share a spool.
fn lock_dir(dir: &Path) -> Result<File, StreamError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StreamError::Spool { path: path.clone(), source })?;
    // SAFETY: flock on a file descriptor we own; the lock goes with the file.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(StreamError::Locked(dir.to_owned()));
    }
    Ok(file)
}

/// A spooled event's run and `seq`, when it has them.
type Sequenced = Option<(RunId, u64)>;

/// A spool segment left by an earlier worker.
struct Recovered {
    number: u64,
    path: PathBuf,
    /// Each event with its run and `seq`.
    lines: Vec<(Arc<str>, Sequenced)>,
}

/// The segments in the spool, oldest first. A line that is not a JSON object (the torn end
/// of a write a crash interrupted, never acknowledged to anyone) is skipped.
fn recover(dir: &Path) -> io::Result<Vec<Recovered>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        let Some(number) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix(&format!(".{SEGMENT_EXTENSION}")))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        let text = fs::read_to_string(&path)?;
        let mut lines = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
                tracing::warn!(file = %path.display(), "skipping a torn line in the spool");
                continue;
            };
            let run_seq = object
                .get("data")
                .and_then(|data| data.get("run_id"))
                .and_then(Value::as_str)
                .and_then(|id| id.parse::<RunId>().ok())
                .zip(object.get("seq").and_then(Value::as_u64));
            lines.push((Arc::from(line), run_seq));
        }
        segments.push(Recovered { number, path, lines });
    }
    segments.sort_by_key(|segment| segment.number);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::SendError;
    use crate::event::wire::Rejected;

    /// A sink that records deliveries and fails while `down` is set.
    #[derive(Default)]
    struct Recorder {
        delivered: Mutex<Vec<String>>,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Sink for Recorder {
        async fn deliver(&self, lines: &[Arc<str>]) -> Result<Vec<Rejected>, SendError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SendError::Unreachable { url: "test".into(), reason: "down".into() });
            }
            self.delivered.lock().expect("lock").extend(lines.iter().map(|line| line.to_string()));
            Ok(Vec::new())
        }

        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .expect("list")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == SEGMENT_EXTENSION))
            .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(SEGMENT_PREFIX)))
            .collect();
        found.sort();
        found
    }

    fn log(message: &str) -> Draft {
        let mut data = Map::new();
        data.insert("message".into(), Value::from(message));
        Draft::new("ai.run.log", data)
    }

    #[tokio::test]
    async fn events_are_sequenced_delivered_in_order_and_the_spool_emptied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink = Arc::new(Recorder::default());
        let stream =
            EventStream::open(StreamConfig::new(dir.path().to_owned(), "pod://t".into()), sink.clone()).expect("open");
        let run: RunId = "r1".parse().expect("id");
        let handle = stream.begin(&run, 3, 10).await.expect("begin");
        for index in 0..120 {
            handle.emit(log(&format!("line {index} API_KEY=hunter2"))).await.expect("emit");
        }
        let closing = stream.close(Duration::from_secs(10)).await;
        assert_eq!(closing.undelivered, 0);
        let delivered = sink.delivered.lock().expect("lock").clone();
        assert_eq!(delivered.len(), 120);
        for (index, line) in delivered.iter().enumerate() {
            let event: Value = serde_json::from_str(line).expect("json");
            assert_eq!(event["seq"], 11 + index as u64);
            assert_eq!(event["attempt"], 3);
            assert_eq!(event["subject"], "run/r1");
            assert_eq!(event["data"]["message"], format!("line {index} API_KEY=[REDACTED]"));
        }
        assert!(segments(dir.path()).is_empty(), "delivered segments are removed");
    }

    #[tokio::test]
    async fn an_outage_keeps_events_in_the_spool_for_the_next_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink = Arc::new(Recorder::default());
        sink.down.store(true, Ordering::SeqCst);
        let config = StreamConfig::new(dir.path().to_owned(), "pod://t".into());
        let stream = EventStream::open(config.clone(), sink.clone()).expect("open");
        let run: RunId = "r1".parse().expect("id");
        let handle = stream.begin(&run, 1, 0).await.expect("begin");
        for index in 0..5 {
            handle.emit_synced(log(&format!("line {index}"))).await.expect("synced");
        }
        assert!(
            matches!(EventStream::open(config.clone(), sink.clone()), Err(StreamError::Locked(_))),
            "a second worker cannot share the spool"
        );
        drop(handle);
        let closing = stream.close(Duration::from_millis(300)).await;
        assert_eq!(closing.undelivered, 5);
        assert_eq!(segments(dir.path()).len(), 1);

        // The next worker sends them first, and continues the run's sequence after them.
        sink.down.store(false, Ordering::SeqCst);
        let stream = EventStream::open(config, sink.clone()).expect("reopen");
        let handle = stream.begin(&run, 2, 0).await.expect("begin");
        handle.emit(log("after restart")).await.expect("emit");
        assert_eq!(stream.close(Duration::from_secs(10)).await.undelivered, 0);
        let delivered = sink.delivered.lock().expect("lock").clone();
        let seqs: Vec<u64> = delivered
            .iter()
            .map(|line| serde_json::from_str::<Value>(line).expect("json")["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert!(segments(dir.path()).is_empty());
    }
}
