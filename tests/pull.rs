//! `scientist runs pull` end to end: the built binary fetching a run's artifacts through
//! `scientist serve` (the built binary, on a real socket) from a local artifact directory and
//! from the S3 test server (moto, started by `scripts/with-test-servers`), or straight from
//! the store. Objects are uploaded through `ArtifactStore::upload` (a checkpoint above one
//! multipart part) and registered in the store as a worker would.

#[path = "common/artifact_plane.rs"]
mod artifact_plane;
mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::path::Path;

use artifact_plane::{Backend, CHECKPOINT_BYTES, Plane, assert_pulled, pattern, sha256, typical_run};
use reqwest::StatusCode;
use scientist::artifacts::sha256_file;
use serde_json::json;

async fn pull_twice_through_serve(backend: Backend) {
    let plane = Plane::start(backend, &[]).await;
    let uploaded = typical_run(&plane).await;

    // Default --out: ./<run id>/ in the working directory.
    let first = plane.pull("read-token-51ab", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let out = plane.dir.path().join(plane.run.as_str());
    assert_pulled(&out, &uploaded);
    assert!(first.stderr.contains("3 downloaded (0 unverified), 0 already present, 0 failed"), "{}", first.stderr);
    for file in &uploaded {
        let line = format!(
            "{}  downloaded, {} bytes, sha256 verified",
            Path::new(plane.run.as_str()).join(file.relative).display(),
            file.content.len()
        );
        assert!(first.stdout.contains(&line), "{line:?} in\n{}", first.stdout);
    }

    let second = plane.pull("read-token-51ab", &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stderr.contains("0 downloaded (0 unverified), 3 already present, 0 failed"), "{}", second.stderr);
    assert_eq!(second.stdout.matches("already present, sha256 verified").count(), 3, "{}", second.stdout);
    assert_pulled(&out, &uploaded);

    let plots = plane.dir.path().join("plots-only");
    let only = plane.pull("read-token-51ab", &["--kind", "plot", "--out", plots.to_str().expect("utf-8")]);
    assert_eq!(only.code, 0, "{}", only.stderr);
    assert_pulled(&plots, &uploaded[..1]);

    let configs = plane.dir.path().join("configs-only");
    let none = plane.pull("read-token-51ab", &["--kind", "config", "--out", configs.to_str().expect("utf-8")]);
    assert_eq!(none.code, 0, "{}", none.stderr);
    assert!(none.stderr.contains("has no artifacts of kind config"), "{}", none.stderr);
    assert!(!configs.exists(), "nothing to pull makes nothing");
}

#[tokio::test]
async fn runs_pull_through_serve_from_a_local_artifact_directory() {
    pull_twice_through_serve(Backend::Local).await;
}

#[tokio::test]
async fn runs_pull_through_serve_from_s3_with_a_multipart_checkpoint() {
    pull_twice_through_serve(Backend::s3().await).await;
}

#[tokio::test]
async fn runs_pull_straight_from_s3_needs_no_server_token() {
    let plane = Plane::start(Backend::s3().await, &[]).await;
    let uploaded = typical_run(&plane).await;
    let out = plane.dir.path().join("direct");
    let pulled = plane.pull_direct(&["--out", out.to_str().expect("utf-8")]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    assert_pulled(&out, &uploaded);
}

#[tokio::test]
async fn a_corrupted_object_is_reported_and_not_kept_and_the_rest_is_pulled() {
    let plane = Plane::start(Backend::Local, &[]).await;
    let uploaded = typical_run(&plane).await;
    // Overwritten in the store after registration: same size, other bytes.
    let stored = plane.dir.path().join("artifacts").join(&uploaded[2].key);
    std::fs::write(&stored, pattern(CHECKPOINT_BYTES, 9)).expect("corrupt the object");

    let out = plane.dir.path().join("out");
    let pulled = plane.pull("read-token-51ab", &["--out", out.to_str().expect("utf-8")]);
    assert_eq!(pulled.code, 1, "{}", pulled.stderr);
    assert!(pulled.stderr.contains("sha256 mismatch"), "{}", pulled.stderr);
    assert!(
        pulled.stderr.contains(&format!("1 of run {}'s artifacts not pulled: {}", plane.run, uploaded[2].key)),
        "{}",
        pulled.stderr
    );
    assert!(pulled.stderr.contains("2 downloaded (0 unverified), 0 already present, 1 failed"), "{}", pulled.stderr);
    assert_pulled(&out, &uploaded[..2]);
}

#[tokio::test]
async fn an_ingest_token_cannot_pull_and_exits_7() {
    let plane = Plane::start(Backend::Local, &[]).await;
    typical_run(&plane).await;
    let out = plane.dir.path().join("out");
    let pulled = plane.pull("ingest-token-9c2e", &["--out", out.to_str().expect("utf-8")]);
    assert_eq!(pulled.code, 7, "{}", pulled.stderr);
    assert!(pulled.stderr.contains("`read` scope"), "{}", pulled.stderr);
    assert!(!pulled.stderr.contains("ingest-token-9c2e"), "the token is never printed: {}", pulled.stderr);
    assert!(!out.exists(), "nothing is written");
}

/// A record's key decides where its file goes, but never outside --out: not by `..`, not
/// through a symbolic link already there. The good files are still pulled; a record with no
/// sha256 is pulled and said to be unverified.
#[tokio::test]
async fn a_malicious_record_key_cannot_write_outside_out() {
    let plane = Plane::start(Backend::Local, &[]).await;
    let good = plane.add("plots/loss.png", pattern(100, 1), "plot", "image/png").await;
    let run = plane.run.clone();
    let unhashed_key = plane.artifacts.key(&run, Path::new("notes.txt")).to_string();
    std::fs::write(plane.dir.path().join("artifacts").join(&unhashed_key), b"notes").expect("write");
    plane.register(json!({"key": unhashed_key, "bytes": 5})).await;
    for key in
        [format!("runs/{run}/../../escaped.txt"), format!("runs/{run}/linked/escaped.txt"), "/escaped.txt".into()]
    {
        plane.register(json!({"key": key, "bytes": 5, "sha256": sha256(b"owned")})).await;
    }
    let outside = tempfile::tempdir().expect("temp dir");
    let out = plane.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), out.join("linked")).expect("symlink");

    let pulled = plane.pull_direct(&["--out", out.to_str().expect("utf-8")]);
    assert_eq!(pulled.code, 1, "{}", pulled.stderr);
    assert!(pulled.stderr.contains("no safe place under --out"), "{}", pulled.stderr);
    assert!(pulled.stderr.contains("symbolic link"), "{}", pulled.stderr);
    assert!(pulled.stderr.contains("3 of run"), "{}", pulled.stderr);
    assert!(pulled.stdout.contains("notes.txt  downloaded, 5 bytes, unverified"), "{}", pulled.stdout);
    assert!(std::fs::read_dir(outside.path()).expect("read").next().is_none(), "nothing written through the link");
    assert!(!plane.dir.path().join("escaped.txt").exists() && !Path::new("/escaped.txt").exists());
    assert_eq!(sha256_file(&out.join(good.relative)).expect("pulled"), good.sha256);
}

#[tokio::test]
async fn redirect_mode_answers_a_presigned_s3_url_and_pull_follows_it() {
    let plane = Plane::start(Backend::s3().await, &["--artifact-redirect", "--artifact-redirect-expiry", "2m"]).await;
    let uploaded = typical_run(&plane).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let answer =
        http.get(plane.download_url(&uploaded[0].key)).bearer_auth("read-token-51ab").send().await.expect("get");
    assert_eq!(answer.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = answer.headers()["location"].to_str().expect("ascii").to_owned();
    let endpoint = plane.endpoint.clone().expect("S3 endpoint");
    assert!(location.starts_with(&endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=120"), "{location}");
    let presigned = http.get(&location).send().await.expect("presigned get");
    assert_eq!(presigned.status(), StatusCode::OK);
    assert_eq!(presigned.bytes().await.expect("body").as_ref(), uploaded[0].content.as_slice());

    let out = plane.dir.path().join("out");
    let pulled = plane.pull("read-token-51ab", &["--out", out.to_str().expect("utf-8")]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    assert_pulled(&out, &uploaded);
    assert!(!pulled.stderr.contains("X-Amz-Signature"), "a presigned URL is a credential: {}", pulled.stderr);
}
