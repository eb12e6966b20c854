//! A control plane for the artifact tests: a store, an artifact store (a local directory or
//! a bucket on the S3 test server) and `scientist serve` over both, with helpers to upload
//! and register a run's artifacts as a worker would and to run `scientist runs pull`.
//! Included with `#[path]` by tests that also declare `common` and `serve_process`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use scientist::artifacts::{ArtifactStore, hex, sha256_file};
use scientist::run::{NewRun, RunId};
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::common;
use super::serve_process::ServeProcess;

pub const TOKENS: &str = "read-token-51ab read\ningest-token-9c2e ingest\nadmin-token-77d0 admin\n";

/// Above the 8 MiB single-PUT limit: uploaded in parts.
pub const CHECKPOINT_BYTES: usize = 9 * 1024 * 1024 + 12345;

/// Where the test's objects live.
pub enum Backend {
    Local,
    S3 { endpoint: String, bucket: String },
}

impl Backend {
    pub async fn s3() -> Backend {
        let endpoint = std::env::var("SCIENTIST_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "SCIENTIST_TEST_S3_ENDPOINT is not set: run the tests through scripts/with-test-servers, which \
                 starts an S3 server (moto) and sets it, or start `moto_server -H 127.0.0.1 -p PORT` (pip install \
                 'moto[server]') and export SCIENTIST_TEST_S3_ENDPOINT=http://127.0.0.1:PORT"
            )
        });
        let bucket = format!("scientist-pull-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let created = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap_or_else(|err| {
            panic!("cannot reach the S3 test server at {endpoint} ({err}); is moto_server running?")
        });
        assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
        Backend::S3 { endpoint, bucket }
    }
}

/// A store, an artifact store, and `serve` over both.
pub struct Plane {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub artifacts: ArtifactStore,
    /// `--artifacts` as serve and pull are given it.
    pub spec: String,
    pub endpoint: Option<String>,
    pub serve: ServeProcess,
    pub run: RunId,
}

/// One artifact as uploaded and registered.
pub struct Uploaded {
    pub key: String,
    pub relative: &'static str,
    pub content: Vec<u8>,
    pub sha256: String,
}

impl Plane {
    pub async fn start(backend: Backend, serve_flags: &[&str]) -> Plane {
        let dir = tempfile::tempdir().expect("temp dir");
        let store_path = dir.path().join("store.sqlite");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&store_path).await.expect("open store"));
        let (artifacts, spec, endpoint) = match &backend {
            Backend::Local => {
                let local = dir.path().join("artifacts");
                let artifacts = ArtifactStore::local(&local).expect("local store");
                (artifacts, local.display().to_string(), None)
            }
            Backend::S3 { endpoint, bucket } => {
                let spec = format!("s3://{bucket}/experiments");
                let builder = AmazonS3Builder::new()
                    .with_access_key_id("testing")
                    .with_secret_access_key("testing")
                    .with_region("us-east-1");
                let artifacts = ArtifactStore::open_s3(&spec, Some(endpoint), builder).expect("S3 store");
                (artifacts, spec, Some(endpoint.clone()))
            }
        };
        std::fs::write(dir.path().join("tokens"), TOKENS).expect("token file");
        let serve = ServeProcess::start(|command| {
            command
                .arg("--store")
                .arg(&store_path)
                .arg("--token-file")
                .arg(dir.path().join("tokens"))
                .args(["--artifacts", &spec])
                .args(serve_flags)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1");
            if let Some(endpoint) = &endpoint {
                command.args(["--artifacts-endpoint", endpoint]);
            }
            command
        });
        let run = store.enqueue(NewRun::new(json!({"Title": "pull"})), Timestamp::now()).await.expect("enqueue").id;
        Plane { dir, store, artifacts, spec, endpoint, serve, run }
    }

    /// Uploads `content` as the run's `relative` file and registers it (with its sha256
    /// unless `unhashed`).
    pub async fn add(&self, relative: &'static str, content: Vec<u8>, kind: &str, content_type: &str) -> Uploaded {
        let file = self.dir.path().join("upload.tmp");
        std::fs::write(&file, &content).expect("write");
        let key = self.artifacts.key(&self.run, Path::new(relative));
        let open = std::fs::File::open(&file).expect("open");
        let uploaded = self.artifacts.upload(open, &file, &key, content_type).await.expect("upload");
        let key = key.to_string();
        self.register(json!({"key": key, "bytes": uploaded.bytes, "sha256": uploaded.sha256,
                             "content_type": content_type, "kind": kind}))
            .await;
        Uploaded { key, relative, content, sha256: uploaded.sha256 }
    }

    pub async fn register(&self, data: serde_json::Value) {
        let id = format!("art-{}", uuid::Uuid::new_v4().simple());
        let event = common::event(&id, "ai.artifact.registered", self.run.as_str(), 10, data);
        self.store.apply_events(vec![event], Timestamp::now()).await.expect("register");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.serve.url)
    }

    pub fn download_url(&self, key: &str) -> String {
        self.url(&format!("/api/runs/{}/artifacts/{key}", self.run))
    }

    /// `scientist runs pull RUN` through serve, with `token` and more arguments.
    pub fn pull(&self, token: &str, args: &[&str]) -> Pulled {
        run_scientist(self.dir.path(), |command| {
            command
                .args(["runs", "pull", self.run.as_str(), "--server", &self.serve.url])
                .args(args)
                .env("SCIENTIST_TOKEN", token)
        })
    }

    /// `scientist runs pull RUN` straight from the stores, with more arguments.
    pub fn pull_direct(&self, args: &[&str]) -> Pulled {
        run_scientist(self.dir.path(), |command| {
            command.args(["runs", "pull", self.run.as_str(), "--store"]).arg(self.dir.path().join("store.sqlite"));
            command.args(["--artifacts", &self.spec]).args(args);
            if let Some(endpoint) = &self.endpoint {
                command.args(["--artifacts-endpoint", endpoint]);
            }
            command
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
        })
    }
}

pub struct Pulled {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_scientist(cwd: &Path, configure: impl FnOnce(&mut Command) -> &mut Command) -> Pulled {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scientist"));
    command.env_clear().env("HOME", cwd).current_dir(cwd);
    configure(&mut command);
    let output = command.output().expect("run scientist");
    Pulled {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|index| (index % 251) as u8 ^ seed).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The three files of a typical run: a plot, a PDF and a multipart checkpoint.
pub async fn typical_run(plane: &Plane) -> Vec<Uploaded> {
    vec![
        plane.add("plots/loss.png", pattern(4000, 1), "plot", "image/png").await,
        plane.add("paper.pdf", pattern(2500, 2), "pdf", "application/pdf").await,
        plane.add("checkpoints/model.pt", pattern(CHECKPOINT_BYTES, 3), "checkpoint", "application/octet-stream").await,
    ]
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).expect("under dir").display().to_string());
            }
        }
    }
    found.sort();
    found
}

pub fn assert_pulled(out: &Path, uploaded: &[Uploaded]) {
    for file in uploaded {
        let path = out.join(file.relative);
        assert_eq!(sha256_file(&path).expect("read pulled file"), file.sha256, "{}", path.display());
        assert_eq!(std::fs::read(&path).expect("read").len(), file.content.len());
    }
    let mut expected: Vec<String> = uploaded.iter().map(|file| file.relative.to_owned()).collect();
    expected.sort();
    assert_eq!(files_under(out), expected, "nothing else (no temporary file) is left");
}
