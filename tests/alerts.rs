//! Alerts on both stores, on real sockets: a local webhook receiver gets one signed POST per
//! alert and verifies its signature with the secret; a 500 is retried, also by a restarted
//! `scientist serve` (the built binary); two senders on one store send each alert once, and
//! a webhook that acknowledged an alert is not sent it again when another one failed; a
//! worker on a store raises the alerts of the runs it ends.

mod common;
#[path = "common/pod.rs"]
mod pod;
#[path = "common/serve_process.rs"]
mod serve_process;
#[path = "common/stores.rs"]
#[allow(dead_code)] // `mongo_url`, and the sqlite store under `pod`
mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use scientist::alert::{Kind, Raise};
use scientist::event::failure::FailureCode;
use scientist::run::{NewRun, RunId, RunStatus};
use scientist::store::{MongoStore, Rules, SqliteStore, Store};
use scientist::time::Timestamp;
use scientist::webhook::{self, Format, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, Sender, TIMESTAMP_HEADER, Webhook};
use serde_json::{Value, json};
use serve_process::ServeProcess;
use sha2::Sha256;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);
const SECRET: &str = "alert-test-secret";
const PUBLIC_URL: &str = "http://scientist.example";

// ---- the webhook receiver -----------------------------------------------------------------

/// One POST the receiver got, and what it answered.
#[derive(Debug)]
struct Received {
    /// The last path segment: `/hook/<tag>`.
    tag: String,
    answered: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
    }

    /// Checks the signature as a receiver would (HMAC-SHA256 over `<timestamp>.<body>`,
    /// compared in constant time) and that the timestamp is recent; the body, parsed.
    fn verified(&self) -> Value {
        let timestamp = self.header(TIMESTAMP_HEADER);
        let sent: i64 = timestamp.parse().expect("a unix time in seconds");
        let age = Timestamp::now().millis() / 1000 - sent;
        assert!((-300..=300).contains(&age), "timestamp {sent} is {age} s away from now");
        let signature = self.header(SIGNATURE_HEADER).strip_prefix("sha256=").expect("sha256= prefix");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&unhex(signature)).expect("the signature verifies with the secret");
        let body: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        assert_eq!(self.header(IDEMPOTENCY_HEADER), body["key"], "the idempotency key is the body's");
        assert_eq!(self.header("content-type"), "application/json");
        body
    }

    fn key(&self) -> String {
        self.header(IDEMPOTENCY_HEADER).to_owned()
    }
}

fn unhex(text: &str) -> Vec<u8> {
    assert_eq!(text.len(), 64, "a SHA-256 in hex: {text}");
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex")).collect()
}

/// A webhook receiver on 127.0.0.1: `/hook/fail` answers 500, `/hook/flaky` 500 the first
/// time and 200 after, any other tag 200. Every POST is handed to the test, in order.
struct Receiver {
    addr: SocketAddr,
    posts: mpsc::UnboundedReceiver<Received>,
    _serving: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Hooks {
    posts: mpsc::UnboundedSender<Received>,
    flaky_failed: Arc<AtomicBool>,
}

async fn hook(State(hooks): State<Hooks>, Path(tag): Path<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answered = match tag.as_str() {
        "fail" => StatusCode::INTERNAL_SERVER_ERROR,
        "flaky" if !hooks.flaky_failed.swap(true, Ordering::SeqCst) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    let _ = hooks.posts.send(Received { tag, answered, headers, body });
    answered
}

impl Receiver {
    async fn start() -> Receiver {
        let (sender, posts) = mpsc::unbounded_channel();
        let hooks = Hooks { posts: sender, flaky_failed: Arc::default() };
        let app = axum::Router::new().route("/hook/{tag}", axum::routing::post(hook)).with_state(hooks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let serving = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Receiver { addr, posts, _serving: serving }
    }

    fn url(&self, tag: &str) -> String {
        format!("http://{}/hook/{tag}", self.addr)
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.posts.recv()).await.expect("a POST in time").expect("receiver running")
    }

    /// The next POST to `/hook/<tag>`, passing over others.
    async fn next_to(&mut self, tag: &str) -> Received {
        loop {
            let post = self.next().await;
            if post.tag == tag {
                return post;
            }
        }
    }
}

// ---- the stores -------------------------------------------------------------------------

/// One store's data, opened by as many handles (or `serve` processes) as a test needs.
enum Backend {
    Sqlite { dir: tempfile::TempDir },
    Mongo { url: String, database: String },
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn mongo() -> Backend {
        let database = format!("scientist_alerts_{}", ulid::Ulid::generate().to_string().to_lowercase());
        Backend::Mongo { url: stores::mongo_url(), database }
    }

    fn sqlite_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("scientist.sqlite")
    }

    async fn open(&self, rules: Rules) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite { dir } => {
                Arc::new(SqliteStore::open_with(&Self::sqlite_path(dir), rules).await.expect("open the sqlite store"))
            }
            Backend::Mongo { url, database } => Arc::new(
                MongoStore::connect(url, Some(database)).await.expect("connect to the test MongoDB").with_rules(rules),
            ),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Sqlite { dir } => vec![("SCIENTIST_STORE", Self::sqlite_path(dir).display().to_string())],
            Backend::Mongo { url, database } => {
                vec![("MONGODB_URL", url.clone()), ("SCIENTIST_MONGODB_DB", database.clone())]
            }
        }
    }

    async fn cleanup(self) {
        if let Backend::Mongo { url, database } = &self {
            let store = MongoStore::connect(url, Some(database)).await.expect("connect to the test MongoDB");
            store.drop_database().await.expect("drop the test database");
        }
    }
}

