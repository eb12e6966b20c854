//! `scientist serve` against clients and stores that misbehave, on real sockets: clients
//! that send nothing, half a request head, or sit idle; more clients than the connection
//! cap; a descriptor limit too low for them; requests cut off by the request timeout; and
//! stores that answer reads but refuse writes (`/health` must say so).
//!
//! Timeouts are short here (milliseconds) and configured through `server::Limits`; nothing
//! waits a fixed time to synchronise: each test waits for what the server does (a socket
//! closed, an answer) with an upper bound that only a broken server reaches.

#[path = "common/stores.rs"]
#[allow(dead_code)] // only `mongo_url` is used here
mod stores;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use scientist::server::{self, AppState, Limits, ProbeTimes, Tokens};
use scientist::store::{SqliteStore, Store};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Only a broken server makes a test wait this long for what it expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server on an OS-chosen port with `state`'s limits; stopped by [`Served::stop`].
struct Served {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(state: AppState) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(listener, state, async {
            let _ = stopped.await;
        }));
        Served { addr, stop, serving }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    /// Shuts the server down and waits (at most [`PATIENCE`]) until `run` returned.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.serving)
            .await
            .expect("the server stops within the patience")
            .expect("server task")
            .expect("server result");
        started.elapsed()
    }
}

async fn sqlite_state(dir: &tempfile::TempDir, tokens: Tokens) -> AppState {
    let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open store");
    AppState::new(Arc::new(store), tokens)
}

fn limits(header: u64, idle: u64) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        ..Limits::default()
    }
}

/// How long until the server closed `stream` (a read returns 0 or the connection is
/// reset), reading and dropping whatever it sent before; panics after [`PATIENCE`].
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buffer = [0u8; 4096];
    let read_until_closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_until_closed).await.expect("the server closes the connection")
}

/// One HTTP/1.1 answer read off `stream`: status line and headers, then a body of
/// `content-length` bytes. Panics after [`PATIENCE`].
async fn read_answer(stream: &mut TcpStream) -> (String, Value) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    let body = serde_json::from_slice(&received[end + 4..end + 4 + length]).unwrap_or(Value::Null);
                    return (head, body);
                }
            }
            let count = stream.read(&mut buffer).await.expect("read the answer");
            assert!(count > 0, "the server closed the connection before answering: {received:?}");
            received.extend_from_slice(&buffer[..count]);
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("an answer")
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n";

// ---- slow and idle clients -------------------------------------------------------------

#[tokio::test]
async fn silent_half_sent_and_trickling_heads_are_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(sqlite_state(&dir, Tokens::default()).await.with_limits(limits(400, 20_000))).await;
    let started = Instant::now();
    let mut silent = served.connect().await;
    let mut half = served.connect().await;
    half.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n").await.expect("half a head");
    let mut trickling = served.connect().await;
    // One byte of a head every 50 ms: each byte is progress, but the head never ends.
    let trickle = async {
        for byte in b"GET /health HTTP/1.1\r\nx-slow: ".iter().cycle() {
            if trickling.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            let closed = tokio::time::timeout(Duration::from_millis(50), trickling.read(&mut probe)).await;
            if let Ok(Ok(0) | Err(_)) = closed {
                break;
            }
        }
        started.elapsed()
    };
    let trickled = tokio::time::timeout(PATIENCE, trickle).await.expect("the trickling client is cut off");
    let (silent_for, half_for) = (closed_after(&mut silent, started).await, closed_after(&mut half, started).await);
    for (client, took) in [("silent", silent_for), ("half a head", half_for), ("trickling", trickled)] {
        // Not at once (the client had its 400 ms) and long before the 20 s idle timeout.
        assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(5), "{client}: closed after {took:?}");
    }
    // A client that sends its head in time is served as ever.
    let answer = reqwest::get(served.url("/health")).await.expect("health");
    assert_eq!(answer.status(), StatusCode::OK);
    served.stop().await;
}

