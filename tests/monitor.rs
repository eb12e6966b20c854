//! The run-directory monitor end to end: the built `scientist work` running
//! `examples/pipeline/artifacts.toml` (a stage that writes a plot, a checkpoint, a config, a
//! log file and metrics.json twice), a real SQLite store, artifacts in a local directory or
//! on the real S3 server (moto) that `scripts/test` starts. Every wait is on a condition
//! with a deadline; nothing sleeps for a fixed time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{Attribute, ObjectStoreExt};
use scientist::event::{Event, Payload};
use scientist::run::{RunId, RunStatus};
use scientist::store::Artifact;
use scientist::time::Timestamp;
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{Pod, examples};

/// The files the example stage leaves for upload, with their kind and content type.
const UPLOADED: &[(&str, &str, &str)] = &[
    ("checkpoints/model.pt", "checkpoint", "application/octet-stream"),
    ("config.yaml", "config", "application/yaml"),
    ("metrics.json", "metrics", "application/json"),
    ("plots/loss.png", "plot", "image/png"),
];

/// The lines of `train.log`, in order (the last one has no newline).
const LOG_LINES: &[&str] = &[
    "epoch 1 loss 1.0",
    "epoch 2 loss 0.5",
    "epoch 3 loss 0.3333",
    "WARNING: the learning rate may be too high",
    "saved checkpoints/model.pt (3 MiB)",
    "done",
];

fn config() -> PathBuf {
    examples().join("pipeline/artifacts.toml")
}

/// `scientist work --once` on the pod's store, running the example, with a short settle time.
fn worker(pod: &Pod, artifacts: &str) -> Command {
    worker_with(pod, &config(), artifacts)
}

fn worker_with(pod: &Pod, config: &Path, artifacts: &str) -> Command {
    let mut command = pod.worker(config);
    command
        .arg("--once")
        .arg("--artifacts")
        .arg(artifacts)
        .arg("--artifact-settle")
        .arg("200ms")
        .env("SCIENTIST_HEARTBEAT", "1s");
    command
}

/// Polls `check` until it gives a value, failing the test after 60 s.
async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    pod::eventually(what, Duration::from_secs(60), check).await
}

/// Waits for the worker to exit; panics with its stderr unless it succeeded.
async fn finish(child: Child) -> String {
    let (status, stderr) = pod::finish(child, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed ({status}): {stderr}");
    stderr
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn sha256_of(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display())))
}

fn of_type<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a Event> {
    events.iter().filter(|event| event.event_type == event_type).collect()
}

