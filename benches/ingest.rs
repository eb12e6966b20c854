//! `cargo bench --bench ingest`: events per second through `scientist serve`'s HTTP ingest
//! on the embedded store, with acknowledgement latency percentiles, for single events and
//! NDJSON batches of 50 over keep-alive connections; claims through `POST /api/queue/claim`
//! by concurrent claimers (each run claimed exactly once, checked); then `scientist emit`
//! one-shot wall time (process start to acknowledgement) beside `curl` posting the same event.
//!
//! The server runs on a runtime of its own (threads named [`SERVER_THREAD`]) so that the CPU
//! it spends per request (its threads and the store's writer thread, from each thread's
//! `/proc/self/task/*/schedstat`) is told apart from the load generator's (the rest of this
//! process); the share of the machine's cores busy (`/proc/stat`, every process) says
//! whether the machine's CPU was the limit.
//!
//! Arguments after `--` pick workloads by a part of their name (`cargo bench --bench ingest
//! -- "single events, 8" claims`); with none, all run.

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

/// The server runtime's threads (workers and blocking ones).
const SERVER_THREAD: &str = "bench-serve";
/// The embedded store's writer thread (`store::sqlite::group`).
const WRITER_THREAD: &str = "sqlite-writer";

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    // Blocking threads kept for the whole run, so that none takes its CPU time with it.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("server runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = Arc::new(SqliteStore::open(&dir.path().join("bench.sqlite")).await.expect("open store"));
        let store: Arc<dyn Store> = sqlite.clone();
        for n in 0..RUNS {
            let new_run = NewRun { id: format!("bench-{n}").parse().expect("id"), ..NewRun::new(json!({})) };
            store.enqueue(new_run, Timestamp::now()).await.expect("enqueue");
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = AppState::new(store.clone(), Tokens::default());
        server_runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            server::run(listener, state, std::future::pending()).await
        });

        println!("scientist HTTP ingest benchmark (embedded store, synchronous=FULL, loopback)\n");
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>14} {:>14} {:>14} {:>13} {:>10}",
            "workload",
            "events/s",
            "p50 ms",
            "p99 ms",
            "server µs/req",
            "client µs/req",
            "machine busy",
            "writer CPU",
            "per commit"
        );
        for connections in [1, 8] {
            let workload = format!("single events, {connections} connection(s)");
            if wanted(&workload) {
                single_events(&base, &sqlite, connections).await.print(&workload);
            }
        }
        for connections in [1, 4, 8] {
            let workload = format!("NDJSON batches of {BATCH_SIZE}, {connections} conn.");
            if wanted(&workload) {
                batches(&base, &sqlite, connections).await.print(&workload);
            }
        }
        let workload = format!("claims, {CLAIMERS} claimers (runs/s)");
        if wanted(&workload) {
            claims(&base, &sqlite).await.print(&workload);
        }
        if wanted("one-shot") {
            one_shots(&base).await;
        }
    });
}

/// Whether the arguments (cargo's own `--bench` aside) pick `workload`; none picks all.
fn wanted(workload: &str) -> bool {
    let picked: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    picked.is_empty() || picked.iter().any(|part| workload.contains(part.as_str()))
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
    /// CPU time the server's threads and the rest of this process (the load generator)
    /// spent over the workload.
    cpu: Cpu,
    /// The share of the machine's cores busy over the workload (every process).
    machine_busy: f64,
    /// Store transactions committed over the workload.
    commits: u64,
}

/// Where the clocks and the commit count stood when a workload began.
struct Mark {
    at: Instant,
    cpu: Cpu,
    machine: MachineTicks,
    commits: u64,
}

impl Mark {
    fn now(store: &SqliteStore) -> Mark {
        Mark { at: Instant::now(), cpu: Cpu::now(), machine: MachineTicks::now(), commits: store.commits() }
    }

    /// The workload's figure, `events` in all and `latencies` one per request.
    fn figure(self, store: &SqliteStore, events: usize, mut latencies: Vec<Duration>) -> Figure {
        let (elapsed, cpu, commits) = (self.at.elapsed(), Cpu::now().since(&self.cpu), store.commits() - self.commits);
        let machine_busy = MachineTicks::now().busy_since(&self.machine);
        latencies.sort();
        Figure { events, elapsed, latencies, cpu, machine_busy, commits }
    }
}

/// CPU time spent so far by this process's threads: the server's (its runtime's and the
/// store's writer) and all of them. A thread that ended takes its time with it, so the
/// runtimes keep theirs.
struct Cpu {
    server: Duration,
    writer: Duration,
    process: Duration,
}

