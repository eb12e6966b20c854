//! The embedded store: one SQLite file in WAL mode, shared by `serve`, `work` and `runs`
//! on one machine (not over NFS).
//!
//! Run documents are stored as JSON beside the columns the queue sorts and filters on.
//! Every write is one `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so a
//! claim or an event batch never interleaves with another process's), committed with
//! `synchronous=FULL`: when a call returns Ok the data survives a crash or power loss.
//! rusqlite blocks, so calls run on tokio's blocking pool; one writer connection per
//! process, reads from a small pool of reader connections.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter};
use serde_json::{Map, Value};

use super::{
    Artifact, Effect, Error, EventFilter, HypothesisIdeas, Outcome, Page, Result, RunFilter, SideRecord, Store,
    StoredEvent, apply_new_event, cancel_run, clamp_limit, parse_run_cursor, replaces, replay, reset_run, run_cursor,
    side_record,
};
use crate::event::{self, Event};
use crate::run::{NewRun, Run, RunId, RunStatus};
use crate::time::Timestamp;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    queue       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_claim ON runs (queue, status, priority DESC, created_at, id);
CREATE INDEX IF NOT EXISTS runs_newest ON runs (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_status_newest ON runs (status, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    pos          INTEGER PRIMARY KEY AUTOINCREMENT,
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    run_id       TEXT,
    type         TEXT NOT NULL,
    time         INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    body         TEXT NOT NULL,
    UNIQUE (source, event_id)
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, pos);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id  TEXT NOT NULL,
    key     TEXT NOT NULL,
    doc     TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS hypotheses (
    id   TEXT PRIMARY KEY,
    doc  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ideation_requests (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
";

/// The embedded store. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, with its parent directories.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|err| Error::Open {
                    path: path.display().to_string(),
                    reason: format!("cannot create {}: {err}", parent.display()),
                })?;
            }
            let writer = connect(&path)?;
            writer.execute_batch(SCHEMA)?;
            Ok(SqliteStore {
                inner: Arc::new(Inner { path, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) }),
            })
        })
        .await?
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the writer connection.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = lock(&inner.writer);
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await?
    }

    /// Runs `work` on a reader connection (WAL readers never block the writer).
    async fn read<T: Send + 'static>(&self, work: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => connect(&inner.path)?,
            };
            let value = work(&connection);
            let mut readers = lock(&inner.readers);
            if readers.len() < MAX_IDLE_READERS {
                readers.push(connection);
            }
            value
        })
        .await?
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers run beside the one writer; FULL syncs the WAL on every commit,
    // which is what makes "acknowledged" mean durable.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

/// A poisoned lock only means another call panicked mid-way; SQLite rolled its work back.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_run(id: &str, doc: &str) -> Result<Run> {
    serde_json::from_str(doc).map_err(|source| Error::Corrupt { what: format!("run {id}"), source })
}

fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Corrupt { what: what.to_owned(), source })
}

fn load_run(conn: &Connection, id: &RunId) -> Result<Option<Run>> {
    let doc: Option<String> =
        conn.query_row("SELECT doc FROM runs WHERE id = ?1", [id.as_str()], |row| row.get(0)).optional()?;
    doc.map(|doc| parse_run(id.as_str(), &doc)).transpose()
}

fn insert_run(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let inserted = tx.execute(
        "INSERT INTO runs (id, status, queue, priority, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO NOTHING",
        params![
            run.id.as_str(),
            run.status.as_str(),
            run.queue,
            run.priority,
            run.created_at.millis(),
            to_json("run", run)?
        ],
    )?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(run.id.clone()));
    }
    Ok(())
}

/// Writes `run` back, stamping `updatedAt` and bumping its revision.
fn save_run(tx: &Transaction<'_>, run: &mut Run, now: Timestamp) -> Result<()> {
    run.updated_at = now;
    run.rev += 1;
    tx.execute(
        "UPDATE runs SET status = ?2, queue = ?3, priority = ?4, doc = ?5 WHERE id = ?1",
        params![run.id.as_str(), run.status.as_str(), run.queue, run.priority, to_json("run", run)?],
    )?;
    Ok(())
}

fn parse_stored_event(pos: i64, received_at: i64, body: &str) -> Result<StoredEvent> {
    let what = || format!("event at position {pos}");
    let object: Map<String, Value> =
        serde_json::from_str(body).map_err(|source| Error::Corrupt { what: what(), source })?;
    let received_at = Timestamp::from_millis(received_at);
    let event = event::from_json_object(object, received_at)
        .map_err(|err| Error::Corrupt { what: what(), source: serde::de::Error::custom(err.to_string()) })?;
    Ok(StoredEvent { cursor: pos.to_string(), received_at, event })
}

/// A run's stored events, oldest first.
fn run_events(conn: &Connection, id: &RunId) -> Result<Vec<Event>> {
    let mut statement =
        conn.prepare_cached("SELECT pos, received_at, body FROM events WHERE run_id = ?1 ORDER BY pos")?;
    let rows = statement.query_map([id.as_str()], |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))?;
    rows.map(|row| {
        let (pos, received_at, body) = row?;
        Ok(parse_stored_event(pos, received_at, &body)?.event)
    })
    .collect()
}

