//! Output made into `ai.run.log` records, below both `worker` (a child's stdout and stderr)
//! and `monitor` (a run directory's `*.log` files), so that neither imports the other for
//! it: `lines` splits raw bytes into lines and progress-bar states, `records` detects
//! levels and keeps tracebacks together, [`Capture`] chains the two, and `events` queues
//! the pod's events on a run's stream. Pure except `events`: bytes and `now` in, records out.

pub mod events;
pub mod lines;
pub mod records;

use std::time::{Duration, Instant};

pub use events::{log_draft, queue};
pub use lines::{MAX_LINE_BYTES, Piece, Splitter};
pub use records::{Grouper, Record, level_of, strip_ansi};

/// One output stream's bytes to records: split into lines, then grouped.
#[derive(Debug)]
pub struct Capture {
    splitter: Splitter,
    grouper: Grouper,
    pieces: Vec<Piece>,
}

impl Capture {
    /// A rewritten line (a progress bar) is reported at most once per `progress_interval`.
    pub fn new(progress_interval: Duration) -> Capture {
        Capture { splitter: Splitter::new(progress_interval), grouper: Grouper::default(), pieces: Vec::new() }
    }

    /// Bytes read from the stream; the records they finish go to `out`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Record>) {
        self.splitter.feed(bytes, now, &mut self.pieces);
        self.group(now, out);
    }

    /// Reports what waited for time to pass (a progress bar's latest state, a traceback
    /// that stopped growing).
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Record>) {
        self.splitter.tick(now, &mut self.pieces);
        self.group(now, out);
        self.grouper.tick(now, out);
    }

    /// The stream ended: a last line without its newline is a line too.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<Record>) {
        self.splitter.finish(&mut self.pieces);
        self.group(now, out);
        self.grouper.finish(out);
    }

    fn group(&mut self, now: Instant, out: &mut Vec<Record>) {
        for piece in self.pieces.drain(..) {
            self.grouper.push(piece, now, out);
        }
    }
}
