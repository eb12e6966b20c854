//! What `stats` sums runs' costs by, kept beside each run document (schema version 5): one
//! small `run_costs` row per run that spent or has a budget, and one `run_llm` row per model
//! it called. The window is a range of `run_costs_created`; the all-time sums read the two
//! covering indexes, whose size is the number of runs that spent, not of all runs.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Transaction, params, params_from_iter};

use crate::event::FailureCode;
use crate::run::{Run, RunStatus, cost::WARN_AT};
use crate::store::Result;
use crate::store::stats::cost::{BudgetUse, CostParts, CostRow, CostSum, ModelTokens, QueueSpend};
use crate::time::Timestamp;

/// Tokens as SQLite integers (a count past `i64::MAX` is held there).
fn count(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    value.max(0) as u64
}

/// Whether a run has figures to sum: spent anything or has a budget.
fn costed(run: &Run) -> bool {
    !run.cost.is_empty() || run.cost.budget_usd.is_some()
}

/// Brings `run`'s cost rows in line with its document, writing only what changed.
pub(super) fn write_costs(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let id = run.id.as_str();
    if !costed(run) {
        tx.prepare_cached("DELETE FROM run_costs WHERE run_id = ?1")?.execute([id])?;
        return Ok(());
    }
    let cost = &run.cost;
    let exceeded = run.status == RunStatus::Failed
        && run.error_type.as_deref() == Some(FailureCode::BudgetExceeded.to_string().as_str());
    let values = [
        SqlValue::from(id.to_owned()),
        SqlValue::from(run.created_at.millis()),
        SqlValue::from(run.queue.clone()),
        run.hypothesis_id.clone().map_or(SqlValue::Null, SqlValue::from),
        SqlValue::from(cost.gpu_usd),
        SqlValue::from(cost.llm.usd),
        SqlValue::from(count(cost.llm.input_tokens)),
        SqlValue::from(count(cost.llm.output_tokens)),
        SqlValue::from(count(cost.llm.cached_tokens)),
        cost.budget_usd.map_or(SqlValue::Null, SqlValue::from),
        SqlValue::from(i64::from(exceeded)),
    ];
    // A heartbeat moves a running run's GPU dollars; most other writes change nothing here.
    tx.prepare_cached(
        "INSERT INTO run_costs (run_id, created_at, queue, hypothesis, gpu_usd, llm_usd,
             input_tokens, output_tokens, cached_tokens, budget_usd, exceeded)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (run_id) DO UPDATE SET
             (queue, hypothesis, gpu_usd, llm_usd, input_tokens, output_tokens, cached_tokens, budget_usd, exceeded)
             = (excluded.queue, excluded.hypothesis, excluded.gpu_usd, excluded.llm_usd, excluded.input_tokens,
                excluded.output_tokens, excluded.cached_tokens, excluded.budget_usd, excluded.exceeded)
         WHERE (queue, hypothesis, gpu_usd, llm_usd, input_tokens, output_tokens, cached_tokens, budget_usd, exceeded)
             IS NOT (excluded.queue, excluded.hypothesis, excluded.gpu_usd, excluded.llm_usd, excluded.input_tokens,
                excluded.output_tokens, excluded.cached_tokens, excluded.budget_usd, excluded.exceeded)",
    )?
    .execute(params_from_iter(values))?;
    write_model_rows(tx, run)
}

/// Rewrites a run's `run_llm` rows when its usage by model changed. A run's models are
/// never forgotten, so a run with none has no rows to look for.
fn write_model_rows(tx: &Transaction<'_>, run: &Run) -> Result<()> {
    let by_model = &run.cost.llm.by_model;
    if by_model.is_empty() {
        return Ok(());
    }
    let wanted: Vec<(String, i64, i64, i64)> = by_model
        .iter()
        .map(|(model, used)| {
            (model.clone(), count(used.input_tokens), count(used.output_tokens), count(used.cached_tokens))
        })
        .collect();
    let stored: Vec<(String, i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT model, input_tokens, output_tokens, cached_tokens FROM run_llm WHERE run_id = ?1 ORDER BY model",
        )?
        .query_map([run.id.as_str()], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if wanted == stored {
        return Ok(());
    }
    tx.prepare_cached("DELETE FROM run_llm WHERE run_id = ?1")?.execute([run.id.as_str()])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO run_llm (run_id, model, input_tokens, output_tokens, cached_tokens) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (model, input, output, cached) in wanted {
        insert.execute(params![run.id.as_str(), model, input, output, cached])?;
    }
    Ok(())
}

/// The cost section's figures: the window's runs by (queue, hypothesis), all runs' dollars by
/// queue and tokens by model.
pub(super) fn cost_parts(conn: &Connection, since: Timestamp, now: Timestamp) -> Result<CostParts> {
    let mut statement = conn.prepare_cached(
        "SELECT queue, hypothesis, COUNT(*), TOTAL(gpu_usd), TOTAL(llm_usd),
             SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens),
             COUNT(budget_usd), TOTAL(CASE WHEN budget_usd IS NOT NULL THEN gpu_usd + llm_usd END), TOTAL(budget_usd),
             SUM(budget_usd IS NOT NULL AND gpu_usd + llm_usd >= budget_usd * ?3), SUM(exceeded)
         FROM run_costs WHERE created_at >= ?1 AND created_at <= ?2 GROUP BY queue, hypothesis",
    )?;
    let window = statement
        .query_map(params![since.millis(), now.millis(), WARN_AT], |row| {
            let sum = CostSum {
                runs: unsigned(row.get(2)?),
                gpu_usd: row.get(3)?,
                llm_usd: row.get(4)?,
                total_usd: 0.0,
                input_tokens: unsigned(row.get(5)?),
                output_tokens: unsigned(row.get(6)?),
                cached_tokens: unsigned(row.get(7)?),
                budget: BudgetUse {
                    runs: unsigned(row.get(8)?),
                    spent_usd: row.get(9)?,
                    budget_usd: row.get(10)?,
                    near_budget: unsigned(row.get(11)?),
                    exceeded: unsigned(row.get(12)?),
                },
            };
            Ok(CostRow { queue: row.get(0)?, hypothesis: row.get(1)?, sum })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let queues = conn
        .prepare_cached("SELECT queue, TOTAL(gpu_usd), TOTAL(llm_usd) FROM run_costs GROUP BY queue")?
        .query_map([], |row| Ok(QueueSpend { queue: row.get(0)?, gpu_usd: row.get(1)?, llm_usd: row.get(2)? }))?
        .collect::<rusqlite::Result<_>>()?;
    let models = conn
        .prepare_cached(
            "SELECT model, SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens) FROM run_llm GROUP BY model",
        )?
        .query_map([], |row| {
            Ok(ModelTokens {
                model: row.get(0)?,
                input_tokens: unsigned(row.get(1)?),
                output_tokens: unsigned(row.get(2)?),
                cached_tokens: unsigned(row.get(3)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(CostParts { window, queues, models })
}
