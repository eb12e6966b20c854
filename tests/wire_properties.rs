//! No input panics the ingest path: arbitrary bytes, and near-valid events with any JSON in
//! any attribute or data field, are either accepted as well-formed events (which the
//! reducer then applies) or refused with a reason; an accepted payload serializes back to
//! data that parses to the same payload.

use proptest::prelude::*;
use scientist::event::wire;
use scientist::event::{KNOWN_TYPES, Payload};
use scientist::reduce;
use scientist::run::{NewRun, Run};
use scientist::time::Timestamp;
use serde_json::{Map, Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |n| n.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(&["Stage_1", "paper", "1.0", "2025-10-22T19:00:00Z", "run/r1", "error", ""][..])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid-looking event of a known type with some attributes and data fields replaced by
/// arbitrary values.
fn near_valid_event() -> impl Strategy<Value = Value> {
    let attribute = prop::sample::select(
        &["specversion", "id", "source", "type", "subject", "time", "seq", "attempt", "data", "datacontenttype"][..],
    );
    let field = prop::sample::select(
        &["run_id", "stage", "progress", "iteration", "node_id", "message", "level", "key", "gpu_util", "error"][..],
    );
    (
        prop::sample::select(KNOWN_TYPES),
        prop::collection::vec((attribute, any_json()), 0..3),
        prop::collection::vec((field, any_json()), 0..5),
    )
        .prop_map(|(ty, attributes, fields)| {
            let mut data: Map<String, Value> = Map::new();
            data.insert("run_id".into(), json!("r1"));
            for (name, value) in fields {
                data.insert(name.into(), value);
            }
            let mut event = json!({"specversion": "1.0", "id": "e1", "source": "pod://p", "type": ty,
                                   "subject": "run/r1", "data": data});
            for (name, value) in attributes {
                event[name] = value;
            }
            event
        })
}

const OPEN_BRACE: u8 = 0x7b;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_are_refused_not_panicked_on(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let now = Timestamp::now();
        let starts_an_object = body.first() == Some(&OPEN_BRACE);
        prop_assert!(wire::parse_structured(&body, now).is_err() || starts_an_object);
        let batch = wire::parse_ndjson(&body, now);
        prop_assert!(batch.rejected.iter().all(|rejected| rejected.line >= 1 && !rejected.reason.is_empty()));
        let _ = wire::parse_json_batch(&body, now);
    }

    #[test]
    fn near_valid_events_are_accepted_whole_or_refused_with_a_reason(event in near_valid_event()) {
        let now = Timestamp::now();
        let mut run = Run::queued(NewRun { id: "r1".parse().expect("id"), ..NewRun::new(Value::Null) }, now);
        match wire::parse_structured(event.to_string().as_bytes(), now) {
            Ok(parsed) => {
                prop_assert!(!parsed.id.0.is_empty() && !parsed.source.is_empty());
                reduce::apply(&mut run, &parsed);
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
        let lines = format!("{event}\n{event}\n");
        let batch = wire::parse_ndjson(lines.as_bytes(), now);
        prop_assert_eq!(batch.events.len() + batch.rejected.len(), 2);
    }

    #[test]
    fn accepted_payloads_serialize_back_to_data_that_parses_the_same(event in near_valid_event()) {
        let Ok(parsed) = wire::parse_structured(event.to_string().as_bytes(), Timestamp::now()) else { return Ok(()) };
        if let Some(event_type) = parsed.payload.event_type() {
            let again = Payload::parse(event_type.name(), &parsed.payload.to_data());
            prop_assert_eq!(again.as_ref(), Ok(&parsed.payload), "{}", event);
        }
    }
}