/// What a process that raises alerts writes with (`serve --alert-webhook`).
fn alerts_on() -> Rules {
    Rules { alerts: Raise { alerts: true, completed: false, spans: false }, ..Rules::default() }
}

/// Enqueues `id`, claims it and fails it (not retryable) with `code`, through `store`.
async fn fail_in_store(store: &dyn Store, id: &str, code: &str) {
    let now = Timestamp::now();
    let run_id = RunId::try_from(id.to_owned()).expect("run id");
    store.enqueue(NewRun { id: run_id.clone(), ..NewRun::new(json!({})) }, now).await.expect("enqueue");
    let claimed = store.claim("pod-a", "default", now).await.expect("claim").expect("a queued run");
    assert_eq!(claimed.id, run_id, "one queued run at a time");
    let data = json!({"code": code, "message": "it broke", "retryable": false, "stage": "Stage_1"});
    let failed = common::attempt_event(&format!("{id}-failed"), "ai.run.failed", id, 10, 1, data);
    store.apply_events(vec![failed], now).await.expect("apply the failure");
}

// ---- two senders on one store -------------------------------------------------------------

fn sender(webhooks: &[String], replica: &str) -> Sender {
    let config = webhook::Config {
        webhooks: webhooks.iter().map(|url| Webhook::parse(url).expect("webhook URL")).collect(),
        secret: Some(SECRET.to_owned()),
        format: Format::Json,
        public_url: PUBLIC_URL.to_owned(),
        timeout: Duration::from_secs(10),
        backoff: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        every: Duration::from_millis(20),
        replica: replica.to_owned(),
    };
    Sender::new(config, None).expect("sender")
}

