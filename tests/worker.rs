//! `scientist work` end to end: the built binary, real child pipelines from `examples/`,
//! a real SQLite store (and for the 4-stage pipeline also MongoDB direct mode, on the test
//! server), and for the outage test a real `scientist serve` on a real socket.
//! Every wait is on a condition with a deadline; nothing sleeps for a fixed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scientist::event::{Event, LogLevel, Payload};
use scientist::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use scientist::run::RunStatus;
use scientist::time::Timestamp;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;
#[path = "common/server.rs"]
mod test_server;

use pod::{BIN, POD, Pod, StoreKind, examples, finish, poll_until, run_until, serve, wait_for, wait_healthy};

fn count(events: &[Event], event_type: &str) -> usize {
    events.iter().filter(|event| event.event_type == event_type).count()
}

fn logs(events: &[Event]) -> Vec<(String, Option<LogLevel>)> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            Payload::Log(log) => Some((log.message.clone(), log.level)),
            _ => None,
        })
        .collect()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Whether a process is gone (a zombie waiting for a reaper counts as gone).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_four_stage_pipeline_reports_stages_nodes_progress_logs_and_completes() {
    four_stage_pipeline_completes(StoreKind::Sqlite).await;
}

/// MongoDB direct mode: the worker claims from and reports to MongoDB (`MONGODB_URL`).
#[tokio::test]
async fn a_four_stage_pipeline_on_mongodb_reports_stages_nodes_progress_logs_and_completes() {
    four_stage_pipeline_completes(StoreKind::Mongo).await;
}

/// The example 4-stage pipeline, run once by a worker on `kind`: stages, nodes, progress,
/// events through `scientist emit` on SCIENTIST_EMIT_URL, logs, and the run's end.
async fn four_stage_pipeline_completes(kind: StoreKind) {
    let pod = Pod::new(kind).await;
    let id = pod.enqueue().await;
    let worker = pod.worker(&examples().join("pipeline.toml")).arg("--once").spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed: {stderr}");

    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    assert_eq!(run.claimed_by.as_deref(), Some(POD));
    assert_eq!(run.pod.as_ref().map(|pod| pod.id.as_str()), Some(POD));
    for stage in ["Stage_1", "Stage_2", "Stage_3", "Stage_4"] {
        let timing = run.stage_timing.get(stage).unwrap_or_else(|| panic!("no timing for {stage}"));
        assert!(timing.completed_at.is_some() && timing.duration_s.is_some(), "{stage}: {timing:?}");
    }
    assert_eq!(run.nodes.len(), 12, "3 nodes per stage");
    let current = run.current_stage.as_ref().expect("current stage");
    assert_eq!((current.name.as_str(), current.progress, current.good_nodes), ("Stage_4", 1.0, 3));
    assert!(run.heartbeat_at.is_some(), "heartbeats arrived");

    let events = pod.events(&id).await;
    assert_eq!(count(&events, "ai.run.started"), 1);
    assert_eq!(count(&events, "ai.run.stage_started"), 4);
    assert_eq!(count(&events, "ai.run.stage_completed"), 4);
    assert_eq!(count(&events, "ai.node.created"), 12);
    assert_eq!(count(&events, "ai.run.stage_progress"), 12);
    assert_eq!(count(&events, "ai.run.completed"), 1);
    assert!(count(&events, "ai.run.heartbeat") >= 1);
    // One metric per stage came through `scientist emit` on SCIENTIST_EMIT_URL.
    let via_emit = events.iter().filter(|event| event.data.get("via") == Some(&json!("scientist emit"))).count();
    assert_eq!(via_emit, 4);
    // One ordered stream: every event carries the claim's attempt, and seq grows in stored order.
    assert!(events.iter().all(|event| event.attempt == Some(1)), "every event is stamped with the attempt");
    let seqs: Vec<u64> = events.iter().map(|event| event.seq.expect("seq")).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "seq grows in stored order: {seqs:?}");
    assert_eq!(events.last().map(|event| event.event_type.as_str()), Some("ai.run.completed"));

    let lines = logs(&events);
    assert!(lines.iter().any(|(line, _)| line == "Stage_2: iteration 3/3 done, metric 0.80"));
    // The progress bar redrew 11 times in ~60 ms: its first state and its final one are kept.
    let bar: Vec<&String> =
        lines.iter().map(|(line, _)| line).filter(|line| line.starts_with("Stage_1 iter 1:")).collect();
    assert!((1..=3).contains(&bar.len()), "{bar:?}");
    assert_eq!(bar.last().map(|line| line.contains("100%")), Some(true));
    // Secrets never leave the pod: neither the child's nor the worker's token.
    let everything = serde_json::to_string(&events.iter().map(Event::to_json).collect::<Vec<_>>()).expect("json");
    assert!(!everything.contains("sk-toy-"), "a secret from the child's output leaked");
    assert!(!everything.contains("the-workers-own-secret-token"));
    assert!(lines.iter().any(|(line, _)| line.contains("OPENAI_API_KEY=[REDACTED]")));

    let dir = pod.run_dir(&id).await;
    assert!(dir.join("idea.json").is_file());
    assert!(dir.join("Stage_4").join("result.json").is_file());
    let spooled: Vec<_> = std::fs::read_dir(pod.path("spool"))
        .expect("spool")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("seg-"))
        .collect();
    assert!(spooled.is_empty(), "every acknowledged event left the spool");
    pod.cleanup().await;
}