/// Inserts the event unless its (source, id) pair is known. True when it was new.
fn insert_event(tx: &Transaction<'_>, event: &Event, now: Timestamp) -> Result<bool> {
    let body = to_json("event", &event.to_json())?;
    let mut statement = tx.prepare_cached(
        "INSERT INTO events (source, event_id, run_id, type, time, received_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (source, event_id) DO NOTHING",
    )?;
    let inserted = statement.execute(params![
        event.source,
        event.id.0,
        event.run_id.as_ref().map(RunId::as_str),
        event.event_type,
        event.time.millis(),
        now.millis(),
        body
    ])?;
    Ok(inserted == 1)
}

fn save_side_record(tx: &Transaction<'_>, record: SideRecord) -> Result<()> {
    match record {
        SideRecord::Artifact(artifact) => {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM artifacts WHERE run_id = ?1 AND key = ?2",
                    params![artifact.run_id.as_str(), artifact.key],
                    |row| row.get(0),
                )
                .optional()?;
            let existing: Option<Artifact> = existing
                .map(|doc| serde_json::from_str(&doc))
                .transpose()
                .map_err(|source| Error::Corrupt { what: format!("artifact {}", artifact.key), source })?;
            if replaces(existing.as_ref().map(|a| &a.at), &artifact.at) {
                tx.execute(
                    "INSERT INTO artifacts (run_id, key, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, key) DO UPDATE SET doc = excluded.doc",
                    params![artifact.run_id.as_str(), artifact.key, to_json("artifact", &artifact)?],
                )?;
            }
        }
        SideRecord::Hypothesis(ideas) => {
            let existing = load_hypothesis(tx, &ideas.id)?;
            if replaces(existing.as_ref().map(|h| &h.at), &ideas.at) {
                tx.execute(
                    "INSERT INTO hypotheses (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                    params![ideas.id, to_json("hypothesis", &ideas)?],
                )?;
            }
        }
    }
    Ok(())
}

fn load_hypothesis(conn: &Connection, id: &str) -> Result<Option<HypothesisIdeas>> {
    let doc: Option<String> =
        conn.query_row("SELECT doc FROM hypotheses WHERE id = ?1", [id], |row| row.get(0)).optional()?;
    doc.map(|doc| serde_json::from_str(&doc))
        .transpose()
        .map_err(|source| Error::Corrupt { what: format!("hypothesis {id}"), source })
}

