//! Event ingest: `POST /api/ingest/event` (structured or binary mode) and
//! `POST /api/ingest/events` (NDJSON or `application/cloudevents-batch+json`).
//! An event is answered 202 only after the store committed it.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::event::wire::{self, Batch, Rejected};
use crate::event::{self, Event};
use crate::limits::{self, MAX_BATCH_EVENTS};
use crate::queue::authority::{self, Authority, Refusal};
use crate::run::RunId;
use crate::store::Outcome;
use crate::time::Timestamp;

/// The answer to one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventAnswer {
    pub id: String,
    pub outcome: Outcome,
}

/// The answer to a batch: counts by outcome, and each rejected line with its reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// Stored: applied, stale (fenced) or orphan (run not created yet).
    pub accepted: usize,
    pub applied: usize,
    pub duplicate: usize,
    pub stale: usize,
    pub orphan: usize,
    pub rejected: Vec<Rejected>,
}

fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

impl AppState {
    /// Counts what became of ingested events and wakes the live tails when any was stored.
    fn record(&self, outcomes: Vec<Outcome>, rejected: usize) -> Vec<Outcome> {
        self.metrics.count_ingested(&outcomes, rejected);
        if outcomes.iter().any(|outcome| *outcome != Outcome::Duplicate) {
            self.stored.send_modify(|generation| *generation += 1);
        }
        outcomes
    }

    /// Why each event may not be sent with `authority` (`None`: it may), judged on the runs
    /// as stored now; see `queue::authority` for why that is sound outside the store's write.
    async fn refusals<'a>(
        &self,
        authority: Authority,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Vec<Option<Refusal>>, ApiError> {
        let events: Vec<&Event> = events.into_iter().collect();
        if authority == Authority::Admin {
            return Ok(vec![None; events.len()]);
        }
        let mut runs = HashMap::new();
        for run_id in events.iter().filter_map(|event| event.run_id.as_ref()) {
            if !runs.contains_key(run_id) {
                runs.insert(run_id.clone(), self.store.get(run_id).await?);
            }
        }
        let run_of = |id: &RunId| runs.get(id).and_then(Option::as_ref);
        Ok(events
            .iter()
            .map(|event| authority::pod_may_send(event.run_id.as_ref().and_then(run_of), event).err())
            .collect())
    }
}

/// The one event of a `POST /api/ingest/event` request: binary mode when it has `ce-*`
/// headers, else structured mode. Shared with the worker's local endpoint.
pub fn parse_event(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Event, ApiError> {
    let media_type = media_type(headers);
    if headers.contains_key("ce-specversion") {
        let ce_headers = headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let content_type = (!media_type.is_empty()).then_some(media_type.as_str());
        wire::parse_binary(ce_headers, content_type, body, now)
    } else if media_type == "application/cloudevents+json" || media_type == "application/json" {
        wire::parse_structured(body, now)
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type {media_type:?} is not an event: send application/cloudevents+json (structured mode), \
             ce-* headers (binary mode), or a batch to /api/ingest/events"
        )));
    }
    .map_err(|err| match err {
        event::Error::TooLarge(message) => ApiError::TooLarge(message),
        other => ApiError::BadRequest(other.to_string()),
    })
}

/// The events of a `POST /api/ingest/events` request, good lines and rejected ones, within
/// `MAX_BATCH_EVENTS`. Shared with the worker's local endpoint.
pub fn parse_batch(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Batch, ApiError> {
    let parsed = match media_type(headers).as_str() {
        "application/x-ndjson" | "application/ndjson" => wire::parse_ndjson(body, now),
        "application/cloudevents-batch+json" => {
            wire::parse_json_batch(body, now).map_err(|err| ApiError::BadRequest(err.to_string()))?
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {other:?} is not a batch: send application/x-ndjson (one event a line) \
                 or application/cloudevents-batch+json (a JSON array)"
            )));
        }
    };
    let total = parsed.events.len() + parsed.rejected.len();
    if total > MAX_BATCH_EVENTS {
        return Err(ApiError::TooLarge(limits::batch_too_large(total)));
    }
    Ok(parsed)
}

pub(super) async fn one(
    State(state): State<AppState>,
    Extension(authority): Extension<Authority>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EventAnswer>), ApiError> {
    let now = Timestamp::now();
    let event = parse_event(&headers, &body, now).inspect_err(|_| state.metrics.count_ingested(&[], 1))?;
    if let Some(refusal) = state.refusals(authority, [&event]).await?.into_iter().flatten().next() {
        state.metrics.count_ingested(&[], 1);
        return Err(ApiError::EventForbidden(refusal.to_string()));
    }
    let id = event.id.to_string();
    let outcomes = state.record(state.store.apply_events(vec![event], now).await?, 0);
    let outcome = outcomes.first().copied().ok_or_else(|| ApiError::BadRequest("no event in the request".into()))?;
    Ok((StatusCode::ACCEPTED, Json(EventAnswer { id, outcome })))
}

pub(super) async fn batch(
    State(state): State<AppState>,
    Extension(authority): Extension<Authority>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    let now = Timestamp::now();
    let mut parsed = parse_batch(&headers, &body, now)?;
    let refusals = state.refusals(authority, parsed.events.iter().map(|(_, event)| event)).await?;
    let mut events = Vec::with_capacity(parsed.events.len());
    for ((line, event), refusal) in parsed.events.into_iter().zip(refusals) {
        match refusal {
            None => events.push(event),
            Some(refusal) => parsed.rejected.push(Rejected { line, reason: refusal.to_string() }),
        }
    }
    parsed.rejected.sort_by_key(|rejected| rejected.line);
    let outcomes = state.record(state.store.apply_events(events, now).await?, parsed.rejected.len());
    let mut answer = BatchAnswer { rejected: parsed.rejected, ..BatchAnswer::default() };
    for outcome in outcomes {
        match outcome {
            Outcome::Applied => answer.applied += 1,
            Outcome::Duplicate => answer.duplicate += 1,
            Outcome::Stale => answer.stale += 1,
            Outcome::Orphan => answer.orphan += 1,
        }
    }
    answer.accepted = answer.applied + answer.stale + answer.orphan;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
