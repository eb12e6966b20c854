//! A control plane that serves no queue and hands each event delivered to it, with the time
//! it arrived, to a channel; and the worker's own event stream (spool, writer thread,
//! sender) in front of it. What the
//! run-directory monitor reports reaches the recorder the way it reaches a real control
//! plane. Used by `tests/artifacts_on_close.rs` and `benches/artifacts.rs` with `#[path]`.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use scientist::control::{ControlPlane, Error};
use scientist::emit::{EventStream, RunStream, StreamConfig};
use scientist::ideation::IdeationRequest;
use scientist::protocol::{BatchAnswer, ClaimState, EventAnswer};
use scientist::run::{Run, RunId};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// One event as the control plane got it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub at: Instant,
    pub event: Map<String, Value>,
}

impl Delivered {
    pub fn event_type(&self) -> &str {
        self.event.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    /// A field of the event's data, as text.
    pub fn data_text(&self, field: &str) -> Option<&str> {
        self.event.get("data")?.get(field)?.as_str()
    }
}

/// Unbounded: the reader takes every event, and a test's or benchmark's are few.
struct Recorder {
    delivered: mpsc::UnboundedSender<Delivered>,
}

fn no_queue() -> Error {
    Error::Answer("the recorder serves no queue".into())
}

#[async_trait]
impl ControlPlane for Recorder {
    async fn claim(&self, _worker: &str, _queue: &str) -> Result<Option<Run>, Error> {
        Err(no_queue())
    }
    async fn claim_ideation(&self, _worker: &str) -> Result<Option<IdeationRequest>, Error> {
        Err(no_queue())
    }
    async fn check(&self, _run_id: &RunId, _attempt: u32) -> Result<ClaimState, Error> {
        Err(no_queue())
    }
    async fn hear_ideation(&self, _id: &str, _attempt: u32) -> Result<bool, Error> {
        Err(no_queue())
    }
    async fn finish_ideation(&self, _id: &str, _attempt: u32, _error: Option<String>) -> Result<bool, Error> {
        Err(no_queue())
    }
    async fn send_event(&self, _event: &Map<String, Value>) -> Result<EventAnswer, Error> {
        Err(no_queue())
    }

    async fn send_lines(&self, lines: &[Arc<str>]) -> Result<BatchAnswer, Error> {
        let at = Instant::now();
        for line in lines {
            let event: Map<String, Value> =
                serde_json::from_str(line).map_err(|err| Error::Answer(format!("not an event: {err}")))?;
            // The reader may be gone at the end: what it did not read no longer matters.
            let _ = self.delivered.send(Delivered { at, event });
        }
        Ok(BatchAnswer::default())
    }

    fn describe(&self) -> String {
        "recorder".into()
    }
}

/// How the stream in front of the recorder batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Each event as soon as it is spooled.
    AtOnce,
    /// As `scientist work` does: 50 at a time, or once the oldest waited a second.
    Worker,
}

/// The event stream a worker opens, spooling in `spool_dir` and delivering to a recorder;
/// `run_id`'s claim 1 on it; and what the recorder gets.
pub async fn open(spool_dir: &Path, run_id: &RunId, delivery: Delivery) -> (EventStream, RunStream, Deliveries) {
    let (delivered, received) = mpsc::unbounded_channel();
    let mut config = StreamConfig::new(spool_dir.to_owned(), "pod://recorder".into());
    if delivery == Delivery::AtOnce {
        config.batch_events = 1;
    }
    let stream = EventStream::open(config, Arc::new(Recorder { delivered })).expect("open the event stream");
    let run_stream = stream.begin(run_id, 1, 0).await.expect("begin the run's stream");
    (stream, run_stream, Deliveries { received, seen: Vec::new() })
}

/// The events the recorder got, kept in order as they are read.
pub struct Deliveries {
    received: mpsc::UnboundedReceiver<Delivered>,
    pub seen: Vec<Delivered>,
}

impl Deliveries {
    /// Waits for the first event not yet matched that `wanted` accepts, failing after `within`.
    pub async fn wait_for(&mut self, within: Duration, what: &str, wanted: impl Fn(&Delivered) -> bool) -> Delivered {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(delivered)) => {
                    self.seen.push(delivered.clone());
                    if wanted(&delivered) {
                        return delivered;
                    }
                }
                Ok(None) => panic!("the event stream stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {within:?}; seen: {:?}", self.types()),
            }
        }
    }

    /// Takes in what has arrived so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(delivered) = self.received.try_recv() {
            self.seen.push(delivered);
        }
    }

    /// The events seen of `event_type` about `path` (the data's `path`).
    pub fn about(&self, event_type: &str, path: &str) -> Vec<&Delivered> {
        self.seen
            .iter()
            .filter(|delivered| delivered.event_type() == event_type && delivered.data_text("path") == Some(path))
            .collect()
    }

    fn types(&self) -> Vec<(String, Option<String>)> {
        self.seen
            .iter()
            .map(|delivered| (delivered.event_type().to_owned(), delivered.data_text("path").map(str::to_owned)))
            .collect()
    }
}
