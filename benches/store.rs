//! `cargo bench --bench store`: events applied per second on each store, batches of 1 and 50,
//! beside the physical ceiling measured in the same run (a plain SQLite WAL insert of the same
//! rows with the same durability; a plain MongoDB `insert_many` of the same documents).
//!
//! For SQLite it also splits a batch's time (the same events to runs that do not exist: stored
//! and deduplicated, no run document read or written), shows group commit (single events from
//! concurrent writers), and measures the bytes on disk per stored small metric event.
//!
//! MongoDB figures need SCIENTIST_TEST_MONGODB_URL (`scripts/bench` starts a server). They are
//! quoted as ratios to that ceiling: the test server is not MongoDB's own, so its absolute
//! speed says nothing about MongoDB's.

use std::time::{Duration, Instant};

use mongodb::bson::Document;
use scientist::event::{self, Event};
use scientist::run::NewRun;
use scientist::store::{MongoStore, SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Value, json};

/// Runs the events are spread over, as on a control plane with several active pods.
const RUNS: usize = 8;

struct Figure {
    events: usize,
    elapsed: Duration,
}

impl Figure {
    fn zero() -> Self {
        Figure { events: 0, elapsed: Duration::ZERO }
    }

    fn add(&mut self, other: &Figure) {
        self.events += other.events;
        self.elapsed += other.elapsed;
    }

    fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        println!("scientist store benchmark (events applied per second; higher is better)\n");
        sqlite_figures().await;
        match std::env::var("SCIENTIST_TEST_MONGODB_URL") {
            Ok(url) => mongo_figures(&url).await,
            Err(_) => println!("\nMongoDB: skipped, SCIENTIST_TEST_MONGODB_URL is not set (run scripts/bench)"),
        }
    });
}

/// A realistic mix for one run: progress, heartbeats, logs and node events.
fn events(prefix: &str, count: usize, run_ids: &[String]) -> Vec<Event> {
    (0..count)
        .map(|n| {
            let run_id = &run_ids[n % run_ids.len()];
            let (ty, data) = match n % 4 {
                0 => ("ai.run.stage_progress", json!({"stage": "Stage_1", "iteration": n / 4, "max_iterations": 100000,
                    "progress": 0.5, "good_nodes": n / 8, "buggy_nodes": 1, "total_nodes": n / 4, "best_metric": 0.91, "eta_s": 120})),
                1 => ("ai.run.heartbeat", json!({"gpu_util": 0.97, "gpu_mem": 71.2, "cpu": 3.5, "rss": 12_000_000_000u64})),
                2 => ("ai.run.log", json!({"message": format!("epoch {n}: loss=0.4312 acc=0.8812 lr=3e-4"), "level": "info", "source": "stdout"})),
                _ => ("ai.node.completed", json!({"stage": "Stage_1", "node_id": format!("node-{}", n % 64), "is_buggy": false, "metric": 0.9})),
            };
            let mut data = data;
            data["run_id"] = json!(run_id);
            let Value::Object(object) = json!({
                "specversion": "1.0", "id": format!("{prefix}-{n}"), "source": "pod://bench", "type": ty,
                "time": Timestamp::from_millis(1_761_159_600_000 + n as i64).to_string(), "seq": n, "data": data,
            }) else {
                unreachable!("literal object")
            };
            event::from_json_object(object, Timestamp::now()).expect("bench events are valid")
        })
        .collect()
}

async fn seed_runs(store: &dyn Store) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        let run = store.enqueue(NewRun::new(json!({"title": "bench"})), Timestamp::now()).await.expect("enqueue");
        ids.push(run.id.to_string());
    }
    ids
}

async fn apply_in_batches(store: &dyn Store, events: Vec<Event>, batch: usize) -> Figure {
    let count = events.len();
    let mut chunks: Vec<Vec<Event>> = Vec::new();
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        chunks.push(events.by_ref().take(batch).collect());
    }
    let started = Instant::now();
    for chunk in chunks {
        store.apply_events(chunk, Timestamp::now()).await.expect("apply");
    }
    Figure { events: count, elapsed: started.elapsed() }
}

fn print_row(store: &str, batch: usize, ours: &Figure, ceiling: &Figure) {
    println!(
        "{store:<8} batch {batch:>2}: {:>9.0} events/s   ceiling {:>9.0} rows/s   ratio {:.2}",
        ours.per_second(),
        ceiling.per_second(),
        ours.per_second() / ceiling.per_second()
    );
}

