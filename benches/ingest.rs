//! `cargo bench --bench ingest`: events per second through `scientist serve`'s HTTP ingest
//! on the embedded store, with acknowledgement latency percentiles, for single events and
//! NDJSON batches of 50 over keep-alive connections; claims through `POST /api/queue/claim`
//! by concurrent claimers (each run claimed exactly once, checked); then `scientist emit`
//! one-shot wall time (process start to acknowledgement) beside `curl` posting the same event.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scientist::run::NewRun;
use scientist::server::{self, AppState, Tokens};
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::json;

const RUNS: usize = 8;
const SINGLE_EVENTS: usize = 8_000;
const BATCHES: usize = 400;
const BATCH_SIZE: usize = 50;
const ONE_SHOTS: usize = 25;
const CLAIMABLE_RUNS: usize = 10_000;
const CLAIMERS: usize = 8;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("bench.sqlite")).await.expect("open store"));
        for n in 0..RUNS {
            let new_run = NewRun { id: format!("bench-{n}").parse().expect("id"), ..NewRun::new(json!({})) };
            store.enqueue(new_run, Timestamp::now()).await.expect("enqueue");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(server::run(listener, AppState::new(store.clone(), Tokens::default()), std::future::pending()));

        println!("scientist HTTP ingest benchmark (embedded store, synchronous=FULL, loopback)\n");
        println!("{:<34} {:>10} {:>10} {:>10}", "workload", "events/s", "p50 ms", "p99 ms");
        for connections in [1, 8] {
            let figure = single_events(&base, connections).await;
            figure.print(&format!("single events, {connections} connection(s)"));
        }
        for connections in [1, 4, 8] {
            let figure = batches(&base, connections).await;
            figure.print(&format!("NDJSON batches of {BATCH_SIZE}, {connections} conn."));
        }
        claims(&base, &*store).await.print(&format!("claims, {CLAIMERS} claimers (runs/s)"));
        one_shots(&base).await;
    });
}

/// One log line of `run`, numbered `n`, in structured mode.
fn event(prefix: &str, n: usize) -> String {
    json!({"specversion": "1.0", "id": format!("{prefix}-{n}"), "source": "pod://bench", "type": "ai.run.log",
           "subject": format!("run/bench-{}", n % RUNS), "time": Timestamp::now().to_string(),
           "data": {"message": format!("epoch {n}: loss=0.4312 acc=0.8812 lr=3e-4"), "level": "info"}})
    .to_string()
}

struct Figure {
    events: usize,
    elapsed: Duration,
    /// One per request, sorted.
    latencies: Vec<Duration>,
}

