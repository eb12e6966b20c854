//! The event model: CloudEvents 1.0 envelopes carrying `ai.*` run events.
//!
//! `envelope` validates one JSON object into an [`Event`], `payload` types its `data` by
//! the table of event types in `types` (the reference is `docs/events.md`), `failure` names
//! the failure codes scientist reports, `wire` reads the HTTP forms (structured, binary
//! `ce-*` headers, NDJSON and JSON batches); secrets are kept out by `crate::redact`. Nothing here
//! knows about stores or HTTP servers.

mod envelope;
pub mod failure;
pub mod payload;
mod types;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

pub use envelope::{SPECVERSION, from_json_object};
pub use failure::FailureCode;
pub use payload::{LogLevel, Payload};
pub use types::{EventData, EventType, KNOWN_TYPES};

use crate::run::{EventKey, RunId};
use crate::time::Timestamp;

/// The emitter's event id; unique per `source` (the CloudEvents dedup key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EventId(pub String);

impl EventId {
    /// A fresh ULID, as our emitters use.
    pub fn generate() -> Self {
        Self(ulid::Ulid::generate().to_string())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated CloudEvent with its typed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub source: String,
    pub event_type: String,
    pub subject: Option<String>,
    /// The emitter's `time`, or the time we received it when the emitter sent none.
    pub time: Timestamp,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: Map<String, Value>,
    /// Per-run sequence number from the emitter (`seq` extension attribute).
    pub seq: Option<u64>,
    /// The claim this event belongs to (`attempt` extension attribute), for fencing.
    pub attempt: Option<u32>,
    /// Other extension attributes, kept as sent.
    pub extensions: BTreeMap<String, Value>,
    /// The run it is about: `data.run_id`, or the id in `subject: run/<id>`.
    pub run_id: Option<RunId>,
    pub payload: Payload,
}

impl Event {
    /// The key that orders facts from this event against facts from others.
    pub fn key(&self) -> EventKey {
        EventKey { time: self.time, id: self.id.0.clone(), source: self.source.clone() }
    }

    /// A string extension attribute (`traceparent`, `tracestate`), when sent as one.
    pub fn extension_str(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(Value::as_str)
    }

    /// The structured-mode JSON form, as stored and as served back.
    pub fn to_json(&self) -> Map<String, Value> {
        self.attributes(true).map(|(name, value)| (name.to_owned(), value.to_value())).collect()
    }

    /// The structured-mode JSON form without the attributes a store keeps in columns of
    /// its own (see [`CORE_ATTRIBUTES`]), written straight to text.
    pub fn to_json_without_core(&self) -> serde_json::Result<String> {
        serde_json::to_string(&WithoutCore(self))
    }

    /// Every attribute in structured-mode order; the [`CORE_ATTRIBUTES`] only when `core`.
    /// The one list both JSON forms are written from.
    fn attributes(&self, core: bool) -> impl Iterator<Item = (&str, Attribute<'_>)> {
        let core_attributes = [
            ("specversion", Some(Attribute::Text(envelope::SPECVERSION))),
            ("id", Some(Attribute::Text(&self.id.0))),
            ("source", Some(Attribute::Text(&self.source))),
            ("type", Some(Attribute::Text(&self.event_type))),
            ("subject", self.subject.as_deref().map(Attribute::Text)),
        ];
        let optional = [
            ("datacontenttype", self.datacontenttype.as_deref().map(Attribute::Text)),
            ("dataschema", self.dataschema.as_deref().map(Attribute::Text)),
        ];
        let time = [("time", Some(Attribute::Time(self.time)))];
        let numbers = [
            ("seq", self.seq.map(Attribute::Number)),
            ("attempt", self.attempt.map(|attempt| Attribute::Number(attempt.into()))),
        ];
        let core_attributes = core_attributes.into_iter().filter(move |_| core);
        let time = time.into_iter().filter(move |_| core);
        core_attributes
            .chain(optional)
            .chain(time)
            .chain(numbers)
            .filter_map(|(name, value)| Some((name, value?)))
            .chain(self.extensions.iter().map(|(name, value)| (name.as_str(), Attribute::Json(value))))
            .chain([("data", Attribute::Data(&self.data))])
    }
}

/// The attributes every event has, which the embedded store keeps in columns.
pub const CORE_ATTRIBUTES: [&str; 6] = ["specversion", "id", "source", "type", "subject", "time"];

/// One attribute's value, borrowed from the event.
enum Attribute<'a> {
    Text(&'a str),
    Time(Timestamp),
    Number(u64),
    Json(&'a Value),
    Data(&'a Map<String, Value>),
}

impl Attribute<'_> {
    fn to_value(&self) -> Value {
        match self {
            Attribute::Text(text) => Value::from(*text),
            Attribute::Time(time) => Value::from(time.to_string()),
            Attribute::Number(number) => Value::from(*number),
            Attribute::Json(value) => (*value).clone(),
            Attribute::Data(data) => Value::Object((*data).clone()),
        }
    }
}

impl serde::Serialize for Attribute<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Attribute::Text(text) => serializer.serialize_str(text),
            Attribute::Time(time) => serializer.collect_str(time),
            Attribute::Number(number) => serializer.serialize_u64(*number),
            Attribute::Json(value) => value.serialize(serializer),
            Attribute::Data(data) => data.serialize(serializer),
        }
    }
}

