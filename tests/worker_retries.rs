//! Retries end to end: the built `scientist work` binary on a real store (SQLite and
//! MongoDB), a pipeline that fails retryably on its first attempt (killed by a signal from
//! outside) and succeeds on its second, in the same run directory.

use std::time::{Duration, Instant};

use scientist::run::RunStatus;

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, StoreKind};

/// The first attempt leaves a mark in the run directory and is killed by SIGTERM (retryable:
/// `SIGNAL_15`); the second finds the mark and exits 0.
const FLAKY: &str = r#"
[[stage]]
name = "Stage_1"
command = 'if [ -f "$SCIENTIST_RUN_DIR/tried" ]; then echo "attempt $SCIENTIST_ATTEMPT ok"; else touch "$SCIENTIST_RUN_DIR/tried"; kill -TERM $$; fi'
"#;

async fn retried_once_then_completed(kind: StoreKind) {
    let pod = Pod::new(kind).await;
    let id = pod.enqueue().await;
    let config = pod.config(FLAKY);
    let mut worker =
        pod.worker(&config).args(["--retry-max", "2", "--retry-backoff", "1s"]).spawn().expect("start worker");
    // Condition-polled with a deadline: the backoff is 1-1.5 s, the rest is the worker's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let run = pod.run(&id).await;
        if run.status.is_terminal() {
            break run;
        }
        assert!(Instant::now() < deadline, "the run did not end within 60 s: {run:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.start_kill().expect("stop the worker");
    assert_eq!((run.status, run.attempt, run.retry_count), (RunStatus::Completed, 2, 1), "{run:?}");
    let history: Vec<_> = run.attempts.iter().map(|attempt| (attempt.attempt, attempt.outcome.as_str())).collect();
    assert_eq!(history, [(1, "FAILED"), (2, "COMPLETED")]);
    let first = run.attempts[0].error.as_ref().expect("attempt 1's error");
    assert_eq!((first.error_type.as_str(), first.retryable), ("SIGNAL_15", true));
    assert!(pod.run_dir(&id).await.join("tried").is_file(), "both attempts used one run directory");
    pod.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_failing_retryably_once_completes_on_its_second_attempt() {
    retried_once_then_completed(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_pipeline_failing_retryably_once_completes_on_its_second_attempt() {
    retried_once_then_completed(StoreKind::Mongo).await;
}
