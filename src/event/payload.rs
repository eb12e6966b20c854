//! Typed `data` for every event type of SPEC.md's table.
//!
//! Fields are optional where an emitter may leave them out and typed where they are given,
//! so a heartbeat with `"gpu_util": "high"` is rejected with the field named. Unknown fields
//! are allowed (emitters add their own); unknown `ai.*` types parse as [`Payload::Unknown`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

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

/// Every known event type, for `--help` texts and the OpenAPI document.
pub const KNOWN_TYPES: &[&str] = &[
    "ai.run.enqueued",
    "ai.run.started",
    "ai.run.heartbeat",
    "ai.run.stage_started",
    "ai.run.stage_progress",
    "ai.run.stage_metric",
    "ai.run.stage_completed",
    "ai.node.created",
    "ai.node.code_generated",
    "ai.node.executing",
    "ai.node.completed",
    "ai.node.selected_best",
    "ai.run.log",
    "ai.artifact.detected",
    "ai.artifact.registered",
    "ai.artifact.failed",
    "ai.ideation.generated",
    "ai.paper.started",
    "ai.paper.generated",
    "ai.validation.auto_started",
    "ai.validation.auto_completed",
    "ai.run.completed",
    "ai.run.failed",
    "ai.run.canceled",
];

impl Payload {
    /// Whether the event moves its run to another status after its creation (started,
    /// completed, failed, canceled).
    pub fn changes_status(&self) -> bool {
        matches!(self, Payload::Started(_) | Payload::Completed(_) | Payload::Failed(_) | Payload::Canceled(_))
    }

    /// Parses `data` for `event_type`; the error names the offending field.
    pub fn parse(event_type: &str, data: &Map<String, Value>) -> Result<Payload, String> {
        Ok(match event_type {
            "ai.run.enqueued" => Payload::Enqueued(typed(data)?),
            "ai.run.started" => Payload::Started(typed(data)?),
            "ai.run.heartbeat" => Payload::Heartbeat(typed(data)?),
            "ai.run.stage_started" => Payload::StageStarted(typed(data)?),
            "ai.run.stage_progress" => Payload::StageProgress(typed::<StageProgress>(data)?.checked()?),
            "ai.run.stage_metric" => Payload::StageMetric(typed(data)?),
            "ai.run.stage_completed" => Payload::StageCompleted(typed(data)?),
            "ai.node.created" => Payload::Node(NodeStep::Created, typed(data)?),
            "ai.node.code_generated" => Payload::Node(NodeStep::CodeGenerated, typed(data)?),
            "ai.node.executing" => Payload::Node(NodeStep::Executing, typed(data)?),
            "ai.node.completed" => Payload::Node(NodeStep::Completed, typed(data)?),
            "ai.node.selected_best" => Payload::Node(NodeStep::SelectedBest, typed(data)?),
            "ai.run.log" => Payload::Log(typed(data)?),
            "ai.artifact.detected" => Payload::ArtifactDetected(typed(data)?),
            "ai.artifact.registered" => Payload::ArtifactRegistered(typed(data)?),
            "ai.artifact.failed" => Payload::ArtifactFailed(typed(data)?),
            "ai.ideation.generated" => Payload::IdeationGenerated(typed(data)?),
            "ai.paper.started" => Payload::PaperStarted(typed(data)?),
            "ai.paper.generated" => Payload::PaperGenerated(typed(data)?),
            "ai.validation.auto_started" => Payload::ValidationStarted(typed(data)?),
            "ai.validation.auto_completed" => Payload::ValidationCompleted(typed(data)?),
            "ai.run.completed" => Payload::Completed(typed(data)?),
            "ai.run.failed" => Payload::Failed(typed(data)?),
            "ai.run.canceled" => Payload::Canceled(typed(data)?),
            _ => Payload::Unknown,
        })
    }
}

fn typed<T: DeserializeOwned>(data: &Map<String, Value>) -> Result<T, String> {
    // Borrowing deserialisation from a `&Map` avoids cloning the whole payload.
    let deserializer = serde::de::value::MapDeserializer::new(data.iter().map(|(k, v)| (k.as_str(), v)));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Enqueued {
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub hypothesis_id: Option<String>,
    #[serde(default)]
    pub idea: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Started {
    #[serde(default)]
    pub pod_id: Option<String>,
    #[serde(default)]
    pub gpu: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
}

/// A resource sample; named fields are type-checked, the rest is kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub gpu_util: Option<f64>,
    #[serde(default)]
    pub gpu_mem: Option<f64>,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub rss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StageStarted {
    pub stage: Stage,
    #[serde(default)]
    pub desc: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StageProgress {
    pub stage: Stage,
    #[serde(default)]
    pub iteration: Option<u64>,
    #[serde(default)]
    pub max_iterations: Option<u64>,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub good_nodes: Option<u64>,
    #[serde(default)]
    pub buggy_nodes: Option<u64>,
    #[serde(default)]
    pub total_nodes: Option<u64>,
    #[serde(default, deserialize_with = "scalar_as_string")]
    pub best_metric: Option<String>,
    #[serde(default)]
    pub eta_s: Option<f64>,
}

impl StageProgress {
    fn checked(self) -> Result<Self, String> {
        match self.progress {
            Some(progress) if !(0.0..=1.0).contains(&progress) => {
                Err(format!("data.progress: {progress} is outside 0..1; send a fraction such as 0.25"))
            }
            _ => Ok(self),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StageMetric {
    #[serde(default)]
    pub stage: Option<Stage>,
    pub name: String,
    pub value: f64,
    #[serde(default)]
    pub step: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StageCompleted {
    pub stage: Stage,
    #[serde(default)]
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NodeData {
    #[serde(default)]
    pub stage: Option<Stage>,
    pub node_id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub is_buggy: Option<bool>,
    #[serde(default)]
    pub metric: Option<Value>,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Log {
    pub message: String,
    #[serde(default)]
    pub level: Option<LogLevel>,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArtifactDetected {
    pub path: String,
    /// The seeds' monitor sent this as `type`.
    #[serde(default, alias = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArtifactRegistered {
    pub key: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArtifactFailed {
    pub path: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IdeationGenerated {
    pub hypothesis_id: String,
    pub ideas: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PaperStarted {
    #[serde(default)]
    pub artifact_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaperGenerated {
    pub artifact_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ValidationStarted {
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ValidationCompleted {
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub scores: Option<Value>,
    #[serde(default)]
    pub review: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Completed {
    #[serde(default)]
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Failed {
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Canceled {
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}
