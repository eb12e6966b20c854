//! ETA from history through the built binary, on a real SQLite file: three COMPLETED runs
//! of queue `gpu` give Stage_1 a median of 20 s and Stage_2 one of 50 s; a RUNNING run of that
//! queue, 5 s into Stage_1 and sending no `eta_s`, is estimated at 15 s for its stage and 65 s
//! in all. `runs list` marks it `~`, `runs show --json` and `runs list --json` add `etaS`,
//! `etaStageS` and `etaEstimated: true`, and the completed runs get no ETA.

mod common;

use assert_cmd::Command;
use common::{at, attempt_event};
use scientist::run::{NewRun, RunId};
use scientist::store::{SqliteStore, Store};
use serde_json::{Value, json};

/// Enqueues a run of queue `gpu` at `start` s and claims it; then `stages` as (name, started
/// at s, duration s, completed), and the run's end when `completed`.
async fn seeded(store: &dyn Store, start: i64, stages: &[(&str, i64, f64, bool)], completed: bool) -> RunId {
    let run =
        store.enqueue(NewRun { queue: "gpu".into(), ..NewRun::new(json!({})) }, at(start)).await.expect("enqueue");
    store.claim("pod-a", "gpu", at(start)).await.expect("claim").expect("the run");
    let id = run.id.as_str();
    let mut events =
        vec![attempt_event(&format!("{id}-s"), "ai.run.started", id, start, 1, json!({"pod_id": "pod-a"}))];
    for (name, started, duration_s, done) in stages {
        let data = json!({"stage": name});
        events.push(attempt_event(&format!("{id}-{name}-s"), "ai.run.stage_started", id, *started, 1, data));
        if *done {
            let data = json!({"stage": name, "duration_s": duration_s});
            let ended = started + *duration_s as i64;
            events.push(attempt_event(&format!("{id}-{name}-c"), "ai.run.stage_completed", id, ended, 1, data));
        }
    }
    if completed {
        events.push(attempt_event(&format!("{id}-c"), "ai.run.completed", id, start + 200, 1, json!({})));
    }
    store.apply_events(events, at(start + 200)).await.expect("apply");
    run.id
}

fn scientist(store: &std::path::Path, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_scientist"))
        .args(args)
        .env_clear()
        .env("SCIENTIST_STORE", store)
        .env("SCIENTIST_NOW", at(1005).to_string())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .output()
        .expect("run scientist");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    serde_json::from_str(&stdout).unwrap_or(Value::String(stdout))
}

#[tokio::test]
async fn a_running_run_is_estimated_from_its_queues_completed_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("eta.sqlite");
    let store = SqliteStore::open(&path).await.expect("store");
    for (n, (first, second)) in [(10.0, 40.0), (30.0, 60.0), (20.0, 50.0)].into_iter().enumerate() {
        let start = n as i64 * 100;
        seeded(&store, start, &[("Stage_1", start + 1, first, true), ("Stage_2", start + 50, second, true)], true)
            .await;
    }
    let running = seeded(&store, 1000, &[("Stage_1", 1000, 0.0, false)], false).await;

    let shown = scientist(&path, &["runs", "show", running.as_str(), "--json"]);
    let eta = (shown["etaStageS"].as_f64(), shown["etaS"].as_f64(), shown["etaEstimated"].as_bool());
    assert_eq!(eta, (Some(15.0), Some(65.0), Some(true)), "{shown:#}");

    let Value::String(table) = scientist(&path, &["runs", "list"]) else { panic!("a table") };
    let row = table.lines().find(|line| line.contains(&running.as_str()[..8])).expect("the running run's row");
    assert!(row.contains("~1m05s"), "{table}");

    let Value::Array(listed) = scientist(&path, &["runs", "list", "--json"]) else { panic!("a JSON array") };
    for run in &listed {
        let is_running = run["_id"] == running.as_str();
        assert_eq!(run.get("etaEstimated").is_some(), is_running, "only the running run has an ETA: {run:#}");
    }
    assert_eq!(listed.len(), 4);
}
