//! The client side of events: building envelopes, sending them to an ingest API
//! ([`Client`]), the disk [`Spool`] of `scientist emit`, and the worker's side: its ordered,
//! spooled [`EventStream`] to a [`Sink`] (HTTP or the store) and the [`LocalEndpoint`]
//! through which its child joins that stream.

pub mod client;
pub mod local;
pub mod sink;
pub mod spool;
pub mod stream;

use serde_json::{Map, Value};

pub use client::{Client, Receipt, SendError};
pub use local::{LocalEndpoint, Reported};
pub use sink::{HttpSink, Sink, StoreSink};
pub use spool::{DrainError, Drained, Spool};
pub use stream::{Draft, EventStream, RunStream, StreamConfig, StreamError};

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

/// An error with its causes, one line (`a: b: c`), for messages that cross a boundary as text.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A random number in [0, 1), for jitter. `RandomState` is seeded from the OS per instance,
/// which is all the randomness jitter needs.
pub fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
