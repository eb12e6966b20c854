//! The HTTP forms of events (CloudEvents HTTP binding and JSON batch format):
//! structured mode, binary mode (`ce-*` headers, `data` in the body), NDJSON batches and
//! `application/cloudevents-batch+json` arrays. A batch keeps its good events and names
//! each rejected one by its 1-based line (or array position) with the reason.

use serde_json::{Map, Value};

use super::envelope::{Attributes, from_attributes};
use super::{Error, Event, json_kind, on_receivers_clock};
use crate::limits;
use crate::time::Timestamp;

/// A batch after validation: good events in order, and the rejected lines.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<(usize, Event)>,
    pub rejected: Vec<Rejected>,
}

/// One rejected line of a batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    /// 1-based line (NDJSON) or element (JSON array).
    pub line: usize,
    pub reason: String,
}

impl Batch {
    fn push(&mut self, line: usize, result: Result<Event, Error>) {
        match result {
            Ok(event) => self.events.push((line, event)),
            Err(err) => self.rejected.push(Rejected { line, reason: err.to_string() }),
        }
    }
}

/// One structured-mode event (`application/cloudevents+json`), within the event size limit.
pub fn parse_structured(body: &[u8], received: Timestamp) -> Result<Event, Error> {
    limits::check_event(body.len()).map_err(Error::TooLarge)?;
    match Attributes::from_json_text(body) {
        Ok(attributes) => receive(attributes, received),
        // Read again to say what it is instead: rare, and only for a refused event. The JSON
        // error is this reading's: the first stops at a non-object before reading it whole.
        Err(_) => Err(match serde_json::from_slice::<Value>(body) {
            Ok(other) => Error::NotAnObject(json_kind(&other)),
            Err(err) => Error::InvalidJson(err.to_string()),
        }),
    }
}

/// An event that arrived over the wire at `received`: valid, with an id that is no secret
/// (ids are stored as sent: redacting one would merge two events), and on the receiver's
/// clock. Events already stored are read without these checks, so none becomes unreadable.
fn receive(attributes: impl Into<Attributes>, received: Timestamp) -> Result<Event, Error> {
    let attributes = attributes.into();
    if attributes.id().is_some_and(crate::redact::would_change) {
        return Err(Error::SecretInIdentifier("id"));
    }
    on_receivers_clock(from_attributes(attributes, received)?, received)
}

/// One binary-mode event: context attributes from `ce-*` headers, `data` from the body.
/// `headers` are (name, value) pairs in any case; `content_type` becomes `datacontenttype`.
pub fn parse_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    content_type: Option<&str>,
    body: &[u8],
    received: Timestamp,
) -> Result<Event, Error> {
    let mut object = Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(attribute) = lower.strip_prefix("ce-") {
            object.insert(attribute.to_owned(), Value::from(percent_decode(value)));
        }
    }
    if let Some(content_type) = content_type {
        object.insert("datacontenttype".into(), Value::from(content_type));
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        let data: Value = serde_json::from_slice(body).map_err(|err| Error::InvalidJson(err.to_string()))?;
        object.insert("data".into(), data);
    }
    // Measured as it will be forwarded: in structured mode.
    within_limit(&object)?;
    receive(object, received)
}

/// An `application/x-ndjson` batch: one structured event a line; blank lines are skipped.
pub fn parse_ndjson(body: &[u8], received: Timestamp) -> Batch {
    let mut batch = Batch::default();
    for (index, line) in body.split(|byte| *byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        batch.push(index + 1, parse_structured(line, received));
    }
    batch
}

/// An `application/cloudevents-batch+json` array; positions are numbered from 1.
pub fn parse_json_batch(body: &[u8], received: Timestamp) -> Result<Batch, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|err| Error::InvalidJson(err.to_string()))?;
    let Value::Array(items) = value else {
        return Err(Error::InvalidJson(format!("a batch must be a JSON array, found {}", json_kind(&value))));
    };
    let mut batch = Batch::default();
    for (index, item) in items.into_iter().enumerate() {
        let result = match item {
            Value::Object(object) => within_limit(&object).and_then(|()| receive(object, received)),
            other => Err(Error::NotAnObject(json_kind(&other))),
        };
        batch.push(index + 1, result);
    }
    Ok(batch)
}

/// Whether `object`'s structured-mode JSON is within the event size limit.
fn within_limit(object: &Map<String, Value>) -> Result<(), Error> {
    limits::check_event(limits::json_len(object)).map_err(Error::TooLarge)
}

