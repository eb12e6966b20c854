//! Typed `data` for every event type of the table in `types` (documented in
//! `docs/events.md`).
//!
//! Fields are optional where an emitter may leave them out and typed where they are given,
//! so a heartbeat with `"gpu_util": "high"` is rejected with the field named. Fields a struct
//! does not type are allowed (emitters add their own) and kept in its `extra`; unknown `ai.*`
//! types parse as [`Payload::Unknown`]. Every struct serializes back to the `data` it parses
//! from, so emitters build `data` from these structs ([`super::EventData`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::failure::FailureCode;
use crate::run::Stage;

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Enqueued(Enqueued),
    Started(Started),
    Heartbeat(Heartbeat),
    StageStarted(StageStarted),
    StageProgress(StageProgress),
    StageMetric(StageMetric),
    StageCompleted(StageCompleted),
    Node(NodeStep, NodeData),
    Log(Log),
    ArtifactDetected(ArtifactDetected),
    ArtifactRegistered(ArtifactRegistered),
    ArtifactFailed(ArtifactFailed),
    IdeationGenerated(IdeationGenerated),
    PaperStarted(PaperStarted),
    PaperGenerated(PaperGenerated),
    ValidationStarted(ValidationStarted),
    ValidationCompleted(ValidationCompleted),
    Completed(Completed),
    Failed(Failed),
    Canceled(Canceled),
    ReviewRequested(ReviewRequested),
    LlmUsage(LlmUsage),
    /// An `ai.*` type this version does not know: stored, changes no state.
    Unknown,
}

/// The `ai.node.*` event types, in the order a node goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStep {
    Created,
    CodeGenerated,
    Executing,
    Completed,
    SelectedBest,
}

impl Payload {
    /// Whether the event moves its run to another status after its creation (started,
    /// completed, failed, canceled, review requested).
    pub fn changes_status(&self) -> bool {
        matches!(
            self,
            Payload::Started(_)
                | Payload::Completed(_)
                | Payload::Failed(_)
                | Payload::Canceled(_)
                | Payload::ReviewRequested(_)
        )
    }

    /// The rules serde cannot say, for [`Payload::parse`].
    pub(super) fn check(&self) -> Result<(), String> {
        match self {
            Payload::StageProgress(progress) => progress.check(),
            Payload::StageStarted(started) => started.check(),
            Payload::LlmUsage(usage) => usage.check(),
            Payload::Enqueued(enqueued) => {
                enqueued.budget_usd.map_or(Ok(()), |budget| crate::run::cost::check_budget(budget, "data.budget_usd"))
            }
            _ => Ok(()),
        }
    }
}

pub(super) fn typed<T: DeserializeOwned>(data: &Map<String, Value>) -> Result<T, String> {
    // Borrowing deserialisation from a `&Map` avoids cloning the typed fields.
    let deserializer = || serde::de::value::MapDeserializer::new(data.iter().map(|(k, v)| (k.as_str(), v)));
    // Tracking the path costs on every field: only a refused payload, whose error names the
    // field, is read again with it.
    let plain: Result<T, serde_json::Error> = T::deserialize(deserializer());
    if let Ok(payload) = plain {
        return Ok(payload);
    }
    serde_path_to_error::deserialize(deserializer()).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." { inner.to_string() } else { format!("data.{path}: {inner}") }
    })
}

/// Accepts a number or a string for values that pipelines print either way (`best_metric`).
fn scalar_as_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(other) => Some(other.to_string()),
    })
}

/// A payload struct: the typed fields as written, plus `extra` (the fields it does not
/// type, kept as sent) and its field list for `EventType::data_fields`. Optional fields
/// are left out of the serialized form when unset.
macro_rules! data {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
            /// The fields not typed above, as sent (`run_id`, an emitter's own).
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }

        impl super::types::DataFields for $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

data! {
    #[derive(Default)]
    pub struct Enqueued {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priority: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub queue: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hypothesis_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idea: Option<Value>,
        /// The run's own limit on automatic retries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry_max: Option<u32>,
        /// The most the run may cost, in dollars (over its queue's `--queue-budget`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub budget_usd: Option<f64>,
    }
}

data! {
    #[derive(Default)]
    pub struct Started {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pod_id: Option<String>,
        /// What the pod holds, e.g. `2x NVIDIA H100 80GB HBM3` (for people).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gpu: Option<String>,
        /// The first device's name as NVML reports it: what GPU prices are matched against.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gpu_model: Option<String>,
        /// How many GPUs the pod holds (absent: 1 when `gpu` is set).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gpu_count: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub image: Option<String>,
    }
}

data! {
    /// A resource sample; named fields are type-checked, the rest is kept as sent.
    #[derive(Default)]
    pub struct Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gpu_util: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gpu_mem: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cpu: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rss: Option<f64>,
    }
}

data! {
    pub struct StageStarted {
        pub stage: Stage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub desc: Option<String>,
        /// Seconds the stage may go without progress before it counts as stalled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stall_after_s: Option<f64>,
    }
}

impl StageStarted {
    /// The longest stall time a stage may ask for.
    pub const MAX_STALL_AFTER_S: f64 = 366.0 * 24.0 * 3600.0;

