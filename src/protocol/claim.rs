//! The queue endpoints' bodies, for pods that hold no database credentials: a claim, the
//! state of a claimed run, and an ideation claim's heartbeat and end.

use serde::{Deserialize, Serialize};

use crate::queue::fence;
use crate::run::{CancelRequest, DEFAULT_QUEUE, Review, Run, RunId, RunStatus};

/// What a claim asks for (`scientist work --mode`, one mode a claim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    #[default]
    Experiment,
    Ideation,
    /// Refused in a claim: a hybrid worker claims with `ideation` first, then `experiment`.
    Hybrid,
}

/// `POST /api/queue/claim`: 200 with the claimed run (its `attempt` is the fencing token to
/// stamp on every event) or ideation request, 204 when nothing waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The worker's id (its pod id); recorded as the run's `claimedBy`.
    pub worker: String,
    #[serde(default = "default_queue")]
    #[schema(default = default_queue)]
    pub queue: String,
    #[serde(default)]
    pub mode: WorkerMode,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// The query of `GET /api/queue/runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimCheck {
    pub attempt: u32,
}

/// Where a claimed run stands, as its worker needs to know (`GET /api/queue/runs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimState {
    pub id: RunId,
    pub status: RunStatus,
    /// The run's live claim.
    pub attempt: u32,
    /// Whether the asked attempt is still the run's live claim; when false the worker must
    /// stop: its events are refused (the run was reset, reclaimed or finished).
    pub live: bool,
    #[schema(required = true)]
    #[serde(default)]
    pub cancel_requested: Option<CancelRequest>,
    /// The run's review, which a worker waiting between stages goes on or stops by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
}

impl ClaimState {
    /// Where `run` stands for the worker holding (or having held) claim `attempt`.
    pub fn of(run: Run, attempt: u32) -> ClaimState {
        let live = fence::is_live(&run, attempt);
        ClaimState {
            id: run.id,
            status: run.status,
            attempt: run.attempt,
            live,
            cancel_requested: run.cancel_requested,
            review: run.review,
        }
    }
}

/// `POST /api/queue/ideation/{id}/finish`: 200 with the ended request, 409 when that claim
/// is not live.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdeationFinish {
    /// The claim's attempt (the fencing token the claim answered).
    pub attempt: u32,
    /// Why the ideation failed; absent when it completed (its ideas were sent as
    /// `ai.ideation.generated` first).
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /api/queue/ideation/{id}/heartbeat`: 200 while the claim is live, else 409 (the
/// worker must stop).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdeationHeard {
    /// The claim's attempt (the fencing token the claim answered).
    pub attempt: u32,
}
