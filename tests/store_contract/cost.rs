//! The store contract's cost cases (`run::cost`, `queue::budget`): what a store's writes make
//! of a run's GPU time and LLM usage under a price table, and of its budget; stamped out per
//! backend by `store_suite!` with the others, on a handle with the rules `serve` would give.

use std::sync::Arc;

use scientist::alert::{Kind, Raise};
use scientist::queue::budget::{BUDGET_BY, Costs};
use scientist::run::prices::Prices;
use scientist::run::{NewRun, RunId, RunStatus};
use scientist::store::{Outcome, Rules, Store};
use serde_json::json;

use super::{at, attempt_event, claimed_run, event};

const H100: &str = "NVIDIA H100 80GB HBM3";
const A100: &str = "NVIDIA A100-SXM4-80GB";

/// Prices of two GPU models and one LLM, a queue budget for `capped`, alerts on.
pub fn priced_rules() -> Rules {
    let prices = format!(
        "[gpu.\"{H100}\"]\nper_hour = 2.5\n[gpu.\"{A100}\"]\nper_hour = 1.6\n\
         [llm.\"gpt-5-mini\"]\ninput_per_million = 0.25\noutput_per_million = 2.0\ncached_per_million = 0.025\n"
    );
    let prices = Prices::parse(&prices, "test prices").expect("prices");
    let costs = Costs { prices: Some(prices), queue_budgets: [("capped".to_owned(), 2.0)].into() };
    Rules { alerts: Raise { alerts: true, completed: false, spans: false }, costs: Arc::new(costs), ..Rules::default() }
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

async fn apply(store: &dyn Store, event: scientist::event::Event, now: i64) -> Outcome {
    let outcomes = store.apply_events(vec![event], at(now)).await.expect("apply");
    outcomes[0]
}

/// Attempt 1 holds 2 H100 for an hour and fails; attempt 2 holds one A100 for half an hour
/// and completes: GPU time and dollars are those of both, each at its model's price, and the
/// LLM calls are counted once each (a redelivered one changes nothing), by the table or by the
/// cost they sent; a call reported late by the fenced-out first attempt is not counted.
pub async fn gpu_time_of_two_attempts_is_priced_by_each_model(store: &dyn Store) {
    let id = claimed_run(store).await;
    let run = id.as_str();
    let started = json!({"pod_id": "pod-a", "gpu": format!("2x {H100}"), "gpu_model": H100, "gpu_count": 2});
    assert_eq!(apply(store, attempt_event("s1", "ai.run.started", run, 1, 1, started), 1).await, Outcome::Applied);
    apply(store, attempt_event("h1", "ai.run.heartbeat", run, 3601, 1, json!({"gpu_util": 0.9})), 3601).await;
    let live = store.get(&id).await.expect("get").expect("run").cost;
    assert!(close(live.gpu_seconds, 3600.0) && close(live.gpu_usd, 5.0), "the live attempt counts: {live:?}");
    let failed = json!({"code": "WORKER_ERROR", "message": "gone", "retryable": true});
    apply(store, attempt_event("f1", "ai.run.failed", run, 3601, 1, failed), 3601).await;
    store.reset(&id, at(4000)).await.expect("reset");
    store.claim("pod-b", "default", at(4000)).await.expect("claim").expect("the reset run");
    let started = json!({"pod_id": "pod-b", "gpu": A100, "gpu_model": A100});
    apply(store, attempt_event("s2", "ai.run.started", run, 4000, 2, started), 4000).await;
    let late = json!({"model": "gpt-5-mini", "input_tokens": 5_000_000, "cost_usd": 9.0});
    let late = attempt_event("u0", "ai.llm.usage", run, 4050, 1, late);
    assert_eq!(apply(store, late, 4050).await, Outcome::Stale, "attempt 1 is fenced out: its spend is not counted");
    let usage = json!({"model": "gpt-5-mini", "input_tokens": 1_000_000, "output_tokens": 100_000,
        "cached_tokens": 200_000, "stage": "Stage_1"});
    let usage = attempt_event("u1", "ai.llm.usage", run, 4100, 2, usage);
    assert_eq!(apply(store, usage.clone(), 4100).await, Outcome::Applied);
    assert_eq!(apply(store, usage, 4101).await, Outcome::Duplicate);
    let house = json!({"model": "house-model", "input_tokens": 10, "cost_usd": 0.25});
    apply(store, attempt_event("u2", "ai.llm.usage", run, 4200, 2, house), 4200).await;
    let unpriced = json!({"model": "house-model", "input_tokens": 10});
    apply(store, attempt_event("u3", "ai.llm.usage", run, 4300, 2, unpriced), 4300).await;
    apply(store, attempt_event("c2", "ai.run.completed", run, 5800, 2, json!({})), 5800).await;

    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Completed);
    let gpus: Vec<_> = run.attempts.iter().map(|attempt| (attempt.gpu.as_deref(), attempt.gpu_count)).collect();
    assert_eq!(gpus, [(Some(H100), Some(2)), (Some(A100), Some(1))]);
    let cost = &run.cost;
    assert!(close(cost.gpu_seconds, 5400.0), "{cost:?}");
    assert_eq!(cost.gpu_count, 2);
    assert!(close(cost.gpu_usd, 5.0 + 0.8), "2 H100 for 1 h at 2.5, 1 A100 for 0.5 h at 1.6: {cost:?}");
    let mini = &cost.llm.by_model["gpt-5-mini"];
    assert_eq!((mini.input_tokens, mini.output_tokens, mini.cached_tokens), (1_000_000, 100_000, 200_000));
    assert!(close(mini.usd, 0.2 + 0.005 + 0.2), "{mini:?}");
    assert!(close(cost.llm.by_model["house-model"].usd, 0.25), "the reported cost counts, the rest is unpriced");
    assert_eq!(cost.unpriced, ["house-model"]);
    assert_eq!(cost.llm.input_tokens, 1_000_020);
    assert!(close(cost.total_usd, 5.8 + 0.405 + 0.25), "{cost:?}");
}

