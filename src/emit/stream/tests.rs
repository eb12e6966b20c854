//! The stream against a control plane that records deliveries and can be down.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::*;
use crate::control::{ControlPlane, Error, SendError};
use crate::event::payload;
use crate::ideation::IdeationRequest;
use crate::protocol::{BatchAnswer, ClaimState, EventAnswer};
use crate::run::Run;

/// Delivers into a list, and fails while `down` is set; it serves no claims.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<String>>,
    down: AtomicBool,
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
        if self.down.load(Ordering::SeqCst) {
            return Err(SendError::Unreachable { url: "test".into(), reason: "down".into() }.into());
        }
        self.delivered.lock().expect("lock").extend(lines.iter().map(|line| line.to_string()));
        Ok(BatchAnswer::default())
    }

    fn describe(&self) -> String {
        "recorder".into()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("seg-")))
        .collect();
    found.sort();
    found
}

fn log(message: &str) -> Draft {
    Draft::of(&payload::Log { message: message.into(), level: None, source: None, extra: Map::new() })
}

#[tokio::test]
async fn events_are_sequenced_delivered_in_order_and_the_spool_emptied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = Arc::new(Recorder::default());
    let stream =
        EventStream::open(StreamConfig::new(dir.path().to_owned(), "pod://t".into()), plane.clone()).expect("open");
    let run: RunId = "r1".parse().expect("id");
    let handle = stream.begin(&run, 3, 10).await.expect("begin");
    for index in 0..120 {
        handle.emit(log(&format!("line {index} API_KEY=hunter2"))).await.expect("emit");
    }
    let closing = stream.close(Duration::from_secs(10)).await;
    assert_eq!(closing.undelivered, 0);
    let delivered = plane.delivered.lock().expect("lock").clone();
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

/// A prompt event (an artifact registered) goes out as soon as it is on disk, carrying the
/// log lines before it, though the batch would not be due for an hour.
#[tokio::test]
async fn a_prompt_event_is_sent_at_once_with_what_came_before_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = Arc::new(Recorder::default());
    let config = StreamConfig {
        flush_every: Duration::from_secs(3600),
        ..StreamConfig::new(dir.path().to_owned(), "pod://t".into())
    };
    let stream = EventStream::open(config, plane.clone()).expect("open");
    let handle = stream.begin(&"r1".parse().expect("id"), 1, 0).await.expect("begin");
    for index in 0..3 {
        handle.emit(log(&format!("line {index}"))).await.expect("emit");
    }
    assert!(!log("x").is_prompt(), "log lines wait for a batch");
    let registered = payload::ArtifactRegistered {
        key: "runs/r1/plots/a.png".into(),
        bytes: Some(1),
        sha256: None,
        content_type: None,
        kind: None,
        extra: Map::new(),
    };
    let registered = Draft::of(&registered);
    assert!(registered.is_prompt());
    handle.emit(registered).await.expect("emit");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while plane.delivered.lock().expect("lock").len() < 4 {
        assert!(std::time::Instant::now() < deadline, "the prompt event was not sent at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = plane.delivered.lock().expect("lock").clone();
    let types: Vec<String> = delivered
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("json")["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, ["ai.run.log", "ai.run.log", "ai.run.log", "ai.artifact.registered"], "in order");
    stream.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_outage_keeps_events_in_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plane = Arc::new(Recorder::default());
    plane.down.store(true, Ordering::SeqCst);
    let config = StreamConfig::new(dir.path().to_owned(), "pod://t".into());
    let stream = EventStream::open(config.clone(), plane.clone()).expect("open");
    let run: RunId = "r1".parse().expect("id");
    let handle = stream.begin(&run, 1, 0).await.expect("begin");
    for index in 0..5 {
        handle.emit_synced(log(&format!("line {index}"))).await.expect("synced");
    }
    assert!(
        matches!(EventStream::open(config.clone(), plane.clone()), Err(StreamError::Locked(_))),
        "a second worker cannot share the spool"
    );
    drop(handle);
    let closing = stream.close(Duration::from_millis(300)).await;
    assert_eq!(closing.undelivered, 5);
    assert_eq!(segments(dir.path()).len(), 1);

    // The next worker sends them first, and continues the run's sequence after them.
    plane.down.store(false, Ordering::SeqCst);
    let stream = EventStream::open(config, plane.clone()).expect("reopen");
    let handle = stream.begin(&run, 2, 0).await.expect("begin");
    handle.emit(log("after restart")).await.expect("emit");
    assert_eq!(stream.close(Duration::from_secs(10)).await.undelivered, 0);
    let delivered = plane.delivered.lock().expect("lock").clone();
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("json")["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert!(segments(dir.path()).is_empty());
}

#[tokio::test]
async fn events_whose_write_fails_are_not_acknowledged_and_lines_nobody_waits_on_stay_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let plane = Arc::new(Recorder::default());
    let stream = EventStream::open(StreamConfig::new(spool.clone(), "pod://t".into()), plane.clone()).expect("open");
    let run: RunId = "r1".parse().expect("id");
    let handle = stream.begin(&run, 1, 0).await.expect("begin");
    // The disk fails under the stream: no segment can be opened.
    fs::remove_dir_all(&spool).expect("remove the spool");
    let refused = handle.emit_all_synced((0..3).map(|index| log(&format!("refused {index}"))).collect()).await;
    assert!(matches!(refused, Err(StreamError::NotSpooled(_))), "{refused:?}");
    handle.emit(log("in memory")).await.expect("queued");
    // The disk works again.
    fs::create_dir(&spool).expect("recreate the spool");
    handle.emit_synced(log("spooled")).await.expect("synced");
    assert_eq!(stream.close(Duration::from_secs(10)).await.undelivered, 0);
    let messages: Vec<String> = plane
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("json")["data"]["message"].to_string())
        .collect();
    assert_eq!(messages, [r#""in memory""#, r#""spooled""#], "what was refused to its producer is never sent");
}