#[tokio::test]
async fn a_failing_stage_reports_its_code_stage_and_traceback() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let worker = pod
        .worker(&examples().join("pipeline.toml"))
        .arg("--once")
        .env("TOY_FAIL_STAGE", "Stage_2")
        .spawn()
        .expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "a failed run is not a failed worker: {stderr}");

    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.expect("error");
    assert_eq!(error.error_type, "EXIT_1");
    assert_eq!(error.stage.as_deref(), Some("Stage_2"));
    assert!(!error.retryable);
    assert!(error.message.contains("ZeroDivisionError: division by zero"), "{}", error.message);
    let traceback = error.traceback.expect("traceback");
    assert!(traceback.starts_with("Traceback (most recent call last):"), "{traceback}");
    assert!(traceback.contains("toy_stage.py") && traceback.ends_with("ZeroDivisionError: division by zero"));

    let events = pod.events(&id).await;
    assert_eq!(count(&events, "ai.run.stage_started"), 2, "Stage_3 never started");
    assert_eq!(count(&events, "ai.run.stage_completed"), 1);
    let lines = logs(&events);
    let block = lines.iter().find(|(line, _)| line.starts_with("Traceback")).expect("the traceback as a log record");
    assert_eq!(block.1, Some(LogLevel::Error));
    assert!(block.0.lines().count() >= 4, "the traceback is one record: {}", block.0);
    let warning = lines.iter().find(|(line, _)| line.contains("the loss diverged")).expect("warning line");
    assert_eq!(warning.1, Some(LogLevel::Warning));
}

#[tokio::test]
async fn an_operator_cancel_kills_a_process_group_that_ignores_sigterm() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let stubborn = examples().join("pipeline/stubborn.sh");
    let config =
        pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = [{:?}]\n", stubborn.display().to_string()));
    let grace = Duration::from_secs(1);
    let worker = pod.worker(&config).args(["--once", "--grace", "1s"]).spawn().expect("start worker");
    let dir = pod.run_dir(&id).await;
    let pids: Vec<i32> = wait_for("the stage's pids", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(dir.join("pids")).ok()?;
        Some(text.split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
    })
    .await;
    assert_eq!(pids.len(), 2, "the stage and its helper");

    let cancel = Command::new(BIN)
        .args(["runs", "cancel", id.as_str(), "--reason", "wrong dataset"])
        .env_remove("MONGODB_URL")
        .envs(pod.store_env())
        .output()
        .await
        .expect("runs cancel");
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));

    // The worker sends SIGTERM (which the stage notes and ignores), then SIGKILL to the group.
    wait_for("SIGTERM to reach the stage", Duration::from_secs(10), || dir.join("terms").exists().then_some(())).await;
    let termed = Instant::now();
    wait_for("the whole process group to be gone", grace + Duration::from_secs(1), || {
        pids.iter().all(|pid| gone(*pid)).then_some(())
    })
    .await;
    assert!(termed.elapsed() >= grace.mul_f64(0.9), "SIGKILL came before the grace period ended");

    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert!(status.success(), "{stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Canceled);
    let canceled = run.canceled.expect("cancellation");
    assert_eq!(canceled.reason.as_deref(), Some("wrong dataset"));
    assert_eq!(count(&pod.events(&id).await, "ai.run.canceled"), 1);
}

#[tokio::test]
async fn sigterm_to_the_worker_fails_the_run_retryably_flushes_and_exits_0() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let sleeper = examples().join("pipeline/sleeper.sh");
    let config =
        pod.config(&format!("[[stage]]\nname = \"Stage_3\"\ncommand = [{:?}]\n", sleeper.display().to_string()));
    let worker = pod.worker(&config).spawn().expect("start worker");
    let dir = pod.run_dir(&id).await;
    wait_for("the stage to start", Duration::from_secs(30), || dir.join("started").exists().then_some(())).await;
    signal(worker.id().expect("pid"), libc::SIGTERM);
    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {stderr}");

    // Everything was flushed before the exit: the store has the verdict now.
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed, "{stderr}");
    let error = run.error.expect("error");
    assert_eq!((error.error_type.as_str(), error.retryable), ("WORKER_SHUTDOWN", true));
    assert_eq!(error.stage.as_deref(), Some("Stage_3"));
}

