//! The run document: what a run is, in the shape the user's web frontend reads from MongoDB.
//!
//! Field names follow the seeds (`currentStage.goodNodes`, `stageTiming.Stage_1.duration_s`,
//! `lastEventSeq`, `claimedBy`, camelCase elsewhere). This module holds data and small pure
//! helpers only; how events change a run lives in `reduce`, how runs are stored in `store`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::redact;
use crate::time::Timestamp;

/// Longest run id accepted from outside; ours are 36-character UUIDs.
const MAX_RUN_ID_LEN: usize = 128;

/// A run's id: a UUID for runs we create, any short token for runs named by an emitter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Err("run id is empty".into());
        }
        if value.len() > MAX_RUN_ID_LEN {
            return Err(format!("run id is {} characters long; the limit is {MAX_RUN_ID_LEN}", value.len()));
        }
        if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
            return Err(format!("run id {value:?} contains {bad:?}; use letters, digits and - _ . : only"));
        }
        // Redacting an id would merge runs, so one that carries a secret is refused (and not
        // repeated in the message).
        if redact::would_change(&value) {
            return Err("the run id looks like a secret (a token or a NAME:value pair); use a UUID".into());
        }
        Ok(Self(value))
    }
}

impl FromStr for RunId {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::try_from(value.to_owned())
    }
}

impl From<RunId> for String {
    fn from(value: RunId) -> Self {
        value.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run is in its life. `rank` orders the non-terminal states; terminal states are sticky.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Queued,
    Scheduled,
    Running,
    AwaitingHuman,
    Completed,
    Failed,
    Canceled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Scheduled,
        RunStatus::Running,
        RunStatus::AwaitingHuman,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled)
    }

    /// Position in `QUEUED → SCHEDULED → RUNNING → AWAITING_HUMAN → terminal`; a run only moves up.
    pub fn rank(self) -> u8 {
        match self {
            RunStatus::Queued => 0,
            RunStatus::Scheduled => 1,
            RunStatus::Running => 2,
            RunStatus::AwaitingHuman => 3,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "QUEUED",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Running => "RUNNING",
            RunStatus::AwaitingHuman => "AWAITING_HUMAN",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Canceled => "CANCELED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let wanted = value.trim().to_ascii_uppercase().replace('-', "_");
        RunStatus::ALL.into_iter().find(|status| status.as_str() == wanted).ok_or_else(|| {
            let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {value:?}; expected one of {}", names.join(", "))
        })
    }
}

/// A pipeline stage, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Stage {
    Stage1,
    Stage2,
    Stage3,
    Stage4,
    Plots,
    Paper,
    Validation,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::Stage1, Stage::Stage2, Stage::Stage3, Stage::Stage4, Stage::Plots, Stage::Paper, Stage::Validation];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stage1 => "Stage_1",
            Stage::Stage2 => "Stage_2",
            Stage::Stage3 => "Stage_3",
            Stage::Stage4 => "Stage_4",
            Stage::Plots => "plots",
            Stage::Paper => "paper",
            Stage::Validation => "validation",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Stage::Stage1 => "initial implementation",
            Stage::Stage2 => "baseline tuning",
            Stage::Stage3 => "creative research",
            Stage::Stage4 => "ablation studies",
            Stage::Plots => "plots",
            Stage::Paper => "paper",
            Stage::Validation => "auto-validation",
        }
    }
}

impl TryFrom<String> for Stage {
    type Error = String;

    /// Accepts the canonical names and the long forms pipelines print, such as
    /// `Stage_2_baseline_tuning` or `auto-validation`.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let lower = value.trim().to_ascii_lowercase().replace('-', "_");
        let found = Stage::ALL.into_iter().find(|stage| {
            let name = stage.as_str().to_ascii_lowercase();
            lower == name || lower.starts_with(&format!("{name}_"))
        });
        match (found, lower.as_str()) {
            (Some(stage), _) => Ok(stage),
            (None, "auto_validation") => Ok(Stage::Validation),
            (None, _) => {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
                Err(format!("unknown stage {value:?}; expected one of {}", names.join(", ")))
            }
        }
    }
}

impl From<Stage> for String {
    fn from(value: Stage) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders facts that may arrive in any order: the later `(time, event id, source)` wins.
/// Storing the key beside a value makes "keep the latest" independent of arrival order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventKey {
    pub time: Timestamp,
    pub id: String,
    pub source: String,
}

/// The stage the run is in now and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub id: String,
    /// The `ai.run.started` event this came from; the earliest wins.
    pub at: EventKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The latest heartbeat's resource sample (GPU, CPU, memory…), kept as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSample {
    pub at: EventKey,
    pub sample: serde_json::Map<String, Value>,
}

/// The latest value of one metric series (the whole series stays in the run's events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Created,
    CodeGenerated,
    Executing,
    Completed,
}

/// Orders node details: an event of a later step wins, then the later event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DetailsFrom {
    pub state: NodeState,
    pub at: EventKey,
}

