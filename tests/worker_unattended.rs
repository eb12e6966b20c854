//! Unattended operation end to end, with the built binaries: retries (a worker on SQLite and
//! on MongoDB, a pipeline that fails retryably on its first attempt, killed by a signal from
//! outside, and succeeds on its second in the same run directory) and a stalled stage
//! (`serve` sweeping, a worker on `--server`).

use std::time::Duration;

use scientist::run::RunStatus;

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, StoreKind, finish, run_until, serve, stage_pid, wait_healthy};

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
    // The backoff is 1-1.5 s, the rest is the worker's.
    let run = run_until(&pod, &id, "the run to end", |run| run.status.is_terminal()).await;
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

/// A stage that waits for `$GO` printing nothing, prints one line, then waits for `$DONE`.
const QUIET: &str = r#"
[[stage]]
name = "Stage_1"
command = 'while [ ! -f "$GO" ]; do sleep 0.1; done; echo "making progress"; while [ ! -f "$DONE" ]; do sleep 0.1; done'
"#;

/// `serve` sweeps a run whose worker heartbeats while its stage prints nothing: flagged
/// stalled (status unchanged), cleared by the stage's next line, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_heartbeating_stage_is_flagged_stalled_and_cleared_by_its_next_line() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let _server = serve(&pod, port, &["--stall-after", "2s", "--sweep-every", "200ms"]);
    wait_healthy(port).await;
    let (go, done) = (pod.path("go"), pod.path("done"));
    let worker = pod
        .bare_worker(&pod.config(QUIET))
        .args(["--once", "--server", &format!("http://127.0.0.1:{port}")])
        .env("GO", &go)
        .env("DONE", &done)
        .spawn()
        .expect("start worker");
    let stalled = run_until(&pod, &id, "the run to be flagged stalled", |run| run.stalled_since.is_some()).await;
    assert_eq!(stalled.status, RunStatus::Running, "a stall changes no status");
    std::fs::write(&go, b"").expect("let the stage print");
    let cleared = run_until(&pod, &id, "its line to clear the flag", |run| run.stalled_since.is_none()).await;
    assert_eq!(cleared.status, RunStatus::Running);
    std::fs::write(&done, b"").expect("let the stage end");
    let (status, stderr) = finish(worker, Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed, "{stderr}");
    pod.cleanup().await;
}

/// A stage that records its pid and sleeps far past the test.
const LONG: &str = r#"
[[stage]]
name = "Stage_1"
command = 'echo $$ > "$SCIENTIST_RUN_DIR/pid"; exec sleep 600'
"#;

/// A worker cut off from its control plane for the whole lease stops its child: by then the
/// control plane presumes the run lost and may retry it elsewhere, and it must not run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_for_the_whole_lease_stops_its_child() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut server = serve(&pod, port, &[]);
    wait_healthy(port).await;
    let worker = pod
        .bare_worker(&pod.config(LONG))
        .args(["--once", "--server", &format!("http://127.0.0.1:{port}")])
        .args(["--silent-after", "1s", "--lease", "3s", "--flush-timeout", "1s"])
        .spawn()
        .expect("start worker");
    let pid_file = pod.run_dir(&id).await.join("pid");
    let pid = stage_pid(&pid_file).await;
    server.start_kill().expect("cut the control plane off");
    server.wait().await.expect("serve exited");
    let (status, stderr) = finish(worker, Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("unreachable for the whole lease"), "{stderr}");
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the child was stopped: {stderr}");
    pod.cleanup().await;
}
