//! Stored events and what they record beside their runs (artifacts, hypotheses' ideas),
//! and `apply_events`: one transaction, one commit, for a whole batch.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::event_rows::{Names, insert_event, lookup, run_events};
use super::runs::{insert_run, load_run, save_loaded_run, to_json};
use super::schema::stage_durations;
use crate::event::Event;
use crate::run::{Run, RunId};
use crate::store::{
    Artifact, Effect, Error, HypothesisIdeas, LOG_EVENT_TYPE, Outcome, Pruned, Result, Rules, SideRecord,
    apply_new_event, before_save, replaces, replay, side_record,
};
use crate::time::Timestamp;

impl SqliteStore {
    pub(super) async fn run_artifacts(&self, run_id: &RunId) -> Result<Vec<Artifact>> {
        let run_id = run_id.clone();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached("SELECT key, doc FROM artifacts WHERE run_id = ?1 ORDER BY key")?;
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
}

impl SqliteStore {
    /// The newest position's receipt time: positions are handed out in commit order.
    pub(super) async fn newest_received_at(&self) -> Result<Option<Timestamp>> {
        let millis: Option<i64> = self
            .read(|conn| {
                Ok(conn
                    .query_row("SELECT received_at FROM events ORDER BY pos DESC LIMIT 1", [], |row| row.get(0))
                    .optional()?)
            })
            .await?;
        Ok(millis.map(Timestamp::from_millis))
    }

    /// The old log events are found on a reader (a scan in `pos` order, no lock held), then
    /// deleted by position in one short write that checks them again.
    pub(super) async fn prune_old_logs(&self, cutoff: Timestamp, from: Option<String>, limit: usize) -> Result<Pruned> {
        let after: i64 = match &from {
            None => 0,
            Some(cursor) => cursor.parse().map_err(|_| Error::InvalidCursor(cursor.clone()))?,
        };
        let cutoff = cutoff.millis();
        let (log_type, found): (Option<i64>, Vec<i64>) = self
            .read(move |conn| {
                let Some(log_type) = lookup(conn, LOG_EVENT_TYPE)? else { return Ok((None, Vec::new())) };
                let mut statement = conn.prepare_cached(
                    "SELECT pos FROM events WHERE pos > ?1 AND type = ?2 AND received_at < ?3 ORDER BY pos LIMIT ?4",
                )?;
                let rows = statement.query_map(params![after, log_type, cutoff, limit as i64], |row| row.get(0))?;
                Ok((Some(log_type), rows.collect::<rusqlite::Result<_>>()?))
            })
            .await?;
        let (Some(log_type), Some(&last)) = (log_type, found.last()) else {
            return Ok(Pruned { deleted: 0, next: None });
        };
        let next = (found.len() == limit).then(|| last.to_string());
        let deleted = self
            .write(move |tx| {
                let mut delete =
                    tx.prepare_cached("DELETE FROM events WHERE pos = ?1 AND type = ?2 AND received_at < ?3")?;
                let mut deleted = 0;
                for pos in found {
                    deleted += delete.execute(params![pos, log_type, cutoff])? as u64;
                }
                Ok(deleted)
            })
            .await?;
        Ok(Pruned { deleted, next })
    }
}

/// A run touched by a batch: loaded once, written once at the end if an event changed it.
struct Touched {
    run: Option<Run>,
    /// Its completed stages as stored (what its `run_stages` rows hold).
    stored_stages: Vec<(String, f64)>,
    created: bool,
    changed: bool,
    /// When the latest event that changed it was received.
    at: Timestamp,
}

/// Applies a batch inside one transaction: one commit (one fsync) for the whole batch. Each
/// event comes with when it was received (a group commit applies several requests' events).
pub(super) fn apply_batch<'e>(
    tx: &Transaction<'_>,
    events: impl IntoIterator<Item = (&'e Event, &'e str, Timestamp)>,
    rules: &Rules,
) -> Result<Vec<Outcome>> {
    let mut touched: HashMap<RunId, Touched> = HashMap::new();
    let mut outcomes = Vec::new();
    let mut names = Names::default();
    for (event, body, now) in events {
        if !insert_event(tx, &mut names, event, body, now)? {
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
        let slot = match touched.entry(run_id.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let run = load_run(tx, run_id)?;
                let stored_stages = run.as_ref().map(stage_durations).unwrap_or_default();
                entry.insert(Touched { run, stored_stages, created: false, changed: false, at: now })
            }
        };
        let effect = apply_new_event(&mut slot.run, event, now, rules);
        match effect {
            Effect::Created => {
                slot.created = true;
                if let Some(run) = slot.run.as_mut() {
                    replay(run, &run_events(tx, run_id)?);
                }
            }
            Effect::Updated => {}
            Effect::Stale | Effect::Orphan => {
                outcomes.push(effect.outcome());
                continue;
            }
        }
        (slot.changed, slot.at) = (true, slot.at.max(now));
        outcomes.push(effect.outcome());
    }
    for touched in touched.into_values().filter(|touched| touched.changed) {
        let Some(mut run) = touched.run else { continue };
        if touched.created {
            // Created by replaying events stored before it: it may already call for an alert.
            before_save(&mut run, rules, touched.at);
            run.updated_at = touched.at;
            insert_run(tx, &run)?;
        } else {
            save_loaded_run(tx, &mut run, touched.at, rules, &touched.stored_stages)?;
        }
    }
    Ok(outcomes)
}

fn save_side_record(tx: &Transaction<'_>, record: SideRecord) -> Result<()> {
    match record {
        SideRecord::Artifact(artifact) => {
            let existing: Option<String> = tx
                .prepare_cached("SELECT doc FROM artifacts WHERE run_id = ?1 AND key = ?2")?
                .query_row(params![artifact.run_id.as_str(), artifact.key], |row| row.get(0))
                .optional()?;
            let existing: Option<Artifact> = existing
                .map(|doc| serde_json::from_str(&doc))
                .transpose()
                .map_err(|source| Error::Corrupt { what: format!("artifact {}", artifact.key), source })?;
            if replaces(existing.as_ref().map(|a| &a.at), &artifact.at) {
                tx.prepare_cached(
                    "INSERT INTO artifacts (run_id, key, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run_id, key) DO UPDATE SET doc = excluded.doc",
                )?
                .execute(params![
                    artifact.run_id.as_str(),
                    artifact.key,
                    to_json("artifact", &artifact)?
                ])?;
            }
        }
        SideRecord::Hypothesis(ideas) => {
            let existing = load_hypothesis(tx, &ideas.id)?;
            if replaces(existing.as_ref().map(|h| &h.at), &ideas.at) {
                tx.prepare_cached(
                    "INSERT INTO hypotheses (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                )?
                .execute(params![ideas.id, to_json("hypothesis", &ideas)?])?;
            }
        }
    }
    Ok(())
}

pub(super) fn load_hypothesis(conn: &Connection, id: &str) -> Result<Option<HypothesisIdeas>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM hypotheses WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    doc.map(|doc| serde_json::from_str(&doc))
        .transpose()
        .map_err(|source| Error::Corrupt { what: format!("hypothesis {id}"), source })
}