struct WithoutCore<'a>(&'a Event);

impl serde::Serialize for WithoutCore<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.attributes(false))
    }
}

/// Why an event was rejected. Each message names the attribute and what to send instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("an event must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("missing required attribute {0:?}")]
    MissingAttribute(&'static str),
    #[error("attribute {name:?} must be {expected}")]
    InvalidAttribute { name: String, expected: &'static str },
    #[error("specversion {0:?} is not supported; send \"1.0\"")]
    UnsupportedSpecversion(String),
    #[error("time {value:?} is not an RFC 3339 timestamp (e.g. 2025-10-22T19:00:00Z): {reason}")]
    InvalidTime { value: String, reason: String },
    #[error("extension attribute name {0:?} is invalid: use lower-case letters a-z and digits 0-9 only")]
    InvalidExtensionName(String),
    #[error("datacontenttype {0:?} is not supported; send data as application/json")]
    UnsupportedContentType(String),
    #[error("data_base64 is not supported; send data as a JSON object")]
    Base64Data,
    #[error("data must be a JSON object, found {0}")]
    DataNotAnObject(&'static str),
    #[error("event type {0:?} is not supported; scientist accepts ai.* event types")]
    UnsupportedType(String),
    #[error("no run id: set data.run_id or subject \"run/<id>\"")]
    MissingRunId,
    #[error("invalid run id: {0}")]
    InvalidRunId(String),
    #[error(
        "attribute {0:?} looks like a secret (a token, URL credentials or a NAME=value assignment); \
         identifiers are stored as sent, so send one that is not (e.g. a ULID)"
    )]
    SecretInIdentifier(&'static str),
    #[error("subject {subject:?} names a different run than data.run_id {run_id:?}")]
    SubjectMismatch { subject: String, run_id: String },
    #[error("invalid data for {event_type}: {reason}")]
    InvalidData { event_type: String, reason: String },
    /// Over `limits::MAX_EVENT_BYTES`; the message is `limits::check_event`'s.
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "time {time} is more than a day ahead of the receiver's clock ({received}): fix the emitter's clock, \
         or leave `time` out to have the time of receipt"
    )]
    FutureTime { time: Timestamp, received: Timestamp },
}

/// How far ahead of the receiver's clock an event's `time` may be: clocks drift, but a
/// day is no drift.
pub const MAX_CLOCK_AHEAD_S: i64 = 24 * 3600;

/// A test's event from a JSON literal; panics when it is not a valid event.
#[cfg(test)]
pub(crate) fn from_test_json(value: Value, received: Timestamp) -> Event {
    let Value::Object(object) = value else { panic!("an event is a JSON object: {value}") };
    from_json_object(object, received).unwrap_or_else(|err| panic!("test event is invalid: {err}"))
}

/// `event` as received at `received`: refused when its `time` is more than
/// [`MAX_CLOCK_AHEAD_S`] ahead, else with a `time` no later than `received`, so that no
/// duration, age or GPU-hour figure ever runs on an emitter's clock past the receiver's.
pub fn on_receivers_clock(mut event: Event, received: Timestamp) -> Result<Event, Error> {
    if event.time > received.plus_seconds(MAX_CLOCK_AHEAD_S) {
        return Err(Error::FutureTime { time: event.time, received });
    }
    event.time = event.time.min(received);
    Ok(event)
}

/// The JSON kind of a value, for error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
