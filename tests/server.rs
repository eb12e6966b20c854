//! `scientist serve`'s HTTP API on a real socket (127.0.0.1, port 0) over an SQLite store:
//! the seeds' own example requests, every ingest form, duplicates and every rejection path.

mod common;

#[path = "common/server.rs"]
mod test_server;

use reqwest::StatusCode;
use scientist::limits::{MAX_BATCH_EVENTS, MAX_BODY_BYTES};
use scientist::server::Tokens;
use serde_json::{Value, json};
use test_server::TestServer;

/// The seeds' single-event `curl` example, byte for byte.
const SEED_EVENT: &str = r#"{"specversion":"1.0","id":"test-123","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:00Z","datacontenttype":"application/json","data":{"run_id":"test-run-id","gpu_util":0.75}}"#;

/// The seeds' NDJSON batch example.
const SEED_BATCH: &str = concat!(
    r#"{"specversion":"1.0","id":"test-1","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:00Z","datacontenttype":"application/json","data":{"run_id":"test-run-id"}}"#,
    "\n",
    r#"{"specversion":"1.0","id":"test-2","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:01Z","datacontenttype":"application/json","data":{"run_id":"test-run-id"}}"#
);

#[tokio::test]
async fn seeds_examples_are_accepted_and_repeats_are_duplicates() {
    let server = TestServer::start(&[]).await;
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", SEED_EVENT).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer, json!({"id": "test-123", "outcome": "orphan"}), "stored; its run does not exist");
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", SEED_EVENT).await;
    assert_eq!((status, answer["outcome"].as_str()), (StatusCode::ACCEPTED, Some("duplicate")));

    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", SEED_BATCH).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!((answer["accepted"].as_u64(), answer["orphan"].as_u64()), (Some(2), Some(2)));
    let (_, again) = server.post("/api/ingest/events", "application/x-ndjson", SEED_BATCH).await;
    assert_eq!((again["accepted"].as_u64(), again["duplicate"].as_u64()), (Some(0), Some(2)));
}

