//! The disk writer: stamps each event with its run's next `seq`, appends and syncs it to
//! the open spool segment, then hands it to the sender and answers producers that wait for
//! the disk. Runs on its own thread because every group of events ends with an fsync.
//!
//! A group that nobody waits on (a child's output lines) waits [`GROUP_LINGER`] for more
//! events to join it, so that a busy stream costs one write and one sync per burst rather
//! than per few lines; a producer that waits for the disk rings `Hurry` and is not kept.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::ledger::{Hurry, Pending, Segment, Shared};
use super::{Command, Draft, MAX_REQUEST_EVENTS, SEGMENT_EVENTS, StreamStats, SyncedReply, line};
use crate::emit::spool::{SegmentName, SpoolDir, SpoolLock};
use crate::run::RunId;

/// How long a group that nobody waits on waits for more events: a line reaches the spool
/// at most this much later, and a steady stream costs one sync per this long, not per read.
const GROUP_LINGER: Duration = Duration::from_millis(100);

/// Owns the open segment file and the spool's lock.
pub(super) struct Writer {
    spool: SpoolDir,
    source: String,
    shared: Arc<Shared>,
    hurry: Arc<Hurry>,
    stats: Arc<StreamStats>,
    /// The last `seq` used per run.
    seqs: HashMap<RunId, u64>,
    file: Option<File>,
    segment: SegmentName,
    in_segment: usize,
    _lock: SpoolLock,
    /// The last write failed (logged once until it works again).
    failing: bool,
}

impl Writer {
    /// A writer that continues each run's sequence after `seqs`, in a new segment.
    pub(super) fn new(
        spool: SpoolDir,
        lock: SpoolLock,
        source: String,
        shared: Arc<Shared>,
        hurry: Arc<Hurry>,
        stats: Arc<StreamStats>,
        seqs: HashMap<RunId, u64>,
    ) -> Writer {
        Writer {
            spool,
            source,
            shared,
            hurry,
            stats,
            seqs,
            file: None,
            segment: SegmentName::generate(),
            in_segment: 0,
            _lock: lock,
            failing: false,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else { break };
            // Group whatever else is already waiting: one write and one fsync for all.
            let mut commands = vec![first];
            take_waiting(&mut rx, &mut commands);
            if commands.len() < MAX_REQUEST_EVENTS && !commands.iter().any(Command::is_urgent) {
                self.hurry.wait(GROUP_LINGER);
                take_waiting(&mut rx, &mut commands);
            }
            let mut lines = Vec::with_capacity(commands.len());
            let mut prompt = Vec::with_capacity(commands.len());
            let mut replies = Vec::new();
            for command in commands {
                match command {
                    Command::Begin { run_id, last_seq } => {
                        let seq = self.seqs.entry(run_id).or_insert(0);
                        *seq = (*seq).max(last_seq);
                    }
                    Command::Event { run_id, attempt, draft, synced } => {
                        prompt.push(draft.is_prompt());
                        let line = self.stamp(run_id, attempt, draft);
                        replies.push((lines.len(), synced));
                        lines.push(line);
                    }
                    Command::Close => closing = true,
                }
            }
            self.spool(lines, &prompt, replies);
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
        Arc::from(line::encode(draft, &run_id, *seq, attempt, &self.source))
    }

    /// Appends and syncs `lines`, then hands them to the sender and answers the waiters.
    fn spool(&mut self, lines: Vec<Arc<str>>, prompt: &[bool], replies: Vec<(usize, Option<SyncedReply>)>) {
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
                        path: self.spool.segment_path(self.segment),
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
            let refused: HashSet<usize> = match &written {
                Err(_) => replies.iter().filter(|(_, synced)| synced.is_some()).map(|(index, _)| *index).collect(),
                Ok(()) => Default::default(),
            };
            for (index, (line, prompt)) in lines.iter().zip(prompt).enumerate() {
                if !refused.contains(&index) {
                    ledger.push(Pending { line: line.clone(), segment, since: now, prompt: *prompt });
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
                tracing::error!(spool = %self.spool.dir().display(), error = %err,
                    "cannot write the event spool: events are kept in memory only until the disk works again");
                self.failing = true;
                // Start a fresh segment next time rather than append after a torn write.
                self.file = None;
            }
            Ok(()) if self.failing => {
                tracing::info!(spool = %self.spool.dir().display(), "the event spool is writable again");
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
                let path = self.spool.segment_path(self.segment);
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                // The new name must survive a crash too.
                File::open(self.spool.dir())?.sync_all()?;
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
        self.segment = SegmentName::generate();
    }
}

/// Adds the commands already queued to `commands`, up to a group's worth.
fn take_waiting(rx: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>) {
    while commands.len() < MAX_REQUEST_EVENTS {
        match rx.try_recv() {
            Ok(command) => commands.push(command),
            Err(_) => break,
        }
    }
}
