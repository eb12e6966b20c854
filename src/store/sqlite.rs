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

use super::stats::{self, FailureCount, HELD_STATUSES, StageDurations};
use super::{
    Artifact, Effect, Error, EventFilter, HypothesisIdeas, IdeationChange, LOG_EVENT_TYPE, Outcome, Page, Result,
    RunChange, RunFilter, SideRecord, Stats, Store, StoredEvent, apply_new_event, bounded_page, cancel_run,
    clamp_limit, level_names_at_or_above, parse_run_cursor, replaces, replay, reset_run, run_cursor, side_record,
};
use crate::event::{self, Event};
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
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
CREATE INDEX IF NOT EXISTS ideation_queue ON ideation_requests (status, created_at, id);
";

/// The schema version this build writes (`PRAGMA user_version`). A file of an older version
/// is migrated on open; 0 is the first release's schema (`SCHEMA` alone).
const SCHEMA_VERSION: i64 = 1;

/// Version 1: columns derived from each run document (kept by `insert_run` / `save_run`)
/// and one row per completed stage, so `stats` and the queue's views read indexes rather
/// than parse documents.
const MIGRATION_1: &str = "
ALTER TABLE runs ADD COLUMN seen_at INTEGER;
ALTER TABLE runs ADD COLUMN finished_at INTEGER;
ALTER TABLE runs ADD COLUMN error_code TEXT;
ALTER TABLE runs ADD COLUMN gpu_from INTEGER;
ALTER TABLE runs ADD COLUMN gpu_until INTEGER;
CREATE INDEX runs_seen ON runs (status, seen_at);
CREATE INDEX runs_finished ON runs (status, finished_at);
CREATE INDEX runs_failures ON runs (status, error_code);
CREATE INDEX runs_gpu ON runs (gpu_from, gpu_until) WHERE gpu_from IS NOT NULL;
CREATE TABLE run_stages (
    run_id      TEXT NOT NULL,
    stage       TEXT NOT NULL,
    duration_s  REAL NOT NULL,
    PRIMARY KEY (run_id, stage)
) WITHOUT ROWID;
CREATE INDEX run_stages_duration ON run_stages (stage, duration_s);
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
            let mut writer = connect(&path)?;
            writer.execute_batch(SCHEMA)?;
            migrate(&mut writer, &path)?;
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

