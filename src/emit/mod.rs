//! The client side of events: building envelopes, the [`SpoolDir`] where events wait until
//! acknowledged (one format for `scientist emit --spool` and the worker), and the worker's
//! side: its ordered, spooled [`EventStream`] to a `control::ControlPlane` and the
//! [`LocalEndpoint`] through which its child joins that stream.

pub mod local;
pub mod spool;
pub mod stream;

use serde_json::{Map, Value};

pub use local::{LocalEndpoint, Reported};
pub use spool::{DrainError, Drained, SpoolDir};
pub use stream::{Draft, EventStream, RunStream, StreamConfig, StreamError, TraceStamp};

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
