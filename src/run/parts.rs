//! The parts of a run document: stage progress and timing, error, pod, resources, metrics,
//! the search tree, paper, validation and cancellation. Each fact that may arrive out of
//! order carries the `EventKey` of the event it came from.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Stage;
use crate::time::Timestamp;

/// Orders facts that may arrive in any order: the later `(time, event id, source)` wins.
/// Storing the key beside a value makes "keep the latest" independent of arrival order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventKey {
    pub time: Timestamp,
    pub id: String,
    pub source: String,
}

/// The stage the run is in now and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentStage {
    pub name: Stage,
    pub progress: f64,
    pub iteration: u64,
    pub max_iterations: u64,
    pub good_nodes: u64,
    pub buggy_nodes: u64,
    pub total_nodes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// Which progress event `bestMetric` and `etaSeconds` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<EventKey>,
}

impl CurrentStage {
    pub fn new(name: Stage) -> Self {
        Self {
            name,
            progress: 0.0,
            iteration: 0,
            max_iterations: 0,
            good_nodes: 0,
            buggy_nodes: 0,
            total_nodes: 0,
            best_metric: None,
            eta_seconds: None,
            latest: None,
        }
    }
}

/// Timing of one stage; `elapsed_s` is derived from the earliest start and the latest activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageTiming {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(rename = "elapsed_s", default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    #[serde(rename = "duration_s", default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<Timestamp>,
    /// How long the stage may go without progress before it counts as stalled (the
    /// pipeline file's `stall_after`, sent with its start).
    #[serde(rename = "stallAfter_s", default, skip_serializing_if = "Option::is_none")]
    pub stall_after_s: Option<f64>,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunError {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub retryable: bool,
    pub failed_at: Timestamp,
    /// The `ai.run.failed` event this came from; the earliest wins.
    pub at: EventKey,
}

/// The machine a run runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub id: String,
    /// The `ai.run.started` event this came from; the earliest wins.
    pub at: EventKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// The first device's NVML name: what its GPU time is priced by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The latest heartbeat's resource sample (GPU, CPU, memory…), kept as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSample {
    pub at: EventKey,
    pub sample: serde_json::Map<String, Value>,
}

/// The latest value of one metric series (the whole series stays in the run's events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    pub name: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    pub at: EventKey,
}

/// How far a search-tree node got; nodes only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Created,
    CodeGenerated,
    Executing,
    Completed,
}

/// Orders node details: an event of a later step wins, then the later event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DetailsFrom {
    pub state: NodeState,
    pub at: EventKey,
}

/// One node of the experiment search tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub state: NodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_buggy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default)]
    pub selected_best: bool,
    pub created_at: Timestamp,
    /// The event `isBuggy`, `metric` and `summary` came from: the furthest step, then the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_from: Option<DetailsFrom>,
}

/// Paper generation, from `ai.paper.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Paper {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_key: Option<String>,
    /// The `ai.paper.generated` event `artifactKey` came from; the latest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_by: Option<EventKey>,
}

/// Automatic review, from `ai.validation.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Value>,
    /// The events `model` and the verdict came from; the latest of each kind wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<EventKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<EventKey>,
}

/// An operator's cancel request for a run a worker holds; the worker acts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// Who canceled a run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancellation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// One ended attempt of a run (a claim and what became of it), kept in `attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the store saw it end (its clock, not the pod's).
    pub ended_at: Timestamp,
    /// `COMPLETED`, `FAILED`, `CANCELED`, or `LOST` (its worker fell silent; requeued).
    pub outcome: String,
    /// The GPU model its pod held (what its GPU time was priced by), and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// The stages it started, in order, as its trace spans show them (`otlp`): kept here
    /// because the next attempt rewrites `stageTiming`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<AttemptStage>,
}

/// One stage an attempt started, and when it completed if it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStage {
    pub name: String,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
}

/// A human decision a pipeline asked for (`review = true` on a stage, or
/// `ai.run.review_requested`), and the decision once made (`queue::review`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    /// Asked between stages: the worker keeps the claim and waits for the decision.
    #[serde(default)]
    pub holds_worker: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ReviewDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// The approver's comment, or why the run was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The `ai.run.review_requested` event this came from; a later request replaces it.
    pub at: EventKey,
}

/// What became of a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    /// `runs approve`: the run completes, or its waiting worker goes on.
    Approved,
    /// `runs reject`: the run fails with code `REJECTED`.
    Rejected,
    /// Nobody decided within `--review-timeout`: the run fails with code `REVIEW_TIMEOUT`.
    TimedOut,
}

impl ReviewDecision {
    pub const ALL: [ReviewDecision; 3] = [ReviewDecision::Approved, ReviewDecision::Rejected, ReviewDecision::TimedOut];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approved => "approved",
            ReviewDecision::Rejected => "rejected",
            ReviewDecision::TimedOut => "timed_out",
        }
    }
}
