//! Operator commands over `serve`'s API (`--server`, `--context`, `SCIENTIST_TOKEN`), beside
//! the shared snapshots of `cli_runs.rs` (which run over the API too): what each token's
//! scope allows, the config file's contexts, where the token never shows, and `--follow`
//! over the live tail across a `serve` that is killed and started again.

mod common;
#[path = "common/pod.rs"]
mod pod;
#[path = "common/seed.rs"]
mod seed;
#[path = "common/stores.rs"]
mod stores;

use std::process::{Command, Output};
use std::time::Duration;

use common::attempt_event;
use pod::{Pod, serve, wait_healthy};
use scientist::time::Timestamp;
use serde_json::json;
use stores::{ADMIN_TOKEN, INGEST_TOKEN, READ_TOKEN, TestStore};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The binary with a clean environment: no store, no config, no token unless given.
fn scientist() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scientist"));
    command.env_clear().env("NO_COLOR", "1").env("COLUMNS", "160").env("SCIENTIST_NOW", seed::SEEN_AT);
    command
}

fn server_url(test_store: &TestStore) -> String {
    let env = test_store.cli_env();
    env.into_iter().find(|(name, _)| *name == "SCIENTIST_SERVER").map(|(_, url)| url).expect("an API store")
}

/// `args` against the API of `test_store` with `token` (none: no token at all).
fn over_api(test_store: &TestStore, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = scientist();
    command.env("SCIENTIST_SERVER", server_url(test_store)).args(args);
    if let Some(token) = token {
        command.env("SCIENTIST_TOKEN", token);
    }
    command.output().expect("run scientist")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn idea_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("idea.json");
    std::fs::write(&path, r#"{"title": "remote"}"#).expect("idea");
    path.display().to_string()
}

/// A read token reads and cannot change anything; an ingest token (a pod's) cannot even
/// read; no token is told what to set. Each refusal is exit 7 and names the scope needed,
/// and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_does_what_it_allows_and_nothing_more() {
    let test_store = TestStore::api().await;
    seed::operator_scenario(test_store.store.as_ref()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let idea = idea_file(&dir);

    for args in [&["runs", "list"][..], &["runs", "show", "run-gam"], &["runs", "logs", seed::RUNNING], &["stats"]] {
        let read = over_api(&test_store, Some(READ_TOKEN), args);
        assert!(read.status.success(), "{args:?} with a read token: {}", text(&read.stderr));
    }
    let changes: [&[&str]; 5] = [
        &["runs", "cancel", seed::RUNNING],
        &["runs", "reset", seed::FAILED],
        &["runs", "create", "--idea", &idea],
        &["runs", "approve", seed::RUNNING],
        &["ideation", "create", "--hypothesis", "hyp-1"],
    ];
    for args in changes {
        let refused = over_api(&test_store, Some(READ_TOKEN), args);
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(7), "{args:?}: {stderr}");
        assert!(stderr.contains("lacks the `admin` scope"), "{args:?}: {stderr}");
    }
    let running = test_store.store.get(&seed::RUNNING.parse().expect("id")).await.expect("get").expect("run");
    assert!(running.cancel_requested.is_none(), "the refused cancel changed nothing");
    assert_eq!(test_store.store.list(&Default::default()).await.expect("list").items.len(), 6, "no run created");

    let pod = over_api(&test_store, Some(INGEST_TOKEN), &["runs", "list"]);
    assert_eq!(pod.status.code(), Some(7));
    assert!(text(&pod.stderr).contains("lacks the `read` scope"), "{}", text(&pod.stderr));
    let nobody = over_api(&test_store, None, &["stats"]);
    assert_eq!(nobody.status.code(), Some(7));
    assert!(text(&nobody.stderr).contains("set SCIENTIST_TOKEN"), "{}", text(&nobody.stderr));

    let canceled = over_api(&test_store, Some(ADMIN_TOKEN), &["runs", "cancel", seed::QUEUED_LATER]);
    assert!(canceled.status.success(), "{}", text(&canceled.stderr));
    let run = test_store.store.get(&seed::QUEUED_LATER.parse().expect("id")).await.expect("get").expect("run");
    assert_eq!(run.status, scientist::run::RunStatus::Canceled);
    let by = run.canceled.and_then(|canceled| canceled.by).unwrap_or_default();
    assert!(by.starts_with("operator"), "recorded as the operator: {by}");
}

