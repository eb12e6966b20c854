//! The two emitters of `examples/`, against a real `scientist serve` on loopback with a token
//! (the built binary, on the embedded store): `ci-emit.sh` reporting a CI job that succeeds
//! and one that fails, and `emit_from_rust.rs`'s own functions (included below) delivering a
//! training loop's events, first into the spool while the server is unreachable, then from
//! the spool once it is back.

use std::path::Path;
use std::process::Command;

use scientist::control::HttpControlPlane;
use scientist::emit::SpoolDir;
use scientist::run::RunId;
use serde_json::{Value, json};

#[path = "common/serve_process.rs"]
mod serve_process;

#[allow(dead_code)]
#[path = "../examples/emit_from_rust.rs"]
mod emit_from_rust;

use serve_process::ServeProcess;

const BIN: &str = env!("CARGO_BIN_EXE_scientist");
const TOKEN: &str = "the-ci-token-0123456789";

fn serve(dir: &Path) -> ServeProcess {
    ServeProcess::start(|command| {
        command.arg("--store").arg(dir.join("store.sqlite")).env("SCIENTIST_TOKEN", TOKEN).env("HOME", dir)
    })
}

async fn get(serve: &ServeProcess, path: &str) -> Value {
    let answer = reqwest::Client::new()
        .get(format!("{}{path}", serve.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("serve answers");
    assert!(answer.status().is_success(), "GET {path}: {}", answer.status());
    answer.json().await.expect("JSON")
}

/// `examples/ci-emit.sh JOB…` as a CI runner would run it; its exit status and stderr.
fn ci_emit(serve: &ServeProcess, dir: &Path, run: &str, job: &str) -> (i32, String) {
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci-emit.sh");
    let output = Command::new("sh")
        .arg(script)
        .args(["sh", "-c", job])
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("HOME", dir)
        .env("SCIENTIST", BIN)
        .env("SCIENTIST_SERVER", &serve.url)
        .env("SCIENTIST_TOKEN", TOKEN)
        .env("SCIENTIST_RUN_ID", run)
        .env("SCIENTIST_SPOOL_DIR", dir.join("spool"))
        .env("CI_HEARTBEAT_S", "1")
        .env_remove("SCIENTIST_EMIT_URL")
        .env_remove("GITHUB_RUN_ID")
        .output()
        .expect("run ci-emit.sh");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn log_messages(events: &Value) -> Vec<String> {
    let items = events["items"].as_array().expect("items");
    items.iter().filter_map(|item| item["event"]["data"]["message"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn ci_emit_reports_a_job_that_succeeds_and_one_that_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = serve(dir.path());

    let job = r#"echo "evaluating"; sleep 2; scientist emit ai.run.stage_metric --run "$SCIENTIST_RUN_ID" --data '{"name": "accuracy", "value": 0.91}' 2>/dev/null; echo "accuracy 0.91""#;
    let (status, stderr) = ci_emit(&serve, dir.path(), "ci-1001-1", job);
    assert_eq!(status, 0, "{stderr}");
    let run = get(&serve, "/api/runs/ci-1001-1").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["queue"], "ci");
    assert!(run["stageTiming"]["validation"]["completedAt"].is_string(), "{run:#}");
    assert!(run["heartbeatAt"].is_string(), "the heartbeats while it ran: {run:#}");
    let accuracy = run["metrics"].as_array().and_then(|points| points.iter().find(|point| point["name"] == "accuracy"));
    assert_eq!(accuracy.map(|point| point["value"].clone()), Some(json!(0.91)), "{run:#}");
    let logs = get(&serve, "/api/runs/ci-1001-1/events?type=ai.run.log&limit=100").await;
    assert_eq!(log_messages(&logs), ["evaluating", "accuracy 0.91"]);

    let (status, stderr) =
        ci_emit(&serve, dir.path(), "ci-1002-1", r#"echo "loading \"model.pt\""; echo "no such file" >&2; exit 3"#);
    assert_eq!(status, 3, "the job's status: {stderr}");
    let run = get(&serve, "/api/runs/ci-1002-1").await;
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert_eq!((&run["error"]["type"], &run["error"]["stage"]), (&json!("EXIT_3"), &json!("validation")), "{run:#}");
    assert_eq!(run["error"]["traceback"], "loading \"model.pt\"\nno such file", "{run:#}");
}

#[tokio::test]
async fn the_rust_example_spools_while_the_server_is_away_then_delivers_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = SpoolDir::open(&dir.path().join("spool")).expect("spool");
    let run: RunId = "rust-run-1".parse().expect("a run id");
    let lines = emit_from_rust::training_events(&run, "rust://example");

    // Nothing listens on the port of a server that is not started yet.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let away = HttpControlPlane::new(&unreachable, Some(TOKEN.into())).expect("client");
    let delivered = emit_from_rust::deliver(&away, &spool, &lines).await.expect("kept");
    assert!(matches!(delivered, emit_from_rust::Delivered::Spooled(_)), "{delivered:?}");

    let serve = serve(dir.path());
    let created = reqwest::Client::new()
        .post(format!("{}/api/runs", serve.url))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "rust-run-1", "idea": {"title": "a Rust training loop"}}))
        .send()
        .await
        .expect("create the run");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let plane = HttpControlPlane::new(&serve.url, Some(TOKEN.into())).expect("client");
    // The spooled copy goes first; the same events sent again are duplicates.
    let delivered = emit_from_rust::deliver(&plane, &spool, &lines).await.expect("sent");
    assert!(
        matches!(&delivered, emit_from_rust::Delivered::Sent { rejected, .. } if rejected.is_empty()),
        "{delivered:?}"
    );
    assert_eq!(spool.segments().expect("segments").len(), 0, "the spool was drained");

    let run = get(&serve, "/api/runs/rust-run-1").await;
    assert_eq!(run["currentStage"]["name"], "Stage_1", "{run:#}");
    assert_eq!(run["currentStage"]["iteration"], json!(emit_from_rust::STEPS), "{run:#}");
    assert!(run["stageTiming"]["Stage_1"]["completedAt"].is_string(), "{run:#}");
    let loss = run["metrics"].as_array().and_then(|points| points.iter().find(|point| point["name"] == "val_loss"));
    assert_eq!(loss.map(|point| point["step"].clone()), Some(json!(emit_from_rust::STEPS)), "{run:#}");
    assert_eq!(run["cost"]["llm"]["inputTokens"], json!(1200), "counted once: {run:#}");
}
