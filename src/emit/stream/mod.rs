//! A worker's event stream: one ordered, sequenced, spooled stream of events to a
//! [`ControlPlane`].
//!
//! Every event is stamped (run, `attempt`, per-run `seq`), appended to a spool segment on
//! disk and synced by a dedicated writer thread, and only then handed to the sender task,
//! which delivers in order, in batches (flush at `batch_events` or after `flush_every`, up
//! to [`MAX_REQUEST_EVENTS`] when a backlog built up), retrying with backoff and jitter.
//! A segment file is removed once every event in it was acknowledged, so whatever a crash
//! or an outage of any length interrupts is found in the spool and sent by the next start
//! (the control plane ignores the duplicates by (`source`, `id`)). The spool's format is
//! `emit::spool`'s, shared with `scientist emit --spool`.
//!
//! This file holds the handles (`EventStream`, `RunStream`, `Draft`); `writer` is the disk
//! writer thread, `sender` the delivery task, `ledger` what the two share, `recover` reads
//! back what was left in the spool, and `line` encodes an event as its JSON line.

mod ledger;
mod line;
mod recover;
mod sender;
#[cfg(test)]
mod tests;
mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot};

use self::ledger::{Hurry, Shared};
use self::writer::Writer;
use super::spool::SpoolDir;
use crate::control::ControlPlane;
use crate::event::{EventData, EventType, LogLevel};
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

/// Retry delays after a failed delivery: doubling from the first to the last, jittered
/// (`crate::backoff`).
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    /// A full request's worth, or what waited 100 ms: a busy stream (10,000 lines a second)
    /// is delivered in ten requests (in embedded mode, ten store transactions) a second, and
    /// a quiet one's events are seen within a tenth of a second.
    pub fn new(spool_dir: PathBuf, source: String) -> Self {
        StreamConfig { spool_dir, source, batch_events: MAX_REQUEST_EVENTS, flush_every: Duration::from_millis(100) }
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
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// Any event, as its JSON object.
    Object(Map<String, Value>),
    /// An output line (`ai.run.log`), kept as its fields: encoded without a JSON tree.
    Log(LogLine),
}

#[derive(Debug, Clone)]
struct LogLine {
    time: Timestamp,
    message: String,
    level: LogLevel,
    source: String,
    trace: Option<Arc<TraceStamp>>,
}

/// The W3C Trace Context a run's events carry as CloudEvents extensions (the
/// distributed-tracing extension: `traceparent`, and `tracestate` when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStamp {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Draft {
    /// A new event of `event_type`, timed now.
    pub fn new(event_type: &str, data: Map<String, Value>) -> Draft {
        let mut object = Map::new();
        object.insert("type".into(), Value::from(event_type));
        object.insert("time".into(), Value::from(Timestamp::now().to_string()));
        object.insert("data".into(), Value::Object(data));
        Draft { body: Body::Object(object) }
    }

    /// A new event of a typed payload (its type from the event table), timed now: the way
    /// scientist's own emitters build events.
    pub fn of(data: &impl EventData) -> Draft {
        Draft::new(data.event_type().name(), data.to_data())
    }

    /// The `ai.run.log` event of one output line from `source` (`stdout`, a log file's
    /// name), timed now: the same event as `Draft::of` a `payload::Log` with no extra fields.
    pub fn log(message: String, level: LogLevel, source: String) -> Draft {
        Draft { body: Body::Log(LogLine { time: Timestamp::now(), message, level, source, trace: None }) }
    }

    /// An event given whole (structured mode JSON); `seq` and `attempt` are replaced.
    pub fn from_object(object: Map<String, Value>) -> Draft {
        Draft { body: Body::Object(object) }
    }

    /// Stamps `traceparent` and `tracestate` unless the event names its own `traceparent`
    /// (a pipeline's event in its own span keeps it, with its own `tracestate` or none).
    fn traced(mut self, traceparent: &str, tracestate: Option<&str>) -> Draft {
        if let Body::Object(object) = &mut self.body
            && !object.contains_key("traceparent")
        {
            object.insert("traceparent".into(), Value::from(traceparent));
            if let Some(tracestate) = tracestate {
                object.insert("tracestate".into(), Value::from(tracestate));
            }
        }
        self
    }

    pub fn event_type(&self) -> &str {
        match &self.body {
            Body::Object(object) => object.get("type").and_then(Value::as_str).unwrap_or_default(),
            Body::Log(_) => EventType::RunLog.name(),
        }
    }

    /// Whether it is sent as soon as it is on disk rather than batched: what changes what an
    /// operator sees of a run (a start, an end, a stage, an artifact, a review). Log lines,
    /// heartbeats, progress, metrics and node steps come in streams and wait for a batch.
    pub fn is_prompt(&self) -> bool {
        !matches!(
            EventType::from_name(self.event_type()),
            Some(
                EventType::RunLog
                    | EventType::RunHeartbeat
                    | EventType::RunStageProgress
                    | EventType::RunStageMetric
                    | EventType::NodeCreated
                    | EventType::NodeCodeGenerated
                    | EventType::NodeExecuting
                    | EventType::NodeCompleted
                    | EventType::NodeSelectedBest
            )
        )
    }
}

