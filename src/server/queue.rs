//! Queue endpoints for pods that hold no database credentials (ingest scope):
//! `POST /api/queue/claim` takes the next run (or ideation request), `GET
//! /api/queue/runs/{id}` tells the worker whether its claim is still live and whether an
//! operator asked to cancel, `POST /api/queue/ideation/{id}/heartbeat` keeps an ideation
//! claim from being lost and `POST /api/queue/ideation/{id}/finish` ends it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::error::extract::{Json, Path, Query};
use crate::queue::fence;
use crate::run::{CancelRequest, DEFAULT_QUEUE, RunId, RunStatus};
use crate::time::Timestamp;

/// What a worker serves (`scientist work --mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    #[default]
    Experiment,
    Ideation,
    Hybrid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimRequest {
    /// The worker's id (its pod id); recorded as the run's `claimedBy`.
    worker: String,
    #[serde(default = "default_queue")]
    queue: String,
    #[serde(default)]
    mode: WorkerMode,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// 200 with the claimed run (its `attempt` is the fencing token to stamp on every event),
/// or 204 when the queue is empty.
pub(super) async fn claim(
    State(state): State<AppState>,
    Json(request): Json<ClaimRequest>,
) -> Result<Response, ApiError> {
    if request.worker.trim().is_empty() {
        return Err(ApiError::BadRequest("`worker` is empty: send the worker's pod id".into()));
    }
    let now = Timestamp::now();
    let claimed = match request.mode {
        WorkerMode::Experiment => state.store.claim(&request.worker, &request.queue, now).await?.map(axum::Json),
        WorkerMode::Ideation => {
            let claimed = state.store.claim_ideation(&request.worker, now).await?;
            return Ok(match claimed {
                // The whole document: the creator's fields are the ideation command's input.
                Some(ideation) => (StatusCode::OK, axum::Json(ideation.document)).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            });
        }
        WorkerMode::Hybrid => {
            return Err(ApiError::BadRequest(
                "a hybrid worker claims with mode \"ideation\" first, then \"experiment\": send one mode a claim"
                    .into(),
            ));
        }
    };
    Ok(match claimed {
        Some(run) => (StatusCode::OK, run).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdeationFinish {
    /// The claim's attempt (the fencing token the claim answered).
    attempt: u32,
    /// Why the ideation failed; absent when it completed (its ideas were sent as
    /// `ai.ideation.generated` first).
    #[serde(default)]
    error: Option<String>,
}

/// 200 with the ended request, or 409 when that claim is not live (ended already, or the
/// request was claimed again).
pub(super) async fn finish_ideation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(finish): Json<IdeationFinish>,
) -> Result<Response, ApiError> {
    let ended = state.store.finish_ideation(&id, finish.attempt, finish.error, Timestamp::now()).await?;
    match ended {
        Some(request) => Ok((StatusCode::OK, axum::Json(request.document)).into_response()),
        None => Err(not_held(&id, finish.attempt)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdeationHeard {
    /// The claim's attempt (the fencing token the claim answered).
    attempt: u32,
}

/// 200 with the request, its worker heard from now; or 409 when that claim is not live (the
/// request ended, was lost, or was claimed again): the worker must stop.
pub(super) async fn hear_ideation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(heard): Json<IdeationHeard>,
) -> Result<Response, ApiError> {
    match state.store.hear_ideation(&id, heard.attempt, Timestamp::now()).await? {
        Some(request) => Ok((StatusCode::OK, axum::Json(request.document)).into_response()),
        None => Err(not_held(&id, heard.attempt)),
    }
}

fn not_held(id: &str, attempt: u32) -> ApiError {
    ApiError::Conflict(format!(
        "ideation request {id} is not held by claim {attempt}: it ended already, was lost, was claimed again, or does not exist"
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct ClaimCheck {
    attempt: u32,
}

/// What a worker needs to know about the run it holds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClaimState {
    id: RunId,
    status: RunStatus,
    attempt: u32,
    /// Whether the asked attempt is still the run's live claim; when false the worker must
    /// stop: its events are refused (the run was reset, reclaimed or finished).
    live: bool,
    cancel_requested: Option<CancelRequest>,
}

pub(super) async fn check(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    Query(ClaimCheck { attempt }): Query<ClaimCheck>,
) -> Result<axum::Json<ClaimState>, ApiError> {
    let run = state.store.get(&id).await?.ok_or_else(|| crate::store::Error::NotFound(id.clone()))?;
    let live = fence::is_live(&run, attempt);
    Ok(axum::Json(ClaimState {
        id: run.id,
        status: run.status,
        attempt: run.attempt,
        live,
        cancel_requested: run.cancel_requested,
    }))
}
