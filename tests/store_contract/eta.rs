//! The store contract's ETA case (`run::eta`): a queue's history is read through the store's
//! own filtered listing (COMPLETED runs of one queue), so both stores give the same estimate.

use scientist::run::{HISTORY_RUNS, History, NewRun, RunStatus};
use scientist::store::{RunFilter, Store};
use serde_json::json;

use super::{at, attempt_event, new_run};

/// A run on `queue`, claimed at 0 s; Stage_1 takes `seconds`; completed when `complete`.
pub(crate) async fn seeded_run(store: &dyn Store, queue: &str, seconds: f64, complete: bool) -> scientist::run::RunId {
    let run = store.enqueue(NewRun { queue: queue.into(), ..new_run(0) }, at(0)).await.expect("enqueue");
    store.claim("pod-a", queue, at(0)).await.expect("claim").expect("the run");
    let id = run.id.as_str();
    let mut events = vec![
        attempt_event(&format!("{id}-s"), "ai.run.started", id, 1, 1, json!({"pod_id": "pod-a"})),
        attempt_event(&format!("{id}-1"), "ai.run.stage_started", id, 1, 1, json!({"stage": "Stage_1"})),
        attempt_event(
            &format!("{id}-2"),
            "ai.run.stage_completed",
            id,
            2,
            1,
            json!({"stage": "Stage_1", "duration_s": seconds}),
        ),
    ];
    if complete {
        events.push(attempt_event(&format!("{id}-c"), "ai.run.completed", id, 3, 1, json!({})));
    }
    store.apply_events(events, at(3)).await.expect("apply");
    run.id
}

pub(crate) async fn a_queues_history_is_the_p50_of_its_completed_runs(store: &dyn Store) {
    for seconds in [10.0, 30.0, 20.0] {
        seeded_run(store, "gpu", seconds, true).await;
    }
    seeded_run(store, "gpu", 999.0, false).await;
    seeded_run(store, "cpu", 1000.0, true).await;
    let filter = RunFilter {
        statuses: vec![RunStatus::Completed],
        queue: Some("gpu".into()),
        limit: HISTORY_RUNS,
        cursor: None,
    };
    let page = store.list(&filter).await.expect("list");
    let history = History::from_runs(&page.items);
    assert_eq!(history.runs, 3);
    assert_eq!(history.p50_s.get("Stage_1"), Some(&20.0));
}
