//! Operator actions (admin scope): enqueue, reset, cancel, approve and reject, with the same
//! rules as the `scientist runs` commands (they share the store's methods).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use super::error::extract::{Json, Path};
use crate::ideation::NewIdeation;
use crate::queue::review::Decision;
use crate::run::{DEFAULT_QUEUE, MAX_RETRIES, NewRun, ReviewDecision, Run, RunId, TraceId};
use crate::time::Timestamp;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct EnqueueRequest {
    /// The idea/config the pipeline runs.
    idea: Value,
    /// A client-chosen id makes the request safe to retry (409 when it exists).
    id: Option<RunId>,
    #[serde(default)]
    priority: i64,
    #[serde(default = "default_queue")]
    #[schema(default = default_queue)]
    queue: String,
    hypothesis_id: Option<String>,
    /// Automatic retries of a retryable failure, over the server's `--retry-max`.
    retry_max: Option<u32>,
    /// The most the run may cost, in dollars, over its queue's `--queue-budget`.
    budget_usd: Option<f64>,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// 201 with the new QUEUED run.
pub(super) async fn enqueue(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Json(request): Json<EnqueueRequest>,
) -> Result<(StatusCode, axum::Json<Run>), ApiError> {
    if let Some(max) = request.retry_max.filter(|max| *max > MAX_RETRIES) {
        return Err(ApiError::BadRequest(format!(
            "retryMax {max} is more than {MAX_RETRIES}: send at most {MAX_RETRIES}"
        )));
    }
    if let Some(budget) = request.budget_usd {
        crate::run::cost::check_budget(budget, "budgetUsd").map_err(ApiError::BadRequest)?;
    }
    let new_run = NewRun {
        id: request.id.unwrap_or_else(RunId::generate),
        hypothesis_id: request.hypothesis_id,
        priority: request.priority,
        queue: request.queue,
        idea: request.idea,
        retry_max: request.retry_max,
        budget_usd: request.budget_usd,
        ..NewRun::new(Value::Null)
    };
    // A caller inside a trace (its `traceparent` header) gets a run in that trace.
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let new_run = match header("traceparent").and_then(TraceId::from_traceparent) {
        Some(trace_id) => NewRun { trace_id, trace_state: header("tracestate").map(str::to_owned), ..new_run },
        None => new_run,
    };
    let run = state.store.enqueue(new_run, Timestamp::now()).await?;
    Ok((StatusCode::CREATED, axum::Json(run)))
}

pub(super) async fn reset(State(state): State<AppState>, Path(id): Path<RunId>) -> Result<axum::Json<Run>, ApiError> {
    Ok(axum::Json(state.store.reset(&id, Timestamp::now()).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CancelBody)]
pub(super) struct CancelRequest {
    /// Who asked, for the record [default: "api"].
    #[schema(default = "api")]
    by: Option<String>,
    reason: Option<String>,
}

/// A queued run is canceled at once; a running one gets `cancelRequested`, which its
/// worker acts on.
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Run>, ApiError> {
    // The body is optional: an empty one cancels with no reason.
    let request: CancelRequest = optional_body(&body, "cancel", "{\"reason\": \"...\"}")?;
    let by = request.by.unwrap_or_else(|| DEFAULT_BY.to_owned());
    Ok(axum::Json(state.store.request_cancel(&id, &by, request.reason, Timestamp::now()).await?))
}

/// Who an action is recorded as when the request does not say.
const DEFAULT_BY: &str = "api";

/// A JSON body that may be left out (empty or blank: `T::default()`).
fn optional_body<T: Default + DeserializeOwned>(body: &[u8], what: &str, example: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("invalid {what} request: {err}; send {example} or no body")))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    /// Who decided, for the record [default: "api"].
    #[schema(default = "api")]
    by: Option<String>,
    comment: Option<String>,
}

/// 200 with the run: COMPLETED when its review followed the last stage, RUNNING again when
/// its worker waits between stages (it goes on); 409 unless the run is AWAITING_HUMAN.
pub(super) async fn approve(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Run>, ApiError> {
    let request: ApproveBody = optional_body(&body, "approve", "{\"comment\": \"...\"}")?;
    let by = request.by.unwrap_or_else(|| DEFAULT_BY.to_owned());
    let decision = Decision { verdict: ReviewDecision::Approved, by, comment: request.comment };
    Ok(axum::Json(state.store.decide_review(&id, decision, Timestamp::now()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectBody {
    /// Who decided, for the record [default: "api"].
    #[schema(default = "api")]
    by: Option<String>,
    /// Why: the run's error message.
    reason: String,
}

/// 200 with the run FAILED with code `REJECTED` (a waiting worker stops); 409 unless the run
/// is AWAITING_HUMAN.
pub(super) async fn reject(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    Json(request): Json<RejectBody>,
) -> Result<axum::Json<Run>, ApiError> {
    let by = request.by.unwrap_or_else(|| DEFAULT_BY.to_owned());
    let decision = Decision { verdict: ReviewDecision::Rejected, by, comment: Some(request.reason) };
    Ok(axum::Json(state.store.decide_review(&id, decision, Timestamp::now()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct IdeationEnqueueRequest {
    /// The hypothesis the ideas are for.
    hypothesis_id: String,
    /// A client-chosen id makes the request safe to retry (409 when it exists) [default: a new UUID].
    id: Option<String>,
    /// Further fields handed to the ideation command, e.g. `{"numIdeas": 3}`; not the fields
    /// scientist keeps (`_id`, `status`, `claimedBy`…).
    #[serde(default)]
    #[schema(value_type = Object)]
    input: Map<String, Value>,
}

/// 201 with the new QUEUED request's document.
pub(super) async fn enqueue_ideation(
    State(state): State<AppState>,
    Json(request): Json<IdeationEnqueueRequest>,
) -> Result<(StatusCode, axum::Json<Map<String, Value>>), ApiError> {
    let hypothesis_id = non_empty("hypothesisId", request.hypothesis_id)?;
    let id = match request.id {
        Some(id) => non_empty("id", id)?,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let taken = NewIdeation::kept_fields_in(&request.input);
    if !taken.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "input sets {}, which scientist keeps: leave them out (id and hypothesisId set _id and hypothesisId)",
            taken.join(", ")
        )));
    }
    let new = NewIdeation { id, hypothesis_id, input: request.input };
    let created = state.store.enqueue_ideation(new, Timestamp::now()).await?;
    Ok((StatusCode::CREATED, axum::Json(created.document)))
}

fn non_empty(field: &str, value: String) -> Result<String, ApiError> {
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(ApiError::BadRequest(format!("{field} is empty: send an id")));
    }
    Ok(value)
}
