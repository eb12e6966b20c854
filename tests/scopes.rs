//! What each token scope may do through an event, on a real socket: every event type × a
//! pod's `ingest` token and an operator's `admin` token × a run that is absent, queued,
//! held by a worker or finished × no `attempt`, the live claim's, or a stale one. A refused
//! event is answered 403 (or rejected by line in a batch), stored nowhere and changes
//! nothing; the seeds' token-less examples keep working on an open server.

#[path = "common/server.rs"]
mod test_server;

use reqwest::StatusCode;
use scientist::event::KNOWN_TYPES;
use scientist::run::{NewRun, RunId, RunStatus};
use scientist::server::Tokens;
use scientist::store::EventFilter;
use scientist::time::Timestamp;
use serde_json::{Value, json};
use test_server::TestServer;

const POD_TOKEN: &str = "pod-token";
const OPS_TOKEN: &str = "ops-token";

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Absent,
    Queued,
    Held,
    Finished,
}

/// Data valid for every event type (unknown fields are allowed).
fn data() -> Value {
    json!({"stage": "Stage_1", "node_id": "n1", "message": "m", "key": "plot.png", "path": "plot.png",
           "error": "e", "artifact_key": "paper.pdf", "hypothesis_id": "h1", "ideas": [{"title": "t"}],
           "name": "loss", "value": 1.0, "reason": "r", "by": "someone", "model": "m"})
}

fn event(id: &str, event_type: &str, run: &RunId, attempt: Option<u32>) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "pod://p1", "type": event_type,
                           "subject": format!("run/{run}"), "data": data()});
    if let Some(attempt) = attempt {
        event["attempt"] = attempt.into();
    }
    event
}

/// A run in `state` (its attempt is 1 once claimed).
async fn run_in(server: &TestServer, state: State) -> RunId {
    let id = RunId::generate();
    if state == State::Absent {
        return id;
    }
    let now = Timestamp::now();
    // A queue of its own, so that the claim below takes this run.
    let new_run = NewRun { id: id.clone(), queue: id.to_string(), ..NewRun::new(json!({"title": "t"})) };
    server.store.enqueue(new_run, now).await.expect("enqueue");
    if state == State::Queued {
        return id;
    }
    let claimed = server.store.claim("pod-a", id.as_str(), now).await.expect("claim").expect("a run");
    assert_eq!((claimed.id.clone(), claimed.attempt), (id.clone(), 1));
    if state == State::Finished {
        let completed =
            event(&format!("done-{id}"), "ai.run.completed", &id, Some(1)).as_object().cloned().expect("an object");
        let completed = scientist::event::from_json_object(completed, now).expect("valid event");
        let outcomes = server.store.apply_events(vec![completed], now).await.expect("apply");
        let run = server.store.get(&id).await.expect("get").expect("run");
        assert_eq!(run.status, RunStatus::Completed, "{outcomes:?}");
    }
    id
}

/// What the rules say a pod's token may send, written out case by case.
fn pod_may(event_type: &str, state: State, attempt: Option<u32>) -> bool {
    let changes_status =
        ["ai.run.started", "ai.run.completed", "ai.run.failed", "ai.run.canceled", "ai.run.review_requested"]
            .contains(&event_type);
    match (event_type, state, attempt) {
        ("ai.run.enqueued", _, _) => false,
        (_, State::Absent, _) => false,
        (_, _, Some(_)) => true,
        _ if changes_status => false,
        (_, State::Held, None) => true,
        _ => false,
    }
}

#[tokio::test]
async fn every_event_type_by_scope_run_state_and_attempt() {
    let tokens = Tokens::default()
        .with_token_file(&format!("{POD_TOKEN} ingest\n{OPS_TOKEN} ingest admin\n"))
        .expect("token file");
    let server = TestServer::with_tokens(tokens).await;
    let (mut refused, mut accepted) = (0, 0);
    for event_type in KNOWN_TYPES {
        for state in [State::Absent, State::Queued, State::Held, State::Finished] {
            for attempt in [None, Some(1), Some(7)] {
                for token in [POD_TOKEN, OPS_TOKEN] {
                    let case = format!("{event_type} {state:?} attempt {attempt:?} by {token}");
                    let id = run_in(&server, state).await;
                    let before = server.store.get(&id).await.expect("get");
                    let sent = event(&format!("e-{}", refused + accepted), event_type, &id, attempt);
                    let request = server
                        .client()
                        .post(server.url("/api/ingest/event"))
                        .bearer_auth(token)
                        .header("content-type", "application/cloudevents+json")
                        .body(sent.to_string());
                    let (status, answer) = server.send(request).await;
                    let page = server.store.list_events(&id, &EventFilter::default()).await.expect("events");
                    let stored = page.items.iter().any(|stored| stored.event.id.0 == sent["id"]);
                    let may = token == OPS_TOKEN || pod_may(event_type, state, attempt);
                    if may {
                        accepted += 1;
                        assert_eq!(status, StatusCode::ACCEPTED, "{case}: {answer}");
                        assert!(stored, "{case}: stored");
                    } else {
                        refused += 1;
                        assert_eq!(status, StatusCode::FORBIDDEN, "{case}: {answer}");
                        assert!(
                            answer["error"].as_str().is_some_and(|error| error.contains("admin")),
                            "{case}: {answer}"
                        );
                        assert!(!stored, "{case}: a refused event is not stored");
                        let after = server.store.get(&id).await.expect("get");
                        assert_eq!(after.map(|run| run.status), before.map(|run| run.status), "{case}: unchanged");
                    }
                }
            }
        }
    }
    assert!(refused > 100 && accepted > 100, "both sides exercised: {refused} refused, {accepted} accepted");
}