/// Counters of the stream since it opened.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events written to the spool (or, when the disk failed, kept in memory).
    pub spooled: AtomicU64,
    /// Events the sink stored (or already had).
    pub delivered: AtomicU64,
    /// Events refused for good (set aside in the spool's `rejected.ndjson`).
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

impl Command {
    /// Someone waits for this command to reach the disk (or for the stream to close), or it
    /// is a prompt event ([`Draft::is_prompt`]): either way the writer does not linger.
    fn is_urgent(&self) -> bool {
        match self {
            Command::Event { synced, draft, .. } => synced.is_some() || draft.is_prompt(),
            Command::Close => true,
            Command::Begin { .. } => false,
        }
    }
}

/// The stream: a disk writer thread and a sender task. Dropping it without
/// [`close`](EventStream::close) leaves undelivered events in the spool, which is safe.
pub struct EventStream {
    tx: mpsc::Sender<Command>,
    hurry: Arc<Hurry>,
    ledger: Arc<Shared>,
    stats: Arc<StreamStats>,
    sender: tokio::task::JoinHandle<()>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A handle that emits the events of one claim: stamped with its run and attempt.
#[derive(Clone)]
pub struct RunStream {
    tx: mpsc::Sender<Command>,
    hurry: Arc<Hurry>,
    run_id: RunId,
    attempt: u32,
    trace: Option<Arc<TraceStamp>>,
}

impl EventStream {
    /// Opens the spool (taking its lock), queues what was left in it (by an earlier worker
    /// or `emit --spool`), and starts delivering to `plane`.
    pub fn open(config: StreamConfig, plane: Arc<dyn ControlPlane>) -> Result<EventStream, StreamError> {
        let dir = config.spool_dir.clone();
        let spool_error = |source| StreamError::Spool { path: dir.clone(), source };
        let spool = SpoolDir::open(&dir).map_err(spool_error)?;
        let lock = spool.try_lock().map_err(spool_error)?.ok_or_else(|| StreamError::Locked(dir.clone()))?;
        let recovered = recover::recover(&spool).map_err(spool_error)?;
        if !recovered.ledger.pending.is_empty() {
            tracing::info!(events = recovered.ledger.pending.len(), spool = %dir.display(), "sending events left in the spool");
        }
        let stats = Arc::new(StreamStats::default());
        let shared = Arc::new(Shared { ledger: Mutex::new(recovered.ledger), wake: Notify::new() });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let hurry = Arc::new(Hurry::default());
        let writer = Writer::new(
            spool.clone(),
            lock,
            config.source.clone(),
            shared.clone(),
            hurry.clone(),
            stats.clone(),
            recovered.seqs,
        );
        let writer = std::thread::Builder::new()
            .name("scientist-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(spool_error)?;
        let sender = tokio::spawn(sender::send_loop(shared.clone(), plane, spool, config, stats.clone()));
        Ok(EventStream { tx, hurry, ledger: shared, stats, sender, writer: Some(writer) })
    }

    /// A handle for the events of `run_id`'s claim `attempt`. Sequence numbers continue
    /// after `last_seq` (the run's `lastEventSeq`), and after any this stream already used.
    pub async fn begin(&self, run_id: &RunId, attempt: u32, last_seq: u64) -> Result<RunStream, StreamError> {
        self.tx.send(Command::Begin { run_id: run_id.clone(), last_seq }).await.map_err(|_| StreamError::Closed)?;
        Ok(RunStream { tx: self.tx.clone(), hurry: self.hurry.clone(), run_id: run_id.clone(), attempt, trace: None })
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
        self.hurry.ring();
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

    /// The same stream, stamping `trace` on every event that names no span of its own.
    pub fn traced(self, trace: TraceStamp) -> RunStream {
        RunStream { trace: Some(Arc::new(trace)), ..self }
    }

    /// The event as this stream sends it: in the stream's trace.
    fn stamp(&self, mut draft: Draft) -> Draft {
        let Some(trace) = &self.trace else { return draft };
        if let Body::Log(line) = &mut draft.body {
            line.trace = Some(trace.clone());
            return draft;
        }
        draft.traced(&trace.traceparent, trace.tracestate.as_deref())
    }

    /// `draft` in the span `traceparent` names (a stage's, say) rather than the stream's, with
    /// the stream's `tracestate`.
    pub fn in_span(&self, draft: Draft, traceparent: &str) -> Draft {
        draft.traced(traceparent, self.trace.as_ref().and_then(|trace| trace.tracestate.as_deref()))
    }

    /// Ok when `draft`, as this stream will send it, is within the event size limit (with
    /// the widest `seq`); else the refusal the control plane would give. An endpoint checks
    /// this before it accepts an event, so it never acknowledges one the next hop refuses.
    pub fn check_size(&self, draft: &Draft) -> Result<(), String> {
        // Events given whole carry their own `source`; the stream's only fills a missing one.
        let draft = self.stamp(draft.clone());
        limits::check_event(line::encoded_len(&draft, &self.run_id, u64::MAX, self.attempt, ""))
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Queues an event, waiting only for room in the queue (never for the disk or network).
    pub async fn emit(&self, draft: Draft) -> Result<(), StreamError> {
        let command = Command::Event {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            draft: self.stamp(draft),
            synced: None,
        };
        self.tx.send(command).await.map_err(|_| StreamError::Closed)
    }

    /// Queues an event and waits until it is synced to the spool: from then on it is
    /// delivered even if the worker crashes.
    pub async fn emit_synced(&self, draft: Draft) -> Result<(), StreamError> {
        let (synced, written) = oneshot::channel();
        let command = Command::Event {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            draft: self.stamp(draft),
            synced: Some(synced),
        };
        self.tx.send(command).await.map_err(|_| StreamError::Closed)?;
        self.hurry.ring();
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
            let command = Command::Event {
                run_id: self.run_id.clone(),
                attempt: self.attempt,
                draft: self.stamp(draft),
                synced: Some(synced),
            };
            self.tx.send(command).await.map_err(|_| StreamError::Closed)?;
            waiting.push(written);
        }
        self.hurry.ring();
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
        let command = Command::Event {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            draft: self.stamp(draft),
            synced: None,
        };
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
        let command = Command::Event {
            run_id: self.stream.run_id.clone(),
            attempt: self.stream.attempt,
            draft: self.stream.stamp(draft),
            synced: None,
        };
        self.permit.send(command);
    }
}
