//! The run document: what a run is, in the shape the user's web frontend reads from MongoDB.
//!
//! Field names follow the seeds (`currentStage.goodNodes`, `stageTiming.Stage_1.duration_s`,
//! `lastEventSeq`, `claimedBy`, camelCase elsewhere). This module holds data and small pure
//! helpers only; how events change a run lives in `reduce`, how runs are stored in `store`.
//!
//! `id` (`RunId`), `status` (`RunStatus`, `Stage`), `parts` (the document's nested parts),
//! `transitions` (creation, claim, reset, and facts derived from a run); the `Run` document
//! itself is here.

pub mod cost;
mod eta;
mod id;
mod parts;
pub mod prices;
mod status;
mod trace;
mod transitions;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Timestamp;

pub use cost::Cost;
pub use eta::{Eta, HISTORY_RUNS, History, nearest_rank};
pub use id::RunId;
pub use parts::{
    Attempt, AttemptStage, CancelRequest, Cancellation, CurrentStage, DetailsFrom, EventKey, MetricPoint, Node,
    NodeState, Paper, Pod, ResourceSample, Review, ReviewDecision, RunError, StageTiming, Validation,
};
pub use status::{RunStatus, Stage};
pub use trace::{InvalidTraceId, SpanId, TraceId, traceparent};

/// One experiment run. Serialized as-is into MongoDB's `runs` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[serde(rename = "_id")]
    pub id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypothesis_id: Option<String>,
    /// The W3C trace the run's spans and events belong to (`run::trace`): set at enqueue,
    /// or at the claim of a run stored before trace ids existed.
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// The W3C `tracestate` its creator sent with its `traceparent`, passed on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_state: Option<String>,
    pub status: RunStatus,
    /// Defaults keep runs created directly by the web frontend (no priority, no queue) readable.
    #[schema(required = true)]
    #[serde(default)]
    pub priority: i64,
    #[schema(required = true)]
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The idea/config payload the pipeline runs.
    #[schema(required = true)]
    #[serde(default)]
    pub idea: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<CurrentStage>,
    #[schema(required = true)]
    #[serde(default)]
    pub stage_timing: std::collections::BTreeMap<String, StageTiming>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Flat copies of `error` for the seeds' frontend (`errorType`, `errorMessage`, `failedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<Timestamp>,
    /// When the store last heard from the worker holding the run, by the store's clock (not
    /// the pod's): set by the claim and by every admitted event of the live attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_at: Option<Timestamp>,
    /// Set while the worker holding the run has been silent past the warning point of its
    /// lease (`queue::lease`); cleared when it is heard again. The status is unchanged:
    /// unreachable is not dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_since: Option<Timestamp>,
    /// When a sweep found the run's worker silent for the whole lease and decided to fail the
    /// run (`queue::lease`). The run stays held until the sweep's `ai.run.failed` record,
    /// written next, fails it in the same write that stores the record; a held run with
    /// `lostAt` is one whose sweeper stopped in between, and the next sweep writes the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_at: Option<Timestamp>,
    /// When the store last saw the run make progress (a stage, progress, node, metric or
    /// artifact event, or a log line), by the store's clock: what `stalledSince` is judged by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<Timestamp>,
    /// Set while the run's worker is heard but the run has made no progress for the stall
    /// time (`queue::stall`); cleared by the next sign of progress. The status is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<Timestamp>,
    #[serde(rename = "duration_s", default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[schema(required = true)]
    #[serde(default)]
    pub last_event_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Fencing token: incremented by every claim; events stamped with an older one are refused.
    #[schema(required = true)]
    #[serde(default)]
    pub attempt: u32,
    #[schema(required = true)]
    #[serde(default)]
    pub retry_count: u32,
    /// This run's own limit on automatic retries, over the store's (`runs create --retry-max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max: Option<u32>,
    /// The most this run may cost, in dollars (`runs create --budget-usd`), over its queue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// What the run has cost so far, all attempts together (`run::cost`).
    #[schema(required = true)]
    #[serde(default)]
    pub cost: Cost,
    /// A run waiting out a retry's backoff: no worker claims it before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Why a retryable failure was not retried (attempts used up, thrashing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_stopped: Option<String>,
    /// Every ended attempt, oldest first: pod, claim, start and end, outcome, error.
    #[schema(required = true)]
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// A human decision asked for by the pipeline (AWAITING_HUMAN), and what was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Alerts this run has raised (`alert`), each until a webhook acknowledged it.
    #[schema(required = true)]
    #[serde(default)]
    pub alerts: Vec<crate::alert::Mark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<CancelRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled: Option<Cancellation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSample>,
    #[schema(required = true)]
    #[serde(default)]
    pub metrics: Vec<MetricPoint>,
    #[schema(required = true)]
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<Paper>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Document revision for optimistic concurrency; bumped by every write.
    #[schema(required = true)]
    #[serde(default)]
    pub rev: u64,
}

/// What an operator or an `ai.run.enqueued` event asks for when creating a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    pub hypothesis_id: Option<String>,
    pub priority: i64,
    pub queue: String,
    pub idea: Value,
    /// Its own limit on automatic retries, over the store's.
    pub retry_max: Option<u32>,
    /// The most it may cost, in dollars, over its queue's budget.
    pub budget_usd: Option<f64>,
    /// Its trace: the creator's (from its `traceparent`), else a fresh one.
    pub trace_id: TraceId,
    pub trace_state: Option<String>,
}

pub const DEFAULT_QUEUE: &str = "default";

/// The most automatic retries a run may have, whoever asks for more.
pub const MAX_RETRIES: u32 = 100;

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

impl NewRun {
    pub fn new(idea: Value) -> Self {
        Self {
            id: RunId::generate(),
            hypothesis_id: None,
            priority: 0,
            queue: DEFAULT_QUEUE.into(),
            idea,
            retry_max: None,
            budget_usd: None,
            trace_id: TraceId::generate(),
            trace_state: None,
        }
    }
}
