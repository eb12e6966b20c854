//! Queue endpoints for pods that hold no database credentials (ingest scope):
//! `POST /api/queue/claim` takes the next run (or ideation request), `GET
//! /api/queue/runs/{id}` tells the worker whether its claim is still live and whether an
//! operator asked to cancel, `POST /api/queue/ideation/{id}/heartbeat` keeps an ideation
//! claim from being lost and `POST /api/queue/ideation/{id}/finish` ends it. The bodies are
//! `crate::protocol::claim`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::error::extract::{Json, Path, Query};
use crate::protocol::{ClaimCheck, ClaimRequest, ClaimState, IdeationFinish, IdeationHeard, WorkerMode};
use crate::run::RunId;
use crate::time::Timestamp;

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

pub(super) async fn check(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    Query(ClaimCheck { attempt }): Query<ClaimCheck>,
) -> Result<axum::Json<ClaimState>, ApiError> {
    let run = state.store.get(&id).await?.ok_or_else(|| crate::store::Error::NotFound(id.clone()))?;
    Ok(axum::Json(ClaimState::of(run, attempt)))
}
