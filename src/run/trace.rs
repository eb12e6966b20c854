//! A run's W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the trace id it gets
//! at enqueue, and the span ids of its attempts and stages. Span ids are derived from the
//! run id, the attempt and the stage, so that the worker (which stamps them on its events
//! and hands them to the stages as `TRACEPARENT`) and an exporter agree without storing them.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Run, RunId};

/// A W3C trace id: 16 bytes, never all zero, written as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceId([u8; 16]);

/// A W3C span (parent) id: 8 bytes, never all zero, written as 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a W3C trace id (32 lower-case hex digits, not all zero)")]
pub struct InvalidTraceId(String);

impl TraceId {
    /// A fresh random trace id (the W3C recommends random trace ids).
    pub fn generate() -> TraceId {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        TraceId(nonzero(bytes))
    }

    /// The trace id a run stored without one gets at its claim: derived from its id, so
    /// that every store and every replay gives the same one.
    pub fn of_run(run_id: &RunId) -> TraceId {
        TraceId(nonzero(digest(&[b"trace", run_id.as_str().as_bytes()])))
    }

    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }

    /// The trace id of a `traceparent` header or extension (`00-<trace>-<span>-<flags>`),
    /// when it is well formed.
    pub fn from_traceparent(traceparent: &str) -> Option<TraceId> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; a later version may add some after them.
        let version_ok = version.len() == 2 && is_lower_hex(version) && version != "ff";
        if !version_ok || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if span.len() != 16 || !is_lower_hex(span) || span.bytes().all(|b| b == b'0') {
            return None;
        }
        if flags.len() != 2 || !is_lower_hex(flags) {
            return None;
        }
        trace.parse().ok()
    }
}

impl SpanId {
    /// The span of one attempt of a run (claim to end).
    pub fn of_attempt(run_id: &RunId, attempt: u32) -> SpanId {
        SpanId(nonzero(digest(&[b"attempt", run_id.as_str().as_bytes(), &attempt.to_be_bytes()])))
    }

    /// The span of one stage of an attempt (its start to its end), a child of the attempt's.
    pub fn of_stage(run_id: &RunId, attempt: u32, stage: &str) -> SpanId {
        SpanId(nonzero(digest(&[b"stage", run_id.as_str().as_bytes(), &attempt.to_be_bytes(), stage.as_bytes()])))
    }

    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }
}

impl Run {
    /// The run's trace id (a run stored without one has the one its claim would give it).
    pub fn trace_id_or_derived(&self) -> TraceId {
        self.trace_id.unwrap_or_else(|| TraceId::of_run(&self.id))
    }

    /// The `traceparent` of the live attempt's span, or of its `stage`'s.
    pub fn traceparent(&self, stage: Option<&str>) -> String {
        let span = match stage {
            Some(stage) => SpanId::of_stage(&self.id, self.attempt, stage),
            None => SpanId::of_attempt(&self.id, self.attempt),
        };
        traceparent(self.trace_id_or_derived(), span)
    }
}

/// The `traceparent` value naming `span` of `trace`, sampled (flags 01).
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// The first `N` bytes of SHA-256 over the length-prefixed parts (so that no two lists of
/// parts give the same input).
fn digest<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let hash = hasher.finalize();
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(&hash[..N]);
    bytes
}

/// All zero is the one invalid value of both ids.
fn nonzero<const N: usize>(mut bytes: [u8; N]) -> [u8; N] {
    if bytes.iter().all(|b| *b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl std::str::FromStr for TraceId {
    type Err = InvalidTraceId;

    fn from_str(text: &str) -> Result<TraceId, InvalidTraceId> {
        let invalid = || InvalidTraceId(text.to_owned());
        if text.len() != 32 || !is_lower_hex(text) {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).map_err(|_| invalid())?;
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(invalid());
        }
        Ok(TraceId(bytes))
    }
}

impl TryFrom<String> for TraceId {
    type Error = InvalidTraceId;

    fn try_from(text: String) -> Result<TraceId, InvalidTraceId> {
        text.parse()
    }
}

impl From<TraceId> for String {
    fn from(trace: TraceId) -> String {
        trace.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_32_lower_hex_digits_and_reads_back() {
        let trace = TraceId::generate();
        let text = trace.to_string();
        assert_eq!(text.len(), 32);
        assert!(is_lower_hex(&text), "{text}");
        assert_eq!(text.parse::<TraceId>(), Ok(trace));
        for bad in ["0".repeat(32), "A".repeat(32), "ab".into(), "g".repeat(32)] {
            assert!(bad.parse::<TraceId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let run: RunId = "r1".parse().expect("an id");
        assert_eq!(TraceId::of_run(&run), TraceId::of_run(&run));
        assert_eq!(SpanId::of_attempt(&run, 1), SpanId::of_attempt(&run, 1));
        assert_ne!(SpanId::of_attempt(&run, 1), SpanId::of_attempt(&run, 2));
        assert_ne!(SpanId::of_stage(&run, 1, "Stage_1"), SpanId::of_stage(&run, 1, "Stage_2"));
        assert_ne!(SpanId::of_stage(&run, 1, "Stage_1"), SpanId::of_attempt(&run, 1));
    }

    #[test]
    fn a_traceparent_gives_its_trace_id() {
        let trace = TraceId::generate();
        let run: RunId = "r1".parse().expect("an id");
        let header = traceparent(trace, SpanId::of_attempt(&run, 1));
        assert_eq!(header.len(), 55);
        assert_eq!(TraceId::from_traceparent(&header), Some(trace));
        let span = "00f067aa0ba902b7";
        assert!(TraceId::from_traceparent(&format!("00-{}-{span}-01", "0".repeat(32))).is_none());
        assert!(TraceId::from_traceparent(&format!("00-{trace}-{}-01", "0".repeat(16))).is_none());
        assert!(TraceId::from_traceparent(&format!("ff-{trace}-{span}-01")).is_none());
        assert!(TraceId::from_traceparent(&format!("00-{trace}-{span}-01-extra")).is_none());
        assert_eq!(TraceId::from_traceparent(&format!("01-{trace}-{span}-01-extra")), Some(trace));
    }
}
