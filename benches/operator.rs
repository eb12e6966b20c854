//! `cargo bench --bench operator`: the operator commands over a large embedded store.
//!
//! Seeds 100,000 runs and 1,000,000 events through `Store::apply_events` (a realistic mix:
//! most runs completed, some failed, running, queued or canceled; stages, progress,
//! heartbeats, log lines), then times what `runs list`, `runs show`, `runs logs` and `stats`
//! ask of the store, and the release binary end to end (process start included).
//! Figures: median and worst of several repetitions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scientist::event::{self, Event, LogLevel};
use scientist::run::{RunId, RunStatus};
use scientist::store::{EventFilter, LOG_EVENT_TYPE, RunFilter, SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Value, json};

const RUNS: usize = 100_000;
const EVENTS_PER_RUN: usize = 10;
/// Events per `apply_events` call while seeding (one transaction each).
const SEED_BATCH_RUNS: usize = 100;
const REPEATS: usize = 15;
/// Seeded runs start here, one every 6 s, so the newest are about a week old.
const T0_MILLIS: i64 = 1_761_159_600_000;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("operator.sqlite");
        let store = SqliteStore::open(&path).await.expect("open");
        println!("scientist operator benchmark: {RUNS} runs, {} events, embedded store\n", RUNS * EVENTS_PER_RUN);
        let seeding = seed(&store).await;
        let size_mb = std::fs::metadata(&path).map(|meta| meta.len() as f64 / 1e6).unwrap_or(0.0);
        println!(
            "seeded in {:.1} s ({:.0} events/s, batches of {}), file {size_mb:.0} MB\n",
            seeding.as_secs_f64(),
            (RUNS * EVENTS_PER_RUN) as f64 / seeding.as_secs_f64(),
            SEED_BATCH_RUNS * EVENTS_PER_RUN
        );
        store_figures(&store).await;
        binary_figures(&path);
    });
}

/// The run id of seeded run `n`.
fn run_id(n: usize) -> String {
    format!("{:08x}-bench-{n:06}", (n as u64).wrapping_mul(2_654_435_761) % 0xffff_ffff)
}

/// What happens to seeded run `n`, spread as on a busy control plane.
fn fate(n: usize) -> RunStatus {
    match n % 20 {
        0..=13 => RunStatus::Completed,
        14..=16 => RunStatus::Failed,
        17 => RunStatus::Canceled,
        18 => RunStatus::Running,
        _ => RunStatus::Queued,
    }
}

fn at(millis: i64) -> String {
    Timestamp::from_millis(T0_MILLIS + millis).to_string()
}

/// Exactly `EVENTS_PER_RUN` events for run `n`.
fn run_events(n: usize) -> Vec<Event> {
    let id = run_id(n);
    let start = n as i64 * 6_000;
    let mut events: Vec<(&str, Value)> = vec![("ai.run.enqueued", json!({"priority": (n % 3) as i64}))];
    let log = |k: usize| {
        let level = ["info", "info", "warning", "error", "debug"][k % 5];
        (
            "ai.run.log",
            json!({"message": format!("epoch {k}: loss=0.{k:04} acc=0.88"), "level": level, "source": "stdout"}),
        )
    };
    match fate(n) {
        RunStatus::Queued => events.extend((0..9).map(log)),
        fate => {
            let gpu = if n.is_multiple_of(4) { "A100" } else { "NVIDIA H100 80GB HBM3" };
            events.push(("ai.run.started", json!({"pod_id": format!("pod-{}", n % 64), "gpu": gpu})));
            events.push(("ai.run.stage_started", json!({"stage": "Stage_1"})));
            events.push((
                "ai.run.stage_progress",
                json!({"stage": "Stage_1", "iteration": 7, "max_iterations": 14, "progress": 0.5, "good_nodes": 5,
                       "buggy_nodes": 2, "total_nodes": 7, "best_metric": 0.91, "eta_s": 600}),
            ));
            events.push(("ai.run.heartbeat", json!({"gpu_util": 0.97, "gpu_mem": 71.2, "cpu": 3.5})));
            events.push(log(n));
            events.push(log(n + 1));
            events.push(("ai.run.stage_completed", json!({"stage": "Stage_1", "duration_s": 600 + (n % 1200)})));
            events.push(("ai.run.stage_started", json!({"stage": "Stage_2"})));
            events.push(match fate {
                RunStatus::Completed => ("ai.run.completed", json!({"duration_s": 3000 + (n % 600)})),
                RunStatus::Failed => {
                    let code = ["OOM", "TIMEOUT", "EXIT_1", "ALL_NODES_BUGGY"][n % 4];
                    ("ai.run.failed", json!({"stage": "Stage_2", "code": code, "message": "boom", "retryable": true}))
                }
                RunStatus::Canceled => ("ai.run.canceled", json!({"by": "operator", "reason": "bench"})),
                _ => ("ai.run.heartbeat", json!({"gpu_util": 0.91})),
            });
        }
    }
    assert_eq!(events.len(), EVENTS_PER_RUN);
    events
        .into_iter()
        .enumerate()
        .map(|(k, (ty, mut data))| {
            data["run_id"] = json!(id);
            let Value::Object(object) = json!({
                "specversion": "1.0", "id": format!("{id}-{k}"), "source": "pod://bench", "type": ty,
                "time": at(start + k as i64 * 500), "seq": k, "data": data,
            }) else {
                unreachable!("literal object")
            };
            event::from_json_object(object, Timestamp::now()).expect("bench events are valid")
        })
        .collect()
}

