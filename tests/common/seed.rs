//! A fixed operator scenario, the same on every store: six runs in every state, with stages,
//! logs, an artifact, a heartbeat, a failure, LLM calls, two hypotheses and a budget. All
//! times are fixed (T0 is 2025-10-22T19:00:00Z); CLI tests look at it as of `SEEN_AT`.

#![allow(dead_code)]

use scientist::store::{Outcome, Store};
use serde_json::json;

use crate::common::{at, attempt_event, event};

/// When the CLI tests look at the scenario (`SCIENTIST_NOW`): one hour after T0.
pub const SEEN_AT: &str = "2025-10-22T20:00:00Z";

/// The running run; `run-alpha` alone is ambiguous (also `run-alpha-2`).
pub const RUNNING: &str = "run-alpha-1";
pub const QUEUED: &str = "run-alpha-2";
pub const COMPLETED: &str = "run-beta";
pub const FAILED: &str = "run-gamma";
pub const CANCELED: &str = "run-delta";
pub const QUEUED_LATER: &str = "run-epsilon";

/// The traceback of the failed run: 12 lines, of which `runs show` prints the last 8.
pub fn traceback() -> String {
    let mut lines: Vec<String> = (1..=10).map(|n| format!("  File \"train.py\", line {n}, in step_{n}")).collect();
    lines.insert(0, "Traceback (most recent call last):".into());
    lines.push("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB".into());
    lines.join("\n")
}

pub async fn operator_scenario(store: &dyn Store) {
    let enqueued_for = |id: &str, seconds: i64, data: serde_json::Value| {
        event(&format!("{id}-enqueued"), "ai.run.enqueued", id, seconds, data)
    };
    let enqueued = |id: &str, seconds: i64, priority: i64| enqueued_for(id, seconds, json!({"priority": priority}));
    apply(store, vec![enqueued_for(RUNNING, 0, json!({"priority": 5, "hypothesis_id": "hyp-rope"}))]).await;
    let claimed = store.claim("pod-a", "default", at(60)).await.expect("claim").expect("the only queued run");
    assert_eq!(claimed.id.as_str(), RUNNING);

    let worker =
        |id: &str, ty: &str, seconds: i64, data: serde_json::Value| attempt_event(id, ty, RUNNING, seconds, 1, data);
    let log = |id: &str, seconds: i64, level: Option<&str>, message: &str| {
        let mut data = json!({"message": message, "source": "stdout"});
        if let Some(level) = level {
            data["level"] = json!(level);
        }
        worker(id, "ai.run.log", seconds, data)
    };
    apply(
        store,
        vec![
            worker("a-start", "ai.run.started", 70, json!({"pod_id": "pod-a", "gpu": "NVIDIA H100 80GB HBM3", "region": "us-east", "image": "scientist:1.4"})),
            worker("a-s1", "ai.run.stage_started", 80, json!({"stage": "Stage_1", "desc": "initial implementation"})),
            log("a-log-1", 90, Some("info"), "loading dataset cifar10"),
            worker("a-s1-done", "ai.run.stage_completed", 1280, json!({"stage": "Stage_1", "duration_s": 1200})),
            worker("a-art", "ai.artifact.registered", 1300, json!({"key": "runs/run-alpha-1/loss.png", "bytes": 48213, "sha256": "9f2c", "content_type": "image/png", "kind": "plot"})),
            worker("a-s2", "ai.run.stage_started", 1280, json!({"stage": "Stage_2", "desc": "baseline tuning"})),
            worker(
                "a-s2-progress",
                "ai.run.stage_progress",
                3000,
                json!({"stage": "Stage_2", "iteration": 4, "max_iterations": 10, "progress": 0.4, "good_nodes": 3,
                       "buggy_nodes": 1, "total_nodes": 4, "best_metric": 0.83, "eta_s": 900}),
            ),
            log("a-log-2", 3100, Some("warning"), "lr schedule clipped at 3e-4"),
            log("a-log-3", 3200, None, "epoch 12: loss=0.4312 acc=0.8812"),
            log("a-log-4", 3300, Some("error"), "node 7 crashed: shape mismatch"),
            worker("a-llm", "ai.llm.usage", 3400, json!({"model": "gpt-5-mini", "input_tokens": 120000, "output_tokens": 8000, "cached_tokens": 20000, "cost_usd": 0.42, "stage": "Stage_2"})),
            worker("a-hb", "ai.run.heartbeat", 3590, json!({"gpu_util": 0.97, "gpu_mem": 71.2})),
        ],
    )
    .await;

    let other = |id: &str, run: &str, ty: &str, seconds: i64, data: serde_json::Value| {
        event(&format!("{run}-{id}"), ty, run, seconds, data)
    };
    apply(
        store,
        vec![
            enqueued_for(COMPLETED, 100, json!({"hypothesis_id": "hyp-attention"})),
            other("start", COMPLETED, "ai.run.started", 200, json!({"pod_id": "pod-b", "gpu": "A100"})),
            other("s1", COMPLETED, "ai.run.stage_started", 200, json!({"stage": "Stage_1"})),
            other("s1-done", COMPLETED, "ai.run.stage_completed", 1000, json!({"stage": "Stage_1", "duration_s": 800})),
            other("llm", COMPLETED, "ai.llm.usage", 900, json!({"model": "claude-sonnet", "input_tokens": 50000, "output_tokens": 4000, "cost_usd": 0.95})),
            other("done", COMPLETED, "ai.run.completed", 2000, json!({"duration_s": 1800})),
            // 87% of its budget spent when it failed.
            enqueued_for(FAILED, 150, json!({"hypothesis_id": "hyp-attention", "budget_usd": 1.5})),
            other("llm", FAILED, "ai.llm.usage", 2400, json!({"model": "gpt-5-mini", "input_tokens": 300000, "output_tokens": 20000, "cost_usd": 1.3})),
            other("start", FAILED, "ai.run.started", 300, json!({"pod_id": "pod-c", "gpu": "A100"})),
            other("s2", FAILED, "ai.run.stage_started", 400, json!({"stage": "Stage_2"})),
            other(
                "failed",
                FAILED,
                "ai.run.failed",
                2500,
                json!({"stage": "Stage_2", "code": "OOM", "message": "CUDA out of memory", "traceback": traceback(), "retryable": true}),
            ),
            enqueued(CANCELED, 400, 0),
            enqueued(QUEUED, 3000, 2),
            enqueued(QUEUED_LATER, 3300, 0),
        ],
    )
    .await;
    store
        .request_cancel(&CANCELED.parse().expect("id"), "operator:ada", Some("wrong dataset".into()), at(500))
        .await
        .expect("cancel");
}

async fn apply(store: &dyn Store, events: Vec<scientist::event::Event>) {
    let outcomes = store.apply_events(events, at(3600)).await.expect("apply");
    assert!(outcomes.iter().all(|outcome| *outcome == Outcome::Applied), "{outcomes:?}");
}
