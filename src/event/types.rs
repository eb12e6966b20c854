//! The table of event types: each `ai.*` name once, with the [`Payload`] variant its `data`
//! parses into. Names, parsing, [`KNOWN_TYPES`], [`EventType::data_fields`] (which
//! `docs/events.md` is checked against) and the typed way to build `data` ([`EventData`])
//! all come from this one table.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::payload::*;

/// What an emitter sends as the `data` of one event type: a payload struct, or a node step
/// with its data. `Draft::new(data.event_type().name(), data.to_data())` is the event.
pub trait EventData {
    fn event_type(&self) -> EventType;

    /// The `data` object: the typed fields that are set, then the `extra` ones.
    fn to_data(&self) -> Map<String, Value>;
}

/// A node's data as the event of one step of it (`ai.node.*`).
impl EventData for (NodeStep, NodeData) {
    fn event_type(&self) -> EventType {
        self.0.event_type()
    }

    fn to_data(&self) -> Map<String, Value> {
        to_object(&self.1)
    }
}

fn to_object(data: &impl Serialize) -> Map<String, Value> {
    // Payload structs serialize to objects with string keys (and a non-finite float to
    // null), so no other arm is reached; an empty object is still an event.
    match serde_json::to_value(data) {
        Ok(Value::Object(data)) => data,
        _ => Map::new(),
    }
}

/// The fields a payload struct types, in declaration order (`extra` aside).
pub trait DataFields {
    const FIELDS: &'static [&'static str];
}

/// One row per type: `Kind = "name" => Variant(DataStruct)`, or for the node types
/// `Kind = "name" => Node[Step](NodeData)`, whose variant carries the `NodeStep` too.
macro_rules! event_types {
    // `EventData` for the structs of one type each; `NodeData` goes with its step (above).
    (@data_impl $kind:ident [$step:ident] ($data:ty)) => {};
    (@data_impl $kind:ident ($data:ty)) => {
        impl EventData for $data {
            fn event_type(&self) -> EventType {
                EventType::$kind
            }

            fn to_data(&self) -> Map<String, Value> {
                to_object(self)
            }
        }
    };
    ($( $(#[$doc:meta])* $kind:ident = $name:literal => $variant:ident $([$step:ident])? ($data:ty), )*) => {
        /// A known event type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventType {
            $( $(#[$doc])* $kind, )*
        }

        /// Every known event type's name, in table order, for `--help` texts and tests.
        pub const KNOWN_TYPES: &[&str] = &[$($name),*];

        impl EventType {
            /// Every known event type, in table order.
            pub const ALL: &[EventType] = &[$(EventType::$kind),*];

            /// The `type` attribute, e.g. `ai.run.failed`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( EventType::$kind => $name, )*
                }
            }

            /// The known type called `name`; `None` for any other (stored, changes nothing).
            pub fn from_name(name: &str) -> Option<EventType> {
                match name {
                    $( $name => Some(EventType::$kind), )*
                    _ => None,
                }
            }

            /// The `data` fields its payload struct types (others are kept as sent).
            pub fn data_fields(self) -> &'static [&'static str] {
                match self {
                    $( EventType::$kind => <$data as DataFields>::FIELDS, )*
                }
            }
        }

        impl Payload {
            /// Parses `data` for `event_type`; the error names the offending field.
            pub fn parse(event_type: &str, data: &Map<String, Value>) -> Result<Payload, String> {
                let payload = match EventType::from_name(event_type) {
                    $( Some(EventType::$kind) => Payload::$variant($(NodeStep::$step,)? typed(data)?), )*
                    None => return Ok(Payload::Unknown),
                };
                payload.check()?;
                Ok(payload)
            }

            /// The type this payload is the data of; `None` for [`Payload::Unknown`].
            pub fn event_type(&self) -> Option<EventType> {
                match self {
                    $( Payload::$variant($(NodeStep::$step,)? _) => Some(EventType::$kind), )*
                    Payload::Unknown => None,
                }
            }

            /// The `data` object, as [`EventData::to_data`] builds it; an unknown type's
            /// data is the event's (`Event::data`), not kept here.
            pub fn to_data(&self) -> Map<String, Value> {
                match self {
                    $( Payload::$variant($(NodeStep::$step,)? data) => to_object(data), )*
                    Payload::Unknown => Map::new(),
                }
            }
        }

        impl NodeStep {
            /// The `ai.node.*` type of this step.
            pub fn event_type(self) -> EventType {
                match self {
                    $( $( NodeStep::$step => EventType::$kind, )? )*
                }
            }
        }

        $( event_types!(@data_impl $kind $([$step])? ($data)); )*
    };
}

