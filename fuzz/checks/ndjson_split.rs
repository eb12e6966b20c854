//! `ndjson_split`: the bytes as an NDJSON batch and as a JSON batch (array).
//!
//! Every line (array position) is accounted for exactly once: accepted or rejected under its
//! own 1-based number, numbers within range, unique and in order, blank NDJSON lines skipped;
//! and each line gets the verdict it would get sent alone (a batch is its lines, nothing more).
//!
//! Shared by `fuzz_targets/ndjson_split.rs` and `tests/fuzz_corpus.rs`; a violation panics.

use scientist::event::wire::{self, Batch};
use scientist::time::Timestamp;
use serde_json::Value;

/// Stands in for the time of receipt; any fixed time will do.
const RECEIVED: Timestamp = Timestamp::EPOCH;

pub fn check(data: &[u8]) {
    ndjson(data);
    json_batch(data);
}

fn ndjson(data: &[u8]) {
    let batch = wire::parse_ndjson(data, RECEIVED);
    let lines: Vec<&[u8]> = data.split(|byte| *byte == b'\n').collect();
    let expected: Vec<usize> =
        (1..=lines.len()).filter(|&line| !lines[line - 1].iter().all(u8::is_ascii_whitespace)).collect();
    assert_eq!(numbers(&batch), expected, "NDJSON: every non-blank line, once, under its own number");
    for (line, event) in &batch.events {
        let alone = wire::parse_structured(lines[line - 1], RECEIVED);
        assert_eq!(alone.as_ref(), Ok(event), "NDJSON line {line} accepted in a batch, but not alone");
    }
    for rejected in &batch.rejected {
        let alone = wire::parse_structured(lines[rejected.line - 1], RECEIVED).map_err(|err| err.to_string());
        assert_eq!(alone, Err(rejected.reason.clone()), "NDJSON line {}: another verdict alone", rejected.line);
    }
}

fn json_batch(data: &[u8]) {
    let items = match serde_json::from_slice(data) {
        Ok(Value::Array(items)) => Some(items),
        _ => None,
    };
    let (batch, items) = match (wire::parse_json_batch(data, RECEIVED), items) {
        (Ok(batch), Some(items)) => (batch, items),
        (Err(_), None) => return,
        (Ok(_), None) => panic!("a JSON batch was accepted though the body is not a JSON array"),
        (Err(err), Some(_)) => panic!("a JSON array was refused as a batch: {err}"),
    };
    let all: Vec<usize> = (1..=items.len()).collect();
    assert_eq!(numbers(&batch), all, "JSON batch: every position, once");
    let alone = |position: usize| match serde_json::to_vec(&items[position - 1]) {
        Ok(bytes) => wire::parse_structured(&bytes, RECEIVED),
        Err(err) => panic!("JSON batch position {position} cannot be written back as JSON: {err}"),
    };
    for (position, event) in &batch.events {
        assert_eq!(alone(*position).as_ref(), Ok(event), "JSON batch position {position}: another verdict alone");
    }
    for rejected in &batch.rejected {
        let verdict = alone(rejected.line).map_err(|err| err.to_string());
        assert_eq!(
            verdict,
            Err(rejected.reason.clone()),
            "JSON batch position {}: another verdict alone",
            rejected.line
        );
    }
}

/// The line numbers a batch mentions, accepted and rejected together, sorted; duplicates kept
/// (so that a number given twice fails the comparison).
fn numbers(batch: &Batch) -> Vec<usize> {
    let mut numbers: Vec<usize> = batch.events.iter().map(|(line, _)| *line).collect();
    numbers.extend(batch.rejected.iter().map(|rejected| rejected.line));
    let accepted_in_order = batch.events.windows(2).all(|pair| pair[0].0 < pair[1].0);
    let rejected_in_order = batch.rejected.windows(2).all(|pair| pair[0].line < pair[1].line);
    assert!(accepted_in_order && rejected_in_order, "batch lines out of order: {batch:?}");
    numbers.sort_unstable();
    numbers
}
