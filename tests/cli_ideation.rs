//! `scientist ideation create/list`: the built binary against an embedded store file.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use scientist::ideation::IdeationStatus;
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Value, json};

/// The binary with a clean environment (no MONGODB_URL).
fn scientist() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scientist"));
    command.env_clear().env("NO_COLOR", "1").env("COLUMNS", "200");
    command
}

/// `scientist ideation <subcommand> --store <the store file in dir>`; more arguments may follow.
fn ideation(dir: &tempfile::TempDir, subcommand: &str) -> Command {
    let mut command = scientist();
    command.args(["ideation", subcommand, "--store"]).arg(store_path(dir));
    command
}

fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.sqlite")
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stdout.clone()).expect("utf-8")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write input");
    path
}

fn create(dir: &tempfile::TempDir, args: &[&str], input: Option<&Path>) -> String {
    let mut command = ideation(dir, "create");
    command.args(args);
    if let Some(input) = input {
        command.arg("--input").arg(input);
    }
    stdout(&command.assert().success()).trim().to_owned()
}

fn list_json(dir: &tempfile::TempDir, args: &[&str]) -> Vec<Value> {
    let listed = ideation(dir, "list").arg("--json").args(args).assert().success();
    serde_json::from_str(&stdout(&listed)).expect("a JSON array")
}

