//! `scientist up --example`, the built binary, end to end in a fresh home directory (nothing
//! configured, the embedded store at its default path): the tour run ends COMPLETED with four
//! timed stages, its artifacts registered and on disk, its LLM usage priced, and `runs list`
//! and `stats` (separate processes, on the same default store) show it. Then `up` exits.

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use scientist::run::RunStatus;
use scientist::store::{RunFilter, SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_scientist");

/// `scientist ARGS` with only PATH (for python3) and HOME=`home` from this environment.
fn scientist(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("NO_COLOR", "1");
    command
}

#[tokio::test]
async fn the_tour_completes_with_four_timed_stages_and_shows_in_list_and_stats() {
    let home = tempfile::tempdir().expect("home");
    let up = up_example(home.path(), None);
    let (stdout, stderr) = (String::from_utf8_lossy(&up.stdout), String::from_utf8_lossy(&up.stderr));
    assert!(up.status.success(), "up failed ({:?}):\n{stdout}\n{stderr}", up.status);
    assert!(stderr.contains("scientist up: control plane on http://127.0.0.1:"), "{stderr}");

    let data = home.path().join(".local/share/scientist");
    let store = SqliteStore::open(&data.join("scientist.sqlite")).await.expect("the default store");
    let run = &the_run(home.path()).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    assert!(stdout.contains(&format!("run {} COMPLETED", run.id)), "{stdout}");
    let stages: Vec<&str> = run.stage_timing.keys().map(String::as_str).collect();
    assert_eq!(stages, ["Stage_1", "Stage_2", "Stage_3", "Stage_4"]);
    for (name, timing) in &run.stage_timing {
        let (Some(started), Some(completed)) = (timing.started_at, timing.completed_at) else {
            panic!("{name} not timed: {timing:?}")
        };
        assert!(completed > started, "{name}: {timing:?}");
    }
    // 5 iterations × 4 stages, 12,000 input tokens each, priced by the example price file.
    assert_eq!(run.cost.llm.input_tokens, 4 * 5 * 12_000);
    assert!(run.cost.llm.usd > 0.0, "{:?}", run.cost);

    let artifacts = store.artifacts(&run.id).await.expect("artifacts");
    let mut keys: Vec<&str> = artifacts.iter().map(|artifact| artifact.key.as_str()).collect();
    keys.sort_unstable();
    let expected: Vec<String> = ["Stage_1", "Stage_2", "Stage_3", "Stage_4"]
        .iter()
        .flat_map(|stage| {
            [format!("runs/{}/{stage}/loss.svg", run.id), format!("runs/{}/{stage}/metrics.json", run.id)]
        })
        .collect();
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for key in &keys {
        assert!(data.join("artifacts").join(key).is_file(), "{key} is on disk");
        assert!(stdout.contains(&format!(" FILE  {key} (")), "the follow showed {key} as it registered:\n{stdout}");
    }

    let list = scientist(home.path(), &["runs", "list"]).output().expect("runs list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && listed.contains(&run.id.as_str()[..8]) && listed.contains("COMPLETED"),
        "{listed}"
    );
    let stats = scientist(home.path(), &["stats", "--json"]).output().expect("stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    assert_eq!((stats["totalRuns"].as_u64(), stats["byStatus"]["COMPLETED"].as_u64()), (Some(1), Some(1)), "{stats}");
}

#[test]
fn up_refuses_to_listen_beyond_loopback() {
    let home = tempfile::tempdir().expect("home");
    let output = scientist(home.path(), &["up", "--listen", "0.0.0.0:0"]).output().expect("run up");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback only"));
}

/// `scientist up --example [VARIANT]` on a free loopback port, to its end (no variant: the
/// README's bare `--example`).
fn up_example(home: &Path, variant: Option<&str>) -> std::process::Output {
    let mut args = vec!["up", "--listen", "127.0.0.1:0", "--example"];
    args.extend(variant);
    scientist(home, &args).timeout(Duration::from_secs(240)).output().expect("run up")
}

/// The one run `up` left in `home`'s default store.
async fn the_run(home: &Path) -> scientist::run::Run {
    let store = SqliteStore::open(&home.join(".local/share/scientist/scientist.sqlite")).await.expect("the store");
    let runs = store.list(&RunFilter { limit: 10, ..RunFilter::default() }).await.expect("list").items;
    let [run] = <[_; 1]>::try_from(runs).unwrap_or_else(|runs| panic!("one run: {runs:#?}"));
    run
}

#[tokio::test]
async fn the_retry_tour_is_preempted_once_then_completes() {
    let home = tempfile::tempdir().expect("home");
    let up = up_example(home.path(), Some("retry"));
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let run = the_run(home.path()).await;
    let attempts: Vec<(&str, Option<&str>)> = run
        .attempts
        .iter()
        .map(|attempt| (attempt.outcome.as_str(), attempt.error.as_ref().map(|error| error.error_type.as_str())))
        .collect();
    assert_eq!(attempts, [("FAILED", Some("SIGNAL_15")), ("COMPLETED", None)]);
    assert_eq!(run.status, RunStatus::Completed);
}

#[tokio::test]
async fn the_budget_tour_is_stopped_by_its_budget() {
    let home = tempfile::tempdir().expect("home");
    let up = up_example(home.path(), Some("budget"));
    assert_eq!(up.status.code(), Some(8), "as `runs show --follow` for a failed run");
    let run = the_run(home.path()).await;
    assert_eq!((run.status, run.error_type.as_deref()), (RunStatus::Failed, Some("BUDGET_EXCEEDED")));
    assert_eq!(run.cost.budget_usd, Some(0.05));
    assert!(run.cost.total_usd >= 0.05, "{:?}", run.cost);
}

#[test]
fn a_worker_that_cannot_start_stops_up_with_its_reason() {
    let home = tempfile::tempdir().expect("home");
    let config = home.path().join("broken.toml");
    std::fs::write(&config, "[[stage]]\nname = \"Stage_1\"\n").expect("write");
    let output = scientist(home.path(), &["up", "--example", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("run up");
    assert_eq!(output.status.code(), Some(2), "a bad pipeline is bad usage");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.toml"), "names the config: {stderr}");
}

#[tokio::test]
async fn the_review_tour_waits_after_stage_2_until_approved_then_completes() {
    use std::io::BufRead;

    let home = tempfile::tempdir().expect("home");
    let mut up = std::process::Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--example", "review"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start up");
    let (finished, watchdog) = kill_after(up.id(), Duration::from_secs(240));
    let mut stderr = std::io::BufReader::new(up.stderr.take().expect("stderr"));
    let mut seen = String::new();
    // The worker says it holds the run for a review once Stage_2 has ended.
    while !seen.contains("awaits a review") {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("up ended before the review: {seen}");
        }
        seen.push_str(&line);
    }
    // Its request reaches the store through the worker's stream just after: wait for it.
    let store = SqliteStore::open(&home.path().join(".local/share/scientist/scientist.sqlite")).await.expect("store");
    let runs = async || store.list(&RunFilter { limit: 10, ..RunFilter::default() }).await.expect("list").items;
    let awaiting = |runs: &Vec<scientist::run::Run>| runs.iter().any(|run| run.status == RunStatus::AwaitingHuman);
    let runs = pod::poll_until("a run AWAITING_HUMAN", runs, awaiting).await;
    let run = runs.into_iter().find(|run| run.status == RunStatus::AwaitingHuman).expect("the run awaiting review");
    let review = run.review.as_ref().expect("the review request");
    assert_eq!((review.stage.as_deref(), review.holds_worker), (Some("Stage_2"), true), "{review:?}");
    assert!(!run.stage_timing.contains_key("Stage_3"), "Stage_3 waits for the decision");

    let approve = scientist(home.path(), &["runs", "approve", &run.id.as_str()[..8], "--comment", "looks right"])
        .output()
        .expect("runs approve");
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read the rest");
    // Its stderr closed: `up` has ended (not yet reaped, so the watchdog cannot hit another pid).
    drop(finished);
    watchdog.join().expect("watchdog");
    let status = up.wait().expect("up exits");
    assert!(status.success(), "{status:?}: {seen}{rest}");
    assert!(rest.contains("approved by"), "the worker went on: {rest}");

    let run = the_run(home.path()).await;
    assert_eq!(run.status, RunStatus::Completed);
    let review = run.review.as_ref().expect("review kept");
    assert_eq!(review.decision, Some(scientist::run::ReviewDecision::Approved), "{review:?}");
    let decided = review.decided_at.expect("decided at");
    let stage_3 = run.stage_timing.get("Stage_3").and_then(|timing| timing.started_at).expect("Stage_3 ran");
    assert!(stage_3 >= decided, "Stage_3 started after the approval ({stage_3:?} < {decided:?})");
    assert_eq!(run.stage_timing.len(), 4);
}

/// Kills `pid` if the returned sender is not dropped within `limit`, so that a hung `up`
/// fails its test instead of holding the suite; drop the sender before reaping the child.
fn kill_after(pid: u32, limit: Duration) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (finished, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            let pid = libc::pid_t::try_from(pid).expect("a pid");
            // SAFETY: kill(2) on our own child, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    (finished, watchdog)
}