event_types! {
    /// Creates the run (QUEUED); the admin scope's alone.
    RunEnqueued = "ai.run.enqueued" => Enqueued(Enqueued),
    RunStarted = "ai.run.started" => Started(Started),
    RunHeartbeat = "ai.run.heartbeat" => Heartbeat(Heartbeat),
    RunStageStarted = "ai.run.stage_started" => StageStarted(StageStarted),
    RunStageProgress = "ai.run.stage_progress" => StageProgress(StageProgress),
    RunStageMetric = "ai.run.stage_metric" => StageMetric(StageMetric),
    RunStageCompleted = "ai.run.stage_completed" => StageCompleted(StageCompleted),
    NodeCreated = "ai.node.created" => Node[Created](NodeData),
    NodeCodeGenerated = "ai.node.code_generated" => Node[CodeGenerated](NodeData),
    NodeExecuting = "ai.node.executing" => Node[Executing](NodeData),
    NodeCompleted = "ai.node.completed" => Node[Completed](NodeData),
    NodeSelectedBest = "ai.node.selected_best" => Node[SelectedBest](NodeData),
    RunLog = "ai.run.log" => Log(Log),
    ArtifactDetected = "ai.artifact.detected" => ArtifactDetected(ArtifactDetected),
    ArtifactRegistered = "ai.artifact.registered" => ArtifactRegistered(ArtifactRegistered),
    ArtifactFailed = "ai.artifact.failed" => ArtifactFailed(ArtifactFailed),
    /// About a hypothesis, not a run: the one type that needs no run id.
    IdeationGenerated = "ai.ideation.generated" => IdeationGenerated(IdeationGenerated),
    PaperStarted = "ai.paper.started" => PaperStarted(PaperStarted),
    PaperGenerated = "ai.paper.generated" => PaperGenerated(PaperGenerated),
    ValidationAutoStarted = "ai.validation.auto_started" => ValidationStarted(ValidationStarted),
    ValidationAutoCompleted = "ai.validation.auto_completed" => ValidationCompleted(ValidationCompleted),
    RunCompleted = "ai.run.completed" => Completed(Completed),
    RunFailed = "ai.run.failed" => Failed(Failed),
    RunCanceled = "ai.run.canceled" => Canceled(Canceled),
    /// AWAITING_HUMAN until a person approves or rejects the run (`queue::review`).
    RunReviewRequested = "ai.run.review_requested" => ReviewRequested(ReviewRequested),
    /// What the pipeline's LLM calls used and cost (the run's `cost.llm`).
    LlmUsage = "ai.llm.usage" => LlmUsage(LlmUsage),
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::FailureCode;
    use crate::run::Stage;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    /// A `data` object of `event_type` with every typed field set and one untyped field.
    fn full_data(event_type: EventType) -> Map<String, Value> {
        let node = json!({"stage": "Stage_2", "node_id": "n2", "parent_id": "n1", "is_buggy": false,
            "metric": {"acc": 0.9}, "summary": "s"});
        let mut data = object(match event_type {
            EventType::RunEnqueued => json!({"priority": 3, "queue": "gpu", "hypothesis_id": "h", "idea": {"a": 1},
                "retry_max": 2, "budget_usd": 50.0}),
            EventType::RunStarted => json!({"pod_id": "p", "gpu": "2x H100", "gpu_model": "H100",
                "gpu_count": 2, "region": "EU", "image": "img"}),
            EventType::RunHeartbeat => json!({"gpu_util": 0.5, "gpu_mem": 0.25, "cpu": 150.0, "rss": 1024.0}),
            EventType::RunStageStarted => {
                json!({"stage": "Stage_1", "desc": "initial implementation", "stall_after_s": 7200.0})
            }
            EventType::RunStageProgress => json!({"stage": "Stage_1", "iteration": 2, "max_iterations": 10,
                "progress": 0.2, "good_nodes": 1, "buggy_nodes": 1, "total_nodes": 2, "best_metric": "0.93",
                "eta_s": 60.0}),
            EventType::RunStageMetric => json!({"stage": "Stage_1", "name": "loss", "value": 0.5, "step": 3}),
            EventType::RunStageCompleted => json!({"stage": "Stage_1", "duration_s": 12.5}),
            EventType::NodeCreated
            | EventType::NodeCodeGenerated
            | EventType::NodeExecuting
            | EventType::NodeCompleted
            | EventType::NodeSelectedBest => node,
            EventType::RunLog => json!({"message": "hi", "level": "warning", "source": "stdout"}),
            EventType::ArtifactDetected => json!({"path": "plots/a.png", "kind": "plot", "size_bytes": 10}),
            EventType::ArtifactRegistered => json!({"key": "runs/r/a.png", "bytes": 10, "sha256": "ab",
                "content_type": "image/png", "kind": "plot"}),
            EventType::ArtifactFailed => json!({"path": "a.png", "error": "gone"}),
            EventType::IdeationGenerated => json!({"hypothesis_id": "h", "ideas": [{"name": "i"}]}),
            EventType::PaperStarted => json!({"artifact_key": "runs/r/paper.pdf"}),
            EventType::PaperGenerated => json!({"artifact_key": "runs/r/paper.pdf"}),
            EventType::ValidationAutoStarted => json!({"model": "m"}),
            EventType::ValidationAutoCompleted => json!({"verdict": "accept", "scores": {"x": 1}, "review": "ok"}),
            EventType::RunCompleted => json!({"duration_s": 3.5}),
            EventType::RunFailed => json!({"stage": "Stage_1", "code": "OOM", "message": "m", "traceback": "t",
                "retryable": false}),
            EventType::RunCanceled => json!({"by": "alice", "reason": "r"}),
            EventType::RunReviewRequested => json!({"reason": "check the paper", "options": ["accept", "revise"],
                "stage": "paper", "holds_worker": false}),
            EventType::LlmUsage => json!({"model": "gpt-5-mini", "input_tokens": 1200, "output_tokens": 300,
                "cached_tokens": 1000, "cost_usd": 0.0042, "stage": "Stage_1", "node_id": "n1"}),
        });
        data.insert("run_id".into(), json!("r1"));
        data
    }

    #[test]
    fn a_stall_time_must_be_above_zero_and_at_most_a_year() {
        for bad in [0.0, -1.0, 1e300, f64::from(u32::MAX) * 1e3] {
            let data = json!({"stage": "Stage_1", "stall_after_s": bad});
            let data = data.as_object().cloned().expect("an object");
            let err = Payload::parse("ai.run.stage_started", &data).expect_err("refused");
            assert!(err.contains("data.stall_after_s"), "{bad}: {err}");
        }
        let data = json!({"stage": "Stage_1", "stall_after_s": 7200.0}).as_object().cloned().expect("an object");
        assert!(Payload::parse("ai.run.stage_started", &data).is_ok());
    }

    #[test]
    fn a_usage_names_its_model_and_costs_no_less_than_nothing() {
        for (data, field) in [
            (json!({"model": "", "input_tokens": 1}), "data.model"),
            (json!({"model": "m", "cost_usd": -0.01}), "data.cost_usd"),
            (json!({"model": "m", "cost_usd": 2e6}), "data.cost_usd"),
            (json!({"input_tokens": 1}), "model"),
        ] {
            let err = Payload::parse("ai.llm.usage", &object(data)).expect_err("refused");
            assert!(err.contains(field), "{err}");
        }
        assert!(Payload::parse("ai.llm.usage", &object(json!({"model": "m", "cost_usd": 0.0}))).is_ok());
    }

    #[test]
    fn the_table_names_each_type_once() {
        assert_eq!(KNOWN_TYPES.len(), EventType::ALL.len());
        for (event_type, name) in EventType::ALL.iter().zip(KNOWN_TYPES) {
            assert_eq!(event_type.name(), *name);
            assert_eq!(EventType::from_name(name), Some(*event_type));
        }
        let mut names = KNOWN_TYPES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KNOWN_TYPES.len(), "a name appears twice");
        assert_eq!(EventType::from_name("ai.run.something_new"), None);
    }

    #[test]
    fn every_payload_serializes_back_to_the_data_it_parsed_from() {
        for &event_type in EventType::ALL {
            let data = full_data(event_type);
            let payload = Payload::parse(event_type.name(), &data).unwrap_or_else(|err| panic!("{event_type}: {err}"));
            assert_eq!(payload.event_type(), Some(event_type));
            assert_eq!(payload.to_data(), data, "{event_type}");
            assert_eq!(Payload::parse(event_type.name(), &payload.to_data()).as_ref(), Ok(&payload), "{event_type}");
            // Every typed field is set above, so its fields are the struct's (and run_id).
            let mut typed: Vec<&str> = data.keys().map(String::as_str).filter(|key| *key != "run_id").collect();
            let mut fields = event_type.data_fields().to_vec();
            typed.sort_unstable();
            fields.sort_unstable();
            assert_eq!(typed, fields, "{event_type}");
        }
    }

    #[test]
    fn emitters_build_data_from_the_structs() {
        let failed = Failed::of(FailureCode::Signal(11), "killed".into());
        assert_eq!(failed.event_type(), EventType::RunFailed);
        assert_eq!(failed.to_data(), object(json!({"code": "SIGNAL_11", "message": "killed", "retryable": true})));
        let node = (
            NodeStep::SelectedBest,
            NodeData {
                stage: Some(Stage::Stage1),
                node_id: "n".into(),
                parent_id: None,
                is_buggy: None,
                metric: None,
                summary: None,
                extra: Map::new(),
            },
        );
        assert_eq!(node.event_type(), EventType::NodeSelectedBest);
        assert_eq!(node.to_data(), object(json!({"stage": "Stage_1", "node_id": "n"})));
        // What a pipeline prints as a number is kept as the text it parsed to.
        let progress = object(json!({"stage": "Stage_1", "best_metric": 0.5}));
        let Ok(Payload::StageProgress(parsed)) = Payload::parse("ai.run.stage_progress", &progress) else {
            panic!("progress parses")
        };
        assert_eq!(parsed.to_data(), object(json!({"stage": "Stage_1", "best_metric": "0.5"})));
    }

    #[test]
    fn unknown_types_have_no_typed_data() {
        let data = object(json!({"anything": 1}));
        let payload = Payload::parse("ai.run.something_new", &data);
        assert_eq!(payload, Ok(Payload::Unknown));
        assert_eq!(Payload::Unknown.event_type(), None);
        assert!(Payload::Unknown.to_data().is_empty());
    }
}