/// `ideation create/list` over the API: the same checks of the input as on a store, and a
/// taken id is exit 4 with the same advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ideation_requests_are_made_and_listed_over_the_api() {
    let test_store = TestStore::api().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"numIdeas": 3}"#).expect("input");
    let input = input.display().to_string();
    let create = ["ideation", "create", "--hypothesis", "hyp-7", "--id", "req-7", "--input", &input];
    let created = over_api(&test_store, Some(ADMIN_TOKEN), &create);
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert_eq!(text(&created.stdout).trim(), "req-7");
    let again = over_api(&test_store, Some(ADMIN_TOKEN), &create);
    assert_eq!(again.status.code(), Some(4), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("--id is taken"), "{}", text(&again.stderr));
    let listed = over_api(&test_store, Some(READ_TOKEN), &["ideation", "list", "--json"]);
    let documents: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(documents[0]["_id"], "req-7");
    assert_eq!((documents[0]["numIdeas"].as_u64(), documents[0]["status"].as_str()), (Some(3), Some("QUEUED")));
    let stored = test_store.store.get_ideation("req-7").await.expect("get").expect("stored");
    assert_eq!(stored.hypothesis_id, "hyp-7");
}

/// Contexts from the config file: a named one with its token file, the `current` one when
/// nothing is named, a store given beside it wins; mistakes are exit 2 naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_name_a_server_and_its_token_file() {
    let test_store = TestStore::api().await;
    seed::operator_scenario(test_store.store.as_ref()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).expect("token file");
    std::fs::write(dir.path().join("pod.token"), format!("{INGEST_TOKEN}\n")).expect("token file");
    let config = dir.path().join("config.toml");
    let url = server_url(&test_store);
    let text_of_config = format!(
        "current = \"lab\"\n[contexts.lab]\nserver = \"{url}\"\ntoken_file = \"admin.token\"\n\
         [contexts.as-pod]\nserver = \"{url}\"\ntoken_file = \"pod.token\"\n"
    );
    std::fs::write(&config, text_of_config).expect("config");
    let with_config = |args: &[&str]| {
        let mut command = scientist();
        command.env("SCIENTIST_CONFIG", &config).args(args);
        command
    };

    let current = with_config(&["runs", "list", "--json"]).output().expect("run");
    assert!(current.status.success(), "{}", text(&current.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&current.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(6), "the current context's runs");
    let as_pod = with_config(&["runs", "list", "--context", "as-pod"]).output().expect("run");
    assert_eq!(as_pod.status.code(), Some(7), "the named context's own token: {}", text(&as_pod.stderr));
    let by_env = with_config(&["stats"]).env("SCIENTIST_CONTEXT", "as-pod").output().expect("run");
    assert_eq!(by_env.status.code(), Some(7), "SCIENTIST_CONTEXT names it too");

    let local = dir.path().join("local.sqlite");
    let on_store =
        with_config(&["runs", "list", "--json", "--store", &local.display().to_string()]).output().expect("run");
    assert!(on_store.status.success(), "{}", text(&on_store.stderr));
    assert_eq!(text(&on_store.stdout).trim(), "[]", "a store given wins over the current context");

    let unknown = with_config(&["runs", "list", "--context", "prod"]).output().expect("run");
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = text(&unknown.stderr);
    assert!(stderr.contains("no context \"prod\"") && stderr.contains("it defines as-pod, lab"), "{stderr}");
    let both = with_config(&["runs", "list", "--context", "lab", "--server", &url]).output().expect("run");
    assert_eq!(both.status.code(), Some(2));
    assert!(text(&both.stderr).contains("give one"), "{}", text(&both.stderr));
}