/// Rounds of the batch-50 comparison: ours, the ceiling and the stored-only split run one
/// after another in each round, and the median ratio is quoted, so that other load on a
/// shared machine weighs on both sides of a ratio alike.
const ROUNDS: usize = 5;

async fn sqlite_figures() {
    sqlite_single_batches().await;
    sqlite_batches_of_50().await;
    concurrent_single_events().await;
    bytes_per_event().await;
}

async fn sqlite_single_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("bench.sqlite")).await.expect("open");
    let run_ids = seed_runs(&store).await;
    let batch_events = events("s1", 2_000, &run_ids);
    let bodies: Vec<String> = batch_events.iter().map(|e| Value::Object(e.to_json()).to_string()).collect();
    let ours = apply_in_batches(&store, batch_events, 1).await;
    let ceiling = plain_sqlite_inserts(&dir.path().join("plain.sqlite"), &bodies, 1);
    print_row("sqlite", 1, &ours, &ceiling);
}

async fn sqlite_batches_of_50() {
    const BATCH: usize = 50;
    const PER_ROUND: usize = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("bench.sqlite")).await.expect("open");
    let run_ids = seed_runs(&store).await;
    // The same events to runs that do not exist: what storing them costs without their
    // runs' read, reduce and write.
    let absent: Vec<String> = (0..RUNS).map(|n| format!("absent-{n}")).collect();
    let (mut ratios, mut ours_total, mut ceiling_total, mut stored_total) =
        (Vec::new(), Figure::zero(), Figure::zero(), Figure::zero());
    let (mut ours_cpu, mut ceiling_cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let batch_events = events(&format!("s50-{round}"), PER_ROUND, &run_ids);
        let bodies: Vec<String> = batch_events.iter().map(|e| Value::Object(e.to_json()).to_string()).collect();
        let cpu = process_cpu();
        let ours = apply_in_batches(&store, batch_events, BATCH).await;
        ours_cpu += process_cpu() - cpu;
        let cpu = process_cpu();
        let ceiling = plain_sqlite_inserts(&dir.path().join(format!("plain-{round}.sqlite")), &bodies, BATCH);
        ceiling_cpu += process_cpu() - cpu;
        let stored_only = apply_in_batches(&store, events(&format!("orphan-{round}"), PER_ROUND, &absent), BATCH).await;
        ratios.push(ours.per_second() / ceiling.per_second());
        ours_total.add(&ours);
        ceiling_total.add(&ceiling);
        stored_total.add(&stored_only);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "sqlite   batch 50: {:>9.0} events/s   ceiling {:>9.0} rows/s   ratio {:.2} (median of {ROUNDS} rounds; {})",
        ours_total.per_second(),
        ceiling_total.per_second(),
        ratios[ROUNDS / 2],
        ratios.iter().map(|ratio| format!("{ratio:.2}")).collect::<Vec<_>>().join(" "),
    );
    let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / ours_total.events as f64;
    println!(
        "  CPU per event (the whole process): {:.1} µs, the plain insert {:.1} µs",
        per_event(ours_cpu),
        per_event(ceiling_cpu)
    );
    let share = |figure: &Figure| 100.0 * figure.elapsed.as_secs_f64() / ours_total.elapsed.as_secs_f64();
    println!(
        "  split of a batch's time: storing and deduplicating {:.0}%, the runs' documents {:.0}% \
         (the plain insert alone is {:.0}%)",
        share(&stored_total),
        100.0 - share(&stored_total),
        share(&ceiling_total),
    );
}