/// The worker's stderr, line by line as it comes.
fn stderr_lines(child: &mut Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use tokio::io::AsyncBufReadExt;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the worker never said {needle:?}");
}

#[tokio::test]
async fn sigusr1_drains_the_run_to_its_end_and_claims_nothing_more() {
    let pod = Pod::sqlite().await;
    let first = pod.enqueue().await;
    let sleeper = examples().join("pipeline/sleeper.sh");
    let config = pod.config(&format!("command = [{:?}]\n", sleeper.display().to_string()));
    let release = pod.path("release");
    let mut worker = pod.worker(&config).env("SLEEPER_UNTIL", &release).spawn().expect("start worker");
    let mut lines = stderr_lines(&mut worker);
    let dir = pod.run_dir(&first).await;
    wait_for("the run to start", Duration::from_secs(30), || dir.join("started").exists().then_some(())).await;
    let second = pod.enqueue().await;
    signal(worker.id().expect("pid"), libc::SIGUSR1);
    wait_line(&mut lines, "draining").await;
    std::fs::write(&release, b"").expect("release the stage");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("exits").expect("status");
    assert!(status.success());
    assert_eq!(pod.run(&first).await.status, RunStatus::Completed);
    assert_eq!(pod.run(&second).await.status, RunStatus::Queued, "a draining worker claims nothing new");
}

#[tokio::test]
async fn a_drain_file_stops_claiming_after_the_current_run() {
    let pod = Pod::sqlite().await;
    let first = pod.enqueue().await;
    let sleeper = examples().join("pipeline/sleeper.sh");
    let config = pod.config(&format!("command = [{:?}]\n", sleeper.display().to_string()));
    let (release, drain) = (pod.path("release"), pod.path("drain"));
    let worker = pod
        .worker(&config)
        .env("SLEEPER_UNTIL", &release)
        .arg("--drain-file")
        .arg(&drain)
        .spawn()
        .expect("start worker");
    let dir = pod.run_dir(&first).await;
    wait_for("the run to start", Duration::from_secs(30), || dir.join("started").exists().then_some(())).await;
    let second = pod.enqueue().await;
    std::fs::write(&drain, b"").expect("ask for a drain");
    std::fs::write(&release, b"").expect("release the stage");
    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&first).await.status, RunStatus::Completed);
    assert_eq!(pod.run(&second).await.status, RunStatus::Queued);
}

#[tokio::test]
async fn a_stage_past_its_timeout_fails_with_timeout() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let sleeper = examples().join("pipeline/sleeper.sh");
    let config = pod.config(&format!(
        "[[stage]]\nname = \"Stage_1\"\ncommand = [{:?}]\ntimeout = \"300ms\"\n",
        sleeper.display().to_string()
    ));
    let worker = pod.worker(&config).arg("--once").spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert!(status.success(), "{stderr}");
    let error = pod.run(&id).await.error.expect("error");
    assert_eq!((error.error_type.as_str(), error.stage.as_deref()), ("TIMEOUT", Some("Stage_1")));
    assert!(error.message.contains("300ms"), "{}", error.message);
}

/// A `scientist serve` process on a fixed port over the pod's store.
fn spool_text(pod: &Pod) -> String {
    let Ok(entries) = std::fs::read_dir(pod.path("spool")) else { return String::new() };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect()
}

#[tokio::test]
async fn a_control_plane_outage_mid_run_loses_no_event() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut server = serve(&pod, port, &[]);
    wait_healthy(port).await;

    let outage = examples().join("pipeline/outage.sh");
    let config =
        pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = [{:?}]\n", outage.display().to_string()));
    let go = pod.path("go");
    let worker = pod
        .bare_worker(&config)
        .args(["--once", "--server", &format!("http://127.0.0.1:{port}")])
        .env("OUTAGE_GO", &go)
        .env("SCIENTIST_FLUSH_TIMEOUT", "120s")
        .spawn()
        .expect("start worker");
    let dir = pod.run_dir(&id).await;
    wait_for("the stage's first events", Duration::from_secs(30), || dir.join("ready").exists().then_some(())).await;

    // The control plane goes away mid-run; the run carries on and finishes meanwhile.
    server.start_kill().expect("kill serve");
    server.wait().await.expect("serve exited");
    std::fs::write(&go, b"").expect("let the stage go on");
    wait_for("the run's end to be spooled", Duration::from_secs(60), || {
        spool_text(&pod).contains("\"ai.run.completed\"").then_some(())
    })
    .await;
    assert_ne!(pod.run(&id).await.status, RunStatus::Completed, "the end happened during the outage");

    // Back: the spool drains in order, and every event arrives.
    let _server = serve(&pod, port, &[]);
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "{stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    let events = pod.events(&id).await;
    let lines = logs(&events);
    for index in 1..=20 {
        let line = format!("during outage {index}");
        assert_eq!(lines.iter().filter(|(text, _)| *text == line).count(), 1, "{line}");
    }
    assert_eq!(count(&events, "ai.run.stage_progress"), 6);
    let seqs: Vec<u64> = events.iter().map(|event| event.seq.expect("seq")).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in order: {seqs:?}");
    assert_eq!(run.current_stage.map(|stage| stage.iteration), Some(6));
    assert!(spool_text(&pod).is_empty(), "the spool is empty once everything is acknowledged");
}

