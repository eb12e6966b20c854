//! Segment recovery: what was left in the spool (by an earlier worker, or by `emit
//! --spool`) becomes the stream's first pending events, oldest segment first, and each
//! run's sequence continues after the highest `seq` found.

use std::collections::HashMap;
use std::io;
use std::time::Instant;

use super::ledger::{Ledger, Pending, Segment};
use crate::emit::spool::SpoolDir;
use crate::run::RunId;

pub(super) struct Recovered {
    pub(super) ledger: Ledger,
    /// The highest `seq` found per run.
    pub(super) seqs: HashMap<RunId, u64>,
}

pub(super) fn recover(spool: &SpoolDir) -> io::Result<Recovered> {
    let mut ledger = Ledger::default();
    let mut seqs: HashMap<RunId, u64> = HashMap::new();
    let now = Instant::now();
    for (name, path) in spool.segments()? {
        let events = SpoolDir::read_segment(&path)?;
        for event in &events {
            ledger.push(Pending { line: event.line.clone(), segment: Some(name), since: now, prompt: false });
            if let Some((run_id, seq)) = &event.run_seq {
                let known = seqs.entry(run_id.clone()).or_insert(0);
                *known = (*known).max(*seq);
            }
        }
        ledger.segments.insert(name, Segment { path, written: events.len(), acked: 0, open: false });
    }
    Ok(Recovered { ledger, seqs })
}
