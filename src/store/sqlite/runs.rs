//! Run rows: documents stored as JSON beside the columns the queue sorts and filters on,
//! the claim, and the lookup of id prefixes.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};

use super::SqliteStore;
use super::cost_rows::write_costs;
use super::schema::{
    DERIVED_COLUMNS, DERIVED_PLACEHOLDERS, derived_values, write_changed_stage_durations, write_stage_durations,
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
        "INSERT INTO runs (id, status, queue, priority, created_at, doc, {DERIVED_COLUMNS})
         VALUES (?, ?, ?, ?, ?, ?, {DERIVED_PLACEHOLDERS}) ON CONFLICT (id) DO NOTHING"
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

fn save_run_document(tx: &Transaction<'_>, run: &mut Run, now: Timestamp, rules: &Rules) -> Result<()> {
    before_save(run, rules, now);
    run.updated_at = now;
    run.rev += 1;
    let sql = format!(
        "UPDATE runs SET (status, queue, priority, doc, {DERIVED_COLUMNS}) = (?, ?, ?, ?, {DERIVED_PLACEHOLDERS}) WHERE id = ?"
    );
    let values = [
        SqlValue::from(run.status.as_str().to_owned()),
        SqlValue::from(run.queue.clone()),
        SqlValue::from(run.priority),
        SqlValue::from(to_json("run", run)?),
    ];
    let id = SqlValue::from(run.id.to_string());
    tx.prepare_cached(&sql)?.execute(params_from_iter(values.into_iter().chain(derived_values(run)).chain([id])))?;
    write_costs(tx, run)
}

fn corrupt_id(id: &str, reason: String) -> Error {
    Error::Corrupt { what: format!("run id {id:?}"), source: serde::de::Error::custom(reason) }
}
