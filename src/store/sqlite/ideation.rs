//! Ideation requests on the embedded store.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use serde_json::{Map, Value};

use super::SqliteStore;
use super::pages::placeholders;
use super::runs::to_json;
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::store::{Error, IdeationChange, Result, clamp_limit};
use crate::time::Timestamp;

impl SqliteStore {
    pub(super) async fn insert_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest> {
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

    pub(super) async fn list_ideation_requests(
        &self,
        statuses: &[IdeationStatus],
        limit: usize,
    ) -> Result<Vec<IdeationRequest>> {
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

    pub(super) async fn claim_oldest_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
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

    pub(super) async fn update_ideation(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
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

/// Reads an `ideation_requests` row.
fn parse_ideation(id: &str, doc: &str) -> Result<IdeationRequest> {
    let corrupt = |source| Error::Corrupt { what: format!("ideation request {id}"), source };
    let document: Map<String, Value> = serde_json::from_str(doc).map_err(corrupt)?;
    IdeationRequest::from_document(document).map_err(corrupt)
}

pub(super) fn load_ideation(conn: &Connection, id: &str) -> Result<Option<IdeationRequest>> {
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