#[tokio::test]
async fn kept_alive_connections_serve_requests_and_are_closed_once_idle_for_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(sqlite_state(&dir, Tokens::default()).await.with_limits(limits(20_000, 400))).await;
    let mut client = served.connect().await;
    for _ in 0..3 {
        client.write_all(GET_HEALTH).await.expect("request");
        let (head, body) = read_answer(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body["status"], "ok");
    }
    let idle_since = Instant::now();
    let took = closed_after(&mut client, idle_since).await;
    assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(5), "closed after {took:?}");
    served.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_client_gets_a_prompt_503_and_is_served_once_idle_clients_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = sqlite_state(&dir, Tokens::default()).await;
    let served = Served::start(state.with_limits(Limits { max_connections: 4, ..limits(20_000, 20_000) })).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(served.connect().await);
    }
    // The server takes connections in order: by the time it answers this one, the four
    // idle ones hold every slot.
    let asked = Instant::now();
    let mut late = served.connect().await;
    late.write_all(GET_HEALTH).await.expect("request");
    let (head, body) = read_answer(&mut late).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body["error"].as_str().is_some_and(|error| error.contains("--max-connections")), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(2), "the refusal took {:?}", asked.elapsed());
    closed_after(&mut late, asked).await;

    drop(idle);
    let client = reqwest::Client::new();
    let served_again = async {
        loop {
            // The server notices the closed idle sockets right away; until it has, 503.
            let answer = client.get(served.url("/health")).send().await.expect("an answer, not a hang");
            if answer.status() == StatusCode::OK {
                return;
            }
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    tokio::time::timeout(PATIENCE, served_again).await.expect("served once the idle clients are gone");
    served.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_requests_in_flight_but_not_for_idle_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(sqlite_state(&dir, Tokens::default()).await.with_limits(limits(20_000, 20_000))).await;
    let _silent = served.connect().await;
    let mut kept_alive = served.connect().await;
    kept_alive.write_all(GET_HEALTH).await.expect("request");
    read_answer(&mut kept_alive).await;
    // A request whose body is still coming when the server is told to stop.
    let mut uploading = served.connect().await;
    let event = r#"{"specversion":"1.0","id":"e1","source":"pod://p","type":"ai.run.log","subject":"run/r1","data":{"message":"hi"}}"#;
    let head = format!(
        "POST /api/ingest/event HTTP/1.1\r\nhost: test\r\ncontent-type: application/cloudevents+json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        event.len()
    );
    uploading.write_all(head.as_bytes()).await.expect("head");
    // hyper sends `100 Continue` when the handler starts reading the body: from then on the
    // request is in flight.
    let (interim, _) = read_answer(&mut uploading).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    let addr = served.addr;
    let stopping = tokio::spawn(served.stop());
    uploading.write_all(event.as_bytes()).await.expect("the body");
    let (answer, body) = read_answer(&mut uploading).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer} {body}");
    let took = stopping.await.expect("stop task");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?} with idle connections open");
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn a_request_cut_off_by_the_request_timeout_gets_408_with_a_json_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let quick = Limits { request_timeout: Duration::from_millis(300), ..Limits::default() };
    let served = Served::start(sqlite_state(&dir, Tokens::default()).await.with_limits(quick)).await;
    let mut client = served.connect().await;
    // A body announced but never sent: the handler waits for it until the request timeout.
    client
        .write_all(
            b"POST /api/ingest/event HTTP/1.1\r\nhost: test\r\ncontent-type: application/cloudevents+json\r\n\
              content-length: 100\r\n\r\n{\"specversion\"",
        )
        .await
        .expect("request");
    let (head, body) = read_answer(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("a JSON error body, got {body}"));
    assert!(error.contains("300ms") && error.contains("retry"), "{error}");
    served.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(sqlite_state(&dir, Tokens::new(vec!["t0ken".into()])).await).await;
    let client = reqwest::Client::new();
    for (authorization, expected) in [
        ("Bearer t0ken", StatusCode::OK),
        ("bearer t0ken", StatusCode::OK),
        ("BEARER t0ken", StatusCode::OK),
        ("Basic t0ken", StatusCode::UNAUTHORIZED),
        ("bearer wrong", StatusCode::UNAUTHORIZED),
    ] {
        let answer =
            client.get(served.url("/api/runs")).header("authorization", authorization).send().await.expect("request");
        assert_eq!(answer.status(), expected, "{authorization}");
    }
    served.stop().await;
}

// ---- a descriptor limit too low for the clients (the `scientist serve` binary) ----------

/// Lets this test process hold `wanted` sockets: raises the soft open-file limit (never
/// past the hard one).
fn allow_open_files(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    assert!(limit.rlim_cur >= wanted, "this test needs {wanted} open files; the hard limit is {}", limit.rlim_max);
}

/// `scientist serve` with `ulimit -n files` (soft and hard), on an OS-chosen port.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    fn start(files: u32, flags: &[&str]) -> ServeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("store.sqlite");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(assert_cmd::cargo::cargo_bin("scientist"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(&store)
            .args(flags)
            .env_clear()
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scientist serve");
        let (lines, stderr) = std::sync::mpsc::channel();
        let pipe = BufReader::new(child.stderr.take().expect("piped stderr"));
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = stderr.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("serve did not start: {seen:?}"));
            if let Some(addr) = line.strip_prefix("scientist serve: listening on http://") {
                break addr.parse().expect("listen address");
            }
            seen.push(line);
        };
        ServeProcess { child, addr, stderr, _dir: dir }
    }

    /// Every line serve wrote on stderr since it started listening.
    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `count` connections that send nothing, then asks `/health` until it answers 200:
/// every try must end promptly (an answer, a 503 or a closed connection, never a hang).
async fn healthy_despite_idle_clients(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(addr).await.expect("connect an idle client"));
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
    let healthy = async {
        loop {
            match client.get(format!("http://{addr}/health")).send().await {
                Ok(answer) if answer.status() == StatusCode::OK => return,
                Ok(answer) => assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE),
                Err(err) => assert!(!err.is_timeout(), "/health hung: {err}"),
            }
            // Not synchronisation: only spares the CPU while the idle clients are reaped.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, healthy).await.expect("/health answers 200 while the idle clients stay connected");
    idle
}

