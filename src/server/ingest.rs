//! Event ingest: `POST /api/ingest/event` (structured or binary mode) and
//! `POST /api/ingest/events` (NDJSON or `application/cloudevents-batch+json`).
//! An event is answered 202 only after the store committed it.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};

use super::AppState;
use super::error::ApiError;
use crate::event::Event;
use crate::event::wire::Rejected;
use crate::protocol::http::{ParseError, parse_batch, parse_event};
use crate::protocol::{BatchAnswer, EventAnswer};
use crate::queue::authority::{self, Authority, Refusal};
use crate::run::RunId;
use crate::store::Outcome;
use crate::time::Timestamp;

impl From<ParseError> for ApiError {
    fn from(err: ParseError) -> Self {
        match err {
            ParseError::UnsupportedMediaType(message) => ApiError::UnsupportedMediaType(message),
            ParseError::TooLarge(message) => ApiError::TooLarge(message),
            ParseError::Invalid(message) => ApiError::BadRequest(message),
        }
    }
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
            return Ok(events.iter().map(|event| authority::client_may_send(event).err()).collect());
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
    Ok((StatusCode::ACCEPTED, Json(EventAnswer { id, outcome: outcome.into() })))
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
        answer.count(outcome);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
