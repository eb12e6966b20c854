//! The Python reporting helpers: their own unit tests (`examples/python`,
//! `examples/ai-scientist`, run with python3 -m unittest), and a real `scientist work` on the
//! embedded store whose stage imports `examples/python/scientist_report.py` and reports
//! progress, a node, a metric, LLM usage and an artifact: all of it is in the store once the
//! worker exits. Needs `python3` (it fails, not skips, without it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use scientist::run::RunStatus;
use serde_json::json;

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, examples, finish};

/// Runs `python3 -m unittest discover` in `dir`; fails the test with its output otherwise.
fn unittest(dir: &Path) {
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(dir)
        // No __pycache__ left in examples/.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("SCIENTIST_EMIT_URL")
        .env_remove("SCIENTIST_RUN_ID")
        .output()
        .unwrap_or_else(|err| panic!("python3 is needed for the Python helpers' tests: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", dir.display());
    assert!(stderr.contains("\nOK"), "{}: no tests ran? {stderr}", dir.display());
}

#[test]
fn the_python_reporters_unit_tests_pass() {
    unittest(&examples().join("python"));
}

#[test]
fn the_ai_scientist_callbacks_unit_tests_pass() {
    unittest(&examples().join("ai-scientist"));
}

/// A stage that reports through the helper and exits without flushing (atexit sends it).
const STAGE: &str = r#"
import os
from scientist_report import report

report.progress("Stage_1", 2, 4, good_nodes=2, buggy_nodes=1, total_nodes=3, best_metric=0.83, eta_s=12)
report.node("node-1", "created")
report.node("node-1", "completed", parent_id="node-0", is_buggy=False, metric=0.83, summary="it trains")
report.metric("val_loss", 0.25, step=3)
report.llm_usage("gpt-5-mini", 1200, 300, cached_tokens=800, node_id="node-1")
plot = os.path.join(os.environ["PLOT_DIR"], "loss.png")
with open(plot, "wb") as out:
    out.write(b"\x89PNG\r\n\x1a\n" + bytes(64))
print("artifact at", report.artifact(plot, "plots/loss.png"))
"#;

#[tokio::test]
async fn a_stage_reporting_through_scientist_report_fills_the_run() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let stage = pod.path("stage.py");
    std::fs::write(&stage, STAGE).expect("write the stage");
    let plots = pod.path("elsewhere");
    std::fs::create_dir_all(&plots).expect("a directory outside the run's");
    let config = pod.config(&format!(
        "[env]\nPYTHONPATH = {:?}\nPYTHONDONTWRITEBYTECODE = \"1\"\nPLOT_DIR = {:?}\n\n[[stage]]\nname = \"Stage_1\"\ncommand = [\"python3\", {:?}]\n",
        examples().join("python").display().to_string(),
        plots.display().to_string(),
        stage.display().to_string(),
    ));
    let artifacts = pod.path("artifacts");
    let worker = pod.worker(&config).arg("--once").arg("--artifacts").arg(&artifacts).spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed: {stderr}");

    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    let document = serde_json::to_value(&run).expect("the run as JSON");
    let current = run.current_stage.as_ref().unwrap_or_else(|| panic!("no current stage: {document:#}"));
    assert_eq!(current.name.as_str(), "Stage_1");
    assert_eq!(
        (current.iteration, current.max_iterations, current.good_nodes, current.buggy_nodes, current.total_nodes),
        (2, 4, 2, 1, 3),
        "{document:#}"
    );
    assert_eq!(current.best_metric.as_deref(), Some("0.83"));
    let node = run.nodes.iter().find(|node| node.id == "node-1").unwrap_or_else(|| panic!("no node: {document:#}"));
    assert_eq!(
        (node.is_buggy, node.metric.clone(), node.parent_id.as_deref()),
        (Some(false), Some(json!(0.83)), Some("node-0"))
    );
    let loss = run.metrics.iter().find(|point| point.name == "val_loss").unwrap_or_else(|| panic!("{document:#}"));
    assert_eq!((loss.value, loss.step), (0.25, Some(3)));
    let llm = &document["cost"]["llm"];
    assert_eq!(
        (&llm["inputTokens"], &llm["outputTokens"], &llm["cachedTokens"]),
        (&json!(1200), &json!(300), &json!(800)),
        "{document:#}"
    );

    let registered = pod.artifacts(&id).await;
    let key = format!("runs/{id}/plots/loss.png");
    let artifact = registered.get(&key).unwrap_or_else(|| panic!("{key} is not registered: {registered:?}"));
    assert_eq!((artifact.kind.as_deref(), artifact.bytes), (Some("plot"), Some(72)));
    let events = pod.events(&id).await;
    let reported = events.iter().filter(|event| event.source.starts_with("python://")).count();
    assert_eq!(reported, 5, "every event the stage reported, once: {events:#?}");
    pod.cleanup().await;
}