/// `scientist emit --spool` and the worker share one spool format: what `emit` kept while
/// the control plane was down is sent by the next worker started on that spool directory.
#[tokio::test]
async fn a_worker_sends_what_emit_spool_kept_during_an_outage() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = pod.path("spool");
    for message in ["kept 1", "kept 2"] {
        let data = json!({ "message": message }).to_string();
        let kept = Command::new(BIN)
            .args(["emit", "ai.run.log", "--run", id.as_str(), "--data", &data, "--spool"])
            .arg("--spool-dir")
            .arg(&spool)
            .env("SCIENTIST_SERVER", &url)
            .env_remove("SCIENTIST_EMIT_URL")
            .env_remove("SCIENTIST_TOKEN")
            .env_remove("SCIENTIST_SPOOL_DIR")
            .output()
            .await
            .expect("run scientist emit");
        let stderr = String::from_utf8_lossy(&kept.stderr);
        assert_eq!(kept.status.code(), Some(0), "kept while serve is down: {stderr}");
    }
    assert!(!spool_text(&pod).is_empty(), "emit kept the events in the worker's spool format");

    let _server = serve(&pod, port, &[]);
    wait_healthy(port).await;
    let config = pod.config("[[stage]]\nname = \"Stage_1\"\ncommand = [\"true\"]\n");
    // A queue nothing waits in: the worker only sends what it found in its spool, then exits.
    let worker = pod.bare_worker(&config).args(["--once", "--queue", "nothing-here", "--server", &url]).spawn();
    let (status, stderr) = finish(worker.expect("start worker"), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    let lines = logs(&pod.events(&id).await);
    let messages: Vec<&str> = lines.iter().map(|(line, _)| line.as_str()).collect();
    assert_eq!(messages, ["kept 1", "kept 2"], "delivered once each, in the order kept: {stderr}");
    assert!(spool_text(&pod).is_empty(), "the spool is empty once everything is acknowledged");
}

/// The stage of the size-limit test: a 3 MB event (within the one limit), a 5 MB event
/// (over it: `emit` must exit 5, or the stage fails), and a traceback of 6 MB on stderr.
const SIZES_STAGE: &str = r#"set -e
python3 -c 'import json; print(json.dumps({"message": "x" * 3000000}))' > big.json
scientist emit ai.run.log --run "$SCIENTIST_RUN_ID" --data @big.json
python3 -c 'import json; print(json.dumps({"message": "y" * 5000000}))' > huge.json
set +e
scientist emit ai.run.log --run "$SCIENTIST_RUN_ID" --data @huge.json 2> refused.txt
refused=$?
set -e
[ "$refused" = 5 ] || { echo "the 5 MB event was not refused: exit $refused" >&2; exit 3; }
python3 - <<'PY'
# Straight to the endpoint: within the limit as sent, over it once the worker stamps it.
import json, os, sys, urllib.error, urllib.request
limit = int(os.environ["MAX_EVENT_BYTES"])
event = {"specversion": "1.0", "id": "direct-edge", "source": "child://sizes", "type": "ai.run.log",
         "subject": "run/" + os.environ["SCIENTIST_RUN_ID"], "data": {"message": ""}}
event["data"]["message"] = "w" * (limit - 40 - len(json.dumps(event, separators=(",", ":"))))
request = urllib.request.Request(os.environ["SCIENTIST_EMIT_URL"] + "/api/ingest/event",
    data=json.dumps(event, separators=(",", ":")).encode(), method="POST",
    headers={"content-type": "application/cloudevents+json",
             "authorization": "Bearer " + os.environ["SCIENTIST_TOKEN"]})
try:
    urllib.request.urlopen(request)
    sys.exit("the endpoint accepted an event the control plane would refuse")
except urllib.error.HTTPError as refused:
    answer = json.load(refused)
    if refused.code != 413 or "per event" not in answer["error"]:
        sys.exit("unexpected answer %s %s" % (refused.code, answer))
PY
python3 -c '
import sys
sys.stderr.write("Traceback (most recent call last):\n")
for _ in range(390):
    sys.stderr.write("  " + "z" * 16000 + "\n")
sys.stderr.write("ValueError: deep\n")
'
echo "sizes stage done"
"#;

