//! Run rows: documents stored as JSON beside the columns the queue sorts and filters on,
//! the claim, and the lookup of id prefixes.

use std::sync::LazyLock;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};

use super::SqliteStore;
use super::cost_rows::write_costs;
use super::schema::{
    DERIVED_COLUMNS, derived_values, placeholders, write_changed_stage_durations, write_stage_durations,
};
use crate::run::{Run, RunId};
use crate::store::{Error, Result, Rules, before_save};
use crate::time::Timestamp;

impl SqliteStore {
    pub(super) async fn claim_next(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        let (worker, queue, rules) = (worker.to_owned(), queue.to_owned(), self.rules());
        self.write(move |tx| {
            let candidate: Option<(String, String)> = tx
                .prepare_cached(
                    "SELECT id, doc FROM runs WHERE queue = ?1 AND status = 'QUEUED'
                     AND (not_before IS NULL OR not_before <= ?2)
                     ORDER BY priority DESC, created_at, id LIMIT 1",
                )?
                .query_row(params![&queue, now.millis()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((id, doc)) = candidate else { return Ok(None) };
            let mut run = parse_run(&id, &doc)?;
            run.claim(&worker, now);
            save_run(tx, &mut run, now, &rules)?;
            Ok(Some(run))
        })
        .await
    }

    pub(super) async fn runs_with_alerts_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, doc FROM runs WHERE alerts_due IS NOT NULL AND alerts_due <= ?1
                 ORDER BY alerts_due LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now.millis(), limit as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            rows.map(|row| {
                let (id, doc) = row?;
                parse_run(&id, &doc)
            })
            .collect()
        })
        .await
    }

    pub(super) async fn runs_with_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
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
}

pub(super) fn parse_run(id: &str, doc: &str) -> Result<Run> {
    serde_json::from_str(doc).map_err(|source| Error::Corrupt { what: format!("run {id}"), source })
}

pub(super) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Corrupt { what: what.to_owned(), source })
}

pub(super) fn load_run(conn: &Connection, id: &RunId) -> Result<Option<Run>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM runs WHERE id = ?1")?
        .query_row([id.as_str()], |row| row.get(0))
        .optional()?;
    doc.map(|doc| parse_run(id.as_str(), &doc)).transpose()
}

pub(super) fn insert_run(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let sql = format!(
        "INSERT INTO runs (id, created_at, doc, {}) VALUES (?, ?, ?, {}) ON CONFLICT (id) DO NOTHING",
        column_list(),
        placeholders(columns().count())
    );
    let values = [
        SqlValue::from(run.id.to_string()),
        SqlValue::from(run.created_at.millis()),
        SqlValue::from(to_json("run", run)?),
    ];
    let inserted = tx.prepare_cached(&sql)?.execute(params_from_iter(values.into_iter().chain(column_values(run))))?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(run.id.clone()));
    }
    write_costs(tx, run)?;
    write_stage_durations(tx, run)
}

/// Writes `run` back, stamping `updatedAt` and bumping its revision.
pub(super) fn save_run(tx: &Transaction<'_>, run: &mut Run, now: Timestamp, rules: &Rules) -> Result<()> {
    save_run_document(tx, run, now, rules)?;
    write_stage_durations(tx, run)
}

/// As [`save_run`], for a run whose stored stage rows are known: `stored_stages`, from its
/// document as read in this transaction ([`stage_durations`]).
pub(super) fn save_loaded_run(
    tx: &Transaction<'_>,
    run: &mut Run,
    now: Timestamp,
    rules: &Rules,
    stored_stages: &[(String, f64)],
) -> Result<()> {
    save_run_document(tx, run, now, rules)?;
    write_changed_stage_durations(tx, run, stored_stages)
}

/// The columns the queue sorts and filters on, beside the derived ones.
const QUEUE_COLUMNS: [&str; 3] = ["status", "queue", "priority"];

/// The columns kept from a run's document (all but its id and creation time, which never
/// change), in the order of [`column_values`].
fn columns() -> impl Iterator<Item = &'static str> {
    QUEUE_COLUMNS.into_iter().chain(DERIVED_COLUMNS)
}

/// [`columns`] as SQL lists them.
fn column_list() -> String {
    columns().collect::<Vec<_>>().join(", ")
}

/// `run`'s values of [`columns`].
fn column_values(run: &Run) -> impl Iterator<Item = SqlValue> {
    let queue_columns = [
        SqlValue::from(run.status.as_str().to_owned()),
        SqlValue::from(run.queue.clone()),
        SqlValue::from(run.priority),
    ];
    queue_columns.into_iter().chain(derived_values(run))
}