/// Brings an older file up to [`SCHEMA_VERSION`] in one transaction (so two processes
/// opening it at once migrate it once), and refuses a file from a newer build.
fn migrate(connection: &mut Connection, path: &Path) -> Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Open {
            path: path.display().to_string(),
            reason: format!(
                "it was written by a newer scientist (schema {version}, this build knows {SCHEMA_VERSION}); \
                 upgrade scientist or pass another --store"
            ),
        });
    }
    if version < 1 {
        tx.execute_batch(MIGRATION_1)?;
        backfill_derived(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Fills the derived columns and stage rows of runs written before they existed.
fn backfill_derived(tx: &Transaction<'_>) -> Result<()> {
    let runs: Vec<(String, String)> = {
        let mut statement = tx.prepare("SELECT id, doc FROM runs")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, doc) in runs {
        let run = parse_run(&id, &doc)?;
        write_derived(tx, &run)?;
    }
    Ok(())
}

/// The derived columns of `run`, in the order of [`DERIVED_COLUMNS`].
fn derived_values(run: &Run) -> [SqlValue; 5] {
    let gpu = run.gpu_interval();
    let millis = |at: Option<Timestamp>| at.map_or(SqlValue::Null, |at| SqlValue::from(at.millis()));
    [
        millis(run.last_seen_at()),
        millis(run.finished_at()),
        run.error.as_ref().map_or(SqlValue::Null, |error| SqlValue::from(error.error_type.clone())),
        millis(gpu.map(|(from, _)| from)),
        millis(gpu.map(|(_, until)| until)),
    ]
}

/// Columns kept from each run document for `stats` (schema version 1).
const DERIVED_COLUMNS: &str = "seen_at, finished_at, error_code, gpu_from, gpu_until";

/// Stores what `stats` reads from a run: its derived columns and completed stages.
fn write_derived(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let sql = format!("UPDATE runs SET ({DERIVED_COLUMNS}) = (?, ?, ?, ?, ?) WHERE id = ?");
    let values = derived_values(run).into_iter().chain([SqlValue::from(run.id.to_string())]);
    tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    write_stage_durations(tx, run)
}

/// Rewrites a run's `run_stages` rows, only when its completed stages changed (most writes,
/// a heartbeat or a log line, change none).
fn write_stage_durations(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let mut wanted: Vec<(&str, f64)> = run.completed_stage_durations().collect();
    wanted.sort_by(|a, b| a.0.cmp(b.0));
    let stored: Vec<(String, f64)> = tx
        .prepare_cached("SELECT stage, duration_s FROM run_stages WHERE run_id = ?1 ORDER BY stage")?
        .query_map([run.id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if stored.iter().map(|(stage, duration_s)| (stage.as_str(), *duration_s)).eq(wanted.iter().copied()) {
        return Ok(());
    }
    tx.prepare_cached("DELETE FROM run_stages WHERE run_id = ?1")?.execute([run.id.as_str()])?;
    let mut insert = tx.prepare_cached("INSERT INTO run_stages (run_id, stage, duration_s) VALUES (?1, ?2, ?3)")?;
    for (stage, duration_s) in wanted {
        insert.execute(params![run.id.as_str(), stage, duration_s])?;
    }
    Ok(())
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
    let sql = format!(
        "INSERT INTO runs (id, status, queue, priority, created_at, doc, {DERIVED_COLUMNS})
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
    );
    let values = [
        SqlValue::from(run.id.to_string()),
        SqlValue::from(run.status.as_str().to_owned()),
        SqlValue::from(run.queue.clone()),
        SqlValue::from(run.priority),
        SqlValue::from(run.created_at.millis()),
        SqlValue::from(to_json("run", run)?),
    ];
    let inserted = tx.prepare_cached(&sql)?.execute(params_from_iter(values.into_iter().chain(derived_values(run))))?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(run.id.clone()));
    }
    write_stage_durations(tx, run)
}

/// Writes `run` back, stamping `updatedAt` and bumping its revision.
fn save_run(tx: &Transaction<'_>, run: &mut Run, now: Timestamp) -> Result<()> {
    run.updated_at = now;
    run.rev += 1;
    let sql = format!(
        "UPDATE runs SET (status, queue, priority, doc, {DERIVED_COLUMNS}) = (?, ?, ?, ?, ?, ?, ?, ?, ?) WHERE id = ?"
    );
    let values = [
        SqlValue::from(run.status.as_str().to_owned()),
        SqlValue::from(run.queue.clone()),
        SqlValue::from(run.priority),
        SqlValue::from(to_json("run", run)?),
    ];
    let id = SqlValue::from(run.id.to_string());
    tx.prepare_cached(&sql)?.execute(params_from_iter(values.into_iter().chain(derived_values(run)).chain([id])))?;
    write_stage_durations(tx, run)
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
        let effect = apply_new_event(slot, event, now);
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

/// The newest-first query of `list`, and its values. Each status is read on its own, in
/// index order and limited, then merged: SQLite cannot walk `status IN (…)` of the
/// (status, created_at) index in created_at order, and would sort every matching run.
fn list_query(filter: &RunFilter, limit: usize) -> Result<(String, Vec<SqlValue>)> {
    let mut conditions = String::new();
    let mut condition_values: Vec<SqlValue> = Vec::new();
    if let Some(queue) = &filter.queue {
        conditions.push_str(" AND queue = ?");
        condition_values.push(SqlValue::from(queue.clone()));
    }
    if let Some(cursor) = &filter.cursor {
        let (millis, id) = parse_run_cursor(cursor)?;
        conditions.push_str(" AND (created_at < ? OR (created_at = ? AND id < ?))");
        condition_values.extend([SqlValue::from(millis), SqlValue::from(millis), SqlValue::from(id)]);
    }
    let newest = "ORDER BY created_at DESC, id DESC LIMIT ?";
    let page = SqlValue::from(limit as i64 + 1);
    let statuses: Vec<Option<RunStatus>> = match filter.statuses.as_slice() {
        [] => vec![None],
        statuses => statuses.iter().copied().map(Some).collect(),
    };
    let mut parts = Vec::new();
    let mut values = Vec::new();
    for status in statuses {
        let status_condition = if status.is_some() { " AND status = ?" } else { "" };
        parts.push(format!(
            "SELECT * FROM (SELECT id, doc, created_at FROM runs WHERE 1 = 1{status_condition}{conditions} {newest})"
        ));
        values.extend(status.map(|status| SqlValue::from(status.as_str().to_owned())));
        values.extend(condition_values.iter().cloned());
        values.push(page.clone());
    }
    values.push(page);
    Ok((format!("SELECT id, doc FROM ({}) {newest}", parts.join(" UNION ALL ")), values))
}

/// Everything `stats` needs besides the counts, each from an index.
fn stats_parts(conn: &Connection, counts: Vec<(RunStatus, u64)>, now: Timestamp) -> Result<stats::Parts> {
    let oldest_queued_at: Option<i64> =
        conn.query_row("SELECT MIN(created_at) FROM runs WHERE status = 'QUEUED'", [], |row| row.get(0))?;
    let held: Vec<SqlValue> = HELD_STATUSES.iter().map(|status| SqlValue::from(status.as_str().to_owned())).collect();
    let active_sql =
        format!("SELECT id, doc FROM runs WHERE status IN ({}) AND seen_at >= ?", placeholders(held.len()));
    let active_values = held.into_iter().chain([SqlValue::from(stats::active_since(now).millis())]);
    let mut statement = conn.prepare_cached(&active_sql)?;
    let active_runs = statement
        .query_map(params_from_iter(active_values), |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
        .map(|row| {
            let (id, doc) = row?;
            parse_run(&id, &doc)
        })
        .collect::<Result<Vec<Run>>>()?;
    let finished_since = |status: RunStatus| -> Result<u64> {
        let count: i64 = conn.query_row(
            "SELECT COUNT(*) FROM runs WHERE status = ?1 AND finished_at >= ?2",
            params![status.as_str(), stats::throughput_since(now).millis()],
            |row| row.get(0),
        )?;
        Ok(count.max(0) as u64)
    };
    // Never past `now`, whatever clock a pod reported its times by.
    let gpu_millis: f64 = conn.query_row(
        "SELECT TOTAL(MAX(0, MIN(gpu_until, ?1) - gpu_from)) FROM runs WHERE gpu_from IS NOT NULL",
        params![now.millis()],
        |row| row.get(0),
    )?;
    Ok(stats::Parts {
        counts,
        oldest_queued_at: oldest_queued_at.map(Timestamp::from_millis),
        active_runs,
        completed: finished_since(RunStatus::Completed)?,
        failed: finished_since(RunStatus::Failed)?,
        stage_durations: stage_durations(conn)?,
        failure_codes: failure_codes(conn)?,
        gpu_seconds: gpu_millis / 1000.0,
    })
}

/// Per stage: the count and maximum, then each percentile by one indexed `OFFSET` read.
fn stage_durations(conn: &Connection) -> Result<Vec<StageDurations>> {
    let mut statement =
        conn.prepare_cached("SELECT stage, COUNT(*), MAX(duration_s) FROM run_stages GROUP BY stage")?;
    let stages = statement
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, f64>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ranked = conn
        .prepare_cached("SELECT duration_s FROM run_stages WHERE stage = ?1 ORDER BY duration_s LIMIT 1 OFFSET ?2")?;
    let mut durations = Vec::with_capacity(stages.len());
    for (stage, count, max_s) in stages {
        let count = count.max(1) as u64;
        let mut at = |percentile| -> Result<f64> {
            let offset = stats::nearest_rank(count, percentile) as i64;
            Ok(ranked.query_row(params![stage, offset], |row| row.get(0))?)
        };
        let (p50_s, p90_s) = (at(50)?, at(90)?);
        durations.push(StageDurations { stage, count, p50_s, p90_s, max_s });
    }
    Ok(durations)
}

fn failure_codes(conn: &Connection) -> Result<Vec<FailureCount>> {
    let mut statement = conn.prepare_cached(
        "SELECT COALESCE(error_code, ?1) AS code, COUNT(*) AS n FROM runs WHERE status = 'FAILED'
         GROUP BY code ORDER BY n DESC, code LIMIT ?2",
    )?;
    let rows = statement.query_map(params![stats::UNKNOWN_FAILURE, stats::TOP_FAILURE_CODES as i64], |row| {
        Ok(FailureCount { code: row.get(0)?, count: row.get::<_, i64>(1)?.max(0) as u64 })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn corrupt_id(id: &str, reason: String) -> Error {
    Error::Corrupt { what: format!("run id {id:?}"), source: serde::de::Error::custom(reason) }
}

/// Which way an event listing pages through a run's stored order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// One page of a run's events after (forward) or before (backward) `filter.cursor`.
fn events_page(
    conn: &Connection,
    run_id: &RunId,
    filter: &EventFilter,
    direction: Direction,
) -> Result<Page<StoredEvent>> {
    let limit = clamp_limit(filter.limit);
    let cursor: Option<i64> = match &filter.cursor {
        None => None,
        Some(cursor) => Some(cursor.parse().map_err(|_| Error::InvalidCursor(cursor.clone()))?),
    };
    let mut sql = String::from("SELECT pos, received_at, body FROM events WHERE run_id = ?");
    let mut values = vec![SqlValue::from(run_id.to_string())];
    if let Some(cursor) = cursor {
        sql.push_str(if direction == Direction::Forward { " AND pos > ?" } else { " AND pos < ?" });
        values.push(SqlValue::from(cursor));
    }
    if !filter.types.is_empty() {
        sql.push_str(&format!(" AND type IN ({})", placeholders(filter.types.len())));
        values.extend(filter.types.iter().cloned().map(SqlValue::from));
    }
    if let Some(min_level) = filter.min_level {
        let names = level_names_at_or_above(min_level);
        sql.push_str(&format!(
            " AND type = ? AND COALESCE(json_extract(body, '$.data.level'), 'info') IN ({})",
            placeholders(names.len())
        ));
        values.push(SqlValue::from(LOG_EVENT_TYPE.to_owned()));
        values.extend(names.into_iter().map(|name| SqlValue::from(name.to_owned())));
    }
    sql.push_str(if direction == Direction::Forward { " ORDER BY pos LIMIT ?" } else { " ORDER BY pos DESC LIMIT ?" });
    values.push(SqlValue::from(limit as i64 + 1));
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement
        .query_map(params_from_iter(values), |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))?;
    let rows = rows.map(|row| {
        let (pos, received_at, body) = row?;
        Ok((parse_stored_event(pos, received_at, &body)?, body.len()))
    });
    bounded_page(rows, limit, |event| event.cursor.clone())
}

/// `?, ?, …` for an `IN (…)` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Reads an `ideation_requests` row.
fn parse_ideation(id: &str, doc: &str) -> Result<IdeationRequest> {
    let corrupt = |source| Error::Corrupt { what: format!("ideation request {id}"), source };
    let document: Map<String, Value> = serde_json::from_str(doc).map_err(corrupt)?;
    IdeationRequest::from_document(document).map_err(corrupt)
}

fn load_ideation(conn: &Connection, id: &str) -> Result<Option<IdeationRequest>> {
    let doc: Option<String> =
        conn.query_row("SELECT doc FROM ideation_requests WHERE id = ?1", [id], |row| row.get(0)).optional()?;
    doc.map(|doc| parse_ideation(id, &doc)).transpose()
}

fn save_ideation(tx: &Transaction<'_>, request: &IdeationRequest) -> Result<()> {
    tx.prepare_cached("UPDATE ideation_requests SET status = ?1, doc = ?2 WHERE id = ?3")?.execute(params![
        request.status.as_str(),
        to_json("ideation request", &request.document)?,
        request.id
    ])?;
    Ok(())
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
            let (sql, values) = list_query(&filter, limit)?;
            let mut statement = conn.prepare(&sql)?;
            let rows = statement
                .query_map(params_from_iter(values), |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            let rows = rows.map(|row| {
                let (id, doc) = row?;
                Ok((parse_run(&id, &doc)?, doc.len()))
            });
            bounded_page(rows, limit, run_cursor)
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
        self.read(move |conn| events_page(conn, &run_id, &filter, Direction::Forward)).await
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        let (run_id, filter) = (run_id.clone(), filter.clone());
        self.read(move |conn| events_page(conn, &run_id, &filter, Direction::Backward)).await
    }

    async fn update_if(&self, id: &RunId, now: Timestamp, change: RunChange) -> Result<Option<Run>> {
        let id = id.clone();
        self.write(move |tx| {
            let Some(mut run) = load_run(tx, &id)? else { return Ok(None) };
            if !change(&mut run) {
                return Ok(None);
            }
            save_run(tx, &mut run, now)?;
            Ok(Some(run))
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

    async fn probe_write(&self, now: Timestamp) -> Result<()> {
        self.write(move |tx| {
            // Created here rather than in the schema: a probe table needs no migration, and
            // an older build opening the file ignores it.
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
            )?;
            tx.execute(
                "INSERT INTO health_probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [now.millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let counts = self.counts().await?;
        let parts = self
            .read(move |conn| {
                // One read transaction: every figure comes from the same snapshot.
                let tx = conn.unchecked_transaction()?;
                let parts = stats_parts(&tx, counts, now)?;
                tx.finish()?;
                Ok(parts)
            })
            .await?;
        Ok(Stats::assemble(parts, now))
    }

    async fn resolve_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
        let prefix = prefix.to_owned();
        self.read(move |conn| {
            // Ids starting with the prefix sort right after it: read two from there.
            let mut statement = conn.prepare_cached("SELECT id FROM runs WHERE id >= ?1 ORDER BY id LIMIT 2")?;
            let ids = statement.query_map([&prefix], |row| row.get::<_, String>(0))?;
            let mut matches = Vec::new();
            for id in ids {
                let id = id?;
                if id.starts_with(&prefix) {
                    matches.push(RunId::try_from(id.clone()).map_err(|reason| corrupt_id(&id, reason))?);
                }
            }
            Ok(matches)
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

    async fn enqueue_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest> {
        self.write(move |tx| {
            let request = IdeationRequest::queued(new, now);
            let inserted = tx.execute(
                "INSERT INTO ideation_requests (id, status, created_at, doc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    request.id,
                    request.status.as_str(),
                    now.millis(),
                    to_json("ideation request", &request.document)?
                ],
            )?;
            if inserted == 0 {
                return Err(Error::IdeationExists(request.id));
            }
            Ok(request)
        })
        .await
    }

    async fn get_ideation(&self, id: &str) -> Result<Option<IdeationRequest>> {
        let id = id.to_owned();
        self.read(move |conn| load_ideation(conn, &id)).await
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> Result<Vec<IdeationRequest>> {
        let statuses: Vec<SqlValue> =
            statuses.iter().map(|status| SqlValue::from(status.as_str().to_owned())).collect();
        let limit = clamp_limit(limit);
        self.read(move |conn| {
            let condition = if statuses.is_empty() {
                String::new()
            } else {
                format!("WHERE status IN ({})", placeholders(statuses.len()))
            };
            let sql =
                format!("SELECT id, doc FROM ideation_requests {condition} ORDER BY created_at, id LIMIT {limit}");
            let mut statement = conn.prepare(&sql)?;
            let rows = statement.query_map(params_from_iter(statuses), |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            rows.map(|row| {
                let (id, doc) = row?;
                parse_ideation(&id, &doc)
            })
            .collect()
        })
        .await
    }

    async fn claim_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
        let worker = worker.to_owned();
        self.write(move |tx| {
            let candidate: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, doc FROM ideation_requests WHERE status = 'QUEUED' ORDER BY created_at, id LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((id, doc)) = candidate else { return Ok(None) };
            let mut request = parse_ideation(&id, &doc)?;
            request.claim(&worker, now);
            save_ideation(tx, &request)?;
            Ok(Some(request))
        })
        .await
    }

    async fn update_ideation_if(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
        let id = id.to_owned();
        self.write(move |tx| {
            let Some(mut request) = load_ideation(tx, &id)? else { return Ok(None) };
            if !change(&mut request) {
                return Ok(None);
            }
            save_ideation(tx, &request)?;
            Ok(Some(request))
        })
        .await
    }
}

/// What is particular to this backend: opening files written by older versions. The
/// behaviour both stores share is tested by `tests/store_contract.rs`.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{Pod, StageTiming};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_761_159_600_000 + seconds * 1000)
    }

    /// A file in the first release's schema (no `user_version`, no derived columns) opens,
    /// is migrated once, and its runs count in `stats`.
    #[tokio::test]
    async fn migrates_a_first_release_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.sqlite");
        let mut run = Run::queued(NewRun::new(json!({"title": "old"})), at(0));
        run.status = RunStatus::Completed;
        run.started_at = Some(at(10));
        run.completed_at = Some(at(70));
        run.pod = Some(Pod {
            id: "pod-1".into(),
            at: crate::run::EventKey { time: at(10), id: "e".into(), source: "s".into() },
            gpu: Some("A100".into()),
            region: None,
            image: None,
        });
        let timing = StageTiming { completed_at: Some(at(40)), duration_s: Some(30.0), ..Default::default() };
        run.stage_timing.insert("Stage_1".into(), timing);
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(SCHEMA).expect("first release schema");
            connection
                .execute(
                    "INSERT INTO runs (id, status, queue, priority, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        run.id.as_str(),
                        "COMPLETED",
                        "default",
                        0,
                        at(0).millis(),
                        to_json("run", &run).expect("json")
                    ],
                )
                .expect("insert an old run");
        }
        let store = SqliteStore::open(&path).await.expect("migrates");
        let stats = store.stats(at(100)).await.expect("stats");
        assert_eq!(stats.by_status.completed, 1);
        assert_eq!((stats.throughput.completed, stats.gpu_hours), (1, 60.0 / 3600.0));
        assert_eq!(
            stats.stage_durations.iter().map(|d| (d.stage.as_str(), d.max_s)).collect::<Vec<_>>(),
            [("Stage_1", 30.0)]
        );
        drop(store);
        // Opening again is a no-op; a file from a newer build is refused with the fix.
        SqliteStore::open(&path).await.expect("reopens");
        Connection::open(&path).expect("open").pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bump");
        let newer = SqliteStore::open(&path).await.err().expect("refused");
        assert!(newer.to_string().contains("upgrade scientist"), "{newer}");
    }
}