/// One node of the experiment search tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// Who canceled a run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancellation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// One experiment run. Serialized as-is into MongoDB's `runs` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[serde(rename = "_id")]
    pub id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypothesis_id: Option<String>,
    pub status: RunStatus,
    /// Defaults keep runs created directly by the web frontend (no priority, no queue) readable.
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The idea/config payload the pipeline runs.
    #[serde(default)]
    pub idea: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<CurrentStage>,
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
    #[serde(rename = "duration_s", default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub last_event_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Fencing token: incremented by every claim; events stamped with an older one are refused.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub retry_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<CancelRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled: Option<Cancellation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSample>,
    #[serde(default)]
    pub metrics: Vec<MetricPoint>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<Paper>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Document revision for optimistic concurrency; bumped by every write.
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
}

pub const DEFAULT_QUEUE: &str = "default";

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

impl NewRun {
    pub fn new(idea: Value) -> Self {
        Self { id: RunId::generate(), hypothesis_id: None, priority: 0, queue: DEFAULT_QUEUE.into(), idea }
    }
}

impl Run {
    /// A freshly queued run. Every run is born here (an operator's, or an `ai.run.enqueued`
    /// event's), so this is where what the creator sent loses its secrets.
    pub fn queued(new_run: NewRun, now: Timestamp) -> Self {
        let mut idea = new_run.idea;
        redact::redact_value(&mut idea);
        Run {
            id: new_run.id,
            hypothesis_id: new_run.hypothesis_id.map(redact::redact_string),
            status: RunStatus::Queued,
            priority: new_run.priority,
            queue: redact::redact_string(new_run.queue),
            idea,
            current_stage: None,
            stage_timing: Default::default(),
            error: None,
            error_type: None,
            error_message: None,
            failed_at: None,
            pod: None,
            created_at: now,
            updated_at: now,
            claimed_at: None,
            started_at: None,
            completed_at: None,
            heartbeat_at: None,
            heard_at: None,
            silent_since: None,
            duration_s: None,
            last_event_seq: 0,
            claimed_by: None,
            attempt: 0,
            retry_count: 0,
            cancel_requested: None,
            canceled: None,
            resources: None,
            metrics: Vec::new(),
            nodes: Vec::new(),
            paper: None,
            validation: None,
            rev: 0,
        }
    }

    /// Marks the run claimed by `worker`: the one place a claim changes a run, for both stores.
    pub fn claim(&mut self, worker: &str, now: Timestamp) {
        self.status = RunStatus::Scheduled;
        self.claimed_by = Some(worker.to_owned());
        self.claimed_at = Some(now);
        self.attempt += 1;
        self.updated_at = now;
        self.heard(now);
    }

    /// The worker holding the run was heard from at `now` (the store's clock).
    pub fn heard(&mut self, now: Timestamp) {
        self.heard_at = Some(self.heard_at.map_or(now, |heard_at| heard_at.max(now)));
        self.silent_since = None;
    }

    /// Puts the run back in the queue for a fresh attempt (an operator's reset of a FAILED or
    /// CANCELED run, or the requeue of a lost one); its old attempt is fenced out.
    /// Progress, timing and nodes of the old attempt are cleared: the new attempt starts over.
    pub fn reset(&mut self, now: Timestamp) {
        let kept = Run::queued(
            NewRun {
                id: self.id.clone(),
                hypothesis_id: self.hypothesis_id.take(),
                priority: self.priority,
                queue: std::mem::take(&mut self.queue),
                idea: std::mem::take(&mut self.idea),
            },
            self.created_at,
        );
        let (attempt, retry_count, rev, last_event_seq) =
            (self.attempt, self.retry_count + 1, self.rev, self.last_event_seq);
        *self = Run { attempt, retry_count, rev, last_event_seq, updated_at: now, ..kept };
    }
}

/// Facts derived from a run document, shared by both stores (which index them) and the CLI.
impl Run {
    /// When a worker last showed signs of life for this run: when the store last heard from
    /// it, else (runs claimed before `heardAt` existed) its latest heartbeat, start or claim.
    pub fn last_seen_at(&self) -> Option<Timestamp> {
        self.heard_at.or_else(|| [self.heartbeat_at, self.started_at, self.claimed_at].into_iter().flatten().max())
    }

    /// When the run reached its terminal state (completed, failed or canceled).
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.completed_at.or(self.failed_at).or(self.canceled.as_ref().map(|canceled| canceled.at))
    }

    /// The stretch during which the run held a GPU: from its start to its end, or to its
    /// latest heartbeat while it has not ended. `None` when its pod reported no GPU.
    pub fn gpu_interval(&self) -> Option<(Timestamp, Timestamp)> {
        self.pod.as_ref()?.gpu.as_ref()?;
        let started_at = self.started_at?;
        let until = self.finished_at().or(self.heartbeat_at).unwrap_or(started_at);
        Some((started_at, until.max(started_at)))
    }

    /// How long the run has taken: its reported `duration_s`, else from start to end (or to
    /// `now` while it runs). `None` before it starts.
    pub fn elapsed_s(&self, now: Timestamp) -> Option<f64> {
        if let Some(duration_s) = self.duration_s {
            return Some(duration_s);
        }
        let started_at = self.started_at?;
        let until = self.finished_at().unwrap_or(now);
        Some(until.seconds_since(started_at).max(0.0))
    }

    /// How long each completed stage took: `duration_s` as reported, else its elapsed time.
    pub fn completed_stage_durations(&self) -> impl Iterator<Item = (&str, f64)> {
        self.stage_timing.iter().filter_map(|(name, timing)| {
            timing.completed_at?;
            Some((name.as_str(), timing.duration_s.or(timing.elapsed_s)?))
        })
    }
}
