//! The built binary against a seeded store, on SQLite, on MongoDB, and over `serve`'s API
//! (`--server` with a token, no store): every table is a snapshot (the same snapshot for all
//! three, so their output cannot drift apart), plus id prefixes, exit codes and `--follow`
//! watching a run that other writers drive to its end.

mod common;
#[path = "common/seed.rs"]
mod seed;
#[path = "common/stores.rs"]
mod stores;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use common::{at, attempt_event};
use scientist::store::Store;
use serde_json::{Value, json};
use stores::TestStore;

/// The binary, pointed at `store`, with a clean and fixed environment.
fn scientist(store: &TestStore) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("scientist"));
    command.env_clear().env("NO_COLOR", "1").env("COLUMNS", "160").env("SCIENTIST_NOW", seed::SEEN_AT);
    command.envs(store.cli_env());
    command
}

/// Runs to the end; stdout, stderr and the exit code in one text, for a snapshot.
#[must_use = "snapshot the output or assert on it"]
fn run(store: &TestStore, args: &[&str]) -> String {
    let output = scientist(store).args(args).output().expect("run scientist");
    let code = output.status.code().map_or("killed".into(), |code| code.to_string());
    format!(
        "$ scientist {}\nexit code: {code}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn seeded(test_store: &TestStore) {
    seed::operator_scenario(test_store.store.as_ref()).await;
}

async fn list_tables(test_store: TestStore) {
    seeded(&test_store).await;
    insta::assert_snapshot!("runs_list", run(&test_store, &["runs", "list"]));
    let filtered = run(&test_store, &["runs", "list", "--status", "queued", "--status", "FAILED", "--limit", "2"]);
    insta::assert_snapshot!("runs_list_filtered", filtered);
    let listed: Value = json_stdout(&test_store, &["runs", "list", "--json", "--status", "COMPLETED"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["_id"], seed::COMPLETED);
    assert_eq!(listed[0]["stageTiming"]["Stage_1"]["duration_s"], 800.0, "the stored document's shape");
    test_store.cleanup().await;
}

async fn show_every_kind_of_run(test_store: TestStore) {
    seeded(&test_store).await;
    insta::assert_snapshot!("runs_show_running", run(&test_store, &["runs", "show", seed::RUNNING]));
    insta::assert_snapshot!("runs_show_failed", run(&test_store, &["runs", "show", seed::FAILED]));
    insta::assert_snapshot!("runs_show_completed", run(&test_store, &["runs", "show", "run-b", "--logs", "0"]));
    insta::assert_snapshot!("runs_show_canceled", run(&test_store, &["runs", "show", seed::CANCELED]));
    let shown: Value = json_stdout(&test_store, &["runs", "show", "run-g", "--json"]);
    assert_eq!((shown["_id"].as_str(), shown["error"]["type"].as_str()), (Some(seed::FAILED), Some("OOM")));
    test_store.cleanup().await;
}

async fn logs_filter_by_level_time_and_count(test_store: TestStore) {
    seeded(&test_store).await;
    insta::assert_snapshot!("runs_logs", run(&test_store, &["runs", "logs", seed::RUNNING]));
    let warnings = run(&test_store, &["runs", "logs", seed::RUNNING, "--level", "warn"]);
    insta::assert_snapshot!("runs_logs_warning", warnings);
    // 20:00 minus 8 minutes is 19:52 (second 3120): the info and error lines after it.
    let recent = run(&test_store, &["runs", "logs", seed::RUNNING, "--since", "8m"]);
    insta::assert_snapshot!("runs_logs_since", recent);
    let last = run(&test_store, &["runs", "logs", seed::RUNNING, "--tail", "1", "--since", "2025-10-22T19:00:00Z"]);
    assert!(last.contains("node 7 crashed") && !last.contains("epoch 12"), "{last}");
    let json_lines = stdout(&test_store, &["runs", "logs", seed::RUNNING, "--json", "--level", "error"]);
    let lines: Vec<Value> = json_lines.lines().map(|line| serde_json::from_str(line).expect("NDJSON")).collect();
    assert_eq!(lines.len(), 1, "{json_lines}");
    assert_eq!((lines[0]["kind"].as_str(), lines[0]["event"]["id"].as_str()), (Some("event"), Some("a-log-4")));
    test_store.cleanup().await;
}

async fn stats_tables_and_json(test_store: TestStore) {
    seeded(&test_store).await;
    insta::assert_snapshot!("stats", run(&test_store, &["stats"]));
    let stats: Value = json_stdout(&test_store, &["stats", "--json"]);
    insta::assert_json_snapshot!("stats_json", stats);
    // The last 30 minutes saw only the two queued runs created, which spent nothing.
    let recent = run(&test_store, &["stats", "--window", "30m"]);
    assert!(recent.contains("Cost (last 30m)\nno run created since 2025-10-22T19:30:00.000Z used"), "{recent}");
    test_store.cleanup().await;
}

/// Prefixes, and the errors an operator meets most: each names the problem, the fix, and exits with its code.
async fn ids_and_errors(test_store: TestStore) {
    seeded(&test_store).await;
    insta::assert_snapshot!("error_ambiguous_prefix", run(&test_store, &["runs", "show", "run-alpha"]));
    insta::assert_snapshot!("error_unknown_id", run(&test_store, &["runs", "cancel", "run-zeta"]));
    insta::assert_snapshot!("error_reset_running", run(&test_store, &["runs", "reset", "run-alpha-1"]));
    insta::assert_snapshot!("error_cancel_finished", run(&test_store, &["runs", "cancel", "run-b"]));
    insta::assert_snapshot!("error_bad_level", run(&test_store, &["runs", "logs", "run-g", "--level", "loud"]));
    // A unique prefix works for every command that takes an id.
    let reset = run(&test_store, &["runs", "reset", "run-gam"]);
    assert!(reset.contains("exit code: 0") && reset.contains("run run-gamma is QUEUED again (retry 1)"), "{reset}");
    let canceled = run(&test_store, &["runs", "cancel", "run-eps", "--reason", "duplicate"]);
    assert!(canceled.contains("run run-epsilon canceled"), "{canceled}");
    test_store.cleanup().await;
}

/// A run retried once: `runs create --retry-max` is stored on it, and `runs show` lists
/// both attempts with their workers, times, outcomes and errors.
async fn a_retried_run_shows_its_attempts(test_store: TestStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let idea = dir.path().join("idea.json");
    std::fs::write(&idea, r#"{"title": "flaky"}"#).expect("idea");
    let idea = idea.display().to_string();
    let created = json_stdout(&test_store, &["runs", "create", "--idea", &idea, "--retry-max", "2", "--json"]);
    assert_eq!(created["retryMax"], 2, "{created}");
    // The store's own policy is off: the run's `retryMax` is what retries it.
    let store = test_store.store.clone();
    let id: scientist::run::RunId = created["_id"].as_str().expect("id").parse().expect("run id");
    store.claim("pod-a", "default", at(0)).await.expect("claim").expect("the run");
    let failed = json!({"code": "SIGNAL_15", "message": "preempted", "retryable": true});
    let first = vec![attempt_event("f1", "ai.run.failed", id.as_str(), 600, 1, failed)];
    store.apply_events(first, at(600)).await.expect("attempt 1 fails");
    let waiting = store.get(&id).await.expect("get").expect("run");
    assert_eq!(waiting.status, scientist::run::RunStatus::Queued, "the run's own retryMax applies");
    let not_before = waiting.not_before.expect("a backoff");
    store.claim("pod-b", "default", not_before).await.expect("claim").expect("after the backoff");
    let done = vec![attempt_event("c2", "ai.run.completed", id.as_str(), 1800, 2, json!({}))];
    store.apply_events(done, at(1800)).await.expect("attempt 2 completes");
    let shown = run(&test_store, &["runs", "show", id.as_str()]);
    assert!(shown.contains("Attempts (2)"), "{shown}");
    let attempts = shown.split("Attempts (2)").nth(1).expect("the section");
    assert!(attempts.contains("pod-a") && attempts.contains("SIGNAL_15: preempted (retryable)"), "{shown}");
    assert!(attempts.contains("pod-b") && attempts.contains("COMPLETED"), "{shown}");
    test_store.cleanup().await;
}

/// `runs show --follow --json`: the run, each new event as it is stored, the final run; exit 0.
async fn follow_json_streams_until_completed(test_store: TestStore) {
    seeded(&test_store).await;
    let mut follower = Follower::spawn(scientist(&test_store).args([
        "runs",
        "show",
        "run-alpha-1",
        "--follow",
        "--json",
        "--interval",
        "20ms",
    ]));
    let first: Value = serde_json::from_str(&follower.next_stdout_line()).expect("JSON");
    assert_eq!((first["kind"].as_str(), first["run"]["status"].as_str()), (Some("run"), Some("RUNNING")));
    // The first line is printed after the cursor is taken: everything from here on is new.
    let worker = |id: &str, ty: &str, seconds: i64, data: Value| attempt_event(id, ty, seed::RUNNING, seconds, 1, data);
    let events = vec![
        worker("f-log", "ai.run.log", 3601, json!({"message": "epoch 13", "level": "info"})),
        worker(
            "f-progress",
            "ai.run.stage_progress",
            3602,
            json!({"stage": "Stage_2", "iteration": 5, "progress": 0.5}),
        ),
        worker("f-hb", "ai.run.heartbeat", 3603, json!({"gpu_util": 0.99})),
        worker(
            "f-art",
            "ai.artifact.registered",
            3604,
            json!({"key": "runs/run-alpha-1/final.ckpt", "kind": "checkpoint"}),
        ),
        worker("f-done", "ai.run.completed", 3605, json!({"duration_s": 3535})),
    ];
    apply_one_by_one(test_store.store.as_ref(), events).await;
    let (code, rest, _) = follower.finish();
    let lines: Vec<Value> = rest.iter().map(|line| serde_json::from_str(line).expect("NDJSON")).collect();
    let ids: Vec<&str> = lines.iter().filter_map(|line| line["event"]["id"].as_str()).collect();
    assert_eq!(ids, ["f-log", "f-progress", "f-hb", "f-art", "f-done"], "{rest:?}");
    assert!(lines[..5].iter().all(|line| line["kind"] == "event" && line["cursor"].is_string()));
    let last = lines.last().expect("a final line");
    assert_eq!((last["kind"].as_str(), last["run"]["status"].as_str()), (Some("run"), Some("COMPLETED")));
    assert_eq!(code, 0);
    test_store.cleanup().await;
}

/// `runs logs --follow`: new lines as they come; exit 8 when the run fails.
async fn follow_logs_until_failed(test_store: TestStore) {
    seeded(&test_store).await;
    let mut follower = Follower::spawn(scientist(&test_store).args([
        "runs",
        "logs",
        "run-alpha-1",
        "--follow",
        "--tail",
        "1",
        "--interval",
        "20ms",
    ]));
    assert!(follower.next_stdout_line().contains("node 7 crashed"), "the last line so far comes first");
    let worker = |id: &str, ty: &str, data: Value| attempt_event(id, ty, seed::RUNNING, 3601, 1, data);
    apply_one_by_one(
        test_store.store.as_ref(),
        vec![
            worker("g-log", "ai.run.log", json!({"message": "CUDA OOM imminent", "level": "warning"})),
            worker(
                "g-fail",
                "ai.run.failed",
                json!({"code": "OOM", "message": "CUDA out of memory", "stage": "Stage_2"}),
            ),
        ],
    )
    .await;
    let (code, rest, stderr) = follower.finish();
    assert_eq!(rest, ["2025-10-22T20:00:01.000Z WARN  CUDA OOM imminent"]);
    assert_eq!(code, 8, "{stderr:?}");
    assert_eq!(stderr, ["error: run run-alpha-1 ended FAILED: OOM: CUDA out of memory"]);
    test_store.cleanup().await;
}

/// `runs show --follow`: the detail, then new log lines; exit 9 when the run is canceled.
async fn follow_show_until_canceled(test_store: TestStore) {
    seeded(&test_store).await;
    let mut follower =
        Follower::spawn(scientist(&test_store).args(["runs", "show", "run-alpha-1", "--follow", "--interval", "20ms"]));
    follower.wait_stderr_line("following run run-alpha-1 until it ends");
    let worker = |id: &str, ty: &str, data: Value| attempt_event(id, ty, seed::RUNNING, 3601, 1, data);
    let store = test_store.store.as_ref();
    store
        .request_cancel(&seed::RUNNING.parse().expect("id"), "operator:ada", Some("budget".into()), at(3600))
        .await
        .expect("cancel");
    apply_one_by_one(
        store,
        vec![
            worker("c-log", "ai.run.log", json!({"message": "stopping on request", "level": "info"})),
            worker("c-end", "ai.run.canceled", json!({"by": "operator:ada", "reason": "budget"})),
        ],
    )
    .await;
    let (code, rest, stderr) = follower.finish();
    let output = rest.join("\n");
    assert!(output.contains("Run run-alpha-1 RUNNING"), "the detail comes first: {output}");
    assert!(output.contains("2025-10-22T20:00:01.000Z INFO  stopping on request"), "{output}");
    assert!(output.ends_with("run run-alpha-1 CANCELED after 58m51s"), "{output}");
    assert_eq!(code, 9, "{stderr:?}");
    assert!(stderr.last().is_some_and(|line| line.contains("ended CANCELED by operator:ada: budget")), "{stderr:?}");
    test_store.cleanup().await;
}

/// Applies events one call at a time, as a worker's stream would arrive.
async fn apply_one_by_one(store: &dyn Store, events: Vec<scientist::event::Event>) {
    for event in events {
        store.apply_events(vec![event], at(3600)).await.expect("apply");
    }
}

fn stdout(store: &TestStore, args: &[&str]) -> String {
    let output = scientist(store).args(args).output().expect("run scientist");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn json_stdout(store: &TestStore, args: &[&str]) -> Value {
    serde_json::from_str(&stdout(store, args)).expect("JSON on stdout")
}

/// Text that would drive a terminal: retitle the window (OSC), clear the screen (CSI),
/// return to the line's start, a one-character C1 CSI, DEL, and a right-to-left override.
const EVIL: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\rX\u{9b}31m\u{7f}\u{202e}";

/// The first character of `text` a terminal would act on (newlines and tabs are layout).
fn control_in(text: &str) -> Option<char> {
    text.chars().find(|c| {
        (c.is_control() && *c != '\n' && *c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

/// Every field an event (or a pod's claim) can fill, seeded with `EVIL`: no text view prints
/// it raw, `--raw` does, and `--json` keeps it exactly (as JSON escapes).
async fn control_characters_from_events_never_reach_the_terminal(test_store: TestStore) {
    let store = test_store.store.as_ref();
    let id = "run-evil";
    let mut new_run = scientist::run::NewRun::new(json!({"idea": "x"}));
    new_run.id = id.parse().expect("id");
    new_run.hypothesis_id = Some(format!("hyp{EVIL}"));
    store.enqueue(new_run, at(0)).await.expect("enqueue");
    store.claim(&format!("pod{EVIL}"), "default", at(10)).await.expect("claim").expect("the queued run");
    let worker = |name: &str, ty: &str, seconds: i64, data: Value| attempt_event(name, ty, id, seconds, 1, data);
    let events = vec![
        worker(
            "e-start",
            "ai.run.started",
            20,
            json!({"pod_id": format!("pod{EVIL}"), "gpu": EVIL, "region": EVIL, "image": EVIL}),
        ),
        worker("e-hb", "ai.run.heartbeat", 25, json!({"gpu_util": 0.5, "note": EVIL})),
        worker("e-s1", "ai.run.stage_started", 30, json!({"stage": "Stage_1"})),
        worker(
            "e-progress",
            "ai.run.stage_progress",
            35,
            json!({"stage": "Stage_1", "progress": 0.5, "best_metric": EVIL, "good_nodes": 1}),
        ),
        worker("e-node", "ai.node.completed", 36, json!({"stage": "Stage_1", "node_id": "n1", "summary": EVIL})),
        worker("e-log", "ai.run.log", 40, json!({"message": format!("loss{EVIL}"), "source": EVIL, "level": "error"})),
        worker(
            "e-art",
            "ai.artifact.registered",
            45,
            json!({"key": format!("runs/{id}/plot{EVIL}.png"), "kind": EVIL, "bytes": 10}),
        ),
        worker(
            "e-failed",
            "ai.run.failed",
            50,
            json!({"stage": "Stage_1", "code": format!("OOM{EVIL}"), "message": format!("boom{EVIL}"),
                   "traceback": format!("Traceback:\n  line{EVIL}\nError{EVIL}"), "retryable": false}),
        ),
    ];
    apply_one_by_one(store, events).await;
    // A run still going, so that `stats` lists its worker and GPU.
    let mut live = scientist::run::NewRun::new(json!({"idea": "y"}));
    live.id = "run-evil-live".parse().expect("id");
    store.enqueue(live, at(0)).await.expect("enqueue");
    store.claim(&format!("pod{EVIL}"), "default", at(3500)).await.expect("claim").expect("the queued run");
    let live_worker = |name: &str, ty: &str, data: Value| attempt_event(name, ty, "run-evil-live", 3590, 1, data);
    apply_one_by_one(
        store,
        vec![
            live_worker("l-start", "ai.run.started", json!({"pod_id": format!("pod{EVIL}"), "gpu": EVIL})),
            live_worker("l-hb", "ai.run.heartbeat", json!({"gpu_util": 0.5})),
        ],
    )
    .await;
    let ideation = scientist::ideation::NewIdeation {
        id: "idea-evil".into(),
        hypothesis_id: format!("hyp{EVIL}"),
        input: Default::default(),
    };
    store.enqueue_ideation(ideation, at(60)).await.expect("enqueue ideation");
    let claimed = store.claim_ideation(&format!("pod{EVIL}"), at(61)).await.expect("claim").expect("queued");
    store.finish_ideation(&claimed.id, claimed.attempt, Some(format!("no{EVIL}")), at(62)).await.expect("finish");

    for args in [
        &["runs", "show", id][..],
        &["runs", "show", id, "--follow", "--interval", "20ms"],
        &["runs", "logs", id],
        &["runs", "logs", id, "--follow", "--interval", "20ms"],
        &["runs", "list"],
        &["stats"],
        &["ideation", "list"],
    ] {
        let output = scientist(&test_store).args(args).output().expect("run scientist");
        for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(control_in(&text), None, "{args:?} {stream} carries a control character: {text:?}");
        }
    }
    // Shown escaped, not dropped: an operator still sees what was sent.
    let shown = run(&test_store, &["runs", "show", id]);
    assert!(shown.contains(r"boom\u001b]0;pwned\u0007\u001b[2J\rX\u009b31m\u007f\u202e"), "{shown}");
    assert!(
        shown.contains("Traceback:\n") && shown.contains(r"  line\u001b]0;pwned"),
        "tracebacks keep their lines: {shown}"
    );
    let stats = run(&test_store, &["stats"]);
    assert!(stats.contains(r"pod\u001b]0;pwned") && stats.contains("Active workers (1)"), "{stats}");
    let failed = run(&test_store, &["runs", "show", id, "--follow"]);
    assert!(
        failed.contains("exit code: 8") && failed.contains(r"error: run run-evil ended FAILED: OOM\u001b"),
        "{failed}"
    );

    // --raw prints messages as stored.
    let raw = stdout(&test_store, &["runs", "logs", id, "--raw"]);
    assert!(raw.contains(&format!("[{EVIL}] loss{EVIL}")), "{raw:?}");
    let raw_show = stdout(&test_store, &["runs", "show", id, "--raw"]);
    assert!(raw_show.contains(&format!("boom{EVIL}")), "{raw_show:?}");

    // --json keeps every value exactly; its text carries escapes only.
    for args in [&["runs", "show", id, "--json"][..], &["runs", "logs", id, "--json"], &["runs", "list", "--json"]] {
        let text = stdout(&test_store, args);
        assert_eq!(control_in(&text), None, "{args:?} --json carries a control character: {text:?}");
    }
    let document: Value = json_stdout(&test_store, &["runs", "show", id, "--json"]);
    assert_eq!(document["error"]["message"], format!("boom{EVIL}"));
    let logs = stdout(&test_store, &["runs", "logs", id, "--json"]);
    let line: Value = serde_json::from_str(logs.lines().next().expect("one line")).expect("NDJSON");
    assert_eq!(line["event"]["data"]["message"], format!("loss{EVIL}"));
    test_store.cleanup().await;
}

/// Far longer than any step takes; only there so that a broken follower fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `scientist` whose output is read line by line as it comes.
struct Follower {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Follower {
    fn spawn(command: &mut Command) -> Follower {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn scientist");
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        Follower { child, stdout, stderr }
    }

    fn next_stdout_line(&mut self) -> String {
        self.stdout.recv_timeout(PATIENCE).unwrap_or_else(|err| panic!("no line on stdout: {err}"))
    }

    fn wait_stderr_line(&mut self, containing: &str) {
        loop {
            let line =
                self.stderr.recv_timeout(PATIENCE).unwrap_or_else(|err| panic!("no {containing:?} on stderr: {err}"));
            if line.contains(containing) {
                return;
            }
        }
    }

    /// Waits for the exit; the exit code and the lines not read yet.
    fn finish(mut self) -> (i32, Vec<String>, Vec<String>) {
        let rest = |receiver: &Receiver<String>| {
            let mut lines = Vec::new();
            loop {
                match receiver.recv_timeout(PATIENCE) {
                    Ok(line) => lines.push(line),
                    Err(RecvTimeoutError::Disconnected) => return lines,
                    Err(RecvTimeoutError::Timeout) => panic!("scientist did not exit; output so far: {lines:?}"),
                }
            }
        };
        let (stdout, stderr) = (rest(&self.stdout), rest(&self.stderr));
        let status = self.child.wait().expect("wait");
        (status.code().expect("exited, not killed"), stdout, stderr)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Only when a test failed half-way: the child is ours, by handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

macro_rules! cli_suite {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(super::TestStore::$backend().await).await;
                    }
                };
            }

            case!(list_tables);
            case!(show_every_kind_of_run);
            case!(logs_filter_by_level_time_and_count);
            case!(stats_tables_and_json);
            case!(ids_and_errors);
            case!(a_retried_run_shows_its_attempts);
            case!(follow_json_streams_until_completed);
            case!(follow_logs_until_failed);
            case!(follow_show_until_canceled);
            case!(control_characters_from_events_never_reach_the_terminal);
        }
    };
}

cli_suite!(sqlite);
cli_suite!(mongo);
cli_suite!(api);
