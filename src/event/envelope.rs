//! Validation of one CloudEvents 1.0 JSON object into an [`Event`], following the spec:
//! required `specversion` "1.0", non-empty `id`, `source` and `type`, RFC 3339 `time`,
//! extension names of lower-case letters and digits, scalar extension values. The wire's
//! text is read straight into [`Attributes`] (no JSON object between); every other form
//! comes as a JSON object. Both are validated by [`from_attributes`] alone.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Error, Event, EventId, EventType, Payload, json_kind};
use crate::redact;
use crate::run::RunId;
use crate::time::Timestamp;

pub const SPECVERSION: &str = "1.0";

const SUBJECT_PREFIX: &str = "run/";

/// One event's attributes as sent, before validation: taken from a JSON object, or read
/// straight from structured-mode text without building one.
#[derive(Debug, Default)]
pub struct Attributes {
    /// The values of [`KNOWN`], by position.
    known: [Option<Value>; KNOWN.len()],
    data_base64: bool,
    extensions: BTreeMap<String, Value>,
    /// Read from a text that [`redact::json_needs_no_redaction`] cleared.
    nothing_to_redact: bool,
}

/// The attributes that are not extensions (`data_base64` aside, which is refused).
const KNOWN: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "datacontenttype",
    "dataschema",
    "time",
    "data",
    "seq",
    "attempt",
];

impl Attributes {
    /// The attributes of structured-mode JSON text; an error when it is no JSON object.
    pub fn from_json_text(json: &[u8]) -> serde_json::Result<Attributes> {
        let mut attributes: Attributes = serde_json::from_slice(json)?;
        attributes.nothing_to_redact = redact::json_needs_no_redaction(json);
        Ok(attributes)
    }

    /// The `id` as sent, when it is a string.
    pub fn id(&self) -> Option<&str> {
        self.known[known_index("id")?].as_ref().and_then(Value::as_str)
    }

    /// Sets attribute `name`; as in a JSON object, a later value replaces an earlier one.
    fn set(&mut self, name: impl AsRef<str> + Into<String>, value: Value) {
        match known_index(name.as_ref()) {
            Some(index) => self.known[index] = Some(value),
            None if name.as_ref() == "data_base64" => self.data_base64 = true,
            None => {
                self.extensions.insert(name.into(), value);
            }
        }
    }

    fn take(&mut self, name: &'static str) -> Option<Value> {
        let index = known_index(name);
        debug_assert!(index.is_some(), "{name} is not a known attribute");
        self.known[index?].take()
    }
}

fn known_index(name: &str) -> Option<usize> {
    KNOWN.iter().position(|known| *known == name)
}

impl From<Map<String, Value>> for Attributes {
    fn from(object: Map<String, Value>) -> Self {
        let mut attributes = Attributes::default();
        for (name, value) in object {
            attributes.set(name, value);
        }
        attributes
    }
}

impl<'de> serde::Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Attributes;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                let mut attributes = Attributes::default();
                while let Some(Name(name)) = map.next_key()? {
                    let value = map.next_value()?;
                    attributes.set(name, value);
                }
                Ok(attributes)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// An attribute name, borrowed from the text when it holds no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an attribute name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Validates `object` (one structured-mode event) into an [`Event`].
/// `received` stands in for `time` when the emitter sent none.
pub fn from_json_object(object: Map<String, Value>, received: Timestamp) -> Result<Event, Error> {
    from_attributes(Attributes::from(object), received)
}