/// What every backend must show after the example stage ran: one record per file with the
/// file's sha256, kind and content type; detected before registered; metrics.json values as
/// stage metrics; train.log as log events; all of it before the run's end.
async fn check_reported(pod: &Pod, id: &RunId, run_dir: &Path, key_prefix: &str) -> BTreeMap<String, Artifact> {
    let run = pod.store.get(id).await.expect("get").expect("run exists");
    assert_eq!(run.status, RunStatus::Completed);
    let artifacts = pod.artifacts(id).await;
    let expected_keys: Vec<String> =
        UPLOADED.iter().map(|(relative, _, _)| format!("{key_prefix}runs/{id}/{relative}")).collect();
    assert_eq!(artifacts.keys().cloned().collect::<Vec<_>>(), expected_keys, "train.log is tailed, not uploaded");
    for (relative, kind, content_type) in UPLOADED {
        let artifact = &artifacts[&format!("{key_prefix}runs/{id}/{relative}")];
        let local = run_dir.join(relative);
        assert_eq!(artifact.sha256.as_deref(), Some(sha256_of(&local).as_str()), "{relative}");
        assert_eq!(artifact.bytes, Some(std::fs::metadata(&local).expect("stat").len()), "{relative}");
        assert_eq!(artifact.kind.as_deref(), Some(*kind), "{relative}");
        assert_eq!(artifact.content_type.as_deref(), Some(*content_type), "{relative}");
    }

    let events = pod.events(id).await;
    let detected = of_type(&events, "ai.artifact.detected");
    assert_eq!(detected.len(), UPLOADED.len(), "one detection per file");
    assert!(of_type(&events, "ai.artifact.failed").is_empty());
    let end = events.iter().position(|event| event.event_type == "ai.run.completed").expect("completed");
    let last_artifact =
        events.iter().rposition(|event| event.event_type.starts_with("ai.artifact.")).expect("artifact events");
    assert!(last_artifact < end, "every artifact event comes before the run's end");

    let log: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.payload {
            Payload::Log(log) if log.source.as_deref() == Some("train.log") => Some(log.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(log, LOG_LINES, "train.log, line by line, once");

    let metrics: BTreeMap<&str, f64> = run.metrics.iter().map(|point| (point.name.as_str(), point.value)).collect();
    assert_eq!(metrics.get("val_loss"), Some(&0.25), "the latest metrics.json value: {metrics:?}");
    assert_eq!(metrics.get("accuracy"), Some(&0.91), "{metrics:?}");
    artifacts
}

#[tokio::test]
async fn artifacts_are_stored_locally_with_their_sha256_registered_and_reregistered_when_changed() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let artifact_dir = pod.path("artifacts");
    let go = pod.path("go");
    let worker =
        worker(&pod, artifact_dir.to_str().expect("utf-8 path")).env("TOY_WAIT_FILE", &go).spawn().expect("start");
    let run_dir = pod.run_dir(&id).await;

    // The stage waits for `go` before its second metrics.json: the first version must be
    // registered by then, with the sha256 of what is on disk.
    let metrics_key = format!("runs/{id}/metrics.json");
    let first = eventually("the first metrics.json registered", || async {
        pod.artifacts(&id).await.get(&metrics_key).and_then(|artifact| artifact.sha256.clone())
    })
    .await;
    assert_eq!(first, sha256_of(&run_dir.join("metrics.json")));
    // While the stage still runs, the rest is registered and the log tailed: not left to
    // the final sweep.
    eventually("every file registered while the stage runs", || async {
        (pod.artifacts(&id).await.len() == UPLOADED.len()).then_some(())
    })
    .await;
    eventually("train.log tailed while the stage runs", || async {
        let tailed = pod
            .events(&id)
            .await
            .iter()
            .filter(|event| matches!(&event.payload, Payload::Log(log) if log.source.as_deref() == Some("train.log")))
            .count();
        (tailed == LOG_LINES.len() - 1).then_some(())
    })
    .await;
    std::fs::write(&go, b"").expect("write go file");
    let stderr = finish(worker).await;

    let artifacts = check_reported(&pod, &id, &run_dir, "").await;
    for key in artifacts.keys() {
        let object = artifact_dir.join(key);
        assert_eq!(
            Some(sha256_of(&object)),
            artifacts[key].sha256,
            "the stored object {} is the file: {stderr}",
            object.display()
        );
    }
    assert!(!artifact_dir.join(format!("runs/{id}/train.log")).exists());

    // metrics.json changed after its first upload: a new registration under the same key.
    let events = pod.events(&id).await;
    let metrics_versions: Vec<String> = of_type(&events, "ai.artifact.registered")
        .into_iter()
        .filter_map(|event| match &event.payload {
            Payload::ArtifactRegistered(registered) if registered.key == metrics_key => registered.sha256.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(metrics_versions.len(), 2, "{metrics_versions:?}");
    assert_eq!(metrics_versions[0], first);
    assert_eq!(metrics_versions[1], sha256_of(&run_dir.join("metrics.json")));
    assert_ne!(metrics_versions[0], metrics_versions[1]);

    // Each metrics.json version's values, as stage metrics: all of the first, the changes of the second.
    let metric_events: Vec<(String, f64, Option<u64>)> = of_type(&events, "ai.run.stage_metric")
        .into_iter()
        .filter_map(|event| match &event.payload {
            Payload::StageMetric(metric) => Some((metric.name.clone(), metric.value, metric.step)),
            _ => None,
        })
        .collect();
    assert_eq!(
        metric_events,
        [
            ("val_loss".to_owned(), 0.3333, Some(3)),
            ("accuracy".to_owned(), 0.91, Some(4)),
            ("val_loss".to_owned(), 0.25, Some(4)),
        ]
    );
}

#[tokio::test]
async fn artifacts_go_to_s3_with_their_content_type_and_a_multipart_checkpoint() {
    let endpoint = std::env::var("SCIENTIST_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "SCIENTIST_TEST_S3_ENDPOINT is not set: run the tests through scripts/test, which starts an S3 \
             server (moto) and sets it, or start `moto_server -H 127.0.0.1 -p PORT` (pip install \
             'moto[server]') and export SCIENTIST_TEST_S3_ENDPOINT=http://127.0.0.1:PORT"
        )
    });
    let bucket = format!("scientist-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let created =
        reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap_or_else(|err| {
            panic!("cannot reach the S3 test server at {endpoint} ({err}); is moto_server running?")
        });
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());

    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let worker = worker(&pod, &format!("s3://{bucket}/experiments/toy"))
        .arg("--artifacts-endpoint")
        .arg(&endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        // Above the 8 MiB single-PUT limit: a multipart upload.
        .env("TOY_CHECKPOINT_MB", "10")
        .spawn()
        .expect("start");
    let run_dir = pod.run_dir(&id).await;
    let stderr = finish(worker).await;
    assert!(stderr.contains(&format!("artifacts go to s3://{bucket}/experiments/toy")), "{stderr}");

    let checkpoint = std::fs::metadata(run_dir.join("checkpoints/model.pt")).expect("stat");
    assert_eq!(checkpoint.len(), 10 * 1024 * 1024);
    let artifacts = {
        let run = pod.store.get(&id).await.expect("get").expect("run");
        assert_eq!(run.status, RunStatus::Completed, "{stderr}");
        pod.artifacts(&id).await
    };
    assert_eq!(artifacts.len(), UPLOADED.len(), "{:?}", artifacts.keys());

    let s3 = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("S3 client");
    for (relative, kind, content_type) in UPLOADED {
        let key = format!("experiments/toy/runs/{id}/{relative}");
        let artifact = artifacts.get(&key).unwrap_or_else(|| panic!("no record for {key}: {:?}", artifacts.keys()));
        let object = s3.get(&key.as_str().into()).await.unwrap_or_else(|err| panic!("get {key}: {err}"));
        let stored_type = object.attributes.get(&Attribute::ContentType).map(|value| value.to_string());
        let bytes = object.bytes().await.expect("object bytes");
        assert_eq!(Some(sha256(&bytes)), artifact.sha256, "{key}");
        assert_eq!(artifact.sha256, Some(sha256_of(&run_dir.join(relative))), "{key}");
        assert_eq!(artifact.bytes, Some(bytes.len() as u64), "{key}");
        assert_eq!(artifact.kind.as_deref(), Some(*kind));
        assert_eq!(stored_type.as_deref(), Some(*content_type), "{key}: content type kept by S3");
    }
}

#[tokio::test]
async fn uploads_that_keep_failing_are_reported_and_the_run_still_completes() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    // `runs` is a file where the store needs a folder: every upload fails.
    let artifact_dir = pod.path("artifacts");
    std::fs::create_dir_all(&artifact_dir).expect("mkdir");
    std::fs::write(artifact_dir.join("runs"), b"not a folder").expect("write");
    let worker = worker(&pod, artifact_dir.to_str().expect("utf-8 path")).spawn().expect("start");
    finish(worker).await;

    let run = pod.store.get(&id).await.expect("get").expect("run exists");
    assert_eq!(run.status, RunStatus::Completed, "a failed upload does not fail the run");
    assert!(pod.artifacts(&id).await.is_empty());
    let events = pod.events(&id).await;
    assert!(of_type(&events, "ai.artifact.registered").is_empty());
    let mut failed: Vec<String> = of_type(&events, "ai.artifact.failed")
        .into_iter()
        .filter_map(|event| match &event.payload {
            Payload::ArtifactFailed(failed) => {
                assert!(failed.error.as_deref().is_some_and(|error| error.contains("cannot store")), "{failed:?}");
                Some(failed.path.clone())
            }
            _ => None,
        })
        .collect();
    failed.sort();
    failed.dedup();
    let expected: Vec<String> = UPLOADED.iter().map(|(relative, _, _)| relative.to_string()).collect();
    assert_eq!(failed, expected);
}

#[tokio::test]
async fn a_retry_reuses_the_directory_and_reports_only_what_it_wrote() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    // Attempt 1 writes everything plus extra/old.png, then fails; attempt 2 writes the same
    // files again (train.log is appended to) and leaves extra/old.png alone.
    let script = examples().join("pipeline/train_toy.py");
    let config = pod.path("retry.toml");
    let command = format!(
        "python3 {script:?} && if [ \"$SCIENTIST_ATTEMPT\" = 1 ]; then mkdir -p extra && cp plots/loss.png \
         extra/old.png && exit 3; fi"
    );
    std::fs::write(&config, format!("[[stage]]\nname = \"Stage_1\"\ncommand = {command:?}\n")).expect("config");
    let artifact_dir = pod.path("artifacts");
    let spec = artifact_dir.to_str().expect("utf-8 path");

    let first = worker_with(&pod, &config, spec).spawn().expect("start");
    finish(first).await;
    let run = pod.store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Failed);
    let old_key = format!("runs/{id}/extra/old.png");
    assert!(pod.artifacts(&id).await.contains_key(&old_key), "attempt 1's final sweep stored extra/old.png");

    pod.store.reset(&id, Timestamp::now()).await.expect("reset");
    let second = worker_with(&pod, &config, spec).spawn().expect("start");
    finish(second).await;
    let run = pod.store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.attempt), (RunStatus::Completed, 2));

    let events = pod.events(&id).await;
    let second_attempt: Vec<&Event> = events.iter().filter(|event| event.attempt == Some(2)).collect();
    let paths: Vec<&str> = second_attempt
        .iter()
        .filter_map(|event| match &event.payload {
            Payload::ArtifactDetected(detected) => Some(detected.path.as_str()),
            _ => None,
        })
        .collect();
    assert!(!paths.contains(&"extra/old.png"), "an unchanged file of attempt 1 is not reported again: {paths:?}");
    assert!(paths.contains(&"checkpoints/model.pt"), "{paths:?}");
    let log: Vec<&str> = second_attempt
        .iter()
        .filter_map(|event| match &event.payload {
            Payload::Log(log) if log.source.as_deref() == Some("train.log") => Some(log.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(log, LOG_LINES, "only what attempt 2 appended to train.log");
    let run_dir = pod.run_dir(&id).await;
    let artifacts = pod.artifacts(&id).await;
    assert_eq!(artifacts.len(), UPLOADED.len() + 1);
    for (key, artifact) in &artifacts {
        let relative = key.strip_prefix(&format!("runs/{id}/")).expect("key under the run");
        assert_eq!(artifact.sha256, Some(sha256_of(&run_dir.join(relative))), "{key}");
    }
}

/// The `ai.artifact.failed` events of `events`, as (path, error).
fn failures(events: &[Event]) -> Vec<(String, String)> {
    of_type(events, "ai.artifact.failed")
        .into_iter()
        .filter_map(|event| match &event.payload {
            Payload::ArtifactFailed(failed) => Some((failed.path.clone(), failed.error.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

fn log_messages(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match &event.payload {
            Payload::Log(log) => Some(log.message.clone()),
            _ => None,
        })
        .collect()
}

/// Waits until `relative` of the run is registered.
async fn registered(pod: &Pod, id: &RunId, relative: &str) {
    let key = format!("runs/{id}/{relative}");
    eventually(&format!("{relative} registered"), || async {
        pod.artifacts(id).await.contains_key(&key).then_some(())
    })
    .await;
}

/// Every file stored under `dir`, with its content.
fn stored_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.map(|entry| entry.expect("entry")) {
            if entry.file_type().expect("type").is_dir() {
                folders.push(entry.path());
            } else {
                found.push((entry.path(), std::fs::read(entry.path()).expect("read stored")));
            }
        }
    }
    found
}

/// Defect 5: what is in the run directory when the monitor starts, with no record of an
/// earlier attempt, was written by this one (a child that writes at once can beat the
/// monitor's first look): uploaded and tailed from the start, never taken for an old file.
#[tokio::test]
async fn files_already_there_when_the_monitor_starts_are_new_unless_an_earlier_attempt_recorded_them() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    // The run directory as a child that wrote before the monitor's first look leaves it.
    let run_dir = pod.path("runs").join(format!("2000-01-01_00-00-00_{id}"));
    std::fs::create_dir_all(run_dir.join("plots")).expect("mkdir");
    std::fs::write(run_dir.join("plots/early.png"), b"early png").expect("write");
    std::fs::write(run_dir.join("early.log"), "early line 1\nearly line 2\n").expect("write");
    let config = pod.config("[[stage]]\nname = \"Stage_1\"\ncommand = 'echo x > plot.png'\n");
    let artifact_dir = pod.path("artifacts");
    finish(worker_with(&pod, &config, artifact_dir.to_str().expect("utf-8 path")).spawn().expect("start")).await;

    assert_eq!(pod.run_dir(&id).await, run_dir, "the prepared directory was used");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed);
    let artifacts = pod.artifacts(&id).await;
    for relative in ["plots/early.png", "plot.png"] {
        let artifact = artifacts.get(&format!("runs/{id}/{relative}"));
        assert_eq!(
            artifact.and_then(|artifact| artifact.sha256.clone()),
            Some(sha256_of(&run_dir.join(relative))),
            "{relative} is uploaded: {:?}",
            artifacts.keys()
        );
    }
    let events = pod.events(&id).await;
    let lines = log_messages(&events);
    assert!(lines.contains(&"early line 1".to_owned()) && lines.contains(&"early line 2".to_owned()), "{lines:?}");
}

/// Defect 2: links are never followed, whatever they point to and whenever they appear; each
/// is reported once, and nothing from outside reaches the artifact store or the run's log.
#[tokio::test]
async fn links_in_the_run_directory_are_reported_once_and_never_followed() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let outside = pod.path("outside");
    std::fs::create_dir_all(outside.join("data")).expect("mkdir");
    let secret = b"root:x:0:0:the secret outside the run directory";
    std::fs::write(outside.join("passwd"), secret).expect("write");
    std::fs::write(outside.join("secret.log"), "a log line from outside\n").expect("write");
    std::fs::write(outside.join("data/stolen.png"), secret).expect("write");
    let go = pod.path("go");
    let command = format!(
        "set -e; ln -s {passwd:?} leak.yaml; ln -s {log:?} leak.log; ln -s {data:?} data; \
         mkdir plots; echo png > plots/real.png; ln -s plots/real.png inside.png; \
         echo marker > marker.png; \
         while [ ! -e {go:?} ]; do sleep 0.02; done; \
         echo 'another line from outside' >> {log:?}",
        passwd = outside.join("passwd"),
        log = outside.join("secret.log"),
        data = outside.join("data"),
        go = go,
    );
    let config = pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = {command:?}\n"));
    let artifact_dir = pod.path("artifacts");
    let worker = worker_with(&pod, &config, artifact_dir.to_str().expect("utf-8 path")).spawn().expect("start");
    // The links were made before marker.png: by the time it is registered, their changes
    // were handled too.
    registered(&pod, &id, "marker.png").await;
    std::fs::write(&go, b"").expect("write go file");
    let stderr = finish(worker).await;

    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    let artifacts = pod.artifacts(&id).await;
    let keys: Vec<&str> = artifacts.keys().map(String::as_str).collect();
    assert_eq!(keys, [format!("runs/{id}/marker.png"), format!("runs/{id}/plots/real.png")], "only real files");
    for (path, content) in stored_files(&artifact_dir) {
        assert!(content != secret, "{} holds the outside file", path.display());
    }
    let events = pod.events(&id).await;
    let lines = log_messages(&events);
    assert!(!lines.iter().any(|line| line.contains("from outside")), "an outside log was tailed: {lines:?}");

    let mut failed = failures(&events);
    failed.sort();
    let paths: Vec<&str> = failed.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["inside.png", "leak.log", "leak.yaml"], "each link reported once: {failed:?}");
    for (path, error) in &failed {
        let place = if path == "inside.png" { "within the run directory" } else { "outside the run directory" };
        assert!(
            error.contains("symbolic link") && error.contains(place) && error.contains("not read"),
            "{path}: {error}"
        );
    }
}

