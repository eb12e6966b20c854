//! The figures of `stats` on the embedded store, each from an index.

use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};

use super::SqliteStore;
use super::cost_rows::cost_parts;
use super::pages::placeholders;
use super::runs::parse_run;
use crate::run::{ReviewDecision, Run, RunStatus};
use crate::store::stats::{self, FailureCount, HELD_STATUSES, StageDurations};
use crate::store::{Error, Result, Stats};
use crate::time::Timestamp;

impl SqliteStore {
    pub(super) async fn count_by_status(&self) -> Result<Vec<(RunStatus, u64)>> {
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

    pub(super) async fn gather_stats(&self, now: Timestamp, cost_window: Duration) -> Result<Stats> {
        let counts = self.count_by_status().await?;
        let parts = self
            .read(move |conn| {
                // One read transaction: every figure comes from the same snapshot.
                let tx = conn.unchecked_transaction()?;
                let parts = stats_parts(&tx, counts, now, cost_window)?;
                tx.finish()?;
                Ok(parts)
            })
            .await?;
        Ok(Stats::assemble(parts, now, cost_window))
    }
}

/// Everything `stats` needs besides the counts, each from an index.
fn stats_parts(
    conn: &Connection,
    counts: Vec<(RunStatus, u64)>,
    now: Timestamp,
    cost_window: Duration,
) -> Result<stats::Parts> {
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
    // Held runs are few (one per busy worker): reading their flags from the document is cheap.
    let flagged_sql = format!(
        "SELECT COUNT(json_extract(doc, '$.silentSince')), COUNT(json_extract(doc, '$.stalledSince')) \
         FROM runs WHERE status IN ({})",
        placeholders(HELD_STATUSES.len())
    );
    let held = HELD_STATUSES.iter().map(|status| SqlValue::from(status.as_str().to_owned()));
    let flagged = conn.prepare_cached(&flagged_sql)?.query_row(params_from_iter(held), |row| {
        Ok(stats::Flagged { silent: row.get::<_, i64>(0)?.max(0) as u64, stalled: row.get::<_, i64>(1)?.max(0) as u64 })
    })?;
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
        review_decisions: review_decisions(conn)?,
        flagged,
        gpu_seconds: gpu_millis / 1000.0,
        cost: cost_parts(conn, stats::cost::window_since(now, cost_window), now)?,
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

/// From the partial index on the `review_decision` column (only reviewed runs have one).
fn review_decisions(conn: &Connection) -> Result<Vec<(ReviewDecision, u64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT review_decision, COUNT(*) FROM runs WHERE review_decision IS NOT NULL GROUP BY review_decision",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
    let mut counts = Vec::new();
    for row in rows {
        let (decision, count) = row?;
        let decision = ReviewDecision::ALL.into_iter().find(|known| known.as_str() == decision).ok_or_else(|| {
            Error::Corrupt { what: "review decision".into(), source: serde::de::Error::custom(decision) }
        })?;
        counts.push((decision, count.max(0) as u64));
    }
    Ok(counts)
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
