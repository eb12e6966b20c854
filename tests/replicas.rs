//! `serve` is stateless: two `scientist serve` processes (the built binary) on one MongoDB,
//! receiving interleaved events for the same runs at the same time, lose no update; and a
//! third replica tailing a run while two others write to it sees every event exactly once.

mod common;
#[path = "common/serve_process.rs"]
mod serve_process;
#[path = "common/stores.rs"]
#[allow(dead_code)] // only `mongo_url` is used here
mod stores;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use scientist::run::{NewRun, RunId};
use scientist::store::{EventFilter, MongoStore, Store};
use serde_json::{Value, json};
use serve_process::ServeProcess;

/// A `serve` replica on the shared MongoDB database.
fn serve_on(mongodb_url: &str, database: &str) -> ServeProcess {
    ServeProcess::start(|command| command.env("MONGODB_URL", mongodb_url).env("SCIENTIST_MONGODB_DB", database))
}

fn event(run: &str, seq: u64, attempt: u64, ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": format!("{run}-{seq}"), "source": "pod://replica-test", "type": ty,
           "subject": format!("run/{run}"), "seq": seq, "attempt": attempt, "data": data})
}

/// The events of one run: a start, then nodes, metrics and progress, numbered by `seq`.
fn run_events(run: &str, attempt: u64) -> Vec<Value> {
    let mut events = vec![event(run, 1, attempt, "ai.run.started", json!({"pod_id": "replica-test"}))];
    for n in 0..16 {
        let seq = events.len() as u64 + 1;
        events.push(match n % 3 {
            0 => {
                event(run, seq, attempt, "ai.node.created", json!({"node_id": format!("node-{n}"), "stage": "Stage_1"}))
            }
            1 => event(
                run,
                seq,
                attempt,
                "ai.run.stage_metric",
                json!({"name": format!("metric-{n}"), "value": n, "step": n}),
            ),
            _ => event(run, seq, attempt, "ai.run.stage_progress", json!({"stage": "Stage_1", "iteration": n})),
        });
    }
    events
}

#[tokio::test]
async fn two_servers_on_one_mongodb_lose_no_interleaved_update() {
    let mongodb_url = stores::mongo_url();
    let database = format!("scientist_replicas_{}", ulid::Ulid::generate().to_string().to_lowercase());
    let servers = [serve_on(&mongodb_url, &database), serve_on(&mongodb_url, &database)];
    let client = reqwest::Client::new();
    let runs = ["rep-1", "rep-2", "rep-3"];
    for run in runs {
        let created =
            client.post(format!("{}/api/runs", servers[0].url)).json(&json!({"id": run, "idea": {}})).send().await;
        assert_eq!(created.expect("enqueue").status(), 201);
    }
    let mut attempts = Vec::new();
    for _ in runs {
        let claimed =
            client.post(format!("{}/api/queue/claim", servers[1].url)).json(&json!({"worker": "pod-r"})).send();
        let claimed: Value = claimed.await.expect("claim").json().await.expect("run");
        attempts.push((claimed["_id"].as_str().expect("id").to_owned(), claimed["attempt"].as_u64().expect("attempt")));
    }

    // Each run's events alternate between the two servers, both halves sent at once.
    let mut sends = Vec::new();
    for (run, attempt) in &attempts {
        let events = run_events(run, *attempt);
        for (half, server) in servers.iter().enumerate() {
            let url = format!("{}/api/ingest/event", server.url);
            let mine: Vec<Value> = events.iter().skip(half).step_by(2).cloned().collect();
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                for event in mine {
                    let response = client.post(&url).header("content-type", "application/cloudevents+json");
                    let answer: Value =
                        response.body(event.to_string()).send().await.expect("send").json().await.expect("answer");
                    assert_eq!(answer["outcome"], "applied", "{event}: {answer}");
                }
            }));
        }
    }
    for send in sends {
        send.await.expect("sender");
    }

    for (run, attempt) in &attempts {
        let expected = run_events(run, *attempt);
        for server in &servers {
            let got: Value = client
                .get(format!("{}/api/runs/{run}", server.url))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("run");
            assert_eq!(got["status"], "RUNNING", "{got}");
            assert_eq!(got["lastEventSeq"].as_u64(), Some(expected.len() as u64), "{run}: every seq applied");
            let count = |ty: &str| expected.iter().filter(|event| event["type"] == ty).count();
            assert_eq!(got["nodes"].as_array().map(Vec::len), Some(count("ai.node.created")), "{run}: nodes");
            assert_eq!(got["metrics"].as_array().map(Vec::len), Some(count("ai.run.stage_metric")), "{run}: metrics");
            let events: Value = client
                .get(format!("{}/api/runs/{run}/events?limit=1000", server.url))
                .send()
                .await
                .expect("events")
                .json()
                .await
                .expect("page");
            assert_eq!(
                events["items"].as_array().map(Vec::len),
                Some(expected.len()),
                "{run}: every event stored once"
            );
        }
    }
    // A repeat through the other server is a duplicate.
    let repeat = run_events(&attempts[0].0, attempts[0].1).remove(3);
    let answer: Value = client
        .post(format!("{}/api/ingest/event", servers[1].url))
        .header("content-type", "application/cloudevents+json")
        .body(repeat.to_string())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("answer");
    assert_eq!(answer["outcome"], "duplicate");
    let store = scientist::store::MongoStore::connect(&mongodb_url, Some(&database)).await.expect("connect");
    store.drop_database().await.expect("drop the test database");
}