/// The attack that broke the promise: a pod's token ending or cancelling a run another pod
/// holds, or creating runs, in a batch. Only the offending lines are refused.
#[tokio::test]
async fn a_pods_batch_cannot_end_or_create_runs_it_does_not_hold() {
    let tokens = Tokens::default().with_token_file(&format!("{POD_TOKEN} ingest\n")).expect("token file");
    let server = TestServer::with_tokens(tokens).await;
    let held = run_in(&server, State::Held).await;
    let created = RunId::generate();
    let lines = [
        event("b1", "ai.run.log", &held, None),
        event("b2", "ai.run.canceled", &held, None),
        event("b3", "ai.run.failed", &held, Some(6)),
        event("b4", "ai.run.enqueued", &created, None),
        event("b5", "ai.run.stage_started", &held, Some(1)),
    ];
    let body = lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let request = server
        .client()
        .post(server.url("/api/ingest/events"))
        .bearer_auth(POD_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body);
    let (status, answer) = server.send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let rejected: Vec<u64> =
        answer["rejected"].as_array().into_iter().flatten().filter_map(|r| r["line"].as_u64()).collect();
    assert_eq!(rejected, [2, 4], "{answer}");
    assert_eq!((answer["applied"].as_u64(), answer["stale"].as_u64()), (Some(2), Some(1)), "{answer}");
    let run = server.store.get(&held).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Scheduled, "still held, not canceled or failed");
    assert!(server.store.get(&created).await.expect("get").is_none(), "no run created");
}

/// The seeds' curl examples send no token: on an open server (loopback, no tokens) they are
/// accepted as before, including events for runs not created yet.
#[tokio::test]
async fn an_open_server_takes_the_seeds_token_less_events() {
    let server = TestServer::start(&[]).await;
    let seed = r#"{"specversion":"1.0","id":"test-123","source":"test://local","type":"ai.run.heartbeat","subject":"run/test-run-id","time":"2025-10-22T19:00:00Z","datacontenttype":"application/json","data":{"run_id":"test-run-id","gpu_util":0.75}}"#;
    let (status, answer) = server.post("/api/ingest/event", "application/cloudevents+json", seed).await;
    assert_eq!((status, answer["outcome"].as_str()), (StatusCode::ACCEPTED, Some("orphan")), "{answer}");
}

/// scientist's own records (the sweeper's, reviews') have ids anyone could guess: an event
/// sent first under one would make the real record a duplicate, never applied. No token may
/// send under `scientist://`, and the forged event is not stored.
#[tokio::test]
async fn no_token_sends_under_scientists_own_sources() {
    let tokens = Tokens::default()
        .with_token_file(&format!("{POD_TOKEN} ingest\n{OPS_TOKEN} ingest admin\n"))
        .expect("token file");
    let server = TestServer::with_tokens(tokens).await;
    let id = run_in(&server, State::Held).await;
    for token in [POD_TOKEN, OPS_TOKEN] {
        let mut forged = event(&format!("lost:{id}:1"), "ai.run.log", &id, Some(1));
        forged["source"] = json!("scientist://sweep");
        let request = server
            .client()
            .post(server.url("/api/ingest/event"))
            .bearer_auth(token)
            .header("content-type", "application/cloudevents+json")
            .body(forged.to_string());
        let (status, answer) = server.send(request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|error| error.contains("scientist's own")), "{answer}");
    }
    let page = server.store.list_events(&id, &EventFilter::default()).await.expect("events");
    assert!(page.items.iter().all(|stored| !stored.event.source.starts_with("scientist://")), "nothing forged stored");
}
