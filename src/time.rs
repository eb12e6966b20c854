//! `Timestamp`: the one time type of the run model, millisecond precision everywhere.
//!
//! In JSON (the API, the embedded store) it is an RFC 3339 string; in BSON it is a real BSON
//! Date so that the web frontend and MongoDB's TTL indexes read it as a date. Millisecond
//! precision is what BSON can hold, so both stores compare times identically.

use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(DateTime::<Utc>::UNIX_EPOCH);

    pub fn now() -> Self {
        Self::from_millis(Utc::now().timestamp_millis())
    }

    pub fn from_millis(millis: i64) -> Self {
        // Out-of-range millis cannot come from a parsed RFC 3339 string; clamp rather than panic.
        Self(Utc.timestamp_millis_opt(millis).single().unwrap_or(DateTime::<Utc>::MIN_UTC))
    }

    pub fn millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Parses an RFC 3339 time (any offset), truncated to milliseconds. A time that falls
    /// outside the years 0000-9999 once in UTC (`0000-01-01T00:00:00+01:00`) is refused:
    /// RFC 3339 years have four digits, so it could not be written back, and a stored event
    /// must always read back.
    pub fn parse_rfc3339(text: &str) -> Result<Self, ParseError> {
        let parsed = DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc);
        match parsed.year() {
            0..=9999 => Ok(Self::from_millis(parsed.timestamp_millis())),
            year => Err(ParseError::OutOfRange(year)),
        }
    }

    /// Seconds from `earlier` to `self`, negative when `earlier` is later.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.millis() - earlier.millis()) as f64 / 1000.0
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Self::from_millis(self.millis().saturating_add(seconds.saturating_mul(1000)))
    }
}

/// Why a text is not a time: not RFC 3339 at all, or a year RFC 3339 cannot write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Syntax(#[from] chrono::ParseError),
    #[error("it falls in the year {0} in UTC; RFC 3339 times lie in the years 0000 to 9999")]
    OutOfRange(i32),
}

/// In the API a `Timestamp` is an RFC 3339 string (its human-readable serde form).
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl From<Timestamp> for mongodb::bson::DateTime {
    fn from(value: Timestamp) -> Self {
        mongodb::bson::DateTime::from_millis(value.millis())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            mongodb::bson::DateTime::from(*self).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Self::parse_rfc3339(&text)
                .map_err(|err| serde::de::Error::custom(format!("invalid RFC 3339 time {text:?}: {err}")))
        } else {
            let date = mongodb::bson::DateTime::deserialize(deserializer)?;
            Ok(Self::from_millis(date.timestamp_millis()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_millisecond_precision() {
        let parsed = Timestamp::parse_rfc3339("2025-10-22T21:00:00.123456+02:00").expect("valid");
        assert_eq!(parsed.to_string(), "2025-10-22T19:00:00.123Z");
    }

    /// Found by the `event_parse` fuzz target: these were accepted, then their stored form
    /// (`-0001-…`, `+10000-…`) was refused when read back.
    #[test]
    fn times_outside_four_digit_years_are_refused() {
        for text in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
            let err = Timestamp::parse_rfc3339(text).expect_err(text);
            assert!(err.to_string().contains("years 0000 to 9999"), "{text}: {err}");
        }
        for text in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00-01:00"] {
            let parsed = Timestamp::parse_rfc3339(text).expect(text);
            assert_eq!(Timestamp::parse_rfc3339(&parsed.to_string()), Ok(parsed), "{text}");
        }
    }

    #[test]
    fn bson_form_is_a_date() {
        #[derive(Serialize, Deserialize)]
        struct Doc {
            at: Timestamp,
        }
        // The driver's typed collections use the raw (non-human-readable) serializer.
        let at = Timestamp::from_millis(1_700_000_000_123);
        let raw = mongodb::bson::to_raw_document_buf(&Doc { at }).expect("serializes");
        let doc = raw.to_document().expect("valid document");
        assert!(matches!(doc.get("at"), Some(mongodb::bson::Bson::DateTime(_))), "{doc:?}");
        let back: Doc = mongodb::bson::from_slice(raw.as_bytes()).expect("deserializes");
        assert_eq!(back.at, at);
        let json = serde_json::to_string(&Doc { at }).expect("json");
        assert_eq!(json, r#"{"at":"2023-11-14T22:13:20.123Z"}"#);
    }
}