#[test]
fn create_with_and_without_input_then_list() {
    let dir = tempfile::tempdir().expect("temp dir");
    ideation(&dir, "list")
        .assert()
        .success()
        .stdout(contains("no ideation requests match").and(contains("scientist ideation create --hypothesis")));

    let bare = create(&dir, &["--hypothesis", "hyp-1"], None);
    assert_eq!(bare.len(), 36, "a UUID: {bare:?}");
    assert!(uuid::Uuid::parse_str(&bare).is_ok(), "{bare:?}");

    let input = write(&dir, "input.json", r#"{"hypothesis": "smaller learning rates help", "numIdeas": 3}"#);
    let id = create(&dir, &["--hypothesis", "hyp-2", "--id", "req-1"], Some(&input));
    assert_eq!(id, "req-1");

    let created = ideation(&dir, "create")
        .args(["--hypothesis", "hyp-3", "--id", "req-2", "--json", "--input", "-"])
        .write_stdin(r#"{"numIdeas": 5}"#)
        .assert()
        .success();
    let document: Value = serde_json::from_str(&stdout(&created)).expect("json");
    assert_eq!(
        (&document["_id"], &document["hypothesisId"], &document["status"], &document["numIdeas"]),
        (&json!("req-2"), &json!("hyp-3"), &json!("QUEUED"), &json!(5))
    );

    let table = stdout(&ideation(&dir, "list").assert().success());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "HYPOTHESIS", "STATUS", "ATTEMPT", "WORKER", "AGE", "ERROR"], "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((row[0], row[1], row[2], row[3], row[4], row[6]), (bare.as_str(), "hyp-1", "QUEUED", "0", "-", "-"));
    assert!(lines[2].starts_with("req-1 ") && lines[3].starts_with("req-2 "), "oldest first:\n{table}");

    let listed = list_json(&dir, &[]);
    let ids: Vec<&str> = listed.iter().filter_map(|request| request["_id"].as_str()).collect();
    assert_eq!(ids, [bare.as_str(), "req-1", "req-2"]);
    assert_eq!(listed[1]["hypothesis"], "smaller learning rates help", "the input's fields are stored");
    assert_eq!((&listed[1]["numIdeas"], &listed[1]["hypothesisId"]), (&json!(3), &json!("hyp-2")));
    assert_eq!(list_json(&dir, &["--limit", "1"]).len(), 1);
}

#[test]
fn a_taken_id_is_a_conflict() {
    let dir = tempfile::tempdir().expect("temp dir");
    create(&dir, &["--hypothesis", "hyp-1", "--id", "req-1"], None);
    ideation(&dir, "create")
        .args(["--hypothesis", "hyp-2", "--id", "req-1"])
        .assert()
        .code(4)
        .stdout("")
        .stderr(contains("ideation request req-1 already exists").and(contains("leave --id out")));
    let listed = list_json(&dir, &[]);
    assert_eq!((listed.len(), &listed[0]["hypothesisId"]), (1, &json!("hyp-1")), "the first one stays");
}

#[test]
fn bad_input_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let array = write(&dir, "array.json", "[1, 2]");
    ideation(&dir, "create").args(["--hypothesis", "hyp-1", "--input"]).arg(&array).assert().code(2).stderr(
        contains(format!("input file {} holds an array, not a JSON object", array.display()))
            .and(contains(r#"pass a JSON object of request fields, e.g. {"hypothesis""#)),
    );
    ideation(&dir, "create")
        .args(["--hypothesis", "hyp-1", "--input", "-"])
        .write_stdin("\"ideas please\"")
        .assert()
        .code(2)
        .stderr(contains("standard input holds a string, not a JSON object"));
    let broken = write(&dir, "broken.json", "{not json");
    ideation(&dir, "create")
        .args(["--hypothesis", "hyp-1", "--input"])
        .arg(&broken)
        .assert()
        .code(2)
        .stderr(contains("is not valid JSON").and(contains("pass a JSON object")));
    let ours = write(&dir, "ours.json", r#"{"status": "COMPLETED", "claimedAt": "soon", "numIdeas": 2}"#);
    ideation(&dir, "create")
        .args(["--hypothesis", "hyp-1", "--input"])
        .arg(&ours)
        .assert()
        .code(2)
        .stderr(contains("sets status, claimedAt, which scientist keeps; leave them out"));
    ideation(&dir, "create").assert().code(2).stderr(contains("--hypothesis <HYP_ID>"));
    ideation(&dir, "list")
        .args(["--status", "DONE"])
        .assert()
        .code(2)
        .stderr(contains("unknown ideation status \"DONE\"; expected QUEUED, RUNNING, COMPLETED or FAILED"));
    assert!(list_json(&dir, &[]).is_empty(), "nothing was enqueued");
}

#[tokio::test]
async fn status_filter() {
    let dir = tempfile::tempdir().expect("temp dir");
    for id in ["req-1", "req-2", "req-3"] {
        create(&dir, &["--hypothesis", "hyp-1", "--id", id], None);
    }
    // A worker claims the two oldest and fails the first.
    let store = SqliteStore::open(&store_path(&dir)).await.expect("open the store");
    let now = Timestamp::now();
    let first = store.claim_ideation("pod-a", now).await.expect("claim").expect("one queued");
    store.claim_ideation("pod-b", now).await.expect("claim").expect("one queued");
    store.finish_ideation(&first.id, first.attempt, Some("model unavailable".into()), now).await.expect("finish");
    assert_eq!(store.get_ideation("req-2").await.expect("get").map(|r| r.status), Some(IdeationStatus::Running));
    drop(store);

    let ids = |args: &[&str]| -> Vec<String> {
        list_json(&dir, args).iter().filter_map(|request| request["_id"].as_str().map(str::to_owned)).collect()
    };
    assert_eq!(ids(&["--status", "failed"]), ["req-1"]);
    assert_eq!(ids(&["--status", "QUEUED", "--status", "running"]), ["req-2", "req-3"]);
    assert!(ids(&["--status", "COMPLETED"]).is_empty());

    let failed = stdout(&ideation(&dir, "list").args(["--status", "FAILED"]).assert().success());
    let row: Vec<&str> = failed.lines().nth(1).expect("one row").split_whitespace().collect();
    assert_eq!((row[0], row[2], row[3], row[4]), ("req-1", "FAILED", "1", "pod-a"), "{failed}");
    assert!(failed.trim_end().ends_with("model unavailable"), "{failed}");
    ideation(&dir, "list")
        .args(["--status", "completed"])
        .assert()
        .success()
        .stdout(contains("no ideation requests match"));
}

#[test]
fn help_explains_how_requests_are_served() {
    scientist().arg("--help").assert().success().stdout(contains("\n  ideation "));
    scientist().args(["ideation", "--help"]).assert().success().stdout(
        contains("scientist work --mode ideation")
            .and(contains("[ideation] command"))
            .and(contains("ai.ideation.generated"))
            .and(contains("ideaJson is\nthe first idea")),
    );
    scientist()
        .args(["ideation", "create", "--help"])
        .assert()
        .success()
        .stdout(contains("--input <FILE>").and(contains("4 the --id is taken")));
}
