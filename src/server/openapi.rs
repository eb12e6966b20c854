//! The OpenAPI 3.1 document served at `/api/openapi.json`. Its schemas are derived from the
//! types the handlers read and write (`utoipa::ToSchema`, following their serde attributes),
//! so a new field is documented by being added; `openapi.json` holds only what no type
//! knows: the paths, their descriptions and status codes, which name those schemas.
//! `tests/api.rs` checks the document against [`super::endpoints`] and every real answer.

use std::sync::LazyLock;

use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use super::error::ErrorBody;
use super::read::EventView;
use super::{Health, admin};
use crate::ideation::IdeationRequest;
use crate::protocol::{BatchAnswer, ClaimRequest, ClaimState, EventAnswer, IdeationFinish, IdeationHeard};
use crate::run::Run;
use crate::store::{Artifact, Page, Stats};

/// The hand-written part: info, security schemes and paths.
const PATHS: &str = include_str!("openapi.json");

/// The served document, assembled once.
pub(super) static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

/// A CloudEvent as the API shows it. Its wire form is parsed by hand (`event::wire`), not
/// by serde, so its schema is written here.
pub(super) struct CloudEvent;

impl PartialSchema for CloudEvent {
    fn schema() -> RefOr<Schema> {
        let schema = json!({
            "type": "object",
            "required": ["specversion", "id", "source", "type"],
            "description": "A CloudEvents 1.0 event in structured mode; `data` holds the payload of its type \
                            (see docs/events.md). Extensions `seq` and `attempt` are optional.",
            "properties": {
                "specversion": {"type": "string", "enum": ["1.0"]},
                "id": {"type": "string"},
                "source": {"type": "string"},
                "type": {"type": "string"},
                "subject": {"type": "string"},
                "time": {"type": "string", "format": "date-time"},
                "datacontenttype": {"type": "string"},
                "data": {"type": "object"},
                "seq": {"type": ["integer", "string"]},
                "attempt": {"type": ["integer", "string"]}
            }
        });
        // A literal of ours in OpenAPI's own shape: a failure is a bug the unit test shows.
        RefOr::T(serde_json::from_value(schema).expect("the CloudEvent schema is a valid OpenAPI schema"))
    }
}

impl ToSchema for CloudEvent {}

/// Every schema the paths name, with the schemas those name in turn.
fn schemas() -> Vec<(String, RefOr<Schema>)> {
    let mut schemas = Vec::new();
    fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>, name: Option<&str>) {
        schemas.push((name.map_or_else(|| T::name().into_owned(), str::to_owned), T::schema()));
        T::schemas(schemas);
    }
    add::<ErrorBody>(&mut schemas, None);
    add::<Health>(&mut schemas, None);
    add::<CloudEvent>(&mut schemas, None);
    add::<EventAnswer>(&mut schemas, None);
    add::<BatchAnswer>(&mut schemas, None);
    add::<Run>(&mut schemas, None);
    add::<Page<Run>>(&mut schemas, Some("RunPage"));
    add::<EventView>(&mut schemas, None);
    add::<Page<EventView>>(&mut schemas, Some("EventPage"));
    add::<Artifact>(&mut schemas, None);
    add::<ClaimRequest>(&mut schemas, None);
    add::<ClaimState>(&mut schemas, None);
    add::<admin::EnqueueRequest>(&mut schemas, None);
    add::<admin::CancelRequest>(&mut schemas, None);
    add::<admin::ApproveBody>(&mut schemas, None);
    add::<admin::RejectBody>(&mut schemas, None);
    add::<admin::IdeationEnqueueRequest>(&mut schemas, None);
    add::<super::read::RunIds>(&mut schemas, None);
    add::<Stats>(&mut schemas, None);
    add::<IdeationRequest>(&mut schemas, None);
    add::<IdeationFinish>(&mut schemas, None);
    add::<IdeationHeard>(&mut schemas, None);
    schemas
}

/// The hand-written paths with the derived schemas as `components.schemas`.
pub(super) fn document() -> Value {
    // Compiled in: a failure is a bug the unit test shows, never a client's doing.
    let mut document: Value = serde_json::from_str(PATHS).expect("openapi.json is JSON");
    let schemas: serde_json::Map<String, Value> = schemas()
        .into_iter()
        .map(|(name, schema)| (name, serde_json::to_value(schema).expect("a schema serializes")))
        .collect();
    document["components"]["schemas"] = Value::Object(schemas);
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `value`.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                    found.push(reference.to_owned());
                }
                object.values().for_each(|inner| references(inner, found));
            }
            Value::Array(items) => items.iter().for_each(|inner| references(inner, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_names_a_derived_schema() {
        let document = document();
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(!found.is_empty());
        for reference in found {
            assert!(document.pointer(reference.trim_start_matches('#')).is_some(), "dangling {reference}");
        }
    }

    #[test]
    fn the_hand_written_part_holds_no_schemas() {
        let written: Value = serde_json::from_str(PATHS).expect("openapi.json is JSON");
        assert!(written["components"].get("schemas").is_none(), "schemas are derived from the types");
        assert_eq!(document()["openapi"], "3.1.0");
    }
}