/// Defect 2 on a retry: a folder link attempt 1 left in the reused directory is not watched
/// (nor scanned) by attempt 2, so files written outside through it are never uploaded.
#[tokio::test]
async fn a_linked_folder_left_by_an_earlier_attempt_is_not_watched() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let outside = pod.path("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let go = pod.path("go");
    let command = format!(
        "set -e; if [ \"$SCIENTIST_ATTEMPT\" = 1 ]; then ln -s {outside:?} extra; exit 3; fi; \
         echo stolen > {fresh:?}; echo marker > marker.png; \
         while [ ! -e {go:?} ]; do sleep 0.02; done",
        fresh = outside.join("fresh.png"),
    );
    let config = pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = {command:?}\n"));
    let artifact_dir = pod.path("artifacts");
    let spec = artifact_dir.to_str().expect("utf-8 path");
    finish(worker_with(&pod, &config, spec).spawn().expect("start")).await;
    assert_eq!(pod.run(&id).await.status, RunStatus::Failed);

    pod.store.reset(&id, Timestamp::now()).await.expect("reset");
    let second = worker_with(&pod, &config, spec).spawn().expect("start");
    // fresh.png was written before marker.png: had its folder been watched, its change would
    // have come first.
    registered(&pod, &id, "marker.png").await;
    std::fs::write(&go, b"").expect("write go file");
    finish(second).await;
    let run = pod.run(&id).await;
    assert_eq!((run.status, run.attempt), (RunStatus::Completed, 2));
    let artifacts = pod.artifacts(&id).await;
    assert_eq!(artifacts.keys().collect::<Vec<_>>(), [&format!("runs/{id}/marker.png")]);
    assert!(outside.join("fresh.png").exists(), "the child wrote outside");
}