/// Two senders on two handles of one store: each alert reaches each webhook once, though
/// both look for due alerts all the time; a webhook that failed gets its alert again, and the
/// one that had acknowledged it is not sent it twice.
async fn two_senders_send_each_alert_once(backend: Backend) {
    const RUNS: usize = 40;
    let mut receiver = Receiver::start().await;
    let writer = backend.open(alerts_on()).await;
    for n in 0..RUNS {
        let code = if n == 0 { FailureCode::WorkerLost.to_string() } else { "EXIT_1".to_owned() };
        fail_in_store(&*writer, &format!("run-{n:02}"), &code).await;
    }
    let webhooks = [receiver.url("ok"), receiver.url("flaky")];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Both ready before either starts, so that they race for the same alerts from the start.
    let handles = [backend.open(Rules::default()).await, backend.open(Rules::default()).await];
    let mut senders = Vec::new();
    for (store, replica) in handles.into_iter().zip(["replica-a", "replica-b"]) {
        let mut stopped = stopped.clone();
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        senders.push(tokio::spawn(sender(&webhooks, replica).keep_sending(store, stop)));
    }
    drop(stopped);
    let mut acknowledged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut posts: BTreeMap<(String, String), usize> = BTreeMap::new();
    while acknowledged.values().map(BTreeSet::len).sum::<usize>() < 2 * RUNS {
        let post = receiver.next().await;
        let body = post.verified();
        assert_eq!(body["links"]["run"], format!("{PUBLIC_URL}/api/runs/{}", body["runId"].as_str().expect("runId")));
        *posts.entry((post.tag.clone(), post.key())).or_default() += 1;
        if post.answered == StatusCode::OK {
            acknowledged.entry(post.tag.clone()).or_default().insert(post.key());
        }
    }
    // Stopped between looks at the store: every try under way is finished and recorded.
    stop.send(true).expect("senders listening");
    for sender in senders {
        sender.await.expect("sender task");
    }
    while let Ok(post) = receiver.posts.try_recv() {
        *posts.entry((post.tag.clone(), post.key())).or_default() += 1;
    }
    let sent_twice: Vec<_> = posts.iter().filter(|(_, count)| **count > 1).collect();
    assert_eq!(sent_twice.len(), 1, "only the flaky webhook's first alert is sent again: {sent_twice:?}");
    assert_eq!((sent_twice[0].0.0.as_str(), *sent_twice[0].1), ("flaky", 2));
    assert_eq!(posts.len(), 2 * RUNS, "each alert reached each webhook: {posts:?}");

    let far = Timestamp::now().plus_seconds(3600);
    assert!(writer.due_alerts(far, 100).await.expect("due alerts").is_empty(), "every alert is delivered");
    for n in 0..RUNS {
        let run = writer.get(&RunId::try_from(format!("run-{n:02}")).expect("id")).await.expect("get").expect("run");
        assert_eq!(run.status, RunStatus::Failed);
        let [mark] = run.alerts.as_slice() else { panic!("one alert on {}: {:?}", run.id, run.alerts) };
        let expected = if n == 0 { (Kind::Lost, "lost:1") } else { (Kind::Failed, "failed:1") };
        assert_eq!((mark.kind, mark.id.as_str()), expected);
        assert!(mark.delivered_at.is_some() && mark.claim.is_none(), "{mark:?}");
        assert_eq!(mark.sent_to.len(), 2);
    }
    backend.cleanup().await;
}

#[tokio::test]
async fn sqlite_two_senders_send_each_alert_once() {
    two_senders_send_each_alert_once(Backend::sqlite()).await;
}

#[tokio::test]
async fn mongo_two_senders_send_each_alert_once() {
    two_senders_send_each_alert_once(Backend::mongo()).await;
}

// ---- a restarted serve --------------------------------------------------------------------

impl ServeProcess {
    fn with_webhook(backend: &Backend, webhook: &str) -> ServeProcess {
        ServeProcess::start(|command| {
            command
                .args(["--alert-webhook", webhook])
                .args(["--alert-backoff", "100ms", "--alert-every", "50ms", "--alert-timeout", "2s"])
                .args(["--public-url", PUBLIC_URL])
                .envs(backend.env())
                .env("SCIENTIST_ALERT_SECRET", SECRET)
                .env("LOG_LEVEL", "warn")
        })
    }

    /// Enqueues `id` and fails it (not retryable) as its worker would, over the API.
    async fn fail_run(&self, id: &str) {
        let client = reqwest::Client::new();
        let created = client.post(format!("{}/api/runs", self.url)).json(&json!({"id": id, "idea": {}})).send();
        assert_eq!(created.await.expect("enqueue").status(), 201);
        let claimed = client.post(format!("{}/api/queue/claim", self.url)).json(&json!({"worker": "pod-a"})).send();
        let claimed: Value = claimed.await.expect("claim").json().await.expect("the claimed run");
        assert_eq!((claimed["_id"].as_str(), claimed["attempt"].as_u64()), (Some(id), Some(1)));
        let failed = json!({
            "specversion": "1.0", "id": format!("{id}-failed"), "source": "pod://pod-a", "type": "ai.run.failed",
            "subject": format!("run/{id}"), "attempt": 1,
            "data": {"code": "EXIT_1", "message": "it broke", "retryable": false, "stage": "Stage_1"},
        });
        let ingested = client.post(format!("{}/api/ingest/event", self.url)).json(&failed).send();
        assert!(ingested.await.expect("ingest").status().is_success());
    }