/// Writes the document, and of its columns only those whose value changed: SQLite rewrites
/// the index entries of every column an `UPDATE` sets, changed or not, and most writes (a
/// log line, a heartbeat) change one column of the eleven, which the runs' nine indexes
/// would otherwise each pay for with a page in the WAL.
fn save_run_document(tx: &Transaction<'_>, run: &mut Run, now: Timestamp, rules: &Rules) -> Result<()> {
    before_save(run, rules, now);
    run.updated_at = now;
    run.rev += 1;
    let id = run.id.to_string();
    static SELECT: LazyLock<String> = LazyLock::new(|| format!("SELECT {} FROM runs WHERE id = ?1", column_list()));
    let stored: Vec<SqlValue> =
        tx.prepare_cached(&SELECT)?.query_row([&id], |row| (0..columns().count()).map(|n| row.get(n)).collect())?;
    let changed: Vec<(&str, SqlValue)> = columns()
        .zip(column_values(run))
        .zip(stored)
        .filter_map(|((column, new), old)| (new != old).then_some((column, new)))
        .collect();
    let set: String = changed.iter().map(|(column, _)| format!(", {column} = ?")).collect();
    let values = [SqlValue::from(to_json("run", run)?)].into_iter().chain(changed.into_iter().map(|(_, value)| value));
    tx.prepare_cached(&format!("UPDATE runs SET doc = ?{set} WHERE id = ?"))?
        .execute(params_from_iter(values.chain([SqlValue::from(id)])))?;
    write_costs(tx, run)
}

fn corrupt_id(id: &str, reason: String) -> Error {
    Error::Corrupt { what: format!("run id {id:?}"), source: serde::de::Error::custom(reason) }
}

#[cfg(test)]
mod tests {
    use rusqlite::types::Value as SqlValue;
    use serde_json::json;

    use super::{column_list, column_values, columns, parse_run};
    use crate::run::{NewRun, RunId};
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;
    use crate::time::Timestamp;

    fn event(id: &str, ty: &str, run: &RunId, attempt: u32, data: serde_json::Value) -> crate::event::Event {
        let event = json!({
            "specversion": "1.0", "id": id, "source": "pod://test", "type": ty, "subject": format!("run/{run}"),
            "time": Timestamp::now().to_string(), "attempt": attempt, "data": data,
        });
        crate::event::from_test_json(event, Timestamp::now())
    }

    /// The stored columns beside the ones the stored document says.
    async fn columns_and_document(store: &SqliteStore, id: &RunId) -> (Vec<SqlValue>, Vec<SqlValue>) {
        let id = id.to_string();
        store
            .read(move |conn| {
                let select = format!("SELECT doc, {} FROM runs WHERE id = ?1", column_list());
                let (doc, stored) = conn.query_row(&select, [&id], |row| {
                    let stored = (1..=columns().count()).map(|n| row.get(n)).collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok((row.get::<_, String>(0)?, stored))
                })?;
                Ok((stored, column_values(&parse_run(&id, &doc)?).collect()))
            })
            .await
            .expect("read the run")
    }

    /// Writes set only the columns that changed: every column must still match its document
    /// after each kind of write (claim, a log line, a failure, a reset, a cancel).
    #[tokio::test]
    async fn every_column_follows_its_document_through_a_lifecycle() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open");
        let id = store.enqueue(NewRun::new(json!({})), Timestamp::now()).await.expect("enqueue").id;
        let check = |step: &'static str| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                let (stored, from_document) = columns_and_document(&store, &id).await;
                assert_eq!(stored, from_document, "after {step}");
                stored
            }
        };
        let queued = check("enqueue").await;
        store.claim("pod-a", crate::run::DEFAULT_QUEUE, Timestamp::now()).await.expect("claim").expect("a run");
        let running = check("claim").await;
        assert_ne!(queued[0], running[0], "the claim changed the status column");
        let log = event("l1", "ai.run.log", &id, 1, json!({"message": "step 1"}));
        store.apply_events(vec![log], Timestamp::now()).await.expect("log");
        check("a log line").await;
        let failed = event("f1", "ai.run.failed", &id, 1, json!({"code": "OOM", "message": "out of memory"}));
        store.apply_events(vec![failed], Timestamp::now()).await.expect("failure");
        let failed = check("a failure").await;
        assert!(failed.iter().any(|value| value == &SqlValue::Text("OOM".into())), "error code stored: {failed:?}");
        store.reset(&id, Timestamp::now()).await.expect("reset");
        check("a reset").await;
        store.request_cancel(&id, "op", Some("not needed".into()), Timestamp::now()).await.expect("cancel");
        let canceled = check("a cancel").await;
        assert_eq!(canceled[0], SqlValue::Text("CANCELED".into()));
    }
}
