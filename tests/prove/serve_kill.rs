//! `scientist serve` SIGKILLed again and again during an ingest from clients that retry
//! until they are answered 202, half sending single events and half batches of 50. Then:
//! every acknowledged event is stored, none twice, and every run document equals the one an
//! in-order replay of the same events gives on a fresh store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scientist::run::{Run, RunId};
use scientist::store::{SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Value, json};

use crate::support::{Serve, StoreSpec, all_events, both_stores};
use crate::{Mode, Report};

/// Events per run: enqueued, started, progress, nodes and logs, completed.
const EVENTS_PER_RUN: usize = 100;
const CLIENTS: usize = 8;
const BATCH: usize = 50;

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in both_stores(dir.path()) {
        let (events, kills) = match (mode, store.kind()) {
            (Mode::Quick, "sqlite") => (20_000, 5),
            (Mode::Quick, _) => (4_000, 3),
            (Mode::Long, "sqlite") => (200_000, 20),
            // The test MongoDB server stores events slowly (180,000 take over 25 minutes).
            (Mode::Long, _) => (20_000, 10),
        };
        scenario(&store, events / EVENTS_PER_RUN, kills, report).await;
        store.cleanup().await;
    }
}

async fn scenario(spec: &StoreSpec, runs: usize, kills: u64, report: &mut Report) {
    let kind = spec.kind();
    let run_ids: Vec<RunId> = (0..runs).map(|_| RunId::generate()).collect();
    // Run `i` is client `i % CLIENTS`'s, which sends its events in order. Timed now, so that
    // the lost-worker sweep sees live runs.
    let start = Timestamp::now();
    let events_of = |index: usize| -> Vec<String> {
        (0..EVENTS_PER_RUN).map(|n| event_json(&run_ids[index], n, index % CLIENTS, start)).collect()
    };
    let plans: Vec<Vec<String>> =
        (0..CLIENTS).map(|client| (client..runs).step_by(CLIENTS).flat_map(events_of).collect()).collect();
    let total: u64 = plans.iter().map(|plan| plan.len() as u64).sum();
    // Runs that report without a claim look silent to the lost-worker sweep after a minute;
    // this scenario is about ingest, so the sweep must not touch them however slow it is.
    let mut serve = Serve::start(spec, &["--silent-after", "1h", "--lease", "2h"]).await;
    let url = serve.url();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for (client, plan) in plans.into_iter().enumerate() {
        let (url, acknowledged) = (url.clone(), acknowledged.clone());
        clients.spawn(async move { send_all(&url, plan, client % 2 == 1, &acknowledged).await });
    }
    // Kill at evenly spread points of the ingest, wherever a request happens to be.
    let mut killed = 0;
    while killed < kills {
        let due = total * (killed + 1) / (kills + 1);
        if acknowledged.load(Ordering::Relaxed) >= due {
            serve.kill().await;
            killed += 1;
            serve.restart().await;
        } else if clients.is_empty() {
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut acked_ids = HashSet::new();
    while let Some(joined) = clients.join_next().await {
        acked_ids.extend(joined.expect("a client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    serve.kill().await;

    let store = spec.open().await;
    let (stored, twice) = stored_ids(store.as_ref(), &run_ids).await;
    let missing = acked_ids.iter().filter(|id| !stored.contains(*id)).count();
    let differing = differing_from_replay(store.as_ref(), &run_ids, events_of).await;
    report.figure(&format!("serve-kill {kind}: events acknowledged"), format!("{} of {total}", acked_ids.len()));
    report.figure(&format!("serve-kill {kind}: SIGKILLs of serve"), killed);
    report.figure(
        &format!("serve-kill {kind}: throughput through the kills"),
        format!("{:.0} events/s", total as f64 / elapsed),
    );
    report.promise(
        &format!("serve-kill {kind}: every event acknowledged"),
        acked_ids.len(),
        acked_ids.len() as u64 == total,
    );
    report.zero(&format!("serve-kill {kind}: acknowledged but missing"), missing as u64);
    report.zero(&format!("serve-kill {kind}: stored twice"), twice);
    report.zero(&format!("serve-kill {kind}: runs differing from an in-order replay"), differing);
}

/// Event `n` of `run` as JSON.
fn event_json(run: &RunId, n: usize, client: usize, start: Timestamp) -> String {
    let (event_type, data) = match n {
        0 => ("ai.run.enqueued", json!({"priority": 1})),
        1 => ("ai.run.started", json!({"pod_id": format!("pod-{client}"), "gpu": "H100"})),
        _ if n == EVENTS_PER_RUN - 1 => ("ai.run.completed", json!({"duration_s": 60.0})),
        _ => match n % 4 {
            0 => (
                "ai.run.stage_progress",
                json!({"stage": "Stage_1", "iteration": n, "max_iterations": EVENTS_PER_RUN, "progress": n as f64 / EVENTS_PER_RUN as f64, "good_nodes": n / 4}),
            ),
            1 => ("ai.node.created", json!({"stage": "Stage_1", "node_id": format!("node-{n}")})),
            2 => (
                "ai.node.completed",
                json!({"stage": "Stage_1", "node_id": format!("node-{}", n - 1), "is_buggy": n % 8 == 2, "metric": n as f64}),
            ),
            _ => ("ai.run.log", json!({"message": format!("line {n}"), "level": "info"})),
        },
    };
    let time = Timestamp::from_millis(start.millis() + n as i64);
    json!({"specversion": "1.0", "id": format!("{run}-{n:03}"), "source": format!("prove://client-{client}"),
           "type": event_type, "subject": format!("run/{run}"), "time": time.to_string(), "seq": n + 1, "data": data})
    .to_string()
}

/// Sends `plan` (single events, or batches of [`BATCH`]), each request again until it is
/// answered 202; returns the ids acknowledged.
async fn send_all(url: &str, plan: Vec<String>, batches: bool, acknowledged: &AtomicU64) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("an HTTP client");
    let mut acked = Vec::with_capacity(plan.len());
    let chunk = if batches { BATCH } else { 1 };
    for part in plan.chunks(chunk) {
        let (path, content_type, body) = if batches {
            ("/api/ingest/events", "application/x-ndjson", part.join("\n"))
        } else {
            ("/api/ingest/event", "application/cloudevents+json", part[0].clone())
        };
        let mut backoff = Duration::from_millis(10);
        loop {
            let sent = client
                .post(format!("{url}{path}"))
                .header("content-type", content_type)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status() == 202 => {
                    let answer: Value = answer.json().await.unwrap_or(Value::Null);
                    let taken = if batches {
                        answer["accepted"].as_u64().unwrap_or(0) + answer["duplicate"].as_u64().unwrap_or(0)
                    } else {
                        u64::from(answer["outcome"].is_string())
                    };
                    // A 202 whose answer was cut off by the kill is not an acknowledgement.
                    if taken == part.len() as u64 {
                        break;
                    }
                }
                Ok(answer) if answer.status().is_client_error() => {
                    panic!(
                        "serve refused a valid request ({}): {}",
                        answer.status(),
                        answer.text().await.unwrap_or_default()
                    )
                }
                _ => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        for line in part {
            let id = serde_json::from_str::<Value>(line).ok().and_then(|event| event["id"].as_str().map(str::to_owned));
            acked.push(id.expect("our own events have ids"));
        }
        acknowledged.fetch_add(part.len() as u64, Ordering::Relaxed);
    }
    acked
}

/// Every stored event id of the runs, and how many ids are stored more than once.
async fn stored_ids(store: &dyn Store, runs: &[RunId]) -> (HashSet<String>, u64) {
    let mut ids = HashSet::new();
    let mut twice = 0;
    for run in runs {
        for event in all_events(store, run).await {
            if !ids.insert(event.id.0) {
                twice += 1;
            }
        }
    }
    (ids, twice)
}

/// How many runs differ from the events sent for them replayed in their order, in one
/// call, onto a fresh embedded store (the fields a write sets by itself left out).
async fn differing_from_replay(store: &dyn Store, runs: &[RunId], events_of: impl Fn(usize) -> Vec<String>) -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let replay = SqliteStore::open(&dir.path().join("replay.sqlite")).await.expect("open the replay store");
    let mut differing = 0;
    for (index, run) in runs.iter().enumerate() {
        let now = Timestamp::now();
        let events = events_of(index)
            .iter()
            .map(|line| {
                scientist::event::wire::parse_structured(line.as_bytes(), now).expect("our own events are valid")
            })
            .collect();
        replay.apply_events(events, now).await.expect("replay");
        let (got, want) = (store.get(run).await.expect("get"), replay.get(run).await.expect("get"));
        let (got, want) = (comparable(got), comparable(want));
        if got != want {
            if differing == 0 {
                let fields = |run: &Option<HashMap<String, Value>>| run.clone().unwrap_or_default();
                let (got, want) = (fields(&got), fields(&want));
                let names: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
                for name in names.into_iter().filter(|name| got.get(*name) != want.get(*name)) {
                    eprintln!(
                        "serve-kill: run {run} differs in {name}: stored {:?}, replayed {:?}",
                        got.get(name),
                        want.get(name)
                    );
                }
            }
            differing += 1;
        }
    }
    differing
}

fn comparable(run: Option<Run>) -> Option<HashMap<String, Value>> {
    let Value::Object(fields) = serde_json::to_value(run?).ok()? else { return None };
    Some(fields.into_iter().filter(|(name, _)| !["updatedAt", "rev"].contains(&name.as_str())).collect())
}
