//! Relays one of the child's output streams into `ai.run.log` events. It never stops
//! reading the pipe: when the event stream's queue is full, records wait in a buffer here
//! (bounded; beyond it lines are counted and dropped, and the count is reported), so the
//! experiment is never slowed or stalled by its reporting. (A child's pipe paces its own
//! reads, so that a child writing line by line does not wake the relay for every line:
//! `child::OutputPipe`.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::outcome::Tail;
use crate::capture::{Capture, Record, log_draft};
use crate::emit::{Draft, RunStream};

/// A rewritten line (progress bar) is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How often stalled progress bars and unfinished tracebacks are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Records that may wait here while the stream's queue is full (about 100 MB at worst).
const BUFFER_RECORDS: usize = 200_000;

const READ_BYTES: usize = 64 * 1024;

/// What a relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub records: u64,
    pub dropped: u64,
}

/// Reads `reader` (the child's `source`, "stdout" or "stderr") to its end.
pub async fn relay(
    mut reader: impl AsyncRead + Unpin,
    source: &'static str,
    stream: RunStream,
    tail: Arc<Mutex<Tail>>,
) -> Relayed {
    let mut capture = Capture::new(PROGRESS_INTERVAL);
    let mut outbox =
        Outbox { stream: &stream, waiting: VecDeque::new(), relayed: Relayed::default(), unreported_drops: 0 };
    let mut buffer = vec![0u8; READ_BYTES];
    let mut records = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut open = true;
    loop {
        tokio::select! {
            // Cancel-safe: `read` loses no data when another branch wins.
            read = reader.read(&mut buffer), if open => {
                let now = std::time::Instant::now();
                match read {
                    Ok(0) | Err(_) => {
                        open = false;
                        capture.finish(now, &mut records);
                    }
                    Ok(read) => capture.feed(&buffer[..read], now, &mut records),
                }
            }
            _ = tick.tick(), if open => capture.tick(std::time::Instant::now(), &mut records),
            // Cancel-safe: a permit not used is given back.
            permit = stream.reserve(), if !outbox.waiting.is_empty() => {
                match permit {
                    Ok(permit) => outbox.send_waiting(permit),
                    // The stream is gone (the worker is exiting): nothing more can be reported.
                    Err(_) => break,
                }
            }
            else => break,
        }
        if !records.is_empty() {
            let mut tail = crate::sync::lock(&tail);
            for record in &records {
                tail.observe(record);
            }
        }
        for record in records.drain(..) {
            outbox.push(log_draft(record, source));
        }
    }
    outbox.relayed
}

/// Records on their way to the stream, in order.
struct Outbox<'a> {
    stream: &'a RunStream,
    waiting: VecDeque<Draft>,
    relayed: Relayed,
    /// Dropped since the last report of drops.
    unreported_drops: u64,
}

impl Outbox<'_> {
    fn push(&mut self, draft: Draft) {
        self.relayed.records += 1;
        if self.waiting.is_empty() {
            if let Err(draft) = self.stream.try_emit(draft) {
                self.waiting.push_back(draft);
            }
        } else if self.waiting.len() < BUFFER_RECORDS {
            self.waiting.push_back(draft);
        } else {
            self.relayed.dropped += 1;
            self.unreported_drops += 1;
        }
    }

    /// Sends what waits, as far as the queue has room.
    fn send_waiting(&mut self, permit: crate::emit::stream::RunPermit<'_>) {
        let Some(first) = self.waiting.pop_front() else { return };
        permit.emit(first);
        while let Some(draft) = self.waiting.pop_front() {
            if let Err(draft) = self.stream.try_emit(draft) {
                self.waiting.push_front(draft);
                return;
            }
        }
        if self.unreported_drops > 0 {
            let message = format!(
                "scientist: {} output lines were dropped because the event stream fell behind the child",
                self.unreported_drops
            );
            let record = Record::new(message, crate::event::LogLevel::Warning, false);
            self.unreported_drops = 0;
            self.waiting.push_back(log_draft(record, "worker"));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::control::HttpControlPlane;
    use crate::emit::{EventStream, SpoolDir, StreamConfig};
    use crate::run::RunId;

    #[tokio::test]
    async fn every_line_written_in_small_pieces_is_relayed_once_and_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Nothing listens there: every event stays in the spool, to be read back below.
        let plane = Arc::new(HttpControlPlane::new("http://127.0.0.1:1", None).expect("client"));
        let spool = dir.path().join("spool");
        let stream = EventStream::open(StreamConfig::new(spool.clone(), "pod://t".into()), plane).expect("open");
        let run: RunId = "r1".parse().expect("id");
        let run_stream = stream.begin(&run, 1, 0).await.expect("begin");
        // A pipe far smaller than the output: the child side waits on the relay's reads.
        let (mut child, output) = tokio::io::duplex(4096);
        let lines = 3000;
        let writer = tokio::spawn(async move {
            for index in 0..lines {
                let line = format!("line {index} password=hunter{index}\n");
                let (first, second) = line.as_bytes().split_at(line.len() / 2);
                child.write_all(first).await.expect("write");
                child.write_all(second).await.expect("write");
            }
        });
        let relayed = relay(output, "stdout", run_stream, Arc::new(Mutex::new(Tail::default()))).await;
        writer.await.expect("the writer");
        assert_eq!(relayed, Relayed { records: lines, dropped: 0 });
        assert_eq!(stream.close(Duration::from_millis(100)).await.undelivered, lines as usize);
        let spooled = SpoolDir::open(&spool).expect("spool");
        let mut messages = Vec::new();
        for (_, path) in spooled.segments().expect("segments") {
            for event in SpoolDir::read_segment(&path).expect("segment") {
                let event: serde_json::Value = serde_json::from_str(&event.line).expect("json");
                messages.push(event["data"]["message"].as_str().expect("a message").to_owned());
            }
        }
        let expected: Vec<String> = (0..lines).map(|index| format!("line {index} password=[REDACTED]")).collect();
        assert_eq!(messages, expected);
    }
}
