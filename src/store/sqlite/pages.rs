//! Listings: runs newest first, and a run's events in stored order (`pos`, assigned by the
//! one writer in commit order, so a reader never sees a later event before an earlier one).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};

use super::SqliteStore;
use super::event_rows::{EVENT_COLUMNS, EventRow, lookup};
use super::runs::parse_run;
use crate::run::{Run, RunId, RunStatus};
use crate::store::{
    Error, EventFilter, LOG_EVENT_TYPE, Page, PageFill, Result, RunFilter, StoredEvent, level_names_at_or_above,
    parse_run_cursor, run_cursor,
};

impl SqliteStore {
    pub(super) async fn list_runs(&self, filter: &RunFilter) -> Result<Page<Run>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let page = PageFill::new(filter.limit);
            let (sql, values) = list_query(&filter, page.rows_to_read())?;
            let mut statement = conn.prepare(&sql)?;
            let rows = statement
                .query_map(params_from_iter(values), |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            let rows = rows.map(|row| {
                let (id, doc) = row?;
                Ok((parse_run(&id, &doc)?, doc.len()))
            });
            page.fill_from(rows, run_cursor)
        })
        .await
    }
}

/// The newest-first query of `list`, and its values. Each status is read on its own, in
/// index order and limited, then merged: SQLite cannot walk `status IN (…)` of the
/// (status, created_at) index in created_at order, and would sort every matching run.
fn list_query(filter: &RunFilter, rows_to_read: usize) -> Result<(String, Vec<SqlValue>)> {
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
    let page = SqlValue::from(rows_to_read as i64);
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

/// Which way an event listing pages through a run's stored order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Forward,
    Backward,
}

/// One page of a run's events after (forward) or before (backward) `filter.cursor`.
pub(super) fn events_page(
    conn: &Connection,
    run_id: &RunId,
    filter: &EventFilter,
    direction: Direction,
) -> Result<Page<StoredEvent>> {
    let page = PageFill::new(filter.limit);
    let cursor: Option<i64> = match &filter.cursor {
        None => None,
        Some(cursor) => Some(cursor.parse().map_err(|_| Error::InvalidCursor(cursor.clone()))?),
    };
    let Some(run) = lookup(conn, run_id.as_str())? else {
        return page.fill_from(std::iter::empty::<Result<_>>(), cursor_of);
    };
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.run = ?");
    let mut values = vec![SqlValue::from(run)];
    if let Some(cursor) = cursor {
        sql.push_str(if direction == Direction::Forward { " AND e.pos > ?" } else { " AND e.pos < ?" });
        values.push(SqlValue::from(cursor));
    }
    if !filter.types.is_empty() {
        sql.push_str(&format!(
            " AND e.type IN (SELECT key FROM names WHERE name IN ({}))",
            placeholders(filter.types.len())
        ));
        values.extend(filter.types.iter().cloned().map(SqlValue::from));
    }
    if let Some(min_level) = filter.min_level {
        let names = level_names_at_or_above(min_level);
        sql.push_str(&format!(
            " AND e.type = (SELECT key FROM names WHERE name = ?) \
             AND COALESCE(json_extract(e.body, '$.data.level'), 'info') IN ({})",
            placeholders(names.len())
        ));
        values.push(SqlValue::from(LOG_EVENT_TYPE.to_owned()));
        values.extend(names.into_iter().map(|name| SqlValue::from(name.to_owned())));
    }
    sql.push_str(if direction == Direction::Forward {
        " ORDER BY e.pos LIMIT ?"
    } else {
        " ORDER BY e.pos DESC LIMIT ?"
    });
    values.push(SqlValue::from(page.rows_to_read() as i64));
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params_from_iter(values), EventRow::read)?;
    page.fill_from(rows.map(|row| row?.parse()), cursor_of)
}

fn cursor_of(event: &StoredEvent) -> String {
    event.cursor.clone()
}

/// `?, ?, …` for an `IN (…)` list of `n` values.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}
