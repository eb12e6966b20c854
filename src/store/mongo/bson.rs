//! Conversions between our types, JSON and BSON, and the driver's error codes we branch on.

use mongodb::bson::{self, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::DUPLICATE_KEY;
use crate::run::EventKey;
use crate::store::{Error, Result};
use crate::time::Timestamp;

/// JSON to BSON without extended-JSON interpretation (a `{"$date": …}` in event data stays
/// a plain object). Integers beyond i64 become doubles: BSON has no unsigned 64-bit type.
pub(super) fn json_to_bson(value: Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(value) => Bson::Boolean(value),
        Value::Number(number) => match number.as_i64() {
            Some(value) => i32::try_from(value).map(Bson::Int32).unwrap_or(Bson::Int64(value)),
            None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(value) => Bson::String(value),
        Value::Array(values) => Bson::Array(values.into_iter().map(json_to_bson).collect()),
        Value::Object(object) => {
            Bson::Document(object.into_iter().map(|(name, value)| (name, json_to_bson(value))).collect())
        }
    }
}

/// `value` as a BSON document, through the driver's own (non-human-readable) serializer, so
/// `Timestamp`s become BSON Dates. (`bson::to_document` is human-readable in bson 2.x and
/// would turn them into strings.)
pub(super) fn to_document<T: Serialize>(what: &str, value: &T) -> Result<Document> {
    let raw = bson::to_raw_document_buf(value)
        .map_err(|source| Error::Encode { what: what.to_owned(), source: Box::new(source) })?;
    from_raw(what, raw.as_bytes())
}

pub(super) fn from_raw<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bson::from_slice(bytes).map_err(|source| Error::CorruptBson { what: what.to_owned(), source: Box::new(source) })
}

pub(super) fn parse_event_key(stored: &Bson) -> Result<EventKey> {
    let what = "stored event key `at`";
    let Bson::Document(document) = stored else { return Err(corrupt(what, "not a document")) };
    let bytes =
        bson::to_vec(document).map_err(|source| Error::Encode { what: what.to_owned(), source: Box::new(source) })?;
    from_raw(what, &bytes)
}

/// A document as the JSON a command reads: dates as RFC 3339 text (as the embedded store
/// keeps them), ObjectIds as hex, the rest as relaxed extended JSON.
pub(super) fn plain_json(value: Bson) -> Value {
    match value {
        Bson::DateTime(at) => Value::from(Timestamp::from_millis(at.timestamp_millis()).to_string()),
        Bson::ObjectId(id) => Value::from(id.to_hex()),
        Bson::Document(document) => {
            Value::Object(document.into_iter().map(|(name, value)| (name, plain_json(value))).collect())
        }
        Bson::Array(values) => Value::Array(values.into_iter().map(plain_json).collect()),
        other => other.into_relaxed_extjson(),
    }
}

/// A BSON number of any width as f64.
pub(super) fn bson_number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Double(value) => Some(*value),
        Bson::Int32(value) => Some(f64::from(*value)),
        Bson::Int64(value) => Some(*value as f64),
        _ => None,
    }
}

pub(super) fn error_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::InsertMany(failure) => failure.write_errors.as_ref()?.first().map(|error| error.code),
        _ => None,
    }
}

pub(super) fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

pub(super) fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt { what: what.into(), source: serde::de::Error::custom(reason.to_string()) }
}

/// Revisions count writes to one run: far below i64::MAX, BSON's largest integer.
pub(super) fn to_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}
