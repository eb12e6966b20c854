//! `GET /api/runs/{id}/artifacts/{key}` over HTTP: whole objects and byte ranges with their
//! headers, keys refused before anything is opened, a server without an artifact store,
//! the API source's redirect rules, and slow or stalled readers against the connection
//! limits.

#[path = "common/artifact_plane.rs"]
mod artifact_plane;
mod common;
#[path = "common/serve_process.rs"]
mod serve_process;

use std::path::Path;
use std::sync::{Arc, Mutex};

use artifact_plane::{Backend, CHECKPOINT_BYTES, Plane, pattern, sha256};
use reqwest::StatusCode;
use scientist::artifacts::{ApiSource, ArtifactStore, Source, SourceError};
use scientist::run::{NewRun, RunId};
use scientist::server::{self, AppState, Downloads, Limits, Tokens};
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::json;
use serve_process::ServeProcess;

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
    assert_eq!(headers["x-content-type-options"], "nosniff");
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
    // The reader stalls for several request timeouts mid-body: time passing is the attack
    // here, so this waits on time, not on a condition.
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
