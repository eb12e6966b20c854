//! Artifact downloads end to end: `scientist serve` (the built binary, on a real socket)
//! serving objects from a local artifact directory and from the S3 test server (moto,
//! started by `scripts/with-test-servers`), and `scientist runs pull` fetching them through
//! it or straight from the store. Objects are uploaded through `ArtifactStore::upload` (a
//! checkpoint above one multipart part) and registered in the store as a worker would.

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use object_store::aws::AmazonS3Builder;
use reqwest::StatusCode;
use scientist::artifacts::{ApiSource, ArtifactStore, Source, SourceError, hex, sha256_file};
use scientist::run::{NewRun, RunId};
use scientist::server::{self, AppState, Downloads, Limits, Tokens};
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::json;
use serve_process::ServeProcess;
use sha2::{Digest, Sha256};

const TOKENS: &str = "read-token-51ab read\ningest-token-9c2e ingest\nadmin-token-77d0 admin\n";

/// Above the 8 MiB single-PUT limit: uploaded in parts.
const CHECKPOINT_BYTES: usize = 9 * 1024 * 1024 + 12345;

/// Where the test's objects live.
enum Backend {
    Local,
    S3 { endpoint: String, bucket: String },
}

impl Backend {
    async fn s3() -> Backend {
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
struct Plane {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    artifacts: ArtifactStore,
    /// `--artifacts` as serve and pull are given it.
    spec: String,
    endpoint: Option<String>,
    serve: ServeProcess,
    run: RunId,
}

/// One artifact as uploaded and registered.
struct Uploaded {
    key: String,
    relative: &'static str,
    content: Vec<u8>,
    sha256: String,
}

impl Plane {
    async fn start(backend: Backend, serve_flags: &[&str]) -> Plane {
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
    async fn add(&self, relative: &'static str, content: Vec<u8>, kind: &str, content_type: &str) -> Uploaded {
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

    async fn register(&self, data: serde_json::Value) {
        let id = format!("art-{}", uuid::Uuid::new_v4().simple());
        let event = common::event(&id, "ai.artifact.registered", self.run.as_str(), 10, data);
        self.store.apply_events(vec![event], Timestamp::now()).await.expect("register");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.serve.url)
    }

    fn download_url(&self, key: &str) -> String {
        self.url(&format!("/api/runs/{}/artifacts/{key}", self.run))
    }

    /// `scientist runs pull RUN` through serve, with `token` and more arguments.
    fn pull(&self, token: &str, args: &[&str]) -> Pulled {
        run_scientist(self.dir.path(), |command| {
            command
                .args(["runs", "pull", self.run.as_str(), "--server", &self.serve.url])
                .args(args)
                .env("SCIENTIST_TOKEN", token)
        })
    }

    /// `scientist runs pull RUN` straight from the stores, with more arguments.
    fn pull_direct(&self, args: &[&str]) -> Pulled {
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

struct Pulled {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_scientist(cwd: &Path, configure: impl FnOnce(&mut Command) -> &mut Command) -> Pulled {
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

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|index| (index % 251) as u8 ^ seed).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The three files of a typical run: a plot, a PDF and a multipart checkpoint.
async fn typical_run(plane: &Plane) -> Vec<Uploaded> {
    vec![
        plane.add("plots/loss.png", pattern(4000, 1), "plot", "image/png").await,
        plane.add("paper.pdf", pattern(2500, 2), "pdf", "application/pdf").await,
        plane.add("checkpoints/model.pt", pattern(CHECKPOINT_BYTES, 3), "checkpoint", "application/octet-stream").await,
    ]
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
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

fn assert_pulled(out: &Path, uploaded: &[Uploaded]) {
    for file in uploaded {
        let path = out.join(file.relative);
        assert_eq!(sha256_file(&path).expect("read pulled file"), file.sha256, "{}", path.display());
        assert_eq!(std::fs::read(&path).expect("read").len(), file.content.len());
    }
    let mut expected: Vec<String> = uploaded.iter().map(|file| file.relative.to_owned()).collect();
    expected.sort();
    assert_eq!(files_under(out), expected, "nothing else (no temporary file) is left");
}

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
async fn downloads_stream_whole_or_one_range_with_their_headers() {
    let plane = Plane::start(Backend::Local, &[]).await;
    let plot = plane.add("plots/loss.png", pattern(4000, 1), "plot", "image/png").await;
    let http = reqwest::Client::new();
    let get = |key: &str, range: Option<&str>| {
        let mut request = http.get(plane.download_url(key)).bearer_auth("read-token-51ab");
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };

    let whole = get(&plot.key, None).await.expect("get");
    assert_eq!(whole.status(), StatusCode::OK);
    let headers = whole.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-length"], "4000");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["etag"].to_str().expect("ascii"), format!("\"{}\"", plot.sha256));
    assert_eq!(whole.bytes().await.expect("body").as_ref(), plot.content.as_slice());

    for (range, bytes, content_range) in [
        ("bytes=10-19", 10..20, "bytes 10-19/4000"),
        ("bytes=-5", 3995..4000, "bytes 3995-3999/4000"),
        ("bytes=3990-", 3990..4000, "bytes 3990-3999/4000"),
    ] {
        let part = get(&plot.key, Some(range)).await.expect("get");
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(part.headers()["content-range"], content_range, "{range}");
        assert_eq!(part.bytes().await.expect("body").as_ref(), &plot.content[bytes], "{range}");
    }
    let past = get(&plot.key, Some("bytes=4000-")).await.expect("get");
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers()["content-range"], "bytes */4000");

    let unregistered = format!("runs/{}/plots/other.png", plane.run);
    let missing = get(&unregistered, None).await.expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let message = missing.text().await.expect("body");
    assert!(message.contains(&format!("GET /api/runs/{}/artifacts", plane.run)), "{message}");

    let pod = http.get(plane.download_url(&plot.key)).bearer_auth("ingest-token-9c2e").send().await.expect("get");
    assert_eq!(pod.status(), StatusCode::FORBIDDEN);
    let anonymous = http.get(plane.download_url(&plot.key)).send().await.expect("get");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// `..` in a key is refused as a path, registered or not, however it is spelled: nothing
/// outside the run's objects is ever opened (here: the store file beside the artifacts).
#[tokio::test]
async fn keys_that_are_not_plain_object_paths_are_refused_unopened() {
    let plane = Plane::start(Backend::Local, &[]).await;
    let escape = format!("runs/{}/../../store.sqlite", plane.run);
    plane.register(json!({"key": escape, "bytes": 1, "sha256": "00"})).await;
    let other_run = "runs/someone-else/model.pt".to_owned();
    plane.register(json!({"key": other_run, "bytes": 1})).await;

    // Raw, as `curl --path-as-is` sends it: no client normalises the dots away.
    let address = plane.serve.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "GET /api/runs/{}/artifacts/{escape} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer read-token-51ab\r\nConnection: close\r\n\r\n",
        plane.run
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not a valid object path"), "{answer}");

    let http = reqwest::Client::new();
    for key in [escape.replace('/', "%2F"), other_run] {
        let refused = http.get(plane.download_url(&key)).bearer_auth("read-token-51ab").send().await.expect("get");
        let status = refused.status();
        let body = refused.text().await.expect("body");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        assert!(!body.contains("SQLite"), "{body}");
    }
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

#[tokio::test]
async fn serve_without_an_artifact_store_says_which_flag_to_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_path = dir.path().join("store.sqlite");
    let store = SqliteStore::open(&store_path).await.expect("open store");
    let run = store.enqueue(NewRun::new(json!({})), Timestamp::now()).await.expect("enqueue").id;
    let serve = ServeProcess::start(|command| command.arg("--store").arg(&store_path));
    let url = format!("{}/api/runs/{run}/artifacts/runs/{run}/x.png", serve.url);
    let answer = reqwest::get(url).await.expect("get");
    assert_eq!(answer.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(answer.text().await.expect("body").contains("--artifacts URL"));
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

/// What the fake object store saw: each request's path and whether it carried a token.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

/// `serve`'s download route answering a redirect to `location`, and a second server (another
/// origin) holding the object: the token goes to the first only.
#[tokio::test]
async fn the_token_never_follows_a_redirect_to_another_origin() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    let seen: Seen = Arc::default();
    let object_store = axum::Router::new()
        .route(
            "/{*path}",
            axum::routing::get(|State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap| async move {
                seen.lock().expect("lock").push((uri.path().to_owned(), headers.contains_key("authorization")));
                "object bytes"
            }),
        )
        .with_state(seen.clone());
    let object_addr = spawn(object_store).await;
    let redirects = axum::Router::new().route(
        "/api/runs/{id}/artifacts/{*key}",
        axum::routing::get(move |axum::extract::Path((_, key)): axum::extract::Path<(String, String)>| async move {
            let location = match key.as_str() {
                "runs/r1/file.bin" => "file:///etc/passwd".to_owned(),
                _ => format!("http://{object_addr}/bucket/{key}?X-Amz-Signature=secret"),
            };
            (StatusCode::TEMPORARY_REDIRECT, [("location", location)])
        }),
    );
    let api_addr = spawn(redirects).await;
    let source = ApiSource::new(&format!("http://{api_addr}"), Some("s3cret".into())).expect("source");
    let run: RunId = "r1".parse().expect("run id");

    let fetched = source.fetch(&run, "runs/r1/model.pt").await.unwrap_or_else(|err| panic!("fetch: {err}"));
    let mut body = Vec::new();
    let mut stream = fetched.body;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        body.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(body, b"object bytes");
    assert_eq!(*seen.lock().expect("lock"), [("/bucket/runs/r1/model.pt".to_owned(), false)]);

    match source.fetch(&run, "runs/r1/file.bin").await {
        Err(SourceError::Redirect { reason, .. }) => assert!(reason.contains("http and https"), "{reason}"),
        Err(other) => panic!("not a redirect refusal: {other}"),
        Ok(_) => panic!("a file:// redirect was followed"),
    }
}

/// The request timeout bounds an answer's head, not its body: a download read slower than
/// the timeout still arrives whole.
#[tokio::test]
async fn a_download_outlasting_the_request_timeout_arrives_whole() {
    let timeout = std::time::Duration::from_millis(200);
    let (addr, path, size) =
        download_server(Limits { request_timeout: timeout, ..Limits::default() }, CHECKPOINT_BYTES).await;
    let mut response = reqwest::get(format!("http://{addr}{path}")).await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = response.chunk().await.expect("first chunk").expect("some bytes").to_vec();
    // The reader stalls for several request timeouts mid-body.
    tokio::time::sleep(timeout * 5).await;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received.len(), size);
    assert_eq!(sha256(&received), sha256(&pattern(size, 5)));
}

/// A client that stops reading a download is cut off after the idle timeout, and the
/// connection it held is free for the next client (here the only one allowed).
#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_frees_its_connection() {
    let timeout = std::time::Duration::from_millis(300);
    let limits = Limits { idle_timeout: timeout, max_connections: 1, ..Limits::default() };
    // Far more than the socket buffers on both sides hold.
    let (addr, path, size) = download_server(limits, 48 * 1024 * 1024).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let mut stalled = socket.connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes()).await.expect("send");

    // Until the stalled reader is cut off, the one connection is taken: a 503.
    let served = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match reqwest::get(format!("http://{addr}/health")).await {
                Ok(answer) if answer.status() == StatusCode::OK => return,
                // A poll interval: each try is answered at once.
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(served.is_ok(), "the stalled reader still holds the connection");
    let mut received = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut received).await;
    assert!(received.len() < size, "the stalled download was cut off, not finished");
}

/// An in-process server over a fresh store, serving one registered `size`-byte artifact
/// from a local directory: its address, the artifact's download path and its size.
async fn download_server(limits: Limits, size: usize) -> (std::net::SocketAddr, String, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("store"));
    let artifacts = ArtifactStore::local(&dir.path().join("artifacts")).expect("local store");
    let run = store.enqueue(NewRun::new(json!({})), Timestamp::now()).await.expect("enqueue").id;
    let file = dir.path().join("model.pt");
    std::fs::write(&file, pattern(size, 5)).expect("write");
    let key = artifacts.key(&run, Path::new("model.pt"));
    let uploaded = artifacts.upload(std::fs::File::open(&file).expect("open"), &file, &key, "x").await.expect("up");
    let data = json!({"key": key.to_string(), "bytes": uploaded.bytes, "sha256": uploaded.sha256});
    let event = common::event("a1", "ai.artifact.registered", run.as_str(), 1, data);
    store.apply_events(vec![event], Timestamp::now()).await.expect("register");
    let state = AppState::new(store, Tokens::default())
        .with_limits(limits)
        .with_downloads(Downloads { store: artifacts, redirect: None });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _dir = dir;
        server::run(listener, state, std::future::pending()).await
    });
    (addr, format!("/api/runs/{run}/artifacts/{key}"), size)
}

async fn spawn(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}