/// Applies a batch inside one transaction: one commit (one fsync) for the whole batch.
fn apply_batch(tx: &Transaction<'_>, events: &[Event], now: Timestamp) -> Result<Vec<Outcome>> {
    // Runs touched by the batch, loaded once and written once at the end.
    let mut touched: HashMap<RunId, (Option<Run>, bool)> = HashMap::new();
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        if !insert_event(tx, event, now)? {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if let Some(record) = side_record(event) {
            save_side_record(tx, record)?;
        }
        let Some(run_id) = &event.run_id else {
            outcomes.push(Outcome::Applied);
            continue;
        };
        let (slot, is_new) = match touched.entry(run_id.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert((load_run(tx, run_id)?, false)),
        };
        let effect = apply_new_event(slot, event);
        if effect == Effect::Created {
            *is_new = true;
            if let Some(run) = slot.as_mut() {
                replay(run, &run_events(tx, run_id)?);
            }
        }
        outcomes.push(effect.outcome());
    }
    for (_, (slot, is_new)) in touched {
        let Some(mut run) = slot else { continue };
        if is_new {
            run.updated_at = now;
            insert_run(tx, &run)?;
        } else {
            save_run(tx, &mut run, now)?;
        }
    }
    Ok(outcomes)
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, new_run: NewRun, now: Timestamp) -> Result<Run> {
        self.write(move |tx| {
            let run = Run::queued(new_run, now);
            insert_run(tx, &run)?;
            Ok(run)
        })
        .await
    }

    async fn get(&self, id: &RunId) -> Result<Option<Run>> {
        let id = id.clone();
        self.read(move |conn| load_run(conn, &id)).await
    }

    async fn list(&self, filter: &RunFilter) -> Result<Page<Run>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let limit = clamp_limit(filter.limit);
            let mut sql = String::from("SELECT id, doc FROM runs WHERE 1 = 1");
            let mut values: Vec<SqlValue> = Vec::new();
            if !filter.statuses.is_empty() {
                sql.push_str(&format!(" AND status IN ({})", vec!["?"; filter.statuses.len()].join(", ")));
                values.extend(filter.statuses.iter().map(|status| SqlValue::from(status.as_str().to_owned())));
            }
            if let Some(queue) = &filter.queue {
                sql.push_str(" AND queue = ?");
                values.push(SqlValue::from(queue.clone()));
            }
            if let Some(cursor) = &filter.cursor {
                let (millis, id) = parse_run_cursor(cursor)?;
                sql.push_str(" AND (created_at < ? OR (created_at = ? AND id < ?))");
                values.extend([SqlValue::from(millis), SqlValue::from(millis), SqlValue::from(id)]);
            }
            sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
            values.push(SqlValue::from(limit as i64 + 1));
            let mut statement = conn.prepare(&sql)?;
            let rows = statement
                .query_map(params_from_iter(values), |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            let mut items = rows
                .map(|row| {
                    let (id, doc) = row?;
                    parse_run(&id, &doc)
                })
                .collect::<Result<Vec<Run>>>()?;
            let next = (items.len() > limit).then(|| {
                items.truncate(limit);
                items.last().map(run_cursor)
            });
            Ok(Page { items, next: next.flatten() })
        })
        .await
    }

    async fn claim(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        let (worker, queue) = (worker.to_owned(), queue.to_owned());
        self.write(move |tx| {
            let candidate: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, doc FROM runs WHERE queue = ?1 AND status = 'QUEUED'
                     ORDER BY priority DESC, created_at, id LIMIT 1",
                    [&queue],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((id, doc)) = candidate else { return Ok(None) };
            let mut run = parse_run(&id, &doc)?;
            run.claim(&worker, now);
            save_run(tx, &mut run, now)?;
            Ok(Some(run))
        })
        .await
    }

    async fn apply_events(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |tx| apply_batch(tx, &events, now)).await
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        let (run_id, filter) = (run_id.clone(), filter.clone());
        self.read(move |conn| {
            let limit = clamp_limit(filter.limit);
            let after: i64 = match &filter.cursor {
                None => 0,
                Some(cursor) => cursor.parse().map_err(|_| Error::InvalidCursor(cursor.clone()))?,
            };
            let mut sql = String::from("SELECT pos, received_at, body FROM events WHERE run_id = ? AND pos > ?");
            let mut values = vec![SqlValue::from(run_id.to_string()), SqlValue::from(after)];
            if !filter.types.is_empty() {
                sql.push_str(&format!(" AND type IN ({})", vec!["?"; filter.types.len()].join(", ")));
                values.extend(filter.types.iter().cloned().map(SqlValue::from));
            }
            sql.push_str(" ORDER BY pos LIMIT ?");
            values.push(SqlValue::from(limit as i64 + 1));
            let mut statement = conn.prepare(&sql)?;
            let rows = statement
                .query_map(params_from_iter(values), |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))?;
            let mut items = rows
                .map(|row| {
                    let (pos, received_at, body) = row?;
                    parse_stored_event(pos, received_at, &body)
                })
                .collect::<Result<Vec<_>>>()?;
            let next = (items.len() > limit).then(|| {
                items.truncate(limit);
                items.last().map(|event| event.cursor.clone())
            });
            Ok(Page { items, next: next.flatten() })
        })
        .await
    }

    async fn reset(&self, id: &RunId, now: Timestamp) -> Result<Run> {
        let id = id.clone();
        self.write(move |tx| {
            let run = load_run(tx, &id)?.ok_or_else(|| Error::NotFound(id.clone()))?;
            let mut run = reset_run(run, now)?;
            save_run(tx, &mut run, now)?;
            Ok(run)
        })
        .await
    }

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>, now: Timestamp) -> Result<Run> {
        let (id, by) = (id.clone(), by.to_owned());
        self.write(move |tx| {
            let run = load_run(tx, &id)?.ok_or_else(|| Error::NotFound(id.clone()))?;
            let mut run = cancel_run(run, &by, reason, now)?;
            save_run(tx, &mut run, now)?;
            Ok(run)
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.read(|conn| {
            let mut statement = conn.prepare("SELECT status, COUNT(*) FROM runs GROUP BY status")?;
            let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            let mut counts = Vec::new();
            for row in rows {
                let (status, count) = row?;
                let status: RunStatus = status.parse().map_err(|reason: String| Error::Corrupt {
                    what: "run status".into(),
                    source: serde::de::Error::custom(reason),
                })?;
                counts.push((status, count.max(0) as u64));
            }
            counts.sort_by_key(|(status, _)| RunStatus::ALL.iter().position(|s| s == status));
            Ok(counts)
        })
        .await
    }

    async fn artifacts(&self, run_id: &RunId) -> Result<Vec<Artifact>> {
        let run_id = run_id.clone();
        self.read(move |conn| {
            let mut statement = conn.prepare("SELECT key, doc FROM artifacts WHERE run_id = ?1 ORDER BY key")?;
            let rows = statement
                .query_map([run_id.as_str()], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            rows.map(|row| {
                let (key, doc) = row?;
                serde_json::from_str(&doc).map_err(|source| Error::Corrupt { what: format!("artifact {key}"), source })
            })
            .collect()
        })
        .await
    }

    async fn hypothesis_ideas(&self, id: &str) -> Result<Option<HypothesisIdeas>> {
        let id = id.to_owned();
        self.read(move |conn| load_hypothesis(conn, &id)).await
    }
}