/// At 80% of its budget a run raises one alert; at 100% a held run is asked to stop by the
/// budget, and a run nobody holds fails at once with `BUDGET_EXCEEDED`. A queue's budget
/// applies to its runs that have none of their own.
pub async fn budgets_alert_then_stop_the_run(store: &dyn Store) {
    let held = store.enqueue(NewRun { budget_usd: Some(1.0), ..NewRun::new(json!({})) }, at(0)).await.expect("enqueue");
    store.claim("pod-a", "default", at(1)).await.expect("claim").expect("queued");
    let spend = |id: &RunId, event_id: &str, usd: f64, seconds: i64| {
        attempt_event(event_id, "ai.llm.usage", id.as_str(), seconds, 1, json!({"model": "m", "cost_usd": usd}))
    };
    apply(store, spend(&held.id, "u1", 0.85, 2), 2).await;
    let near = store.get(&held.id).await.expect("get").expect("run");
    let budget_alerts = |run: &scientist::run::Run| run.alerts.iter().filter(|mark| mark.kind == Kind::Budget).count();
    assert_eq!((budget_alerts(&near), near.cancel_requested.is_none()), (1, true), "{:?}", near.alerts);
    apply(store, spend(&held.id, "u2", 0.05, 3), 3).await;
    apply(store, spend(&held.id, "u3", 0.2, 4), 4).await;
    let over = store.get(&held.id).await.expect("get").expect("run");
    assert_eq!(budget_alerts(&over), 1, "raised once");
    let request = over.cancel_requested.expect("asked to stop");
    assert_eq!(request.by, BUDGET_BY);
    assert_eq!(request.reason.as_deref(), Some("spent $1.10 of its $1.00 budget"));
    assert_eq!(over.status, RunStatus::Scheduled, "its worker stops it");

    let queued =
        store.enqueue(NewRun { queue: "capped".into(), ..NewRun::new(json!({})) }, at(10)).await.expect("enqueue");
    assert_eq!(queued.cost.budget_usd, Some(2.0), "the queue's budget");
    let early = event("q1", "ai.llm.usage", queued.id.as_str(), 11, json!({"model": "m", "cost_usd": 2.5}));
    apply(store, early, 11).await;
    let failed = store.get(&queued.id).await.expect("get").expect("run");
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error_type.as_deref(), Some("BUDGET_EXCEEDED"));
    assert_eq!(failed.error.as_ref().map(|error| error.retryable), Some(false));
}