    async fn run(&self, id: &str) -> Value {
        let answer = reqwest::get(format!("{}/api/runs/{id}", self.url)).await.expect("get the run");
        answer.json().await.expect("the run")
    }
}

/// The webhook answers 500 (twice: the second POST shows that serve took the 500 and
/// retried); serve is killed and started again; the restarted one sends the same alert (the
/// same bytes, key and a valid signature), is answered 200, and never sends it again.
async fn a_refused_alert_is_sent_again_after_a_restart(backend: Backend) {
    let mut receiver = Receiver::start().await;
    let first = ServeProcess::with_webhook(&backend, &receiver.url("fail"));
    first.fail_run("run-a").await;
    let refused = receiver.next_to("fail").await;
    let body = refused.verified();
    assert_eq!(refused.answered, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!((body["key"].as_str(), body["alert"].as_str()), (Some("run-a:failed:1"), Some("failed")));
    assert_eq!((body["status"].as_str(), body["code"].as_str()), (Some("FAILED"), Some("EXIT_1")));
    assert_eq!((body["stage"].as_str(), body["pod"].as_str()), (Some("Stage_1"), Some("pod-a")));
    let retried = receiver.next_to("fail").await;
    retried.verified();
    assert_eq!((retried.key(), &retried.body), (refused.key(), &refused.body), "a retry sends the same alert");
    drop(first);

    let second = ServeProcess::with_webhook(&backend, &receiver.url("ok"));
    let resent = receiver.next_to("ok").await;
    resent.verified();
    assert_eq!((resent.key(), &resent.body), (refused.key(), &refused.body), "the restarted serve sends it again");
    // The next alert the webhook gets is another run's: run-a, acknowledged, is not sent again.
    second.fail_run("run-b").await;
    let next = receiver.next_to("ok").await;
    assert_eq!(next.verified()["key"], "run-b:failed:1");
    let alerts = &second.run("run-a").await["alerts"];
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    assert!(alerts[0]["deliveredAt"].is_string() && alerts[0].get("dueAt").is_none(), "{alerts}");
    assert!(alerts[0]["tries"].as_u64() >= Some(1), "the refusals were counted: {alerts}");
    drop(second);
    backend.cleanup().await;
}

#[tokio::test]
async fn sqlite_a_refused_alert_is_sent_again_after_a_restart() {
    a_refused_alert_is_sent_again_after_a_restart(Backend::sqlite()).await;
}

#[tokio::test]
async fn mongo_a_refused_alert_is_sent_again_after_a_restart() {
    a_refused_alert_is_sent_again_after_a_restart(Backend::mongo()).await;
}

// ---- a worker on a store ------------------------------------------------------------------

/// Given the webhooks, a worker on a store raises the alert of the run it fails, in the same
/// write (it never sends it: `serve` does).
#[tokio::test]
async fn a_worker_on_a_store_raises_the_alert_of_the_run_it_fails() {
    let pod = pod::Pod::sqlite().await;
    let id = pod.enqueue().await;
    let worker = pod
        .worker(&pod::examples().join("pipeline.toml"))
        .arg("--once")
        .env("TOY_FAIL_STAGE", "Stage_2")
        .env("SCIENTIST_ALERT_WEBHOOKS", "http://127.0.0.1:9/never-sent")
        .spawn()
        .expect("start worker");
    let (status, stderr) = pod::finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "{stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let [mark] = run.alerts.as_slice() else { panic!("one alert: {:?}", run.alerts) };
    assert_eq!((mark.id.as_str(), mark.kind, mark.tries), ("failed:1", Kind::Failed, 0));
    assert!(mark.due_at.is_some() && mark.claim.is_none(), "due, for serve to send: {mark:?}");
    assert_eq!((mark.facts.code.as_deref(), mark.facts.stage.as_deref()), (Some("EXIT_1"), Some("Stage_2")));
    pod.cleanup().await;
}
