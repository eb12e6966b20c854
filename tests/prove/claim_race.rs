//! Many workers in separate processes racing over one queue: each helper process claims
//! runs from the store until the queue is empty and prints every run it got. Each run must
//! be claimed exactly once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use scientist::event::Event;
use scientist::run::RunId;
use scientist::time::Timestamp;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{StoreSpec, both_stores, spawn_child};
use crate::{Mode, Report};

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in both_stores(dir.path()) {
        let (runs, workers) = match (mode, store.kind()) {
            (Mode::Quick, "sqlite") => (2_000, 32),
            (Mode::Quick, _) => (300, 8),
            (Mode::Long, "sqlite") => (10_000, 32),
            // The test MongoDB server answers claims slowly; its race is narrower, not gone.
            (Mode::Long, _) => (2_000, 16),
        };
        scenario(&store, runs, workers, report).await;
        store.cleanup().await;
    }
}

async fn scenario(spec: &StoreSpec, runs: usize, workers: usize, report: &mut Report) {
    let kind = spec.kind();
    let store = spec.open().await;
    let queue = format!("race-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let ids: Vec<RunId> = (0..runs).map(|_| RunId::generate()).collect();
    for chunk in ids.chunks(500) {
        let events = chunk.iter().map(|id| enqueued(id, &queue)).collect();
        store.apply_events(events, Timestamp::now()).await.expect("enqueue the runs");
    }
    let started = Instant::now();
    let mut args = spec.to_args();
    args.push(queue.clone());
    // Read every worker at once, so none waits on a full pipe.
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let mut child = spawn_child("claimer", &args);
        readers.spawn(async move {
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            let mut claimed = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                claimed.push(line);
            }
            (claimed, child.wait().await.expect("reap a claimer").success())
        });
    }
    let mut claims: HashMap<String, usize> = HashMap::new();
    let mut failed_workers = 0;
    while let Some(joined) = readers.join_next().await {
        let (claimed, succeeded) = joined.expect("a reader task");
        for id in claimed {
            *claims.entry(id).or_default() += 1;
        }
        failed_workers += u64::from(!succeeded);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let twice = claims.values().filter(|count| **count > 1).count();
    let never = ids.iter().filter(|id| !claims.contains_key(id.as_str())).count();
    report.figure(
        &format!("claim-race {kind}: {workers} worker processes, {runs} runs"),
        format!("{:.0} claims/s", runs as f64 / elapsed),
    );
    report.zero(&format!("claim-race {kind}: workers that failed"), failed_workers);
    report.zero(&format!("claim-race {kind}: runs claimed twice"), twice as u64);
    report.zero(&format!("claim-race {kind}: runs never claimed"), never as u64);
}

fn enqueued(id: &RunId, queue: &str) -> Event {
    let object = json!({"specversion": "1.0", "id": format!("enqueue-{id}"), "source": "prove://race",
        "type": "ai.run.enqueued", "subject": format!("run/{id}"), "data": {"queue": queue}});
    let object = object.as_object().cloned().expect("an object literal");
    scientist::event::from_json_object(object, Timestamp::now()).expect("a valid event")
}

/// The helper process: `STORE QUEUE`. Claims until the queue is empty, printing each run.
pub async fn claimer(spec: StoreSpec, args: &[String]) -> ExitCode {
    let [queue] = args else {
        eprintln!("claimer: expected QUEUE, got {args:?}");
        return ExitCode::from(2);
    };
    let store = spec.open().await;
    let worker = format!("claimer-{}", std::process::id());
    loop {
        match store.claim(&worker, queue, Timestamp::now()).await {
            Ok(Some(run)) => println!("{}", run.id),
            Ok(None) => return ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("claimer: {}", scientist::errors::chain(&err));
                return ExitCode::from(3);
            }
        }
    }
}