/// Validates one event's attributes into an [`Event`]; `received` stands in for a missing `time`.
pub fn from_attributes(mut attributes: Attributes, received: Timestamp) -> Result<Event, Error> {
    let specversion = take_string(&mut attributes, "specversion")?.ok_or(Error::MissingAttribute("specversion"))?;
    if specversion != SPECVERSION {
        return Err(Error::UnsupportedSpecversion(specversion));
    }
    let id = required_non_empty(&mut attributes, "id")?;
    let source = required_non_empty(&mut attributes, "source")?;
    let event_type = required_non_empty(&mut attributes, "type")?;
    let subject = take_string(&mut attributes, "subject")?;
    let datacontenttype = take_string(&mut attributes, "datacontenttype")?;
    let dataschema = take_string(&mut attributes, "dataschema")?;
    let time = match take_string(&mut attributes, "time")? {
        None => received,
        Some(text) => Timestamp::parse_rfc3339(&text)
            .map_err(|err| Error::InvalidTime { value: text.clone(), reason: err.to_string() })?,
    };
    if attributes.data_base64 {
        return Err(Error::Base64Data);
    }
    if let Some(content_type) = &datacontenttype
        && !is_json_media_type(content_type)
    {
        return Err(Error::UnsupportedContentType(content_type.clone()));
    }
    let mut data = match attributes.take("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(other) => return Err(Error::DataNotAnObject(json_kind(&other))),
    };
    if !event_type.starts_with("ai.") {
        return Err(Error::UnsupportedType(event_type));
    }
    let seq = take_integer(&mut attributes, "seq")?;
    let attempt = take_integer(&mut attributes, "attempt")?
        .map(u32::try_from)
        .transpose()
        .map_err(|_| Error::InvalidAttribute { name: "attempt".into(), expected: "a claim number below 2^32" })?;
    let mut extensions = extensions(attributes.extensions)?;
    let run_id = run_id(&event_type, subject.as_deref(), &data)?;
    // Everything that is stored, but the identifiers checked above: this is the one place
    // an event from outside (any form, any emitter, the worker's own) is cleaned.
    let redacted = |text: String| if attributes.nothing_to_redact { text } else { redact::redact_string(text) };
    if !attributes.nothing_to_redact {
        for (name, value) in &mut extensions {
            redact::redact_field(name, value);
        }
        redact::redact_map(&mut data);
    }
    let event_type = redacted(event_type);
    let payload = Payload::parse(&event_type, &data)
        .map_err(|reason| Error::InvalidData { event_type: event_type.clone(), reason })?;
    Ok(Event {
        id: EventId(id),
        source: redacted(source),
        event_type,
        subject: subject.map(redacted),
        time,
        datacontenttype: datacontenttype.map(redacted),
        dataschema: dataschema.map(redacted),
        data,
        seq,
        attempt,
        extensions,
        run_id,
        payload,
    })
}

fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn take_string(attributes: &mut Attributes, name: &'static str) -> Result<Option<String>, Error> {
    match attributes.take(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(Error::InvalidAttribute { name: name.into(), expected: "a string" }),
    }
}

fn required_non_empty(attributes: &mut Attributes, name: &'static str) -> Result<String, Error> {
    match take_string(attributes, name)? {
        None => Err(Error::MissingAttribute(name)),
        Some(text) if text.trim().is_empty() => {
            Err(Error::InvalidAttribute { name: name.into(), expected: "a non-empty string" })
        }
        Some(text) => Ok(text),
    }
}

