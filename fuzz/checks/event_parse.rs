//! `event_parse`: one event in structured mode (the bytes are the body) and in binary mode
//! (the bytes are `name: value` header lines, a blank line, then the body).
//!
//! Beyond "no panic": an accepted event, written in its stored JSON form and read again,
//! is the same event (so what is stored can always be re-read, and redaction is stable).
//!
//! Shared by `fuzz_targets/event_parse.rs` and `tests/fuzz_corpus.rs`; a violation panics.

use scientist::event::{Event, wire};
use scientist::time::Timestamp;
use serde_json::Value;

/// Stands in for the time of receipt; any fixed time will do.
const RECEIVED: Timestamp = Timestamp::EPOCH;

pub fn check(data: &[u8]) {
    if let Ok(event) = wire::parse_structured(data, RECEIVED) {
        rereads_the_same(&event);
    }
    let (headers, body) = split_headers(data);
    let content_type =
        headers.iter().rev().find(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, value)| *value);
    let pairs = headers.iter().map(|(name, value)| (*name, *value));
    if let Ok(event) = wire::parse_binary(pairs, content_type, body, RECEIVED) {
        rereads_the_same(&event);
    }
}

/// The stored form (`Event::to_json`) parses back to the same event.
fn rereads_the_same(event: &Event) {
    let stored = Value::Object(event.to_json());
    let bytes = match serde_json::to_vec(&stored) {
        Ok(bytes) => bytes,
        Err(err) => panic!("an accepted event cannot be written as JSON: {err}; event {event:?}"),
    };
    match wire::parse_structured(&bytes, RECEIVED) {
        Ok(again) => assert_eq!(&again, event, "the stored form {stored} reads back as a different event"),
        Err(err) => panic!("the stored form {stored} of an accepted event is refused: {err}"),
    }
}

/// Binary mode's input: header lines up to the first blank line, the rest is the body (no
/// blank line: all headers, no body). A line that is not UTF-8 is dropped, as the server drops
/// a header whose value is not (`HeaderValue::to_str`).
fn split_headers(data: &[u8]) -> (Vec<(&str, &str)>, &[u8]) {
    let (head, body) = match data.windows(2).position(|pair| pair == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &data[data.len()..]),
    };
    let headers = head
        .split(|byte| *byte == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    (headers, body)
}
