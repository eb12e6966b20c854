//! How an event is laid out in `events` (schema version 2): the attributes every event has
//! in columns — its source, type, run and subject as keys into `names`, where each distinct
//! text is stored once — and the rest of its JSON (data, seq, attempt, extensions) in
//! `body`. An id that is a ULID or a UUID in its canonical text is stored as its 16 bytes.
//! A small metric event takes about 200 bytes on disk, where its whole JSON beside text
//! columns took about 500.

use std::collections::HashMap;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde_json::{Map, Value};

use crate::event::{self, Event};
use crate::run::RunId;
use crate::store::{Error, Result, StoredEvent};
use crate::time::Timestamp;

/// The columns [`EventRow::read`] reads, in its order, for a query `FROM events e`.
pub(super) const EVENT_COLUMNS: &str = "e.pos, e.received_at, e.event_id, e.time, e.body, \
     (SELECT name FROM names WHERE key = e.source), (SELECT name FROM names WHERE key = e.type), \
     (SELECT name FROM names WHERE key = e.subject)";

/// One row of a query selecting [`EVENT_COLUMNS`].
pub(super) struct EventRow {
    pos: i64,
    received_at: i64,
    id: String,
    time: i64,
    body: String,
    source: String,
    event_type: String,
    subject: Option<String>,
}

impl EventRow {
    pub(super) fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(EventRow {
            pos: row.get(0)?,
            received_at: row.get(1)?,
            id: id_from_column(row.get_ref(2)?)?,
            time: row.get(3)?,
            body: row.get(4)?,
            source: row.get(5)?,
            event_type: row.get(6)?,
            subject: row.get(7)?,
        })
    }

    /// The stored event (`body` with the column attributes put back) and its body's size.
    pub(super) fn parse(self) -> Result<(StoredEvent, usize)> {
        let what = || format!("event at position {}", self.pos);
        let mut object: Map<String, Value> =
            serde_json::from_str(&self.body).map_err(|source| Error::Corrupt { what: what(), source })?;
        object.insert("specversion".into(), Value::from(event::SPECVERSION));
        object.insert("id".into(), Value::from(self.id));
        object.insert("source".into(), Value::from(self.source));
        object.insert("type".into(), Value::from(self.event_type));
        if let Some(subject) = self.subject {
            object.insert("subject".into(), Value::from(subject));
        }
        object.insert("time".into(), Value::from(Timestamp::from_millis(self.time).to_string()));
        let received_at = Timestamp::from_millis(self.received_at);
        let event = event::from_json_object(object, received_at)
            .map_err(|err| Error::Corrupt { what: what(), source: serde::de::Error::custom(err.to_string()) })?;
        Ok((StoredEvent { cursor: self.pos.to_string(), received_at, event }, self.body.len()))
    }
}

/// Keys of `names` looked up or added by one write, remembered for the rest of it.
#[derive(Default)]
pub(super) struct Names {
    known: HashMap<String, i64>,
}

impl Names {
    /// The key of `name`, added to `names` if new.
    pub(super) fn key(&mut self, tx: &Transaction<'_>, name: &str) -> Result<i64> {
        if let Some(&key) = self.known.get(name) {
            return Ok(key);
        }
        let key = match lookup(tx, name)? {
            Some(key) => key,
            None => {
                tx.prepare_cached("INSERT INTO names (name) VALUES (?1)")?.execute([name])?;
                tx.last_insert_rowid()
            }
        };
        self.known.insert(name.to_owned(), key);
        Ok(key)
    }
}

/// The key of `name`, if it was ever stored.
pub(super) fn lookup(conn: &Connection, name: &str) -> Result<Option<i64>> {
    Ok(conn.prepare_cached("SELECT key FROM names WHERE name = ?1")?.query_row([name], |row| row.get(0)).optional()?)
}

/// The `body` column of `event`: its JSON without the core attributes, which are in columns
/// (`event::CORE_ATTRIBUTES`). Written by the caller, before the event reaches the writer.
pub(super) fn body(event: &Event) -> Result<String> {
    event.to_json_without_core().map_err(|source| Error::Corrupt { what: "event".into(), source })
}

/// Inserts the event, with its [`body`], unless its (source, id) pair is known. True when it
/// was new.
pub(super) fn insert_event(
    tx: &Transaction<'_>,
    names: &mut Names,
    event: &Event,
    body: &str,
    now: Timestamp,
) -> Result<bool> {
    let source = names.key(tx, &event.source)?;
    let run = event.run_id.as_ref().map(|id| names.key(tx, id.as_str())).transpose()?;
    let ty = names.key(tx, &event.event_type)?;
    let subject = event.subject.as_deref().map(|subject| names.key(tx, subject)).transpose()?;
    let mut statement = tx.prepare_cached(
        "INSERT INTO events (source, event_id, run, type, subject, time, received_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (source, event_id) DO NOTHING",
    )?;
    let inserted = statement.execute(params![
        source,
        id_column(&event.id.0),
        run,
        ty,
        subject,
        event.time.millis(),
        now.millis(),
        body
    ])?;
    Ok(inserted == 1)
}

/// Marks a UUID's bytes apart from a ULID's (both are 16 bytes).
const UUID_TAG: u8 = 1;

/// An event id as stored: a ULID as its 16 bytes, a UUID as a tag and its 16 bytes (each
/// only in the canonical text that reads back the same), any other id as text.
pub(super) fn id_column(id: &str) -> SqlValue {
    if let Ok(ulid) = ulid::Ulid::from_string(id)
        && ulid.to_string() == id
    {
        return SqlValue::Blob(ulid.to_bytes().to_vec());
    }
    if let Ok(uuid) = uuid::Uuid::parse_str(id)
        && uuid.hyphenated().to_string() == id
    {
        return SqlValue::Blob([&[UUID_TAG][..], uuid.as_bytes()].concat());
    }
    SqlValue::Text(id.to_owned())
}

fn id_from_column(value: ValueRef<'_>) -> rusqlite::Result<String> {
    let unreadable = || rusqlite::Error::InvalidColumnType(2, "event_id".into(), value.data_type());
    match value {
        ValueRef::Text(text) => String::from_utf8(text.to_vec()).map_err(|_| unreadable()),
        ValueRef::Blob(bytes) => match bytes {
            [UUID_TAG, uuid @ ..] if uuid.len() == 16 => {
                Ok(uuid::Uuid::from_slice(uuid).map_err(|_| unreadable())?.hyphenated().to_string())
            }
            ulid => Ok(ulid::Ulid::from_bytes(ulid.try_into().map_err(|_| unreadable())?).to_string()),
        },
        _ => Err(unreadable()),
    }
}

/// A run's stored events, oldest first.
pub(super) fn run_events(conn: &Connection, id: &RunId) -> Result<Vec<Event>> {
    let Some(run) = lookup(conn, id.as_str())? else { return Ok(Vec::new()) };
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.run = ?1 ORDER BY e.pos");
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map([run], EventRow::read)?;
    rows.map(|row| Ok(row?.parse()?.0.event)).collect()
}