/// One size limit on every hop: what the worker's endpoint accepts, `serve` accepts too, so
/// the run's end is never set aside with a refused batch; what is over it is refused at the
/// pod with the control plane's reason; an oversize traceback is cut with a marker.
#[tokio::test]
async fn events_within_the_limit_reach_serve_and_one_over_it_is_refused_at_the_pod() {
    use scientist::limits::{MAX_EVENT_BYTES, TRUNCATED_MARKER};
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = free_port();
    let _server = serve(&pod, port, &[]);
    wait_healthy(port).await;
    let stage = pod.path("sizes.sh");
    std::fs::write(&stage, SIZES_STAGE).expect("write stage");
    let config =
        pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = [\"sh\", {:?}]\n", stage.display().to_string()));
    let worker = pod
        .bare_worker(&config)
        .args(["--once", "--server", &format!("http://127.0.0.1:{port}")])
        .env("MAX_EVENT_BYTES", MAX_EVENT_BYTES.to_string())
        .spawn();
    let (status, stderr) = finish(worker.expect("start worker"), Duration::from_secs(120)).await;
    assert!(status.success(), "{stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?} {stderr}", run.error);
    let events = pod.events(&id).await;
    let lines = logs(&events);
    assert!(lines.iter().any(|(text, _)| text.len() == 3_000_000), "the 3 MB event arrived");
    assert!(!lines.iter().any(|(text, _)| text.starts_with("yyyy") || text.starts_with("wwww")), "refused ones");
    let traceback = lines.iter().find(|(text, _)| text.starts_with("Traceback")).expect("the traceback arrived");
    assert!(traceback.0.contains(TRUNCATED_MARKER), "cut with a marker");
    assert!(events.iter().all(|event| scientist::limits::json_len(&event.to_json()) <= MAX_EVENT_BYTES));
    let run_dir = pod.run_dir(&id).await;
    let refused = std::fs::read_to_string(run_dir.join("refused.txt")).expect("emit's stderr");
    assert!(refused.contains(&format!("the limit is {MAX_EVENT_BYTES} bytes per event")), "{refused}");
    assert!(!pod.path("spool/rejected.ndjson").exists(), "nothing was set aside");
}

#[tokio::test]
async fn the_local_endpoint_takes_only_its_runs_events_with_its_token() {
    use scientist::control::StoreControlPlane;
    use scientist::emit::{EventStream, LocalEndpoint, StreamConfig};
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let claimed = pod.store.claim(POD, "default", Timestamp::now()).await.expect("claim").expect("a run");
    let sink = Arc::new(StoreControlPlane::new(pod.store.clone(), "test store"));
    let stream = EventStream::open(StreamConfig::new(pod.path("spool"), "pod://test".into()), sink).expect("stream");
    let endpoint = LocalEndpoint::start("127.0.0.1:0".parse().expect("addr")).await.expect("endpoint");
    let client = reqwest::Client::new();
    let post = |token: &str, run: &str| {
        let event = json!({"specversion": "1.0", "id": format!("e-{run}-{token}"), "source": "child://x",
            "type": "ai.run.log", "subject": format!("run/{run}"), "data": {"message": "hello"}});
        client
            .post(format!("{}/api/ingest/event", endpoint.url()))
            .bearer_auth(token)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
    };
    let token = endpoint.token().to_owned();
    let answer = post(&token, id.as_str()).await.expect("post");
    assert_eq!(answer.status(), 409, "no run attached yet");

    endpoint.attach(stream.begin(&id, claimed.attempt, 0).await.expect("begin"));
    assert_eq!(post("wrong", id.as_str()).await.expect("post").status(), 401);
    let other = post(&token, "some-other-run").await.expect("post");
    assert_eq!(other.status(), 400);
    let answer = post(&token, id.as_str()).await.expect("post");
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["outcome"], "spooled");
    assert_eq!(stream.close(Duration::from_secs(10)).await.undelivered, 0);
    let events = pod.events(&id).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].attempt, events[0].seq), (Some(claimed.attempt), Some(1)));
}