impl Figure {
    fn print(&self, workload: &str) {
        let percentile = |p: f64| {
            let rank = ((p * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
            self.latencies[rank - 1].as_secs_f64() * 1000.0
        };
        let per_second = self.events as f64 / self.elapsed.as_secs_f64();
        println!("{workload:<34} {per_second:>10.0} {:>10.2} {:>10.2}", percentile(0.50), percentile(0.99));
    }
}

/// `connections` clients, each posting `requests / connections` bodies one after another.
async fn drive(connections: usize, bodies: Vec<(String, &'static str, String)>, events_per_request: usize) -> Figure {
    let started = Instant::now();
    let per_connection = bodies.len().div_ceil(connections);
    let mut tasks = Vec::new();
    let mut bodies = bodies.into_iter();
    for _ in 0..connections {
        let mine: Vec<_> = bodies.by_ref().take(per_connection).collect();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
            let mut latencies = Vec::with_capacity(mine.len());
            for (url, content_type, body) in mine {
                let sent = Instant::now();
                let response = client.post(url).header("content-type", content_type).body(body).send().await;
                let status = response.expect("request").status();
                assert_eq!(status, 202, "ingest refused an event");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Figure { events: latencies.len() * events_per_request, elapsed, latencies }
}

async fn single_events(base: &str, connections: usize) -> Figure {
    let url = format!("{base}/api/ingest/event");
    let prefix = format!("single-{connections}");
    let bodies = (0..SINGLE_EVENTS).map(|n| (url.clone(), "application/cloudevents+json", event(&prefix, n))).collect();
    drive(connections, bodies, 1).await
}

/// [`CLAIMABLE_RUNS`] queued runs taken by [`CLAIMERS`] clients claiming until the queue is
/// empty; every run must be claimed exactly once.
async fn claims(base: &str, store: &dyn Store) -> Figure {
    let queue = "bench-claims";
    // Enqueued concurrently, so that they share commits.
    let enqueues = (0..CLAIMABLE_RUNS)
        .map(|_| store.enqueue(NewRun { queue: queue.to_owned(), ..NewRun::new(json!({})) }, Timestamp::now()));
    for enqueued in futures_util::future::join_all(enqueues).await {
        enqueued.expect("enqueue");
    }
    let url = format!("{base}/api/queue/claim");
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|claimer| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
                let body = json!({"worker": format!("pod-{claimer}"), "queue": queue}).to_string();
                let (mut claimed, mut latencies) = (Vec::new(), Vec::new());
                loop {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("claim");
                    latencies.push(sent.elapsed());
                    match response.status().as_u16() {
                        200 => {
                            let run: serde_json::Value = response.json().await.expect("claimed run");
                            claimed.push(run["_id"].as_str().expect("the claimed run's _id").to_owned());
                        }
                        204 => return (claimed, latencies),
                        status => panic!("claim answered {status}"),
                    }
                }
            })
        })
        .collect();
    let (mut claimed, mut latencies) = (Vec::new(), Vec::new());
    for task in tasks {
        let (ids, times) = task.await.expect("claimer");
        claimed.extend(ids);
        latencies.extend(times);
    }
    let elapsed = started.elapsed();
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), CLAIMABLE_RUNS, "every queued run claimed once");
    assert_eq!(distinct.len(), CLAIMABLE_RUNS, "no run claimed twice");
    latencies.sort();
    Figure { events: claimed.len(), elapsed, latencies }
}

async fn batches(base: &str, connections: usize) -> Figure {
    let url = format!("{base}/api/ingest/events");
    let prefix = format!("batch-{connections}");
    let bodies = (0..BATCHES)
        .map(|batch| {
            let lines: Vec<String> = (0..BATCH_SIZE).map(|n| event(&prefix, batch * BATCH_SIZE + n)).collect();
            (url.clone(), "application/x-ndjson", lines.join("\n"))
        })
        .collect();
    drive(connections, bodies, BATCH_SIZE).await
}

/// Median wall time of `scientist emit` and of `curl` sending the same kind of event,
/// alternating so that both see the same machine state.
async fn one_shots(base: &str) {
    let base = base.to_owned();
    tokio::task::spawn_blocking(move || {
        let curl_available = Command::new("curl").arg("--version").stdout(Stdio::null()).status().is_ok();
        let (mut emit, mut curl) = (Vec::new(), Vec::new());
        for n in 0..ONE_SHOTS {
            let started = Instant::now();
            let status = Command::new(env!("CARGO_BIN_EXE_scientist"))
                .args(["emit", "ai.run.log", "--run", "bench-0", "--data", r#"{"message": "one-shot"}"#])
                .env("SCIENTIST_SERVER", &base)
                .env("SCIENTIST_SPOOL_DIR", "/nonexistent/scientist-bench-spool")
                .stderr(Stdio::null())
                .status()
                .expect("run scientist emit");
            assert!(status.success(), "scientist emit failed");
            emit.push(started.elapsed());
            if curl_available {
                let started = Instant::now();
                let status = Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", "-H", "content-type: application/cloudevents+json", "--data"])
                    .arg(event("curl", n))
                    .arg(format!("{base}/api/ingest/event"))
                    .status()
                    .expect("run curl");
                assert!(status.success(), "curl failed");
                curl.push(started.elapsed());
            }
        }
        let median = |times: &mut Vec<Duration>| {
            times.sort();
            times[times.len() / 2].as_secs_f64() * 1000.0
        };
        println!("\none-shot, process start to acknowledgement (median of {ONE_SHOTS}):");
        println!("  scientist emit  {:>7.1} ms", median(&mut emit));
        if curl_available {
            println!("  curl            {:>7.1} ms", median(&mut curl));
        } else {
            println!("  curl            not installed");
        }
    })
    .await
    .expect("one-shot task");
}