    fn check(&self) -> Result<(), String> {
        match self.stall_after_s {
            Some(seconds) if !(seconds > 0.0 && seconds <= Self::MAX_STALL_AFTER_S) => Err(format!(
                "data.stall_after_s: {seconds} is not a stall time; send seconds above 0 and at most a year, such as 7200"
            )),
            _ => Ok(()),
        }
    }
}

data! {
    pub struct StageProgress {
        pub stage: Stage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub iteration: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_iterations: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub progress: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub good_nodes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub buggy_nodes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub total_nodes: Option<u64>,
        #[serde(default, deserialize_with = "scalar_as_string", skip_serializing_if = "Option::is_none")]
        pub best_metric: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub eta_s: Option<f64>,
    }
}

impl StageProgress {
    fn check(&self) -> Result<(), String> {
        match self.progress {
            Some(progress) if !(0.0..=1.0).contains(&progress) => {
                Err(format!("data.progress: {progress} is outside 0..1; send a fraction such as 0.25"))
            }
            _ => Ok(()),
        }
    }
}

data! {
    pub struct StageMetric {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stage: Option<Stage>,
        pub name: String,
        pub value: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub step: Option<u64>,
    }
}

data! {
    pub struct StageCompleted {
        pub stage: Stage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub duration_s: Option<f64>,
    }
}

data! {
    pub struct NodeData {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stage: Option<Stage>,
        pub node_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub parent_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub is_buggy: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub metric: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub summary: Option<String>,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[serde(alias = "trace")]
    Debug,
    Info,
    #[serde(alias = "warn")]
    Warning,
    #[serde(alias = "critical", alias = "fatal")]
    Error,
}

impl LogLevel {
    /// Its name in events and in the API (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

data! {
    pub struct Log {
        pub message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub level: Option<LogLevel>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<String>,
    }
}

data! {
    pub struct ArtifactDetected {
        pub path: String,
        /// The seeds' monitor sent this as `type`.
        #[serde(default, alias = "type", skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub size_bytes: Option<u64>,
    }
}

data! {
    pub struct ArtifactRegistered {
        pub key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub content_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
    }
}

data! {
    pub struct ArtifactFailed {
        pub path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }
}

data! {
    pub struct IdeationGenerated {
        pub hypothesis_id: String,
        pub ideas: Vec<Value>,
    }
}

data! {
    #[derive(Default)]
    pub struct PaperStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub artifact_key: Option<String>,
    }
}

data! {
    pub struct PaperGenerated {
        pub artifact_key: String,
    }
}

data! {
    #[derive(Default)]
    pub struct ValidationStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<String>,
    }
}

data! {
    #[derive(Default)]
    pub struct ValidationCompleted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub verdict: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scores: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub review: Option<Value>,
    }
}

data! {
    #[derive(Default)]
    pub struct Completed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub duration_s: Option<f64>,
    }
}

data! {
    #[derive(Default)]
    pub struct Failed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stage: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub traceback: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retryable: Option<bool>,
    }
}

impl Failed {
    /// A failure scientist itself reports: the code's string and its retryable rule.
    pub fn of(code: FailureCode, message: String) -> Failed {
        Failed {
            code: Some(code.to_string()),
            message: Some(message),
            retryable: Some(code.retryable()),
            ..Failed::default()
        }
    }
}

data! {
    #[derive(Default)]
    pub struct Canceled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }
}

data! {
    /// A pipeline asks a person to decide before the run goes on or ends (AWAITING_HUMAN).
    pub struct ReviewRequested {
        pub reason: String,
        /// What the reviewer may choose from, as the pipeline describes it (kept as sent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub options: Option<Value>,
        /// The stage that ended (a worker fills it in for its child's requests).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stage: Option<Stage>,
        /// Asked between stages: the worker keeps the claim and waits for the decision. The
        /// worker sets it (for its child's requests too); an approval then lets it go on
        /// instead of completing the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub holds_worker: Option<bool>,
    }
}

data! {
    /// One or more LLM calls of the pipeline's agent: what they used and, if the agent knows,
    /// what they cost (over the price table).
    pub struct LlmUsage {
        pub model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub input_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub output_tokens: Option<u64>,
        /// Input tokens served from the provider's prompt cache (priced apart).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cached_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stage: Option<Stage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node_id: Option<String>,
    }
}

impl LlmUsage {
    /// The most one event may say it cost: a typo (a cost in cents, tokens as dollars) must
    /// not blow every budget at once.
    pub const MAX_COST_USD: f64 = 1e6;

    fn check(&self) -> Result<(), String> {
        if self.model.is_empty() {
            return Err("data.model: empty; send the model's name, such as \"gpt-5-mini\"".into());
        }
        match self.cost_usd {
            Some(cost) if !(0.0..=Self::MAX_COST_USD).contains(&cost) => {
                Err(format!("data.cost_usd: {cost} is not a cost; send dollars from 0 to a million, such as 0.0042"))
            }
            _ => Ok(()),
        }
    }
}