#[tokio::test]
async fn a_wrong_token_for_the_server_exits_7_and_a_bad_config_exits_2() {
    let server = test_server::TestServer::start(&["right-token"]).await;
    let pod = Pod::sqlite().await;
    let config = pod.config("command = \"true\"\n");
    let mut worker = pod.bare_worker(&config);
    worker.args(["--server", &server.url(""), "--token", "wrong-token"]);
    let (status, stderr) = finish(worker.spawn().expect("start worker"), Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("refused the token"), "{stderr}");
    assert!(stderr.contains("--token on the command line shows in `ps`"), "typed, so warned: {stderr}");

    let config = pod.config("[[stage]]\nname = \"Stage_9\"\ncommand = \"true\"\n");
    let (status, stderr) = finish(pod.worker(&config).spawn().expect("start worker"), Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown stage \"Stage_9\"") && stderr.contains("pipeline.toml"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// A pod dies without a word (SIGKILL to its worker): the control plane first flags the run
/// silent and keeps it RUNNING, operators see it, and once the lease runs out the run fails
/// WORKER_LOST, retryable, with the failure in its history.
#[tokio::test]
async fn a_killed_worker_is_flagged_silent_then_its_run_fails_worker_lost() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let port = free_port();
    let flags = ["--silent-after", "1s", "--lease", "8s", "--sweep-every", "100ms"];
    let _server = serve(&pod, port, &flags);
    wait_healthy(port).await;
    let stubborn = examples().join("pipeline/stubborn.sh");
    let config =
        pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = [{:?}]\n", stubborn.display().to_string()));
    let mut worker = pod
        .bare_worker(&config)
        .args(["--once", "--server", &format!("http://127.0.0.1:{port}")])
        .spawn()
        .expect("start worker");
    let dir = pod.run_dir(&id).await;
    let pids: Vec<i32> = wait_for("the stage's pids", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(dir.join("pids")).ok()?;
        Some(text.split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
    })
    .await;
    let running = run_until(&pod, &id, "the run to start", |run| run.status == RunStatus::Running).await;
    assert_eq!(running.silent_since, None, "heard while it lives");

    worker.start_kill().expect("SIGKILL the worker");
    worker.wait().await.expect("worker gone");
    let silent = run_until(&pod, &id, "the silent flag", |run| {
        assert_eq!(run.status, RunStatus::Running, "flagged silent before the lease runs out");
        run.silent_since.is_some()
    })
    .await;
    let flagged = silent.silent_since.expect("flagged");
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(BIN)
            .args(args)
            .env_remove("MONGODB_URL")
            .envs(pod.store_env())
            .env("NO_COLOR", "1")
            .output()
            .expect("run the CLI");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(cli(&["runs", "list"]).contains("RUNNING (silent)"));
    assert!(cli(&["runs", "show", id.as_str()]).contains("its worker is not heard from"));

    let run = run_until(&pod, &id, "the lease to run out", |run| run.status != RunStatus::Running).await;
    for pid in pids {
        signal(pid as u32, libc::SIGKILL);
    }
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.expect("error");
    assert_eq!((error.error_type.as_str(), error.retryable), ("WORKER_LOST", true));
    assert!(error.message.contains(POD), "{}", error.message);
    let lost_after = run.failed_at.expect("failed at").seconds_since(flagged);
    assert!(lost_after >= 6.0, "failed {lost_after} s after the flag: the lease is 8 s, the flag came at 1 s");
    // The sweep writes the run, then its record: wait for the record, then check it is one.
    let read = async || count(&pod.events(&id).await, "ai.run.failed");
    assert_eq!(poll_until("the failure in the run's history", read, |failed| *failed > 0).await, 1);
}

/// The ideation request once `check` holds for it, polled from the store.
async fn ideation_until(pod: &Pod, id: &str, what: &str, check: impl Fn(&IdeationRequest) -> bool) -> IdeationRequest {
    let read = async || pod.store.get_ideation(id).await.expect("get").expect("request");
    poll_until(what, read, check).await
}

fn ideation_request(id: &str, input: Value) -> NewIdeation {
    let Value::Object(input) = input else { panic!("an ideation input is an object") };
    NewIdeation { id: id.into(), hypothesis_id: format!("hyp-of-{id}"), input }
}

/// A hybrid pod with a run and an ideation request queued takes the request first: the
/// example's [ideation] command writes ideas, which land on the hypothesis, and the request
/// ends COMPLETED; the next claim is the run. A failing command ends its request FAILED
/// with the command's last words.
#[tokio::test]
async fn a_hybrid_worker_serves_ideation_first_and_reports_ideas_and_failures() {
    let pod = Pod::sqlite().await;
    let run_id = pod.enqueue().await;
    let input = json!({"hypothesis": "dropout helps", "numIdeas": 3});
    pod.store.enqueue_ideation(ideation_request("idea-ok", input), Timestamp::now()).await.expect("enqueue");
    let config = examples().join("pipeline.toml");
    let once = |pod: &Pod| pod.worker(&config).args(["--once", "--mode", "hybrid"]).spawn().expect("start worker");

    let (status, stderr) = finish(once(&pod), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    let request = pod.store.get_ideation("idea-ok").await.expect("get").expect("request");
    assert_eq!((request.status, request.claimed_by.as_deref()), (IdeationStatus::Completed, Some(POD)), "{stderr}");
    let ideas = pod.store.hypothesis_ideas("hyp-of-idea-ok").await.expect("ideas").expect("reported");
    assert_eq!(ideas.ideas.len(), 3);
    assert_eq!(ideas.idea_json["Name"], json!("idea_1"), "ideaJson is the first idea");
    assert!(ideas.idea_json["Title"].as_str().is_some_and(|title| title.contains("dropout helps")));
    assert!(stderr.contains("[ideation idea-ok] toy ideation: 3 idea(s)"), "{stderr}");
    assert_eq!(pod.run(&run_id).await.status, RunStatus::Queued, "ideation first: the run waits");

    let failing = ideation_request("idea-bad", json!({"fail": true}));
    pod.store.enqueue_ideation(failing, Timestamp::now()).await.expect("enqueue");
    let (status, stderr) = finish(once(&pod), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    let request = pod.store.get_ideation("idea-bad").await.expect("get").expect("request");
    assert_eq!(request.status, IdeationStatus::Failed);
    let error = request.error.unwrap_or_default();
    assert!(error.contains("exit status: 3") && error.contains("the model is unavailable"), "{error}");
    assert!(pod.store.hypothesis_ideas("hyp-of-idea-bad").await.expect("ideas").is_none());

    let (status, stderr) = finish(once(&pod), Duration::from_secs(120)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&run_id).await.status, RunStatus::Completed, "{stderr}");
}

/// An ideation pod without database credentials claims, reports and ends through `serve`.
#[tokio::test]
async fn an_ideation_worker_on_the_control_plane_reports_through_it() {
    let pod = Pod::sqlite().await;
    let port = free_port();
    let _server = serve(&pod, port, &[]);
    wait_healthy(port).await;
    let input = json!({"hypothesis": "wider layers", "numIdeas": 2});
    pod.store.enqueue_ideation(ideation_request("idea-http", input), Timestamp::now()).await.expect("enqueue");
    let config = examples().join("pipeline.toml");
    let worker = pod
        .bare_worker(&config)
        .args(["--once", "--mode", "ideation", "--server", &format!("http://127.0.0.1:{port}")])
        .spawn()
        .expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    let request = pod.store.get_ideation("idea-http").await.expect("get").expect("request");
    assert_eq!(request.status, IdeationStatus::Completed, "{stderr}");
    let ideas = pod.store.hypothesis_ideas("hyp-of-idea-http").await.expect("ideas").expect("reported");
    assert_eq!(ideas.ideas.len(), 2);
}

#[tokio::test]
async fn a_mode_the_config_cannot_serve_exits_2() {
    let pod = Pod::sqlite().await;
    let config = pod.config("[[stage]]\nname = \"Stage_1\"\ncommand = \"true\"\n");
    let worker = pod.worker(&config).args(["--once", "--mode", "ideation"]).spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no [ideation] command"), "{stderr}");
}

/// The pid an ideation command of the test below wrote, once it did.
async fn ideation_command_pid(pod: &Pod, id: &str) -> i32 {
    let suffix = format!("_{id}");
    wait_for("the command's pid", Duration::from_secs(30), || {
        let dirs = std::fs::read_dir(pod.path("runs").join("ideation")).ok()?;
        let dir = dirs.filter_map(Result::ok).find(|dir| dir.file_name().to_string_lossy().ends_with(&suffix))?;
        std::fs::read_to_string(dir.path().join("pid")).ok()?.trim().parse().ok()
    })
    .await
}

/// An ideation command that runs past the lease keeps its request through the worker's
/// heartbeats. A worker killed mid-command (SIGKILL, no word) loses its request, which the
/// control plane fails WORKER_LOST once the lease runs out. A worker frozen past the lease
/// (SIGSTOP) learns at its next beat that the claim is gone, stops its command and leaves
/// the request as the sweep ended it.
#[tokio::test]
async fn ideation_claims_live_on_heartbeats_and_are_lost_with_their_worker() {
    let pod = Pod::sqlite().await;
    let port = free_port();
    let lease_s = 3.0;
    let _server = serve(&pod, port, &["--silent-after", "1s", "--lease", "3s", "--sweep-every", "100ms"]);
    wait_healthy(port).await;
    let server = format!("http://127.0.0.1:{port}");
    // The command notes its pid, then takes `seconds` before writing its ideas.
    let config = |seconds: u32| {
        let script = format!(
            "echo $$ > \"$SCIENTIST_RUN_DIR/pid\"; sleep {seconds}; echo '[{{\"Name\": \"slow\"}}]' > \"$SCIENTIST_IDEAS_FILE\""
        );
        pod.config(&format!("[ideation]\ncommand = [\"sh\", \"-c\", {script:?}]\n"))
    };
    let worker = |config: &std::path::Path| {
        pod.bare_worker(config).args(["--once", "--mode", "ideation", "--server", &server]).spawn().expect("worker")
    };
    let enqueue = |id: &str| pod.store.enqueue_ideation(ideation_request(id, json!({})), Timestamp::now());
    let is_lost = |request: &IdeationRequest| {
        let error = request.error.clone().unwrap_or_default();
        request.status == IdeationStatus::Failed && error.contains("WORKER_LOST") && error.contains(POD)
    };

    enqueue("idea-slow").await.expect("enqueue");
    let (status, stderr) = finish(worker(&config(5)), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    let request = pod.store.get_ideation("idea-slow").await.expect("get").expect("request");
    assert_eq!(request.status, IdeationStatus::Completed, "5 s on a 3 s lease: {stderr}");
    let ran_s = request.finished_at.expect("finished").seconds_since(request.claimed_at.expect("claimed"));
    assert!(ran_s >= 5.0, "ran {ran_s} s");

    enqueue("idea-killed").await.expect("enqueue");
    let mut killed = worker(&config(120));
    let orphan = ideation_command_pid(&pod, "idea-killed").await;
    killed.start_kill().expect("SIGKILL the worker");
    killed.wait().await.expect("worker gone");
    let killed_at = Timestamp::now();
    let request = ideation_until(&pod, "idea-killed", "the lease to run out", |request| {
        request.status != IdeationStatus::Running
    })
    .await;
    signal(orphan as u32, libc::SIGKILL);
    assert!(is_lost(&request), "{request:?}");
    let lost_after = request.finished_at.expect("finished").seconds_since(killed_at);
    assert!(lost_after >= lease_s - 0.5, "lost {lost_after} s after the worker died, on a 3 s lease");

    enqueue("idea-frozen").await.expect("enqueue");
    let frozen = worker(&config(120));
    let command = ideation_command_pid(&pod, "idea-frozen").await;
    let worker_pid = frozen.id().expect("the worker's pid");
    signal(worker_pid, libc::SIGSTOP);
    ideation_until(&pod, "idea-frozen", "the lease to run out", |request| request.status != IdeationStatus::Running)
        .await;
    signal(worker_pid, libc::SIGCONT);
    let (status, stderr) = finish(frozen, Duration::from_secs(30)).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("no longer this worker's"), "{stderr}");
    assert!(gone(command), "the lost claim's command was stopped");
    let request = pod.store.get_ideation("idea-frozen").await.expect("get").expect("request");
    assert!(is_lost(&request), "the thawed worker changed nothing: {request:?}");
}

/// A stage that leaves a process in its group behind: the worker warns (and stops it), so
/// the run's stderr holds a warning as well as the worker's notices.
const LEAVES_A_PROCESS: &str = "command = [\"sh\", \"-c\", \"sleep 30 & echo done\"]\n";

#[tokio::test]
async fn log_format_json_makes_every_stderr_line_json() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let config = pod.config(LEAVES_A_PROCESS);
    let worker = pod.worker(&config).arg("--once").env("LOG_FORMAT", "json").env_remove("NO_COLOR").spawn();
    let (status, stderr) = finish(worker.expect("start worker"), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed, "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}\n{stderr}")))
        .collect();
    assert!(lines.iter().all(Value::is_object), "{stderr}");
    let notices = lines.iter().filter(|line| line["target"] == "scientist::notice").count();
    assert!(notices >= 2, "the worker's progress lines are JSON too: {stderr}");
    assert!(
        lines.iter().any(|line| line["fields"]["message"].as_str().is_some_and(|text| text.contains("left processes"))),
        "the warning is there: {stderr}"
    );
}

