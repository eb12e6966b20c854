//! The JSON line an event is spooled and sent as: run, `attempt` and `seq` set, the
//! envelope filled in (`source` when it has none), secrets redacted. An output line (the
//! bulk of a busy stream) is encoded straight from its fields; any other event goes through
//! its JSON object. Both give the same text for the same event (a unit test holds them to it).

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Body, Draft, LogLine};
use crate::event::{EventId, EventType, LogLevel};
use crate::redact;
use crate::run::RunId;

/// The event's JSON line with `seq` and `attempt`; `source` fills in a missing one.
pub(super) fn encode(draft: Draft, run_id: &RunId, seq: u64, attempt: u32, source: &str) -> String {
    match draft.body {
        Body::Object(object) => Value::Object(stamped(object, run_id, seq, attempt, source)).to_string(),
        Body::Log(line) => encode_log(&line, run_id, seq, attempt, source),
    }
}

/// The length of [`encode`]'s line, without keeping it.
pub(super) fn encoded_len(draft: &Draft, run_id: &RunId, seq: u64, attempt: u32, source: &str) -> usize {
    match &draft.body {
        Body::Object(object) => crate::limits::json_len(&stamped(object.clone(), run_id, seq, attempt, source)),
        Body::Log(line) => encode_log(line, run_id, seq, attempt, source).len(),
    }
}

/// Any event through its object: the data is redacted by `redact::redact_map`.
fn stamped(mut object: Map<String, Value>, run_id: &RunId, seq: u64, attempt: u32, source: &str) -> Map<String, Value> {
    let mut data = match object.remove("data") {
        Some(Value::Object(data)) => data,
        _ => Map::new(),
    };
    data.insert("run_id".into(), Value::from(run_id.as_str()));
    redact::redact_map(&mut data);
    object.insert("subject".into(), Value::from(format!("run/{run_id}")));
    object.insert("seq".into(), Value::from(seq));
    object.insert("attempt".into(), Value::from(attempt));
    object.insert("data".into(), Value::Object(data));
    crate::emit::fill_envelope(&mut object, source);
    object
}

/// The fields of an output line's event, in the order [`stamped`] gives them.
#[derive(Serialize)]
struct LogEnvelope<'a> {
    #[serde(rename = "type")]
    event_type: &'static str,
    time: &'a str,
    subject: &'a str,
    seq: u64,
    attempt: u32,
    data: LogData<'a>,
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// The names are those of `payload::Log` and `run_id`: none is secret-like, so
/// `redact_map` would only apply the text rules to the values, as done here; a run id is
/// never changed by them (`RunId` refuses one that would be, and ours are UUIDs).
#[derive(Serialize)]
struct LogData<'a> {
    message: &'a str,
    level: LogLevel,
    source: &'a str,
    run_id: &'a str,
}

