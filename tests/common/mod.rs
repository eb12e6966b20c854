//! Shared test helpers: building events. Opening stores is in `stores.rs`.

#![allow(dead_code)]

use scientist::event::{self, Event};
use scientist::time::Timestamp;
use serde_json::{Value, json};

/// A fixed, readable start time for test events.
pub const T0_MILLIS: i64 = 1_761_159_600_000; // 2025-10-22T19:00:00Z

pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(T0_MILLIS + seconds * 1000)
}

/// Builds a valid event: `ty` about `run_id`, sent `seconds` after T0.
pub fn event(id: &str, ty: &str, run_id: &str, seconds: i64, data: Value) -> Event {
    event_from(json!({
        "specversion": "1.0",
        "id": id,
        "source": "pod://test",
        "type": ty,
        "subject": format!("run/{run_id}"),
        "time": at(seconds).to_string(),
        "data": data,
    }))
}

/// The same, stamped with the worker's claim `attempt`.
pub fn attempt_event(id: &str, ty: &str, run_id: &str, seconds: i64, attempt: u32, data: Value) -> Event {
    let mut event = event(id, ty, run_id, seconds, data);
    event.attempt = Some(attempt);
    event
}

pub fn event_from(value: Value) -> Event {
    let Value::Object(object) = value else { panic!("an event is a JSON object") };
    event::from_json_object(object, at(0)).unwrap_or_else(|err| panic!("test event is invalid: {err}"))
}
