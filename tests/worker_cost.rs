//! Cost end to end, with the built binaries: a worker on a store with a price file and a
//! queue budget runs a stage that reports its LLM usage through `scientist emit`; the run's
//! cost reaches the budget, the store asks it to stop, and its worker stops the child and
//! fails the run with `BUDGET_EXCEEDED`.

use std::time::Duration;

use scientist::run::RunStatus;

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, finish, run_until, stage_pid};

/// Two usage events (one priced by the table, one with its own cost), then its pid, then it
/// waits to be stopped.
const SPENDING: &str = r#"
[[stage]]
name = "Stage_1"
command = '''
scientist emit ai.llm.usage --run "$SCIENTIST_RUN_ID" --data '{"model": "gpt-5-mini", "input_tokens": 1000000, "output_tokens": 100000}'
scientist emit ai.llm.usage --run "$SCIENTIST_RUN_ID" --data '{"model": "house-model", "cost_usd": 0.4}'
echo $$ > "$SCIENTIST_RUN_DIR/pid"
while true; do sleep 0.1; done
'''
"#;

const PRICES: &str = "[llm.\"gpt-5-mini\"]\ninput_per_million = 0.25\noutput_per_million = 2.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_its_budget_is_stopped_by_its_worker_and_fails_budget_exceeded() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let prices = pod.path("prices.toml");
    std::fs::write(&prices, PRICES).expect("write prices");
    let worker = pod
        .worker(&pod.config(SPENDING))
        .arg("--once")
        .arg("--prices")
        .arg(&prices)
        .args(["--queue-budget", "default=0.75"])
        .spawn()
        .expect("start worker");
    let pid_file = pod.run_dir(&id).await.join("pid");
    let pid = stage_pid(&pid_file).await;
    let run = run_until(&pod, &id, "the run to end", |run| run.status.is_terminal()).await;
    let (status, stderr) = finish(worker, Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.as_ref().expect("an error");
    // 0.25 + 0.2 by the table, 0.4 reported: 0.85 of 0.75.
    assert_eq!((error.error_type.as_str(), error.retryable), ("BUDGET_EXCEEDED", false), "{error:?}");
    assert_eq!(error.message, "spent $0.85 of its $0.75 budget");
    assert!((run.cost.llm.usd - 0.85).abs() < 1e-9, "{:?}", run.cost);
    assert_eq!(run.cost.budget_usd, Some(0.75));
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the child was stopped: {stderr}");
    pod.cleanup().await;
}

/// The price file is checked before anything runs, and a worker on --server is told where
/// prices belong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_file_mistakes_are_refused_with_the_fix() {
    let pod = Pod::sqlite().await;
    let prices = pod.path("prices.toml");
    std::fs::write(&prices, "[llm.m]\ninput_per_million = 1\noutput_per_million = -2\n").expect("write prices");
    let config = pod.config(SPENDING);
    let worker = pod.worker(&config).arg("--once").arg("--prices").arg(&prices).spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[llm.\"m\"] has output_per_million = -2"), "{stderr}");
    let on_server = pod
        .bare_worker(&config)
        .args(["--once", "--server", "http://127.0.0.1:9", "--queue-budget", "default=5"])
        .spawn()
        .expect("start worker");
    let (status, stderr) = finish(on_server, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pass them to `scientist serve`"), "{stderr}");
    pod.cleanup().await;
}
