//! The read API (read scope): runs with filters and cursor pages, one run, a run's events
//! (cursor, type and level filters), its artifacts, and fleet stats.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use super::error::extract::{Path, Query};
use crate::event::payload::LogLevel;
use crate::ideation::IdeationStatus;
use crate::run::{Run, RunId, RunStatus};
use crate::store::{self, Artifact, EventFilter, Page, RunFilter, Stats, StoredEvent};
use crate::time::Timestamp;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    /// Comma-separated statuses.
    status: Option<String>,
    queue: Option<String>,
    #[serde(default)]
    limit: usize,
    cursor: Option<String>,
}

pub(super) async fn runs(
    State(state): State<AppState>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Page<Run>>, ApiError> {
    let statuses: Vec<RunStatus> = parse_list(query.status.as_deref())?;
    let filter = RunFilter { statuses, queue: query.queue, limit: query.limit, cursor: query.cursor };
    Ok(Json(state.store.list(&filter).await?))
}

pub(super) async fn run(State(state): State<AppState>, Path(id): Path<RunId>) -> Result<Json<Run>, ApiError> {
    Ok(Json(state.store.get(&id).await?.ok_or(store::Error::NotFound(id))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunIdsQuery {
    prefix: String,
}

/// Up to two run ids starting with a prefix, in id order: one means the prefix names a run,
/// two that it is ambiguous (how `scientist runs show 3f2a` finds its run).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RunIds {
    ids: Vec<RunId>,
}

pub(super) async fn run_ids(
    State(state): State<AppState>,
    Query(query): Query<RunIdsQuery>,
) -> Result<Json<RunIds>, ApiError> {
    if query.prefix.is_empty() {
        return Err(ApiError::BadRequest("prefix is empty: send the first characters of a run id".into()));
    }
    Ok(Json(RunIds { ids: state.store.resolve_prefix(&query.prefix).await? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Comma-separated event types.
    #[serde(rename = "type")]
    types: Option<String>,
    /// Only `ai.run.log` lines at or above this level.
    level: Option<String>,
    #[serde(default)]
    limit: usize,
    cursor: Option<String>,
    /// `oldest` (the default: after `cursor`, in the order stored) or `newest` (the latest
    /// first, before `cursor`).
    order: Option<String>,
}

impl EventsQuery {
    /// Whether the newest events are asked for first.
    pub(super) fn newest_first(&self) -> Result<bool, ApiError> {
        match self.order.as_deref() {
            None | Some("oldest") => Ok(false),
            Some("newest") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!("unknown order {other:?}: use oldest or newest"))),
        }
    }

    pub(super) fn filter(self) -> Result<EventFilter, ApiError> {
        let min_level = self.level.map(|level| parse_level(&level)).transpose()?;
        Ok(EventFilter {
            types: comma_list(self.types.as_deref()).map(str::to_owned).collect(),
            min_level,
            limit: self.limit,
            cursor: self.cursor,
        })
    }
}

fn parse_level(level: &str) -> Result<LogLevel, ApiError> {
    serde_json::from_value(Value::String(level.to_ascii_lowercase()))
        .map_err(|_| ApiError::BadRequest(format!("unknown level {level:?}: use debug, info, warning or error")))
}

/// An event as the API shows it: the CloudEvent as stored, with its place in the run's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = StoredEvent)]
pub(super) struct EventView {
    /// Pass as `cursor` to get the events after this one.
    pub cursor: String,
    pub received_at: Timestamp,
    #[schema(value_type = super::openapi::CloudEvent)]
    pub event: Map<String, Value>,
}

impl From<StoredEvent> for EventView {
    fn from(stored: StoredEvent) -> Self {
        EventView { cursor: stored.cursor, received_at: stored.received_at, event: stored.event.to_json() }
    }
}

pub(super) async fn events(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Page<EventView>>, ApiError> {
    let page = if query.newest_first()? {
        state.store.list_recent_events(&id, &query.filter()?).await?
    } else {
        state.store.list_events(&id, &query.filter()?).await?
    };
    Ok(Json(Page { items: page.items.into_iter().map(EventView::from).collect(), next: page.next }))
}

pub(super) async fn artifacts(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
) -> Result<Json<Vec<Artifact>>, ApiError> {
    Ok(Json(state.store.artifacts(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    /// The figures as of this RFC 3339 time (windows and ages end there) [default: now].
    at: Option<String>,
    /// How far back the cost section goes, by run creation: `24h`, `7d` [default: 7d].
    window: Option<String>,
}

/// The same document as `scientist stats --json`.
pub(super) async fn stats(
    State(state): State<AppState>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let at = match query.at {
        None => Timestamp::now(),
        Some(text) => Timestamp::parse_rfc3339(&text)
            .map_err(|err| ApiError::BadRequest(format!("at={text:?} is not an RFC 3339 time ({err})")))?,
    };
    let window = match query.window {
        None => store::stats::cost::DEFAULT_WINDOW,
        Some(text) => store::stats::cost::parse_window(&text).map_err(ApiError::BadRequest)?,
    };
    Ok(Json(state.store.stats(at, window).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdeationQuery {
    /// Comma-separated statuses: QUEUED, RUNNING, COMPLETED, FAILED.
    status: Option<String>,
    #[serde(default)]
    limit: usize,
}

/// Ideation requests, oldest first, as stored (the documents the frontend reads).
pub(super) async fn ideation(
    State(state): State<AppState>,
    Query(query): Query<IdeationQuery>,
) -> Result<Json<Vec<Map<String, Value>>>, ApiError> {
    let statuses: Vec<IdeationStatus> = parse_list(query.status.as_deref())?;
    let requests = state.store.list_ideation(&statuses, store::clamp_limit(query.limit)).await?;
    Ok(Json(requests.into_iter().map(|request| request.document).collect()))
}

/// A comma-separated list of statuses (or anything named), each parsed; the first bad one
/// is a 400 with its own message.
fn parse_list<T: std::str::FromStr<Err = String>>(text: Option<&str>) -> Result<Vec<T>, ApiError> {
    comma_list(text).map(|item| item.parse().map_err(ApiError::BadRequest)).collect()
}

fn comma_list(text: Option<&str>) -> impl Iterator<Item = &str> {
    text.unwrap_or_default().split(',').map(str::trim).filter(|item| !item.is_empty())
}
