//! Debouncing: a file is ready to upload once no change was seen on it for a quiet period,
//! so a checkpoint written in many chunks is uploaded once, complete. Pure: the caller
//! passes `now`, which keeps the rule testable without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Paths that changed, each with the time of its latest change; one entry per path however
/// many events arrive (the coalescing of notify's event storm).
#[derive(Debug)]
pub struct Settler<K> {
    quiet: Duration,
    /// A file that keeps changing is still uploaded after this long, so a log-like file
    /// rewritten every second is not held back for the whole run.
    max_wait: Duration,
    changed: HashMap<K, Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
}

impl<K: Hash + Eq + Clone> Settler<K> {
    /// Files are due `quiet` after their last change, or `max_wait` after the first change
    /// not yet handed out, whichever comes first.
    pub fn new(quiet: Duration, max_wait: Duration) -> Settler<K> {
        Settler { quiet, max_wait: max_wait.max(quiet), changed: HashMap::new() }
    }

    /// Records a change of `key` at `now`.
    pub fn touch(&mut self, key: K, now: Instant) {
        self.changed
            .entry(key)
            .and_modify(|pending| pending.last = pending.last.max(now))
            .or_insert(Pending { first: now, last: now });
    }

    /// When the next key falls due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.changed.values().map(|pending| self.due_at(pending)).min()
    }

    /// Removes and returns the keys due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .changed
            .iter()
            .filter(|(_, pending)| self.due_at(pending) <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            self.changed.remove(key);
        }
        due
    }

    /// Stops waiting for `key`: it was handled another way (closed by its writer).
    pub fn forget(&mut self, key: &K) {
        self.changed.remove(key);
    }

    /// Removes and returns every waiting key, due or not (the run ended).
    pub fn take_all(&mut self) -> Vec<K> {
        self.changed.drain().map(|(key, _)| key).collect()
    }

    pub fn len(&self) -> usize {
        self.changed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    fn due_at(&self, pending: &Pending) -> Instant {
        (pending.last + self.quiet).min(pending.first + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(2);
    const MAX_WAIT: Duration = Duration::from_secs(30);

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_file_is_due_only_after_its_writes_stop() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        assert_eq!(settler.next_due(), None);
        // A checkpoint written in chunks, 500 ms apart.
        for step in 0..5 {
            settler.touch("model.pt", at(start, step * 500));
            assert!(settler.take_due(at(start, step * 500)).is_empty(), "still being written");
        }
        assert_eq!(settler.len(), 1, "many events, one entry");
        assert_eq!(settler.next_due(), Some(at(start, 2000 + 2000)));
        assert!(settler.take_due(at(start, 3999)).is_empty());
        assert_eq!(settler.take_due(at(start, 4000)), vec!["model.pt"]);
        assert!(settler.is_empty());
        assert_eq!(settler.next_due(), None);
    }

    #[test]
    fn files_settle_independently() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        settler.touch("a.png", at(start, 0));
        settler.touch("b.png", at(start, 1000));
        assert_eq!(settler.take_due(at(start, 2500)), vec!["a.png"]);
        assert_eq!(settler.next_due(), Some(at(start, 3000)));
        assert_eq!(settler.take_due(at(start, 3000)), vec!["b.png"]);
    }

    #[test]
    fn a_file_that_never_stops_changing_is_due_after_the_maximum_wait() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        let mut now = start;
        while now < start + MAX_WAIT {
            settler.touch("metrics.json", now);
            now += Duration::from_millis(900);
        }
        assert_eq!(settler.take_due(start + MAX_WAIT), vec!["metrics.json"]);
        // Changes after being handed out start a new wait.
        settler.touch("metrics.json", start + MAX_WAIT + Duration::from_millis(1));
        assert!(settler.take_due(start + MAX_WAIT + Duration::from_millis(2)).is_empty());
    }

    #[test]
    fn an_event_delivered_late_does_not_move_the_time_back() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        settler.touch("a.png", at(start, 1000));
        settler.touch("a.png", at(start, 0));
        assert_eq!(settler.next_due(), Some(at(start, 3000)));
    }

    #[test]
    fn a_forgotten_file_is_no_longer_due() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        settler.touch("a.png", start);
        settler.touch("b.png", start);
        settler.forget(&"a.png");
        assert_eq!(settler.take_due(at(start, 2000)), vec!["b.png"]);
        assert_eq!(settler.next_due(), None);
    }

    #[test]
    fn take_all_empties_it() {
        let start = Instant::now();
        let mut settler = Settler::new(QUIET, MAX_WAIT);
        settler.touch("a", start);
        settler.touch("b", start);
        let mut all = settler.take_all();
        all.sort();
        assert_eq!(all, vec!["a", "b"]);
        assert!(settler.is_empty());
    }
}