/// Decodes `%XX` escapes of the HTTP binding; malformed escapes are kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the test events' times, as a receiver's clock would be.
    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").expect("valid time")
    }

    /// The seeds' NDJSON example, with a third line that is broken.
    const BATCH: &str = concat!(
        r#"{"specversion":"1.0","id":"test-1","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:00Z","datacontenttype":"application/json","data":{"run_id":"test-run-id"}}"#,
        "\n\n",
        r#"{"specversion":"1.0","id":"test-2","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:01Z","datacontenttype":"application/json","data":{"run_id":"test-run-id"}}"#,
        "\n",
        r#"{"specversion":"1.0","id":"test-3","source":"test://local""#,
        "\n"
    );

    #[test]
    fn ndjson_keeps_good_lines_and_names_bad_ones() {
        let batch = parse_ndjson(BATCH.as_bytes(), now());
        let lines: Vec<usize> = batch.events.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 3]);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].line, 4);
        assert!(batch.rejected[0].reason.starts_with("invalid JSON"), "{:?}", batch.rejected);
    }

    /// Read straight from its text or through a JSON object, as the other forms are, an
    /// event comes out the same, redacted the same, or is refused for the same reason.
    #[test]
    fn text_and_object_give_the_same_event_or_the_same_refusal() {
        let log = |extra: &str, data: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"l1","source":"pod://a","type":"ai.run.log","subject":"run/r1",{extra}"data":{{"message":"{data}"}}}}"#
            )
        };
        let cases = [
            log("", "loss 0.25"),
            log("", "export OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz"),
            log("", r"\u0073k-abcdefghijklmnopqrstuvwxyz"),
            log(r#""token":"abc","team":"ml","#, "hi"),
            log(r#""source":"https://user:pw@host","#, "a later source wins"),
            log(r#""id":"sk-abcdefghijklmnopqrstuvwxyz","#, "a secret id"),
            log(r#""\u0069d":"escaped-name","#, "hi"),
            log(r#""data_base64":null,"#, "hi"),
            log(r#""time":null,"seq":"7","attempt":2,"#, "hi"),
            log(r#""Bad":1,"#, "hi"),
            log(r#""trace":[1],"#, "hi"),
            log(r#""subject":"run/other","#, "hi"),
            "7".to_owned(),
            "[1]".to_owned(),
            "7 x".to_owned(),
            "[1,]".to_owned(),
            "[".to_owned(),
            r#"{"specversion":"1.0","id""#.to_owned(),
            r#"{"specversion":"1.0"} trailing"#.to_owned(),
        ];
        for text in cases {
            let via_object = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(object)) => receive(object, now()),
                Ok(other) => Err(Error::NotAnObject(json_kind(&other))),
                Err(err) => Err(Error::InvalidJson(err.to_string())),
            };
            assert_eq!(parse_structured(text.as_bytes(), now()), via_object, "{text}");
        }
        let redacted =
            parse_structured(log("", "export OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz now").as_bytes(), now());
        let message = redacted.expect("valid").data["message"].to_string();
        assert!(message.contains(&format!("OPENAI_API_KEY={}", crate::redact::REDACTED)), "{message}");
        assert!(!message.contains("sk-abc"), "{message}");
    }

    /// A line nested past serde_json's recursion limit, within the size limit, is refused by
    /// the direct reading as by the JSON-object one, and the stack holds.
    #[test]
    fn a_deeply_nested_line_is_refused_not_overflowed() {
        let depth = 20_000;
        let text = format!(
            r#"{{"specversion":"1.0","id":"n","source":"s","type":"ai.run.log","subject":"run/r1","data":{{"message":"m","deep":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let refused = parse_structured(text.as_bytes(), now()).expect_err("too deep");
        assert!(refused.to_string().contains("recursion limit exceeded"), "{refused}");
        let batch = parse_ndjson(format!("{text}\n").as_bytes(), now());
        assert_eq!((batch.events.len(), batch.rejected.len()), (0, 1));
    }

    #[test]
    fn json_batch_numbers_positions() {
        let body = r#"[{"specversion":"1.0","id":"a","source":"s","type":"ai.run.log","data":{"run_id":"r","message":"hi"}}, 7,
                       {"specversion":"1.0","id":"b","source":"s","type":"ai.run.log","data":{"run_id":"r"}}]"#;
        let batch = parse_json_batch(body.as_bytes(), now()).expect("array");
        assert_eq!(batch.events.len(), 1);
        let rejected: Vec<usize> = batch.rejected.iter().map(|r| r.line).collect();
        assert_eq!(rejected, [2, 3]);
        assert!(batch.rejected[0].reason.contains("found a number"), "{:?}", batch.rejected);
        assert!(batch.rejected[1].reason.contains("missing field `message`"), "{:?}", batch.rejected);
        assert!(parse_json_batch(b"{}", now()).is_err());
    }

    #[test]
    fn a_time_ahead_of_the_receiver_is_clamped_and_a_day_ahead_refused() {
        let event = |time: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"t","source":"s","type":"ai.run.heartbeat","subject":"run/r","time":"{time}"}}"#
            )
        };
        let refused = parse_structured(event("9999-01-01T00:00:00Z").as_bytes(), now()).expect_err("a day ahead");
        assert!(matches!(refused, Error::FutureTime { .. }), "{refused}");
        assert!(refused.to_string().contains("fix the emitter's clock"), "{refused}");
        let ahead = parse_structured(event("2026-01-01T05:00:00Z").as_bytes(), now()).expect("hours ahead");
        assert_eq!(ahead.time, now(), "taken as received");
        let past = parse_structured(event("2025-06-01T00:00:00Z").as_bytes(), now()).expect("past");
        assert_eq!(past.time.to_string(), "2025-06-01T00:00:00.000Z", "kept");
    }

    #[test]
    fn binary_mode_reads_ce_headers() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("CE-ID", "bin-1"),
            ("ce-source", "pod%3A%2F%2Fa"),
            ("ce-type", "ai.run.stage_started"),
            ("ce-subject", "run/r9"),
            ("ce-seq", "4"),
            ("host", "ignored"),
        ];
        let event = parse_binary(headers, Some("application/json"), br#"{"stage":"Stage_1"}"#, now()).expect("valid");
        assert_eq!(event.source, "pod://a");
        assert_eq!(event.seq, Some(4));
        assert_eq!(event.run_id.expect("run").as_str(), "r9");
        let err = parse_binary([("ce-specversion", "1.0")], None, b"", now()).expect_err("missing id");
        assert_eq!(err, Error::MissingAttribute("id"));
    }
}