/// No operator command takes a token in argv (where `ps` shows it), and a token given in
/// the environment appears in no output, diagnostics at their most verbose included.
#[test]
fn the_token_is_never_in_argv_or_in_logs() {
    let refused = scientist().args(["runs", "list", "--token", "x"]).output().expect("run");
    assert_eq!(refused.status.code(), Some(2), "no --token flag: {}", text(&refused.stderr));
    // Nothing listens on port 9 of loopback: the command fails after trying.
    let secret = "tok-5f1c1449f5e97119-never-shown";
    let output = scientist()
        .args(["runs", "list"])
        .env("SCIENTIST_SERVER", "http://127.0.0.1:9")
        .env("SCIENTIST_TOKEN", secret)
        .env("LOG_LEVEL", "trace")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(6), "unreachable: {}", text(&output.stderr));
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(all.contains("http://127.0.0.1:9"), "the message names the server: {all}");
    assert!(!all.contains(secret), "the token leaked: {all}");
}

/// `runs logs --follow` over the live tail, with `serve` killed mid-run and started again
/// on the same port, while lines keep being stored: every line is printed once, in order,
/// and the follower exits 0 when the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_resumes_across_a_serve_restart_without_missing_or_repeating() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    pod.store.claim("pod-a", "default", Timestamp::now()).await.expect("claim").expect("the run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut server = serve(&pod, port, &[]);
    wait_healthy(port).await;

    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_scientist"))
        .args(["runs", "logs", id.as_str(), "--follow", "--interval", "100ms"])
        .env_clear()
        .env("NO_COLOR", "1")
        .env("SCIENTIST_SERVER", format!("http://127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the follower");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr_lines = BufReader::new(follower.stderr.take().expect("stderr")).lines();
    let kept = stderr.clone();
    let (stderr_read, mut stderr_done) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr_lines.next_line().await {
            kept.lock().expect("stderr").push_str(&format!("{line}\n"));
        }
        let _ = stderr_read.send(true);
    });
    let mut printed = Vec::new();
    let mut read_until = async |wanted: usize, printed: &mut Vec<String>| {
        while printed.len() < wanted {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("the follower printed only {printed:?}; stderr {stderr:?}"))
                .expect("read");
            let Some(line) = line else {
                // The follower ended: its last words on stderr, once they are all read.
                let _ = tokio::time::timeout(Duration::from_secs(10), stderr_done.wait_for(|done| *done)).await;
                panic!("the follower stopped after {printed:?}; stderr {stderr:?}");
            };
            printed.push(line);
        }
    };
    let log = |n: u32| {
        let message = format!("line {n:02}");
        attempt_event(&format!("log-{n}"), "ai.run.log", id.as_str(), i64::from(n), 1, json!({"message": message}))
    };
    let store_lines = async |range: std::ops::RangeInclusive<u32>| {
        for n in range {
            pod.store.apply_events(vec![log(n)], Timestamp::now()).await.expect("store a line");
        }
    };

    store_lines(1..=5).await;
    read_until(5, &mut printed).await;
    // Lines 1-5 were listed before the live tail opened; line 6, stored after, comes by the tail.
    store_lines(6..=6).await;
    read_until(6, &mut printed).await;
    server.kill().await.expect("kill serve");
    store_lines(7..=10).await;
    server = serve(&pod, port, &[]);
    wait_healthy(port).await;
    read_until(10, &mut printed).await;
    store_lines(11..=15).await;
    let done = attempt_event("done", "ai.run.completed", id.as_str(), 16, 1, json!({}));
    pod.store.apply_events(vec![done], Timestamp::now()).await.expect("complete");
    read_until(15, &mut printed).await;

    let status = tokio::time::timeout(Duration::from_secs(60), follower.wait()).await.expect("exits").expect("wait");
    assert_eq!(status.code(), Some(0), "a completed run");
    assert!(lines.next_line().await.expect("read").is_none(), "nothing printed after the last line");
    assert_eq!(printed.len(), 15, "{printed:?}");
    for (n, line) in (1..=15).zip(&printed) {
        assert!(line.ends_with(&format!("INFO  line {n:02}")), "line {n} is {line:?} in {printed:?}");
    }
    drop(server);
    pod.cleanup().await;
}