fn encode_log(line: &LogLine, run_id: &RunId, seq: u64, attempt: u32, source: &str) -> String {
    let message = redact::redact_text(&line.message);
    let envelope = LogEnvelope {
        event_type: EventType::RunLog.name(),
        time: &line.time.to_string(),
        subject: &format!("run/{run_id}"),
        seq,
        attempt,
        data: LogData {
            message: &message,
            level: line.level,
            source: &redact::redact_text(&line.source),
            run_id: run_id.as_str(),
        },
        specversion: "1.0",
        id: &EventId::generate().0,
        source,
        datacontenttype: "application/json",
        traceparent: line.trace.as_ref().map(|trace| trace.traceparent.as_str()),
        tracestate: line.trace.as_ref().and_then(|trace| trace.tracestate.as_deref()),
    };
    // Room for the envelope, so that the line is not grown while written.
    let mut encoded = Vec::with_capacity(message.len() + source.len() + 2 * run_id.as_str().len() + 256);
    // Plain strings and numbers into memory: writing cannot fail, and serde_json writes UTF-8.
    let _ = serde_json::to_writer(&mut encoded, &envelope);
    String::from_utf8(encoded).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::sync::Arc;

    use super::super::TraceStamp;
    use super::*;
    use crate::event::payload;
    use crate::time::Timestamp;

    /// The same event through its JSON object, as every event went before output lines got
    /// their own encoder; parsed, with the fresh `id` replaced by `id`.
    fn through_object(line: &LogLine, run_id: &RunId, id: &str) -> Value {
        let data = payload::Log {
            message: line.message.clone(),
            level: Some(line.level),
            source: Some(line.source.clone()),
            extra: Map::new(),
        };
        let mut object = Map::new();
        object.insert("type".into(), Value::from(EventType::RunLog.name()));
        object.insert("time".into(), Value::from(line.time.to_string()));
        object.insert("data".into(), Value::Object(crate::event::EventData::to_data(&data)));
        if let Some(trace) = &line.trace {
            object.insert("traceparent".into(), Value::from(trace.traceparent.as_str()));
            if let Some(tracestate) = &trace.tracestate {
                object.insert("tracestate".into(), Value::from(tracestate.as_str()));
            }
        }
        with_id(&Value::Object(stamped(object, run_id, 7, 2, "pod://test")).to_string(), id)
    }

    fn with_id(line: &str, id: &str) -> Value {
        let mut object: Map<String, Value> = serde_json::from_str(line).expect("a JSON object");
        object.insert("id".into(), Value::from(id));
        Value::Object(object)
    }

    fn level() -> impl Strategy<Value = LogLevel> {
        prop_oneof![Just(LogLevel::Debug), Just(LogLevel::Info), Just(LogLevel::Warning), Just(LogLevel::Error)]
    }

    /// Text that reaches every redaction rule now and then: secret-like names, token shapes,
    /// URLs with userinfo, PEM headers, quotes and escapes, and plain words between them.
    fn message() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("password=hunter2".to_owned()),
            Just("OPENAI_API_KEY: sk-abcdefghijklmnopqrstuvwxyz".to_owned()),
            Just("https://user:pw@example.com/x".to_owned()),
            Just("Authorization: Bearer abcdefgh12345678".to_owned()),
            Just("ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_owned()),
            Just("-----BEGIN RSA PRIVATE KEY-----\nAAAA".to_owned()),
            Just(r#"{"token": "abc\"def"}"#.to_owned()),
            Just("token_count=3 max_tokens: 5".to_owned()),
            "[ -~]{0,24}",
            "\\PC{0,8}",
        ];
        proptest::collection::vec(piece, 0..6).prop_map(|pieces| pieces.join(" "))
    }

    proptest! {
        #[test]
        fn an_output_line_encodes_as_its_object_would(
            message in message(),
            source in prop_oneof![Just("stdout".to_owned()), Just("stderr".to_owned()), "[a-z_./]{1,20}"],
            level in level(),
            millis in 0i64..4_000_000_000_000,
            trace in proptest::option::of(proptest::option::of("[a-z]{1,8}=[a-z0-9]{1,8}")),
        ) {
            let run_id: RunId = "01JD8XQ2M3N4P5Q6R7S8T9V0W1".parse().expect("a run id");
            let trace = trace.map(|tracestate| Arc::new(TraceStamp {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate,
            }));
            let line = LogLine { time: Timestamp::from_millis(millis), message, level, source, trace };
            let direct = encode_log(&line, &run_id, 7, 2, "pod://test");
            let id = "01JD8XQ2M3N4P5Q6R7S8T9V0AA";
            prop_assert_eq!(with_id(&direct, id), through_object(&line, &run_id, id));
        }
    }

    #[test]
    fn run_ids_are_never_changed_by_redaction() {
        // `encode_log` writes the run id as it is: one that redaction would change is refused.
        assert!("OPENAI_API_KEY:sk-abcdefghijklmnopqrstuvwxyz".parse::<RunId>().is_err());
        assert!(!redact::would_change(RunId::generate().as_str()));
    }

    #[test]
    fn the_field_names_of_an_output_line_are_no_secrets_names() {
        // `LogData` skips the key rule: it must have nothing to do for these names.
        for name in ["message", "level", "source", "run_id"] {
            assert!(!redact::is_secret_name(name), "{name}");
            assert!(!redact::would_change(name), "{name}");
        }
    }

    #[test]
    fn a_secret_in_an_output_line_is_redacted() {
        let run_id: RunId = "r1".parse().expect("a run id");
        let line = LogLine {
            time: Timestamp::now(),
            message: "export OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz now".into(),
            level: LogLevel::Info,
            source: "stdout".into(),
            trace: None,
        };
        let encoded = encode_log(&line, &run_id, 1, 1, "pod://test");
        assert!(!encoded.contains("sk-abc"), "{encoded}");
        assert!(encoded.contains(&format!("OPENAI_API_KEY={}", redact::REDACTED)), "{encoded}");
    }
}