impl Cpu {
    fn now() -> Cpu {
        let mut cpu = Cpu { server: Duration::ZERO, writer: Duration::ZERO, process: Duration::ZERO };
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // The first field: nanoseconds on a CPU.
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let nanos = schedstat.split_whitespace().next().and_then(|field| field.parse().ok()).unwrap_or(0);
            let nanos = Duration::from_nanos(nanos);
            cpu.process += nanos;
            match comm.trim_end() {
                WRITER_THREAD => (cpu.server, cpu.writer) = (cpu.server + nanos, cpu.writer + nanos),
                SERVER_THREAD => cpu.server += nanos,
                _ => {}
            }
        }
        cpu
    }

    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            // A thread that ended between the two takes its time with it.
            server: self.server.saturating_sub(earlier.server),
            writer: self.writer.saturating_sub(earlier.writer),
            process: self.process.saturating_sub(earlier.process),
        }
    }
}

/// The machine's busy and total time so far, all cores and processes (`/proc/stat`, ticks).
struct MachineTicks {
    busy: u64,
    total: u64,
}

impl MachineTicks {
    fn now() -> MachineTicks {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            // user to steal; guest time is counted in user already.
            .take(8)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total = ticks.iter().sum();
        // idle and iowait are the 4th and 5th fields.
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        MachineTicks { busy: total - idle, total }
    }

    fn busy_since(&self, earlier: &MachineTicks) -> f64 {
        self.busy.saturating_sub(earlier.busy) as f64 / self.total.saturating_sub(earlier.total).max(1) as f64
    }
}

impl Figure {
    fn print(&self, workload: &str) {
        let percentile = |p: f64| {
            let rank = ((p * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
            self.latencies[rank - 1].as_secs_f64() * 1000.0
        };
        let per_second = self.events as f64 / self.elapsed.as_secs_f64();
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.latencies.len() as f64;
        let client_cpu = self.cpu.process.saturating_sub(self.cpu.server);
        let (server, client) = (per_request(self.cpu.server), per_request(client_cpu));
        let per_commit = self.events as f64 / self.commits.max(1) as f64;
        let busy = self.machine_busy * 100.0;
        let writer = self.cpu.writer.as_secs_f64() * 100.0 / self.elapsed.as_secs_f64();
        println!(
            "{workload:<34} {per_second:>10.0} {:>10.2} {:>10.2} {server:>14.0} {client:>14.0} {busy:>13.0}% {writer:>12.0}% {per_commit:>10.1}",
            percentile(0.50),
            percentile(0.99)
        );
    }
}

/// `connections` clients, each posting `requests / connections` bodies one after another.
async fn drive(
    store: &SqliteStore,
    connections: usize,
    bodies: Vec<(String, &'static str, String)>,
    events_per_request: usize,
) -> Figure {
    let mark = Mark::now(store);
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
    mark.figure(store, latencies.len() * events_per_request, latencies)
}

async fn single_events(base: &str, store: &SqliteStore, connections: usize) -> Figure {
    let url = format!("{base}/api/ingest/event");
    let prefix = format!("single-{connections}");
    let bodies = (0..SINGLE_EVENTS).map(|n| (url.clone(), "application/cloudevents+json", event(&prefix, n))).collect();
    drive(store, connections, bodies, 1).await
}

/// [`CLAIMABLE_RUNS`] queued runs taken by [`CLAIMERS`] clients claiming until the queue is
/// empty; every run must be claimed exactly once.
async fn claims(base: &str, store: &SqliteStore) -> Figure {
    let queue = "bench-claims";
    // Enqueued concurrently, so that they share commits.
    let enqueues = (0..CLAIMABLE_RUNS)
        .map(|_| store.enqueue(NewRun { queue: queue.to_owned(), ..NewRun::new(json!({})) }, Timestamp::now()));
    for enqueued in futures_util::future::join_all(enqueues).await {
        enqueued.expect("enqueue");
    }
    let url = format!("{base}/api/queue/claim");
    let mark = Mark::now(store);
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
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), CLAIMABLE_RUNS, "every queued run claimed once");
    assert_eq!(distinct.len(), CLAIMABLE_RUNS, "no run claimed twice");
    mark.figure(store, claimed.len(), latencies)
}

async fn batches(base: &str, store: &SqliteStore, connections: usize) -> Figure {
    let url = format!("{base}/api/ingest/events");
    let prefix = format!("batch-{connections}");
    let bodies = (0..BATCHES)
        .map(|batch| {
            let lines: Vec<String> = (0..BATCH_SIZE).map(|n| event(&prefix, batch * BATCH_SIZE + n)).collect();
            (url.clone(), "application/x-ndjson", lines.join("\n"))
        })
        .collect();
    drive(store, connections, bodies, BATCH_SIZE).await
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
