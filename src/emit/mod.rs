//! The client side of events: building envelopes, sending them to an ingest API
//! ([`Client`]), and the disk [`Spool`] that keeps what could not be delivered.
//! `scientist emit` uses all three; the worker (issue 6) joins them.

pub mod client;
pub mod spool;

use serde_json::{Map, Value};

pub use client::{Client, SendError};
pub use spool::{DrainError, Drained, Spool};

use crate::event::EventId;
use crate::time::Timestamp;

/// Fills in the envelope attributes an emitter may leave out: `specversion`, a ULID `id`,
/// the current `time`, `source` and the JSON content type. Given values are kept.
pub fn fill_envelope(event: &mut Map<String, Value>, source: &str) {
    let defaults = [
        ("specversion", Value::from("1.0")),
        ("id", Value::from(EventId::generate().to_string())),
        ("source", Value::from(source)),
        ("time", Value::from(Timestamp::now().to_string())),
        ("datacontenttype", Value::from("application/json")),
    ];
    for (name, value) in defaults {
        event.entry(name).or_insert(value);
    }
}

/// `pod://<pod id>`, from `RUNPOD_POD_ID` or the host name.
pub fn default_source() -> String {
    let pod = std::env::var("RUNPOD_POD_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|name| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("pod://{pod}")
}