#[tokio::test]
async fn health_answers_while_1100_idle_clients_are_connected_under_the_default_fd_limit() {
    allow_open_files(4096);
    let mut serve = ServeProcess::start(1024, &["--header-timeout", "1s"]);
    let idle = healthy_despite_idle_clients(serve.addr, 1100).await;
    assert!(serve.is_running());
    let warnings = serve.stderr_lines();
    assert!(
        warnings.iter().any(|line| line.contains("too low for --max-connections 1024")),
        "serve says it lowered the cap to fit the open-file limit: {warnings:?}"
    );
    drop(idle);
}

#[tokio::test]
async fn accept_out_of_descriptors_pauses_and_recovers_without_spinning_or_exiting() {
    allow_open_files(4096);
    // So few descriptors that the refused clients' answers exhaust them and `accept` fails
    // with EMFILE.
    let mut serve = ServeProcess::start(48, &["--header-timeout", "1s"]);
    let idle = healthy_despite_idle_clients(serve.addr, 300).await;
    assert!(serve.is_running(), "serve exited when it ran out of descriptors");
    let pauses = serve.stderr_lines().iter().filter(|line| line.contains("accept failed; pausing")).count();
    assert!(pauses >= 1, "the test meant to make `accept` fail with EMFILE, and it did not");
    assert!(pauses < 60, "{pauses} accept failures logged: the loop spins instead of pausing");
    drop(idle);
}

// ---- a store that answers reads but refuses writes -------------------------------------

/// `/health`'s status and body.
async fn health(served: &Served) -> (StatusCode, Value) {
    let answer = reqwest::get(served.url("/health")).await.expect("health");
    let status = answer.status();
    (status, answer.json().await.expect("a JSON body"))
}

/// Asks `/health` until it answers `status` (the probe result is kept a few ms).
async fn wait_health(served: &Served, status: StatusCode) -> Value {
    let waited = async {
        loop {
            let (now, body) = health(served).await;
            if now == status {
                return body;
            }
        }
    };
    tokio::time::timeout(PATIENCE, waited).await.unwrap_or_else(|_| panic!("/health never answered {status}"))
}

const QUICK_PROBE: ProbeTimes = ProbeTimes { every: Duration::from_millis(20), timeout: Duration::from_millis(300) };

#[tokio::test]
async fn health_is_503_while_the_sqlite_store_cannot_commit_a_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.expect("open store"));
    let served = Served::start(AppState::new(store, Tokens::default()).with_probe_times(QUICK_PROBE)).await;
    assert_eq!(health(&served).await, (StatusCode::OK, serde_json::json!({"status": "ok"})));

    // Another process holds the write lock and never lets go (reads still work: WAL).
    let blocker = rusqlite::Connection::open(&path).expect("open a second connection");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let body = wait_health(&served, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], "unavailable");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("refuses writes") && error.contains("did not commit within 300ms"), "{error}");

    blocker.execute_batch("ROLLBACK").expect("let go of the write lock");
    wait_health(&served, StatusCode::OK).await;
    served.stop().await;
}

#[tokio::test]
async fn health_probes_writes_at_most_once_per_interval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.expect("open store"));
    let slow = ProbeTimes { every: Duration::from_secs(3600), timeout: Duration::from_secs(5) };
    let served = Served::start(AppState::new(store, Tokens::default()).with_probe_times(slow)).await;
    assert_eq!(health(&served).await.0, StatusCode::OK);
    let probed_at = || -> i64 {
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection.query_row("SELECT at FROM health_probe WHERE id = 1", [], |row| row.get(0)).expect("probe row")
    };
    let first = probed_at();
    for _ in 0..20 {
        assert_eq!(health(&served).await.0, StatusCode::OK);
    }
    assert_eq!(probed_at(), first, "20 calls within the interval wrote nothing more");
    served.stop().await;
}

#[tokio::test]
async fn health_is_503_while_mongodb_refuses_writes() {
    let url = stores::mongo_url();
    let database = format!("scientist_test_{}", ulid::Ulid::generate().to_string().to_lowercase());
    // The probe collection refuses every document, as a server out of space or without
    // write rights refuses every write.
    let client = mongodb::Client::with_uri_str(&url).await.expect("connect to the test MongoDB server");
    let db = client.database(&database);
    let refuse_all = mongodb::bson::doc! { "$jsonSchema": { "required": ["never-present"] } };
    db.create_collection(scientist::store::mongo::HEALTH_COLLECTION)
        .validator(refuse_all)
        .await
        .expect("create a collection that refuses writes");
    let store = scientist::store::MongoStore::connect(&url, Some(&database)).await.expect("connect the store");
    let served = Served::start(AppState::new(Arc::new(store), Tokens::default()).with_probe_times(QUICK_PROBE)).await;
    let body = wait_health(&served, StatusCode::SERVICE_UNAVAILABLE).await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("refuses writes"), "{error}");

    db.run_command(mongodb::bson::doc! {
        "collMod": scientist::store::mongo::HEALTH_COLLECTION, "validator": {}, "validationLevel": "off"
    })
    .await
    .expect("accept writes again");
    wait_health(&served, StatusCode::OK).await;
    served.stop().await;
    db.drop().await.expect("drop the test database");
}