#[tokio::test]
async fn events_are_stored_before_they_are_acknowledged() {
    let server = TestServer::start(&[]).await;
    let enqueued = json!({"specversion": "1.0", "id": "e1", "source": "ci://x", "type": "ai.run.enqueued",
                          "subject": "run/r-http", "data": {"priority": 4}});
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", enqueued.to_string()).await;
    assert_eq!((status, answer["outcome"].as_str()), (StatusCode::ACCEPTED, Some("applied")));
    // Binary mode: attributes in ce-* headers, data in the body.
    let response = reqwest::Client::new()
        .post(server.url("/api/ingest/event"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e2")
        .header("ce-source", "pod://p1")
        .header("ce-type", "ai.run.started")
        .header("ce-subject", "run/r-http")
        .body(r#"{"pod_id": "p1", "gpu": "H100"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let run = server.store.get(&"r-http".parse().expect("id")).await.expect("get").expect("created");
    assert_eq!((run.status.as_str(), run.priority), ("RUNNING", 4));
    assert_eq!(run.pod.map(|pod| pod.id), Some("p1".into()));
}

#[tokio::test]
async fn batches_keep_good_lines_and_name_bad_ones() {
    let server = TestServer::start(&[]).await;
    let body =
        format!("{}\nnot json\n{}\n", SEED_EVENT, SEED_EVENT.replace("test-123", "test-124").replace("1.0", "0.3"));
    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer["accepted"].as_u64(), Some(1));
    let rejected = answer["rejected"].as_array().expect("rejected lines");
    assert_eq!(rejected.iter().map(|r| r["line"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), [2, 3]);
    assert!(rejected[0]["reason"].as_str().unwrap_or("").starts_with("invalid JSON"), "{answer}");
    assert!(rejected[1]["reason"].as_str().unwrap_or("").contains("specversion \"0.3\""), "{answer}");

    let array = format!("[{SEED_EVENT}, 42]");
    let (status, answer) = server.post("/api/ingest/events", "application/cloudevents-batch+json", array).await;
    assert_eq!((status, answer["duplicate"].as_u64()), (StatusCode::ACCEPTED, Some(1)));
    assert_eq!(answer["rejected"][0]["line"].as_u64(), Some(2));
}

#[tokio::test]
async fn every_rejection_says_why() {
    let server = TestServer::start(&[]).await;
    let event: Value = serde_json::from_str(SEED_EVENT).expect("seed event");
    let without = |name: &str| {
        let mut event = event.clone();
        event.as_object_mut().expect("object").remove(name);
        event.to_string()
    };
    let cases = [
        ("application/cloudevents+json", "{\"specversion\":".to_owned(), StatusCode::BAD_REQUEST, "invalid JSON"),
        (
            "application/cloudevents+json",
            without("source"),
            StatusCode::BAD_REQUEST,
            "missing required attribute \"source\"",
        ),
        (
            "application/cloudevents+json",
            SEED_EVENT.replace("\"1.0\"", "\"2.0\""),
            StatusCode::BAD_REQUEST,
            "send \"1.0\"",
        ),
        ("text/plain", SEED_EVENT.to_owned(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/cloudevents+json"),
    ];
    for (content_type, body, status, message) in cases {
        let (got, answer) = server.post("/api/ingest/event", content_type, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap_or("").contains(message), "{body}: {answer}");
    }
    let (status, answer) = server.post("/api/ingest/events", "application/json", "[]").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    let oversize = oversize_request(&server, "/api/ingest/events").await;
    assert!(oversize.starts_with("HTTP/1.1 413"), "{oversize}");
    assert!(oversize.contains(&format!("larger than {MAX_BODY_BYTES} bytes")), "{oversize}");
    let too_many = (0..=MAX_BATCH_EVENTS).map(|n| SEED_EVENT.replace("test-123", &format!("n{n}"))).collect::<Vec<_>>();
    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", too_many.join("\n")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer["error"].as_str().unwrap_or("").contains("split it"), "{answer}");
}

/// Announces a body one byte over the limit and reads the answer without sending it: the
/// server must refuse on the length alone (a client writing 4 MiB could not read an early
/// answer reliably).
async fn oversize_request(server: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn tokens_guard_everything_but_health() {
    let server = TestServer::start(&["s3cret", "other"]).await;
    let client = reqwest::Client::new();
    let send = |token: Option<&str>| {
        let mut request = client
            .post(server.url("/api/ingest/event"))
            .header("content-type", "application/cloudevents+json")
            .body(SEED_EVENT);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let missing = send(None).await.expect("request");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    assert_eq!(send(Some("s3cre")).await.expect("request").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("other")).await.expect("request").status(), StatusCode::ACCEPTED);
    let health = client.get(server.url("/health")).send().await.expect("request");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await.expect("json"), json!({"status": "ok"}));
}

/// Runs the built `scientist emit …` against `server` (off the async runtime: it blocks).
async fn emit(server_url: String, args: &[&str], token: Option<&str>) -> std::process::Output {
    emit_with_input(server_url, args, token, "").await
}

async fn emit_with_input(server_url: String, args: &[&str], token: Option<&str>, stdin: &str) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let (token, stdin) = (token.map(str::to_owned), stdin.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut command = assert_cmd::Command::cargo_bin("scientist").expect("binary is built");
        command.env_clear().env("SCIENTIST_SERVER", server_url).arg("emit").args(args).write_stdin(stdin);
        if let Some(token) = token {
            command.env("SCIENTIST_TOKEN", token);
        }
        command.output().expect("run scientist emit")
    })
    .await
    .expect("emit task")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn emit_builds_valid_events_that_reach_the_run() {
    let server = TestServer::start(&[]).await;
    let base = server.url("");
    let created =
        emit(base.clone(), &["ai.run.enqueued", "--run", "r-emit", "--data", r#"{"priority": 2}"#], None).await;
    assert_eq!(created.status.code(), Some(0), "{}", text(&created.stderr));
    assert!(text(&created.stderr).contains("applied"), "{}", text(&created.stderr));
    let args = ["ai.run.stage_started", "--run", "r-emit", "--data", r#"{"stage": "Stage_2"}"#, "--seq", "7", "--json"];
    let staged = emit(base.clone(), &args, None).await;
    assert_eq!(staged.status.code(), Some(0), "{}", text(&staged.stderr));
    let answer: Value = serde_json::from_slice(&staged.stdout).expect("--json prints the answer");
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(answer["id"].as_str().map(str::len), Some(26), "a ULID: {answer}");
    let run = server.store.get(&"r-emit".parse().expect("id")).await.expect("get").expect("run");
    assert_eq!(run.current_stage.map(|stage| stage.name.as_str()), Some("Stage_2"));
    assert_eq!((run.priority, run.last_event_seq), (2, 7));
}

#[tokio::test]
async fn emit_exit_codes_tell_rejected_unreachable_and_auth_apart() {
    let server = TestServer::start(&["tok"]).await;
    let bad = emit(
        server.url(""),
        &["ai.run.stage_started", "--run", "r1", "--data", r#"{"stage": "Stage_9"}"#],
        Some("tok"),
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "invalid before sending: {}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("unknown stage \"Stage_9\""), "{}", text(&bad.stderr));
    let no_token = emit(server.url(""), &["ai.run.heartbeat", "--run", "r1"], None).await;
    assert_eq!(no_token.status.code(), Some(7), "{}", text(&no_token.stderr));
    assert!(text(&no_token.stderr).contains("set SCIENTIST_TOKEN"), "{}", text(&no_token.stderr));
    let ok = emit(server.url(""), &["ai.run.heartbeat", "--run", "r1"], Some("tok")).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    // Valid here, too large for the server (413): rejected, resending will not help.
    let huge = format!(r#"{{"message": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
    let args = ["ai.run.log", "--run", "r1", "--data", "-"];
    let refused = emit_with_input(server.url(""), &args, Some("tok"), &huge).await;
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("rejected the event (413)"), "{}", text(&refused.stderr));
    // A port nothing listens on: bind one, note it, close it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let down = emit(format!("http://{closed}"), &["ai.run.heartbeat", "--run", "r1"], Some("tok")).await;
    assert_eq!(down.status.code(), Some(6), "{}", text(&down.stderr));
    assert!(text(&down.stderr).contains("nothing was stored, send it again"), "{}", text(&down.stderr));
}

#[tokio::test]
async fn emit_batch_fills_envelopes_sends_good_lines_and_names_bad_ones() {
    let server = TestServer::start(&[]).await;
    let lines = [
        r#"{"type": "ai.run.enqueued", "data": {"priority": 3}}"#,
        "not json",
        r#"{"type": "ai.run.stage_started", "data": {"stage": "Stage_9"}}"#,
        r#"{"type": "ai.run.stage_started", "data": {"stage": "Stage_1"}}"#,
    ];
    let args = ["--batch", "-", "--run", "r-batch", "--json"];
    let output = emit_with_input(server.url(""), &args, None, &lines.join("\n")).await;
    assert_eq!(output.status.code(), Some(5), "bad lines make it exit 5: {}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("2 accepted, 0 duplicate, 2 rejected"), "{stderr}");
    assert!(stderr.contains("line 2: invalid JSON") && stderr.contains("line 3:"), "{stderr}");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("--json prints the answer");
    let lines: Vec<u64> =
        answer["rejected"].as_array().into_iter().flatten().filter_map(|r| r["line"].as_u64()).collect();
    assert_eq!(lines, [2, 3]);
    let run = server.store.get(&"r-batch".parse().expect("id")).await.expect("get").expect("created by line 1");
    assert_eq!((run.priority, run.current_stage.map(|stage| stage.name.as_str())), (3, Some("Stage_1")));
}

/// A log event for run `run` whose JSON is about `bytes` long.
fn log_event(id: &str, run: &str, bytes: usize) -> String {
    json!({"specversion": "1.0", "id": id, "source": "ci://sizes", "type": "ai.run.log", "subject": format!("run/{run}"),
           "data": {"message": "m".repeat(bytes)}})
    .to_string()
}

/// One limit, `limits::MAX_EVENT_BYTES`, in every form: axum's own 2 MiB default for
/// extracted bodies used to undercut it, so a 3 MB event was refused (413).
#[tokio::test]
async fn events_up_to_the_one_limit_are_accepted_in_every_form() {
    use scientist::limits::MAX_EVENT_BYTES;
    let server = TestServer::start(&[]).await;
    let big = log_event("big-1", "r-sizes", 3_000_000);
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", big).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let batch = format!("{}\n{}\n", log_event("big-2", "r-sizes", 3_000_000), log_event("small", "r-sizes", 10));
    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", batch).await;
    assert_eq!((status, answer["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(2)), "{answer}");
    // A line that fills the whole body leaves no room for its newline: over the event limit,
    // refused alone.
    let envelope = log_event("edge", "r-sizes", 0).len();
    let edge = log_event("edge", "r-sizes", MAX_EVENT_BYTES + 1 - envelope);
    assert_eq!(edge.len(), MAX_BODY_BYTES);
    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", edge).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(answer["rejected"][0]["reason"].as_str().unwrap_or("").contains("per event"), "{answer}");
}

/// A pod's clock is never trusted past the server's: one heartbeat dated year 9999 used to
/// be stored and make `stats` report millions of GPU-hours.
#[tokio::test]
async fn a_pods_clock_ahead_of_the_servers_is_refused_or_taken_as_now() {
    let server = TestServer::start(&[]).await;
    let event = |id: &str, event_type: &str, time: String, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "pod://clock", "type": event_type,
               "subject": "run/r-clock", "time": time, "data": data})
        .to_string()
    };
    let now = chrono::Utc::now();
    let at = |hours: i64| (now + chrono::Duration::hours(hours)).to_rfc3339();
    let lines = [
        event("c1", "ai.run.enqueued", at(0), json!({})),
        event("c2", "ai.run.started", at(-1), json!({"pod_id": "p", "gpu": "H100"})),
        event("c3", "ai.run.heartbeat", at(23), json!({"gpu_util": 0.5})),
    ];
    let (status, answer) = server.post("/api/ingest/events", "application/x-ndjson", lines.join("\n")).await;
    assert_eq!((status, answer["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(3)), "{answer}");
    let far = event("c4", "ai.run.heartbeat", "9999-12-31T23:59:59Z".into(), json!({"gpu_util": 0.9}));
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", far).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap_or("").contains("more than a day ahead"), "{answer}");
    let (status, stats) = server.get("/api/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let gpu_hours = stats["gpuHours"].as_f64().expect("gpuHours");
    assert!((0.9..1.1).contains(&gpu_hours), "one hour of GPU, not 24: {stats}");
}

/// A stand-in for a proxy in front of `serve` with a smaller body limit (nginx's default
/// `client_max_body_size` is 1 MiB): refuses larger requests whole with 413 and passes the
/// rest on.
async fn small_limit_proxy(upstream: String, limit: usize) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode as Code};
    let forward = move |headers: HeaderMap, body: Bytes| {
        let upstream = upstream.clone();
        async move {
            if body.len() > limit {
                return (Code::PAYLOAD_TOO_LARGE, r#"{"error": "proxy: request entity too large"}"#.to_owned());
            }
            let content_type = headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default();
            let answer = reqwest::Client::new()
                .post(format!("{upstream}/api/ingest/events"))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("upstream");
            let status = Code::from_u16(answer.status().as_u16()).expect("status");
            (status, answer.text().await.expect("upstream body"))
        }
    };
    // The proxy reads every body whole before it answers: with axum's default 2 MiB cap it
    // would answer 413 and close mid-upload, and the client would see a reset, not the 413.
    let app = axum::Router::new()
        .route("/api/ingest/events", axum::routing::post(forward))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// `emit --batch` splits what exceeds one request, and a request refused whole is halved
/// until the refused event stands alone: the others are delivered, in order.
#[tokio::test]
async fn emit_batch_splits_over_the_limit_and_a_refused_request_costs_only_its_offender() {
    let server = TestServer::start(&[]).await;
    let big: Vec<String> = (0..3).map(|n| log_event(&format!("b{n}"), "r-split", 2_000_000)).collect();
    let output = emit_with_input(server.url(""), &["--batch", "-", "--json"], None, &big.join("\n")).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("--json prints the answer");
    assert_eq!(answer["accepted"], 3, "{answer}");

    let proxy = small_limit_proxy(server.url(""), 1024 * 1024).await;
    let sizes = [300_000, 300_000, 300_000, 1_500_000, 300_000, 300_000];
    let lines: Vec<String> =
        sizes.iter().enumerate().map(|(n, size)| log_event(&format!("p{n}"), "r-proxy", *size)).collect();
    let output = emit_with_input(proxy, &["--batch", "-", "--json"], None, &lines.join("\n")).await;
    assert_eq!(output.status.code(), Some(5), "one line refused: {}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("--json prints the answer");
    assert_eq!(answer["accepted"], 5, "{answer}");
    assert_eq!(answer["rejected"][0]["line"], 4, "{answer}");
    assert!(answer["rejected"][0]["reason"].as_str().unwrap_or("").contains("proxy"), "{answer}");
    let page = server.store.list_events(&"r-proxy".parse().expect("id"), &Default::default()).await.expect("events");
    let ids: Vec<&str> = page.items.iter().map(|stored| stored.event.id.0.as_str()).collect();
    assert_eq!(ids, ["p0", "p1", "p2", "p4", "p5"], "the others, in order");
}

#[tokio::test]
async fn emit_spool_keeps_events_through_an_outage_and_sends_them_in_order() {
    let spool = tempfile::tempdir().expect("temp dir");
    let spool_dir = spool.path().to_str().expect("utf-8 path").to_owned();
    // Where the control plane will be, once it is up.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let url = format!("http://{addr}");
    for message in ["one", "two"] {
        let data = format!(r#"{{"message": "{message}"}}"#);
        let args = ["ai.run.log", "--run", "r-sp", "--data", &data, "--spool", "--spool-dir", &spool_dir];
        let kept = emit(url.clone(), &args, None).await;
        assert_eq!(kept.status.code(), Some(0), "kept, not failed: {}", text(&kept.stderr));
        assert!(text(&kept.stderr).contains("the next emit or worker sends them"), "{}", text(&kept.stderr));
    }
    assert_eq!(std::fs::read_dir(spool.path()).expect("spool").count(), 2);
    let down = emit(url.clone(), &["ai.run.heartbeat", "--run", "r-sp", "--spool-dir", &spool_dir], None).await;
    assert_eq!(down.status.code(), Some(6), "without --spool an outage is an error: {}", text(&down.stderr));

    let server = TestServer::listening(Tokens::default(), addr).await;
    let data = r#"{"message": "three"}"#;
    let sent = emit(url, &["ai.run.log", "--run", "r-sp", "--data", data, "--spool-dir", &spool_dir], None).await;
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    assert!(text(&sent.stderr).contains("sent 2 event(s) kept"), "{}", text(&sent.stderr));
    assert_eq!(std::fs::read_dir(spool.path()).expect("spool").count(), 0, "the spool is empty once delivered");
    let page = server.store.list_events(&"r-sp".parse().expect("id"), &Default::default()).await.expect("events");
    let messages: Vec<String> =
        page.items.iter().map(|stored| stored.event.to_json()["data"]["message"].to_string()).collect();
    assert_eq!(messages, [r#""one""#, r#""two""#, r#""three""#], "delivered in the order they were emitted");
}