async fn seed(store: &SqliteStore) -> Duration {
    let started = Instant::now();
    for first in (0..RUNS).step_by(SEED_BATCH_RUNS) {
        let batch: Vec<Event> = (first..(first + SEED_BATCH_RUNS).min(RUNS)).flat_map(run_events).collect();
        store.apply_events(batch, Timestamp::from_millis(T0_MILLIS + first as i64 * 6_000)).await.expect("apply");
    }
    started.elapsed()
}

/// Median and worst of `REPEATS` timed calls.
async fn time<T, F: std::future::Future<Output = T>>(mut call: impl FnMut() -> F) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let started = Instant::now();
        std::hint::black_box(call().await);
        times.push(started.elapsed());
    }
    times.sort();
    (times[REPEATS / 2], times[REPEATS - 1])
}

fn print_figure(what: &str, (median, worst): (Duration, Duration)) {
    println!("{what:<58} median {:>8.2} ms   worst {:>8.2} ms", ms(median), ms(worst));
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn store_figures(store: &SqliteStore) {
    println!("through the Store trait:");
    let now = Timestamp::from_millis(T0_MILLIS + RUNS as i64 * 6_000);
    let list = |statuses: Vec<RunStatus>| RunFilter { statuses, limit: 50, ..Default::default() };
    let (newest, failed) = (list(vec![]), list(vec![RunStatus::Failed]));
    let two = list(vec![RunStatus::Running, RunStatus::Queued]);
    print_figure("list, newest 50", time(|| store.list(&newest)).await);
    print_figure("list --status FAILED, newest 50", time(|| store.list(&failed)).await);
    print_figure("list --status RUNNING --status QUEUED, newest 50", time(|| store.list(&two)).await);
    let deep = store.list(&RunFilter { limit: 1000, ..Default::default() }).await.expect("page");
    let deep_filter = RunFilter { limit: 50, cursor: deep.next.clone(), ..Default::default() };
    print_figure("list, 50 after the first 1,000 (cursor)", time(|| store.list(&deep_filter)).await);
    print_figure("stats", time(|| store.stats(now, scientist::store::stats::cost::DEFAULT_WINDOW)).await);
    let prefix = run_id(RUNS / 2)[..10].to_owned();
    print_figure("resolve a unique id prefix", time(|| store.resolve_prefix(&prefix)).await);
    let id: RunId = run_id(RUNS - 2).parse().expect("id");
    let recent = EventFilter { types: vec![LOG_EVENT_TYPE.into()], limit: 10, ..Default::default() };
    let show =
        || async { (store.get(&id).await, store.artifacts(&id).await, store.list_recent_events(&id, &recent).await) };
    print_figure("show: run, artifacts, last 10 log lines", time(show).await);
    let warnings = EventFilter { min_level: Some(LogLevel::Warning), ..Default::default() };
    print_figure("logs --level warning (one run)", time(|| store.list_events(&id, &warnings)).await);
    println!();
}

/// The release binary end to end, as an operator types it: process start, store open, query, output.
fn binary_figures(path: &Path) {
    println!("the scientist binary, end to end:");
    let binary = env!("CARGO_BIN_EXE_scientist");
    let id = run_id(RUNS - 2);
    let commands: [&[&str]; 5] = [
        &["runs", "list"],
        &["runs", "list", "--status", "FAILED", "--limit", "200"],
        &["runs", "show", &id[..12]],
        &["runs", "logs", &id, "--level", "warning"],
        &["stats"],
    ];
    for args in commands {
        let mut times = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            let started = Instant::now();
            let output = Command::new(binary)
                .args(args)
                .env("SCIENTIST_STORE", path)
                .env("NO_COLOR", "1")
                .output()
                .expect("run scientist");
            times.push(started.elapsed());
            assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        times.sort();
        print_figure(&format!("scientist {}", args.join(" ")), (times[REPEATS / 2], times[REPEATS - 1]));
    }
}
