//! What the disk writer and the sender share: the events spooled and not yet acknowledged,
//! in stream order, and the segments that hold them; and the bell with which a producer
//! that waits for the disk cuts the writer's wait for more events short.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::emit::spool::{SegmentName, SpoolDir};

/// What the writer and the sender share.
pub(super) struct Shared {
    pub(super) ledger: Mutex<Ledger>,
    /// Wakes the sender: new events, or the stream is closing.
    pub(super) wake: Notify,
}

impl Shared {
    /// Never held across an await; every update is a single push, pop or counter change.
    pub(super) fn lock(&self) -> MutexGuard<'_, Ledger> {
        crate::sync::lock(&self.ledger)
    }
}

/// Rung by a producer that waits for its event to reach the disk; the writer, waiting for
/// more events to join a group that nobody waits on, stops waiting.
#[derive(Default)]
pub(super) struct Hurry {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Hurry {
    pub(super) fn ring(&self) {
        *crate::sync::lock(&self.rung) = true;
        self.bell.notify_one();
    }

    /// Waits until rung or for `at_most`. A ring that came before the wait ends it at once.
    pub(super) fn wait(&self, at_most: Duration) {
        let rung = crate::sync::lock(&self.rung);
        let mut rung = match self.bell.wait_timeout_while(rung, at_most, |rung| !*rung) {
            Ok((rung, _)) => rung,
            Err(poisoned) => poisoned.into_inner().0,
        };
        *rung = false;
    }
}

#[derive(Default)]
pub(super) struct Ledger {
    /// Spooled, not yet acknowledged, in stream order.
    pub(super) pending: VecDeque<Pending>,
    pub(super) segments: BTreeMap<SegmentName, Segment>,
    /// No more events will come: deliver what waits without waiting for a full batch.
    pub(super) closing: bool,
    /// Pending prompt events ([`Pending::prompt`]): while any waits, the sender sends at once.
    pub(super) prompt: usize,
}

pub(super) struct Pending {
    pub(super) line: Arc<str>,
    /// The spool segment holding it; `None` when the disk failed and it lives in memory only.
    pub(super) segment: Option<SegmentName>,
    pub(super) since: Instant,
    /// Sent as soon as it is on disk (`Draft::is_prompt`), not when a batch is due.
    pub(super) prompt: bool,
}

pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) written: usize,
    pub(super) acked: usize,
    /// Still being appended to by the writer.
    pub(super) open: bool,
}

impl Ledger {
    /// The first `count` pending events were acknowledged: forget them and remove the
    /// segments that hold nothing undelivered any more.
    pub(super) fn push(&mut self, pending: Pending) {
        self.prompt += usize::from(pending.prompt);
        self.pending.push_back(pending);
    }

    pub(super) fn acknowledge(&mut self, count: usize) {
        for pending in self.pending.drain(..count.min(self.pending.len())) {
            self.prompt -= usize::from(pending.prompt);
            if let Some(segment) = pending.segment.and_then(|number| self.segments.get_mut(&number)) {
                segment.acked += 1;
            }
        }
        self.remove_delivered_segments();
    }

    pub(super) fn remove_delivered_segments(&mut self) {
        let done: Vec<SegmentName> = self
            .segments
            .iter()
            .filter(|(_, segment)| !segment.open && segment.acked >= segment.written)
            .map(|(name, _)| *name)
            .collect();
        for name in done {
            if let Some(segment) = self.segments.remove(&name)
                && let Err(err) = SpoolDir::remove_segment(&segment.path)
            {
                tracing::warn!(file = %segment.path.display(), error = %err, "could not remove a delivered spool segment");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_ends_the_wait_whether_it_comes_before_or_during_it() {
        let hurry = Arc::new(Hurry::default());
        hurry.ring();
        // A wait that only a ring can end within the test's lifetime.
        hurry.wait(Duration::from_secs(3600));
        let ringer = {
            let hurry = hurry.clone();
            std::thread::spawn(move || hurry.ring())
        };
        hurry.wait(Duration::from_secs(3600));
        ringer.join().expect("the ringer");
    }
}