/// An integer extension; binary mode and some emitters send integers as strings.
fn take_integer(attributes: &mut Attributes, name: &'static str) -> Result<Option<u64>, Error> {
    let invalid = || Error::InvalidAttribute { name: name.into(), expected: "a non-negative integer" };
    match attributes.take(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number.as_u64().map(Some).ok_or_else(invalid),
        Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

fn extensions(extensions: BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>, Error> {
    extensions
        .into_iter()
        .map(|(name, value)| {
            let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                return Err(Error::InvalidExtensionName(name));
            }
            match value {
                Value::Object(_) | Value::Array(_) => Err(Error::InvalidAttribute {
                    name,
                    expected: "a string, number or boolean (extension attributes are scalars)",
                }),
                scalar => Ok((name, scalar)),
            }
        })
        .collect()
}

fn run_id(event_type: &str, subject: Option<&str>, data: &Map<String, Value>) -> Result<Option<RunId>, Error> {
    let from_data = match data.get("run_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err(Error::InvalidAttribute { name: "data.run_id".into(), expected: "a string" }),
    };
    let from_subject = subject.and_then(|subject| subject.strip_prefix(SUBJECT_PREFIX));
    let chosen = match (from_data, from_subject) {
        (Some(data_id), Some(subject_id)) if data_id != subject_id => {
            return Err(Error::SubjectMismatch {
                subject: subject.unwrap_or_default().to_owned(),
                run_id: data_id.to_owned(),
            });
        }
        (Some(id), _) | (None, Some(id)) => Some(id),
        (None, None) => None,
    };
    match chosen {
        Some(id) => id.parse().map(Some).map_err(Error::InvalidRunId),
        // Ideation belongs to a hypothesis, not to a run.
        None if event_type == EventType::IdeationGenerated.name() => Ok(None),
        None => Err(Error::MissingRunId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Event, Error> {
        let Value::Object(object) = value else { panic!("test input must be an object") };
        from_json_object(object, Timestamp::from_millis(0))
    }

    fn heartbeat() -> Value {
        json!({"specversion":"1.0","id":"test-123","source":"test://local","type":"ai.run.heartbeat",
               "subject":"run/test-run-id","time":"2025-10-22T19:00:00Z",
               "datacontenttype":"application/json","data":{"run_id":"test-run-id","gpu_util":0.75}})
    }

    fn with(mut event: Value, name: &str, value: Value) -> Value {
        event[name] = value;
        event
    }

    fn without(mut event: Value, name: &str) -> Value {
        event.as_object_mut().expect("object").remove(name);
        event
    }

    #[test]
    fn seeds_heartbeat_is_valid() {
        let event = parse(heartbeat()).expect("valid");
        assert_eq!(event.run_id.expect("run id").as_str(), "test-run-id");
        assert_eq!(event.time.to_string(), "2025-10-22T19:00:00.000Z");
        let Payload::Heartbeat(sample) = event.payload else { panic!("heartbeat payload") };
        assert_eq!(sample.gpu_util, Some(0.75));
    }

    #[test]
    fn required_attributes_are_named_when_missing() {
        for name in ["specversion", "id", "source", "type"] {
            let err = parse(without(heartbeat(), name)).expect_err(name);
            assert_eq!(
                err,
                Error::MissingAttribute(match name {
                    "specversion" => "specversion",
                    "id" => "id",
                    "source" => "source",
                    _ => "type",
                })
            );
        }
    }

    #[test]
    fn envelope_rules_follow_the_spec() {
        let cases = [
            (with(heartbeat(), "specversion", json!("0.3")), "specversion \"0.3\" is not supported"),
            (with(heartbeat(), "id", json!("")), "\"id\" must be a non-empty string"),
            (with(heartbeat(), "time", json!("yesterday")), "not an RFC 3339 timestamp"),
            (with(heartbeat(), "Bad_Name", json!(1)), "extension attribute name \"Bad_Name\""),
            (with(heartbeat(), "traceparent", json!({"a": 1})), "extension attributes are scalars"),
            (with(heartbeat(), "datacontenttype", json!("text/plain")), "send data as application/json"),
            (with(heartbeat(), "data", json!([1])), "data must be a JSON object"),
            (with(heartbeat(), "type", json!("com.example.thing")), "accepts ai.* event types"),
            (with(heartbeat(), "subject", json!("run/other")), "names a different run"),
            (with(heartbeat(), "seq", json!(-1)), "\"seq\" must be a non-negative integer"),
            (with(heartbeat(), "data", json!({"gpu_util": 0.5})), "subject"),
        ];
        for (input, expected) in cases {
            let input_text = input.to_string();
            let Value::Object(mut object) = input else { unreachable!() };
            if expected == "subject" {
                object.remove("subject");
            }
            let err = from_json_object(object, Timestamp::from_millis(0)).expect_err(&input_text);
            assert!(err.to_string().contains(expected), "{input_text}: {err}");
        }
    }

    #[test]
    fn payload_errors_name_the_field() {
        let event = with(heartbeat(), "data", json!({"run_id": "r1", "gpu_util": "high"}));
        let err = parse(without(event, "subject")).expect_err("bad type");
        assert!(err.to_string().contains("data.gpu_util"), "{err}");
        let progress = json!({"specversion":"1.0","id":"p","source":"s","type":"ai.run.stage_progress",
                              "data":{"run_id":"r1","stage":"Stage_9"}});
        assert!(parse(progress).expect_err("bad stage").to_string().contains("unknown stage \"Stage_9\""));
    }

    #[test]
    fn extensions_seq_and_attempt_are_typed() {
        let event = with(with(with(heartbeat(), "seq", json!("7")), "attempt", json!(2)), "team", json!("ml"));
        let event = parse(event).expect("valid");
        assert_eq!((event.seq, event.attempt), (Some(7), Some(2)));
        assert_eq!(event.extensions.get("team"), Some(&json!("ml")));
        let round_trip = parse(Value::Object(event.to_json())).expect("round trip");
        assert_eq!(round_trip, event);
    }

    /// The store's body form is the full form less exactly the core attributes.
    #[test]
    fn the_form_without_core_is_the_full_form_less_the_core_attributes() {
        let event = with(with(with(heartbeat(), "seq", json!(7)), "attempt", json!(2)), "team", json!("ml"));
        let event = with(with(event, "datacontenttype", json!("application/json")), "dataschema", json!("urn:x"));
        let event = parse(event).expect("valid");
        let mut full = event.to_json();
        assert!(super::super::CORE_ATTRIBUTES.iter().all(|name| full.contains_key(*name)), "{full:?}");
        for name in super::super::CORE_ATTRIBUTES {
            full.remove(name);
        }
        let body = event.to_json_without_core().expect("json");
        let body: serde_json::Map<String, Value> = serde_json::from_str(&body).expect("an object");
        assert_eq!(body, full);
    }

    #[test]
    fn unknown_ai_types_parse_without_state() {
        let event = parse(with(heartbeat(), "type", json!("ai.run.something_new"))).expect("stored");
        assert_eq!(event.payload, Payload::Unknown);
    }

    #[test]
    fn missing_time_takes_the_received_time() {
        let event = parse(without(heartbeat(), "time")).expect("valid");
        assert_eq!(event.time, Timestamp::from_millis(0));
    }
}
