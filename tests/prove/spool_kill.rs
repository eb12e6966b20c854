//! A worker's spool killed at random points of append and acknowledge: a helper process
//! runs the worker's event stream (`emit::EventStream`, spooled to disk, delivered to the
//! store) and prints each event once `emit_synced` returned, the moment the worker's local
//! endpoint answers a child 202. It is SIGKILLed at a random moment, again and again, and
//! restarted on the same spool. In the end every printed event is stored exactly once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use scientist::control::StoreControlPlane;
use scientist::emit::{Draft, EventStream, StreamConfig};
use scientist::run::{NewRun, RunId};
use scientist::store::{EventFilter, Store};
use scientist::time::Timestamp;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{StoreSpec, both_stores, random_below, spawn_child};
use crate::{Mode, Report};

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in both_stores(dir.path()) {
        let kills = mode.pick(20, 200);
        let spool = dir.path().join(format!("spool-{}", store.kind()));
        scenario(&store, &spool, kills, report).await;
        store.cleanup().await;
    }
}

async fn scenario(spec: &StoreSpec, spool: &std::path::Path, kills: u32, report: &mut Report) {
    let kind = spec.kind();
    let store = spec.open().await;
    let run = store.enqueue(NewRun::new(Value::Null), Timestamp::now()).await.expect("enqueue");
    let claimed = store.claim("prove-pod", "default", Timestamp::now()).await.expect("claim").expect("the run");
    let mut args = spec.to_args();
    args.extend([spool.display().to_string(), run.id.to_string(), claimed.attempt.to_string()]);
    let mut acknowledged = Vec::new();
    let mut failed_to_reopen = 0;
    for generation in 0..=kills {
        let last = generation == kills;
        let mut child_args = args.clone();
        child_args.extend([generation.to_string(), if last { "finish" } else { "forever" }.to_owned()]);
        let mut child = spawn_child("spool-writer", &child_args);
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // Strikes between a few and a few hundred events in, wherever that falls.
        let strike_after = 1 + random_below(300);
        let mut seen = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            acknowledged.push(line);
            seen += 1;
            if !last && seen >= strike_after {
                child.start_kill().expect("SIGKILL the writer");
                break;
            }
        }
        let status = child.wait().await.expect("reap the writer");
        // Killed on purpose, or (last) exited on its own: anything else is a spool that
        // would not reopen or deliver.
        let expected = if last { status.success() } else { status.code().is_none() || status.success() };
        if !expected {
            failed_to_reopen += 1;
        }
    }
    let stored = stored_messages(store.as_ref(), &run.id).await;
    let lost = acknowledged.iter().filter(|message| !stored.contains_key(*message)).count();
    let doubled = stored.values().filter(|count| **count > 1).count();
    report.figure(&format!("spool-kill {kind}: kills"), kills);
    report.figure(&format!("spool-kill {kind}: events acknowledged by the spool"), acknowledged.len());
    report.zero(&format!("spool-kill {kind}: spool failed to reopen or drain"), failed_to_reopen);
    report.zero(&format!("spool-kill {kind}: acknowledged but lost"), lost as u64);
    report.zero(&format!("spool-kill {kind}: stored twice"), doubled as u64);
}

/// How many times each log message is stored for the run.
async fn stored_messages(store: &dyn Store, run: &RunId) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut cursor = None;
    loop {
        let filter = EventFilter { limit: 1000, cursor, ..Default::default() };
        let page = store.list_events(run, &filter).await.expect("list events");
        for stored in &page.items {
            if let Some(message) = stored.event.data.get("message").and_then(Value::as_str) {
                *counts.entry(message.to_owned()).or_default() += 1;
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return counts,
        }
    }
}

/// The helper process: `STORE SPOOL RUN ATTEMPT GENERATION forever|finish`. Emits log
/// events one by one, each synced to the spool before it is printed; `finish` emits a few,
/// then closes the stream once everything (what earlier generations left too) is delivered.
pub async fn writer(spec: StoreSpec, args: &[String]) -> ExitCode {
    let [spool, run, attempt, generation, how] = args else {
        eprintln!("spool-writer: expected SPOOL RUN ATTEMPT GENERATION forever|finish, got {args:?}");
        return ExitCode::from(2);
    };
    let (Ok(run), Ok(attempt)) = (run.parse::<RunId>(), attempt.parse::<u32>()) else {
        eprintln!("spool-writer: bad run id or attempt");
        return ExitCode::from(2);
    };
    let store = spec.open().await;
    let last_seq = store.get(&run).await.ok().flatten().map_or(0, |run| run.last_event_seq);
    let sink = Arc::new(StoreControlPlane::new(store, spec.kind()));
    let mut config = StreamConfig::new(spool.into(), "prove://spool-writer".into());
    config.flush_every = Duration::from_millis(5);
    let stream = match EventStream::open(config, sink) {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!("spool-writer: the spool did not reopen: {err}");
            return ExitCode::from(3);
        }
    };
    let Ok(run_stream) = stream.begin(&run, attempt, last_seq).await else { return ExitCode::from(3) };
    let count = if how == "finish" { 20 } else { u64::MAX };
    for n in 0..count {
        let message = format!("g{generation}-{n}");
        let mut data = Map::new();
        data.insert("message".into(), Value::from(message.clone()));
        if let Err(err) = run_stream.emit_synced(Draft::new("ai.run.log", data)).await {
            eprintln!("spool-writer: emit failed: {err}");
            return ExitCode::from(3);
        }
        println!("{message}");
    }
    // Everything the earlier generations left is delivered here; the test MongoDB server on a
    // busy machine stores a few dozen events a second, and this scenario is about loss, not speed.
    let closing = stream.close(Duration::from_secs(20 * 60)).await;
    if closing.undelivered > 0 {
        eprintln!("spool-writer: {} events undelivered at close", closing.undelivered);
        return ExitCode::from(4);
    }
    ExitCode::SUCCESS
}
