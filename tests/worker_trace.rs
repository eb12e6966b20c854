//! Trace context end to end: the built `scientist work` on a real SQLite store runs a
//! two-stage pipeline whose stages record the `TRACEPARENT` they were given and send events
//! through `scientist emit`, one of them in its own span. Every event the worker stored is in
//! the run's trace: the attempt's span, the stage's for stage events, the pipeline's own kept.

use std::time::Duration;

use scientist::run::{NewRun, SpanId, TraceId, traceparent};
use scientist::time::Timestamp;
use serde_json::json;

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, finish};

/// A stage: writes its TRACEPARENT and TRACESTATE to the run directory, logs a line, sends a
/// progress event in the worker's span and one in a span of its own (in the same trace).
const STAGE: &str = r#"
printf '%s %s' "$TRACEPARENT" "$TRACESTATE" > "$SCIENTIST_RUN_DIR/trace_$SCIENTIST_STAGE"
echo "working on $SCIENTIST_STAGE"
scientist emit ai.run.stage_progress --run "$SCIENTIST_RUN_ID" --data "{\"stage\": \"$SCIENTIST_STAGE\", \"progress\": 0.5}"
trace=$(echo "$TRACEPARENT" | cut -d- -f2)
printf '{"type": "ai.run.stage_progress", "traceparent": "00-%s-1111111111111111-01", "data": {"stage": "%s", "progress": 0.75}}\n' \
  "$trace" "$SCIENTIST_STAGE" | scientist emit --batch - --run "$SCIENTIST_RUN_ID"
"#;

#[tokio::test]
async fn every_event_of_a_run_is_in_its_trace_and_stages_get_their_traceparent() {
    let pod = Pod::sqlite().await;
    let trace_id = TraceId::generate();
    let new_run =
        NewRun { trace_id, trace_state: Some("vendor=abc".into()), ..NewRun::new(json!({"title": "traced"})) };
    let id = pod.store.enqueue(new_run, Timestamp::now()).await.expect("enqueue").id;
    let script = pod.path("stage.sh");
    std::fs::write(&script, STAGE).expect("write the stage");
    let stage =
        |name: &str| format!("[[stage]]\nname = {name:?}\ncommand = [\"sh\", {:?}]\n", script.display().to_string());
    let config = pod.config(&format!("{}{}", stage("Stage_1"), stage("Stage_2")));
    let worker = pod.worker(&config).arg("--once").spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed: {stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, scientist::run::RunStatus::Completed, "{stderr}");
    assert_eq!(run.trace_id, Some(trace_id));

    let dir = pod.run_dir(&id).await;
    let attempt_span = traceparent(trace_id, SpanId::of_attempt(&id, run.attempt));
    let stage_span = |stage: &str| traceparent(trace_id, SpanId::of_stage(&id, run.attempt, stage));
    for stage in ["Stage_1", "Stage_2"] {
        let given = std::fs::read_to_string(dir.join(format!("trace_{stage}"))).expect("the stage's record");
        assert_eq!(given, format!("{} vendor=abc", stage_span(stage)), "{stage}'s environment");
    }

    let pipelines_own = format!("00-{trace_id}-1111111111111111-01");
    let events = pod.events(&id).await;
    let (mut own, mut logs, mut stage_events) = (0, 0, 0);
    for event in &events {
        let stamped = event.extension_str("traceparent").unwrap_or_else(|| panic!("no traceparent on {event:?}"));
        assert_eq!(TraceId::from_traceparent(stamped), Some(trace_id), "{}", event.event_type);
        let state = event.extension_str("tracestate");
        match event.event_type.as_str() {
            "ai.run.stage_started" | "ai.run.stage_completed" => {
                let stage = event.data["stage"].as_str().expect("a stage");
                assert_eq!(stamped, stage_span(stage), "{} of {stage}", event.event_type);
                stage_events += 1;
            }
            _ if stamped == pipelines_own => {
                // Kept as the pipeline sent it: its own span, and no tracestate of ours.
                assert_eq!(event.data["progress"], json!(0.75));
                assert_eq!(state, None);
                own += 1;
                continue;
            }
            ty => {
                assert_eq!(stamped, attempt_span, "{ty}");
                logs += usize::from(ty == "ai.run.log");
            }
        }
        assert_eq!(state, Some("vendor=abc"), "{}", event.event_type);
    }
    assert_eq!((own, stage_events), (2, 4), "{events:#?}");
    assert!(logs >= 2, "the stages' output lines: {events:#?}");
    pod.cleanup().await;
}
