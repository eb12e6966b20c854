//! The spans of one ended attempt, built from the run document: the attempt's (claim to end)
//! and one per stage it started (the stage's start to its completion, or to the attempt's
//! end), children of the attempt's. Their ids are the ones the worker handed the stages as
//! `TRACEPARENT` (`run::trace`), so a pipeline's own spans nest under its stage's.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::run::{Attempt, AttemptStage, Run, SpanId};
use crate::time::Timestamp;

/// The attempt's span first, then its stages' in the order they started.
pub fn attempt_spans(run: &Run, attempt: &Attempt) -> Vec<SpanData> {
    let trace = opentelemetry::trace::TraceId::from_bytes(run.trace_id_or_derived().bytes());
    let attempt_span = SpanId::of_attempt(&run.id, attempt.attempt);
    let start = attempt.claimed_at.or(attempt.started_at).unwrap_or(attempt.ended_at).min(attempt.ended_at);
    let mut attributes = vec![
        KeyValue::new("scientist.run.id", run.id.as_str().to_owned()),
        KeyValue::new("scientist.attempt", i64::from(attempt.attempt)),
        KeyValue::new("scientist.queue", run.queue.clone()),
        KeyValue::new("scientist.outcome", attempt.outcome.clone()),
    ];
    let optional = [
        ("scientist.hypothesis.id", run.hypothesis_id.clone()),
        ("scientist.pod", attempt.pod.clone().or_else(|| attempt.claimed_by.clone())),
        ("scientist.gpu", attempt.gpu.clone()),
        ("error.type", attempt.error.as_ref().map(|error| error.error_type.clone())),
    ];
    attributes.extend(optional.into_iter().filter_map(|(key, value)| Some(KeyValue::new(key, value?))));
    if let Some(count) = attempt.gpu_count {
        attributes.push(KeyValue::new("scientist.gpu.count", i64::from(count)));
    }
    let mut spans = vec![span(
        SpanContext::new(
            trace,
            opentelemetry::trace::SpanId::from_bytes(attempt_span.bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        opentelemetry::trace::SpanId::INVALID,
        SpanKind::Consumer,
        Cow::Borrowed("attempt"),
        (start, attempt.ended_at),
        attributes,
        attempt_status(attempt),
    )];
    for stage in &attempt.stages {
        let id = SpanId::of_stage(&run.id, attempt.attempt, &stage.name);
        let end = stage.completed_at.unwrap_or(attempt.ended_at).max(stage.started_at);
        spans.push(span(
            SpanContext::new(
                trace,
                opentelemetry::trace::SpanId::from_bytes(id.bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            opentelemetry::trace::SpanId::from_bytes(attempt_span.bytes()),
            SpanKind::Internal,
            Cow::Owned(stage.name.clone()),
            (stage.started_at, end),
            vec![
                KeyValue::new("scientist.run.id", run.id.as_str().to_owned()),
                KeyValue::new("scientist.attempt", i64::from(attempt.attempt)),
                KeyValue::new("scientist.stage", stage.name.clone()),
            ],
            stage_status(attempt, stage),
        ));
    }
    spans
}

/// A completed attempt is Ok; a failed or lost one an error with its message; a canceled
/// one is left unset (nothing went wrong).
fn attempt_status(attempt: &Attempt) -> Status {
    match attempt.outcome.as_str() {
        "COMPLETED" => Status::Ok,
        "CANCELED" => Status::Unset,
        _ => {
            Status::error(attempt.error.as_ref().map_or_else(|| attempt.outcome.clone(), |error| error.message.clone()))
        }
    }
}

/// A stage that completed is Ok; one cut short shares its attempt's status (the stage the
/// error names, or the one that was running).
fn stage_status(attempt: &Attempt, stage: &AttemptStage) -> Status {
    if stage.completed_at.is_some() { Status::Ok } else { attempt_status(attempt) }
}

fn span(
    context: SpanContext,
    parent: opentelemetry::trace::SpanId,
    kind: SpanKind,
    name: Cow<'static, str>,
    (start, end): (Timestamp, Timestamp),
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: context,
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: kind,
        name,
        start_time: system_time(start),
        end_time: system_time(end.max(start)),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("scientist")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

/// The latest time OTLP can carry: its times are u64 nanoseconds since 1970 (July 2554).
const LATEST_ON_THE_WIRE_MS: u64 = u64::MAX / 1_000_000;

/// A store time as a `SystemTime`, within what the wire can carry: one before 1970 is taken as
/// 1970, and one past 2554 (a host clock set to year 9999) as 2554, where the exporter's
/// conversion to nanoseconds would otherwise wrap it to an arbitrary earlier time.
fn system_time(at: Timestamp) -> SystemTime {
    let millis = u64::try_from(at.millis()).unwrap_or(0).min(LATEST_ON_THE_WIRE_MS);
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{EventKey, NewRun, RunError, TraceId};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_760_000_000_000 + seconds * 1000)
    }

    fn failed_attempt() -> (Run, Attempt) {
        let trace: TraceId = "4bf92f3577b34da6a3ce929d0e0e4736".parse().expect("a trace id");
        let run = Run::queued(NewRun { queue: "gpu".into(), trace_id: trace, ..NewRun::new(json!({})) }, at(0));
        let attempt = Attempt {
            attempt: 2,
            claimed_by: Some("pod-a".into()),
            pod: Some("pod-a".into()),
            claimed_at: Some(at(10)),
            started_at: Some(at(11)),
            ended_at: at(100),
            outcome: "FAILED".into(),
            gpu: Some("NVIDIA H100 80GB HBM3".into()),
            gpu_count: Some(2),
            error: Some(RunError {
                error_type: "OOM".into(),
                message: "out of memory".into(),
                traceback: None,
                stage: Some("Stage_2".into()),
                retryable: false,
                failed_at: at(100),
                at: EventKey { time: at(100), id: "e-9".into(), source: "pod://a".into() },
            }),
            stages: vec![
                AttemptStage { name: "Stage_1".into(), started_at: at(12), completed_at: Some(at(40)) },
                AttemptStage { name: "Stage_2".into(), started_at: at(41), completed_at: None },
            ],
        };
        (run, attempt)
    }

    #[test]
    fn stages_are_children_of_their_attempt_with_the_ids_the_worker_handed_out() {
        let (run, attempt) = failed_attempt();
        let spans = attempt_spans(&run, &attempt);
        assert_eq!(spans.len(), 3);
        let root = &spans[0];
        assert_eq!(root.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        // The ids match the TRACEPARENT the worker gives a stage.
        let stage_parent = run_traceparent_span(&run, 2, "Stage_2");
        assert_eq!(spans[2].span_context.span_id().to_string(), stage_parent);
        for stage in &spans[1..] {
            assert_eq!(stage.parent_span_id, root.span_context.span_id());
            assert_eq!(stage.span_context.trace_id(), root.span_context.trace_id());
        }
        assert_eq!(root.start_time, system_time(at(10)));
        assert_eq!(root.end_time, system_time(at(100)));
        assert_eq!(spans[2].end_time, system_time(at(100)), "a stage cut short ends with its attempt");
        assert_eq!(root.status, Status::error("out of memory"));
        assert_eq!(spans[1].status, Status::Ok);
        assert_eq!(spans[2].status, Status::error("out of memory"));
        let attribute =
            |key: &str| root.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
        assert_eq!(attribute("error.type").as_deref(), Some("OOM"));
        assert_eq!(attribute("scientist.gpu.count").as_deref(), Some("2"));
        assert_eq!(attribute("scientist.pod").as_deref(), Some("pod-a"));
    }

    /// The span id in the `traceparent` the worker hands stage `stage` of `attempt`.
    fn run_traceparent_span(run: &Run, attempt: u32, stage: &str) -> String {
        let mut run = run.clone();
        run.attempt = attempt;
        let traceparent = run.traceparent(Some(stage));
        traceparent.split('-').nth(2).expect("a span id").to_owned()
    }

    #[test]
    fn a_canceled_attempt_is_not_an_error_and_a_clock_before_1970_does_not_panic() {
        let (run, mut attempt) = failed_attempt();
        attempt.outcome = "CANCELED".into();
        attempt.error = None;
        attempt.claimed_at = Some(Timestamp::from_millis(-5_000));
        let spans = attempt_spans(&run, &attempt);
        assert_eq!(spans[0].status, Status::Unset);
        assert_eq!(spans[0].start_time, UNIX_EPOCH);
    }

    #[test]
    fn a_clock_in_year_9999_is_capped_where_the_wire_ends_instead_of_wrapping() {
        let (run, mut attempt) = failed_attempt();
        let year_9999 = Timestamp::parse_rfc3339("9999-12-31T23:59:59Z").expect("a time");
        (attempt.claimed_at, attempt.ended_at) = (Some(year_9999), year_9999);
        for stage in &mut attempt.stages {
            (stage.started_at, stage.completed_at) = (year_9999, Some(year_9999));
        }
        for span in attempt_spans(&run, &attempt) {
            for time in [span.start_time, span.end_time] {
                let nanos = time.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
                assert!(nanos <= u128::from(u64::MAX), "fits the wire's u64: {nanos}");
                assert!(nanos >= u128::from(LATEST_ON_THE_WIRE_MS) * 1_000_000, "capped at the latest, not wrapped");
            }
        }
    }
}