/// CPU time this process has used so far, all threads (the store's writer thread too).
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Writers each sending single events at once: group commit lets them share commits.
async fn concurrent_single_events() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 1_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("group.sqlite")).await.expect("open");
    let run_ids = seed_runs(&store).await;
    let commits_before = store.commits();
    let started = Instant::now();
    let writers = (0..WRITERS).map(|writer| {
        let events = events(&format!("w{writer}"), PER_WRITER, &run_ids);
        let store = &store;
        async move {
            for event in events {
                store.apply_events(vec![event], Timestamp::now()).await.expect("apply");
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let figure = Figure { events: WRITERS * PER_WRITER, elapsed: started.elapsed() };
    let commits = store.commits() - commits_before;
    println!(
        "sqlite   single events from {WRITERS} writers: {:>9.0} events/s   {commits} commits, {:.1} events per commit",
        figure.per_second(),
        figure.events as f64 / commits as f64
    );
}

/// Bytes the file grows by per stored small metric event (`ai.run.stage_metric`), after a
/// checkpoint folds the write-ahead log into it.
async fn bytes_per_event() {
    const COUNT: usize = 50_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("size.sqlite");
    let store = SqliteStore::open(&path).await.expect("open");
    let run_ids = seed_runs(&store).await;
    let file_size = || {
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("checkpoint");
        std::fs::metadata(&path).expect("size").len()
    };
    let before = file_size();
    let metrics: Vec<Event> = (0..COUNT)
        .map(|n| {
            let run_id = &run_ids[n % run_ids.len()];
            let Value::Object(object) = json!({
                "specversion": "1.0", "id": ulid::Ulid::generate().to_string(), "source": "pod://gpu-node-7",
                "type": "ai.run.stage_metric", "subject": format!("run/{run_id}"),
                "time": Timestamp::now().to_string(), "seq": n, "attempt": 1,
                "data": {"stage": "Stage_1", "name": "val_loss", "value": 0.4312 - n as f64 * 1e-6, "step": n / 8},
            }) else {
                unreachable!("literal object")
            };
            event::from_json_object(object, Timestamp::now()).expect("a valid metric event")
        })
        .collect();
    let sample = Value::Object(metrics[0].to_json()).to_string().len();
    apply_in_batches(&store, metrics, 50).await;
    let grown = file_size() - before;
    println!(
        "sqlite   bytes on disk per small metric event: {:.0} (its JSON is {sample} bytes; {COUNT} events)",
        grown as f64 / COUNT as f64
    );
}

/// The same rows inserted with nothing else: same file settings, same transaction size.
fn plain_sqlite_inserts(path: &std::path::Path, bodies: &[String], batch: usize) -> Figure {
    let mut connection = rusqlite::Connection::open(path).expect("open plain sqlite");
    connection.pragma_update(None, "journal_mode", "WAL").expect("wal");
    connection.pragma_update(None, "synchronous", "FULL").expect("full");
    connection
        .execute_batch("CREATE TABLE events (pos INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .expect("create table");
    let started = Instant::now();
    for chunk in bodies.chunks(batch) {
        let tx = connection.transaction().expect("begin");
        {
            let mut insert = tx.prepare_cached("INSERT INTO events (body) VALUES (?1)").expect("prepare");
            for body in chunk {
                insert.execute([body]).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    Figure { events: bodies.len(), elapsed: started.elapsed() }
}

async fn mongo_figures(url: &str) {
    for (batch, count) in [(1, 500), (50, 5_000)] {
        let database = format!("scientist_bench_{}", ulid::Ulid::generate().to_string().to_lowercase());
        let store = MongoStore::connect(url, Some(&database)).await.expect("connect");
        let run_ids = seed_runs(&store).await;
        let batch_events = events(&format!("m{batch}"), count, &run_ids);
        let documents: Vec<Document> =
            batch_events.iter().map(|e| mongodb::bson::to_document(&e.to_json()).expect("bson")).collect();
        let ours = apply_in_batches(&store, batch_events, batch).await;
        let ceiling = plain_mongo_inserts(url, &database, documents, batch).await;
        print_row("mongodb", batch, &ours, &ceiling);
        store.drop_database().await.expect("drop bench database");
    }
}

/// The same documents inserted with nothing else, with the same write concern.
async fn plain_mongo_inserts(url: &str, database: &str, documents: Vec<Document>, batch: usize) -> Figure {
    use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
    let client = mongodb::Client::with_uri_str(url).await.expect("connect");
    let concern = WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build();
    let collection = client.database(database).collection_with_options::<Document>(
        "plain_events",
        CollectionOptions::builder().write_concern(concern).build(),
    );
    let count = documents.len();
    let started = Instant::now();
    for chunk in documents.chunks(batch) {
        collection.insert_many(chunk.to_vec()).await.expect("insert_many");
    }
    Figure { events: count, elapsed: started.elapsed() }
}
