//! The embedded store's schema, and the migration of files written by older versions.

use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter};

use super::cost_rows::write_costs;
use super::event_rows::id_column;
use super::runs::parse_run;
use crate::run::Run;
use crate::store::{Error, Result};
use crate::time::Timestamp;

pub(super) const SCHEMA: &str = "
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
const SCHEMA_VERSION: i64 = 5;

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

/// Version 2: compact events (see `event_rows`). Every distinct source, type, run id and
/// subject is stored once in `names`; an event keeps their keys, and its JSON without the
/// attributes held in columns. Existing events are rewritten into the new table, in order,
/// keeping their positions (so cursors handed out stay valid).
const MIGRATION_2: &str = "
CREATE TABLE names (key INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
INSERT OR IGNORE INTO names (name) SELECT source FROM events;
INSERT OR IGNORE INTO names (name) SELECT type FROM events;
INSERT OR IGNORE INTO names (name) SELECT run_id FROM events WHERE run_id IS NOT NULL;
INSERT OR IGNORE INTO names (name)
    SELECT json_extract(body, '$.subject') FROM events WHERE json_extract(body, '$.subject') IS NOT NULL;
CREATE TABLE events_v2 (
    pos          INTEGER PRIMARY KEY AUTOINCREMENT,
    source       INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    run          INTEGER,
    type         INTEGER NOT NULL,
    subject      INTEGER,
    time         INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    body         TEXT NOT NULL,
    UNIQUE (source, event_id)
);
INSERT INTO events_v2 (pos, source, event_id, run, type, subject, time, received_at, body)
    SELECT e.pos, s.key, e.event_id, r.key, t.key, sub.key, e.time, e.received_at,
           json_remove(e.body, '$.specversion', '$.id', '$.source', '$.type', '$.subject', '$.time')
    FROM events e
    JOIN names s ON s.name = e.source
    JOIN names t ON t.name = e.type
    LEFT JOIN names r ON r.name = e.run_id
    LEFT JOIN names sub ON sub.name = json_extract(e.body, '$.subject')
    ORDER BY e.pos;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
CREATE INDEX events_run ON events (run, pos);
";

/// Version 3: what the claim and the alert sender filter on: a retry's backoff
/// (`notBefore`) and the earliest undelivered alert. No run written before has either.
const MIGRATION_3: &str = "
ALTER TABLE runs ADD COLUMN not_before INTEGER;
ALTER TABLE runs ADD COLUMN alerts_due INTEGER;
CREATE INDEX runs_alerts_due ON runs (alerts_due) WHERE alerts_due IS NOT NULL;
";

/// Version 4: what `stats` counts reviews by. No run written before has a review.
const MIGRATION_4: &str = "
ALTER TABLE runs ADD COLUMN review_decision TEXT;
CREATE INDEX runs_review ON runs (review_decision) WHERE review_decision IS NOT NULL;
";

/// Version 5: what `stats` sums costs by (`cost_rows`): a row per run that spent or has a
/// budget, a row per model it called, and covering indexes for the window and the all-time
/// sums. Filled from the runs already stored.
const MIGRATION_5: &str = "
CREATE TABLE run_costs (
    run_id         TEXT PRIMARY KEY,
    created_at     INTEGER NOT NULL,
    queue          TEXT NOT NULL,
    hypothesis     TEXT,
    gpu_usd        REAL NOT NULL,
    llm_usd        REAL NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cached_tokens  INTEGER NOT NULL,
    budget_usd     REAL,
    exceeded       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX run_costs_created ON run_costs (created_at);
CREATE INDEX run_costs_queue ON run_costs (queue, gpu_usd, llm_usd);
CREATE TABLE run_llm (
    run_id         TEXT NOT NULL,
    model          TEXT NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cached_tokens  INTEGER NOT NULL,
    PRIMARY KEY (run_id, model)
) WITHOUT ROWID;
CREATE INDEX run_llm_model ON run_llm (model, input_tokens, output_tokens, cached_tokens);
";

/// Brings an older file up to [`SCHEMA_VERSION`] in one transaction (so two processes
/// opening it at once migrate it once), and refuses a file from a newer build.
pub(super) fn migrate(connection: &mut Connection, path: &Path) -> Result<()> {
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
    }
    if version < 2 {
        compact_events(&tx)?;
    }
    if version < 3 {
        tx.execute_batch(MIGRATION_3)?;
    }
    if version < 4 {
        tx.execute_batch(MIGRATION_4)?;
    }
    if version < 5 {
        tx.execute_batch(MIGRATION_5)?;
        backfill_costs(&tx)?;
    }
    // Once every derived column exists.
    if version < 1 {
        backfill_derived(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// [`MIGRATION_2`], keeping the highest position ever handed out.
fn compact_events(tx: &Transaction<'_>) -> Result<()> {
    let highest: Option<i64> =
        tx.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'events'", [], |row| row.get(0)).optional()?;
    tx.execute_batch(MIGRATION_2)?;
    // Ids as new events store them, so that a resent old event is still caught as a duplicate.
    let ids: Vec<(i64, String)> = {
        let mut statement = tx.prepare("SELECT pos, event_id FROM events")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut update = tx.prepare("UPDATE events SET event_id = ?1 WHERE pos = ?2")?;
    for (pos, id) in ids {
        let column = id_column(&id);
        if !matches!(column, SqlValue::Text(_)) {
            update.execute(params![column, pos])?;
        }
    }
    if let Some(highest) = highest {
        tx.execute("UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'events'", [highest])?;
    }
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

/// The cost rows of runs stored before they existed (only documents that carry a `cost`).
fn backfill_costs(tx: &Transaction<'_>) -> Result<()> {
    let runs: Vec<(String, String)> = {
        let mut statement = tx.prepare("SELECT id, doc FROM runs WHERE json_type(doc, '$.cost') IS NOT NULL")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, doc) in runs {
        write_costs(tx, &parse_run(&id, &doc)?)?;
    }
    Ok(())
}

/// The derived columns of `run`, in the order of [`DERIVED_COLUMNS`].
pub(super) fn derived_values(run: &Run) -> [SqlValue; 8] {
    let gpu = run.gpu_interval();
    let millis = |at: Option<Timestamp>| at.map_or(SqlValue::Null, |at| SqlValue::from(at.millis()));
    [
        millis(run.last_seen_at()),
        millis(run.finished_at()),
        run.error.as_ref().map_or(SqlValue::Null, |error| SqlValue::from(error.error_type.clone())),
        millis(gpu.map(|(from, _)| from)),
        millis(gpu.map(|(_, until)| until)),
        millis(run.not_before),
        millis(run.alerts_due()),
        run.review
            .as_ref()
            .and_then(|review| review.decision)
            .map_or(SqlValue::Null, |decision| SqlValue::from(decision.as_str().to_owned())),
    ]
}

/// Columns kept from each run document for `stats` (schema version 1), for the claim and
/// the alert sender (version 3) and for the review counts (version 4).
pub(super) const DERIVED_COLUMNS: [&str; 8] =
    ["seen_at", "finished_at", "error_code", "gpu_from", "gpu_until", "not_before", "alerts_due", "review_decision"];

/// `count` SQL placeholders, comma-separated.
pub(super) fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// Stores what `stats` reads from a run: its derived columns and completed stages.
fn write_derived(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let sql = format!(
        "UPDATE runs SET ({}) = ({}) WHERE id = ?",
        DERIVED_COLUMNS.join(", "),
        placeholders(DERIVED_COLUMNS.len())
    );
    let values = derived_values(run).into_iter().chain([SqlValue::from(run.id.to_string())]);
    tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    write_stage_durations(tx, run)
}

/// Rewrites a run's `run_stages` rows, only when its completed stages changed (most writes,
/// a heartbeat or a log line, change none).
pub(super) fn write_stage_durations(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let stored: Vec<(String, f64)> = tx
        .prepare_cached("SELECT stage, duration_s FROM run_stages WHERE run_id = ?1 ORDER BY stage")?
        .query_map([run.id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    write_changed_stage_durations(tx, run, &stored)
}

/// A run's completed stages as its `run_stages` rows hold them, in stage order.
pub(super) fn stage_durations(run: &Run) -> Vec<(String, f64)> {
    let mut stages: Vec<(String, f64)> =
        run.completed_stage_durations().map(|(stage, duration_s)| (stage.to_owned(), duration_s)).collect();
    stages.sort_by(|a, b| a.0.cmp(&b.0));
    stages
}

/// As [`write_stage_durations`], where `stored` is what the rows hold (from the document
/// read in the same transaction: the rows are always written with it).
pub(super) fn write_changed_stage_durations(tx: &Transaction<'_>, run: &Run, stored: &[(String, f64)]) -> Result<()> {
    let wanted = stage_durations(run);
    if wanted == stored {
        return Ok(());
    }
    tx.prepare_cached("DELETE FROM run_stages WHERE run_id = ?1")?.execute([run.id.as_str()])?;
    let mut insert = tx.prepare_cached("INSERT INTO run_stages (run_id, stage, duration_s) VALUES (?1, ?2, ?3)")?;
    for (stage, duration_s) in wanted {
        insert.execute(params![run.id.as_str(), stage, duration_s])?;
    }
    Ok(())
}

/// Opening files written by older versions.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{NewRun, Pod, RunStatus, StageTiming};
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::runs::to_json;
    use crate::store::{Outcome, Store};

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
            gpu_model: None,
            gpu_count: None,
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
        let stats = store.stats(at(100), crate::store::stats::cost::DEFAULT_WINDOW).await.expect("stats");
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

    /// A version 4 file's runs that spent get their cost rows on open: `stats` counts them.
    #[tokio::test]
    async fn fills_the_cost_rows_of_a_version_4_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v4.sqlite");
        let store = SqliteStore::open(&path).await.expect("open");
        let new_run = NewRun { hypothesis_id: Some("h".into()), budget_usd: Some(4.0), ..NewRun::new(json!({})) };
        let run = store.enqueue(new_run, at(0)).await.expect("enqueue");
        let usage = json!({
            "specversion": "1.0", "id": "u1", "source": "pod://old", "type": "ai.llm.usage", "time": at(1).to_string(),
            "subject": format!("run/{}", run.id), "data": {"model": "m", "input_tokens": 7, "cost_usd": 1.5},
        });
        let serde_json::Value::Object(usage) = usage else { unreachable!("an object literal") };
        let usage = crate::event::from_json_object(usage, at(1)).expect("a valid event");
        store.apply_events(vec![usage], at(1)).await.expect("usage");
        drop(store);
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch("DROP TABLE run_costs; DROP TABLE run_llm;").expect("as version 4 had it");
            connection.pragma_update(None, "user_version", 4).expect("version 4");
        }
        let store = SqliteStore::open(&path).await.expect("migrates");
        let cost = store.stats(at(10), crate::store::stats::cost::DEFAULT_WINDOW).await.expect("stats").cost;
        assert_eq!((cost.total.runs, cost.total.llm_usd, cost.total.input_tokens), (1, 1.5, 7));
        assert_eq!((cost.total.budget.runs, cost.total.budget.budget_usd), (1, 4.0));
        assert_eq!(cost.by_hypothesis[0].name.as_deref(), Some("h"));
        assert_eq!(cost.all_time.by_model[0].input_tokens, 7);
    }

    /// A version 1 file's events are rewritten compactly on open: each reads back as it was
    /// stored, at the position it had, and a new event goes after the highest position ever
    /// handed out (here one whose event is gone).
    #[tokio::test]
    async fn compacts_the_events_of_a_version_1_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.sqlite");
        let run = Run::queued(NewRun::new(json!({"title": "v1"})), at(0));
        let ulid = ulid::Ulid::generate().to_string();
        let uuid = uuid::Uuid::new_v4().to_string();
        let event = |n: i64, subject: Option<&str>| {
            let id = match n {
                1 => ulid.clone(),
                2 => uuid.clone(),
                n => format!("e{n}"),
            };
            let mut object = json!({
                "specversion": "1.0", "id": id, "source": "pod://old", "type": "ai.run.log",
                "time": at(n).to_string(), "seq": n, "data": {"message": format!("line {n}"), "run_id": run.id.as_str()},
            });
            if let Some(subject) = subject {
                object["subject"] = json!(subject);
            }
            crate::event::from_test_json(object, at(n))
        };
        let old = [event(1, Some(&format!("run/{}", run.id))), event(2, None), event(3, Some("elsewhere"))];
        {
            let mut connection = Connection::open(&path).expect("open");
            connection.execute_batch(SCHEMA).expect("first release schema");
            connection.execute_batch(MIGRATION_1).expect("version 1");
            connection.pragma_update(None, "user_version", 1).expect("version");
            let tx = connection.transaction().expect("tx");
            // A run row as version 1 wrote it (no columns of later versions).
            tx.execute(
                "INSERT INTO runs (id, status, queue, priority, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run.id.as_str(),
                    run.status.as_str(),
                    run.queue,
                    run.priority,
                    run.created_at.millis(),
                    serde_json::to_string(&run).expect("json")
                ],
            )
            .expect("run");
            for (pos, event) in [10_i64, 11, 12].into_iter().zip(&old) {
                tx.execute(
                    "INSERT INTO events (pos, source, event_id, run_id, type, time, received_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        pos,
                        event.source,
                        event.id.0,
                        run.id.as_str(),
                        event.event_type,
                        event.time.millis(),
                        at(20).millis(),
                        serde_json::Value::Object(event.to_json()).to_string()
                    ],
                )
                .expect("an old event");
            }
            tx.execute("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'events'", []).expect("a deleted event");
            tx.commit().expect("commit");
        }
        let store = SqliteStore::open(&path).await.expect("migrates");
        let page = store.list_events(&run.id, &Default::default()).await.expect("events");
        let read: Vec<_> = page.items.iter().map(|stored| (stored.cursor.as_str(), &stored.event)).collect();
        assert_eq!(read, [("10", &old[0]), ("11", &old[1]), ("12", &old[2])]);
        assert!(page.items.iter().all(|stored| stored.received_at == at(20)));
        let resent = store.apply_events(vec![event(1, None), event(2, None)], at(30)).await.expect("resent");
        assert_eq!(resent, [Outcome::Duplicate, Outcome::Duplicate], "old ULID and UUID ids still deduplicate");
        store.apply_events(vec![event(4, None)], at(30)).await.expect("a new event");
        let page = store.list_events(&run.id, &Default::default()).await.expect("events");
        assert_eq!(page.items.len(), 4, "the three old events and the new one");
        let newest: i64 = page.items[3].cursor.parse().expect("a position");
        assert!(newest > 40, "the new event goes after every position handed out, got {newest}");
    }
}