#[tokio::test]
async fn without_a_terminal_stderr_carries_no_colour_codes() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let config = pod.config(LEAVES_A_PROCESS);
    let worker = pod.worker(&config).arg("--once").env_remove("LOG_FORMAT").env_remove("NO_COLOR").spawn();
    let (status, stderr) = finish(worker.expect("start worker"), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed, "{stderr}");
    assert!(stderr.contains("WARN") && stderr.contains("left processes"), "a warning was logged: {stderr}");
    assert!(stderr.lines().any(|line| line.starts_with("scientist work: running ")), "notices are plain: {stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI escapes in a log that is not a terminal: {stderr:?}");
}

/// `--config pipeline.toml` (no directory part) from the config's folder: the stage finds
/// its script through `$SCIENTIST_CONFIG_DIR`, an absolute directory.
#[tokio::test]
async fn a_bare_config_file_name_gives_the_stage_an_absolute_config_dir() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    std::fs::write(pod.path("stage.sh"), "echo \"$SCIENTIST_CONFIG_DIR\" > \"$SCIENTIST_RUN_DIR/config_dir\"\n")
        .expect("write the stage");
    pod.config("command = 'sh \"$SCIENTIST_CONFIG_DIR/stage.sh\"'\n");
    let worker = pod.worker(std::path::Path::new("pipeline.toml")).arg("--once").current_dir(pod.path("")).spawn();
    let (status, stderr) = finish(worker.expect("start worker"), Duration::from_secs(60)).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed, "{stderr}");
    let seen = std::fs::read_to_string(pod.run_dir(&id).await.join("config_dir")).expect("the stage ran");
    let expected = std::fs::canonicalize(pod.path("")).expect("the pod's dir");
    assert_eq!(std::path::Path::new(seen.trim()), expected);
}