/// Two store handles (two replicas) store events of one run at once, in batches of 1 to 4,
/// while a third pages through them by cursor as the live tail does: every event is seen
/// exactly once, none skipped because a batch committed after a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tail_on_a_third_replica_sees_each_event_of_two_writers_once() {
    const PER_WRITER: usize = 120;
    const TAIL_PAGE: usize = 7;
    let mongodb_url = stores::mongo_url();
    let database = format!("scientist_replicas_{}", ulid::Ulid::generate().to_string().to_lowercase());
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(MongoStore::connect(&mongodb_url, Some(&database)).await.expect("connect"));
    }
    let reader = handles.pop().expect("three handles");
    let run_id: RunId = "rep-tail".parse().expect("run id");
    let new_run = NewRun { id: run_id.clone(), ..NewRun::new(json!({})) };
    handles[0].enqueue(new_run, common::at(0)).await.expect("enqueue");

    let mut writers = Vec::new();
    for (writer, store) in handles.into_iter().enumerate() {
        let run = run_id.to_string();
        writers.push(tokio::spawn(async move {
            let (mut sent, mut batch) = (0, 1);
            while sent < PER_WRITER {
                let events = (sent..PER_WRITER.min(sent + batch))
                    .map(|n| {
                        let id = format!("w{writer}-{n}");
                        common::event(&id, "ai.run.log", &run, n as i64, json!({"message": id}))
                    })
                    .collect::<Vec<_>>();
                sent += events.len();
                store.apply_events(events, common::at(sent as i64)).await.expect("apply");
                batch = batch % 4 + 1;
            }
        }));
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut writing = true;
    loop {
        assert!(Instant::now() < deadline, "the tail saw {} of {} events", seen.len(), 2 * PER_WRITER);
        let filter = EventFilter { cursor: cursor.clone(), limit: TAIL_PAGE, ..Default::default() };
        let page = reader.list_events(&run_id, &filter).await.expect("tail");
        let empty = page.items.is_empty();
        if let Some(last) = page.items.last() {
            cursor = Some(last.cursor.clone());
        }
        for stored in page.items {
            *seen.entry(stored.event.id.0).or_default() += 1;
        }
        if empty {
            // Done once the writers have finished and a read after that finds nothing new.
            if !writing {
                break;
            }
            writing = !writers.iter().all(|writer| writer.is_finished());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "seen more than once: {twice:?}");
    assert_eq!(seen.len(), 2 * PER_WRITER, "every event seen once");
    reader.drop_database().await.expect("drop the test database");
}
