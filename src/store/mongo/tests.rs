//! Checks of what is particular to this backend: document shapes in MongoDB and the
//! crash-recovery paths of `apply_events`. The behaviour both stores share is tested by
//! `tests/store_contract.rs`.

use mongodb::Collection;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};
use serde_json::{Value, json};

use super::apply::seen_document;
use super::pages::event_document;
use super::*;
use crate::event::{self, Event};

/// A store on a fresh database of the test server; drop it with `drop_database`.
async fn test_store() -> MongoStore {
    let url = std::env::var("SCIENTIST_TEST_MONGODB_URL").unwrap_or_else(|_| {
        panic!(
            "SCIENTIST_TEST_MONGODB_URL is not set: start a server with `secantusd-py --host 127.0.0.1 \
             --port 27017 --storage-path :memory:` (pip install SecantusDB) and export \
             SCIENTIST_TEST_MONGODB_URL=mongodb://127.0.0.1:27017, or run scripts/test"
        )
    });
    let database = format!("scientist_unit_{}", ulid::Ulid::generate().to_string().to_lowercase());
    MongoStore::connect(&url, Some(&database)).await.expect("connect to the test MongoDB server")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(1_761_159_600_000 + seconds * 1000)
}

fn event(id: &str, ty: &str, run_id: &str, seconds: i64, attempt: Option<u32>, data: Value) -> Event {
    let mut object = json!({
        "specversion": "1.0",
        "id": id,
        "source": "pod://unit",
        "type": ty,
        "subject": format!("run/{run_id}"),
        "time": at(seconds).to_string(),
        "data": data,
    });
    if let Some(attempt) = attempt {
        object["attempt"] = json!(attempt);
    }
    let Value::Object(object) = object else { unreachable!("built as an object") };
    event::from_json_object(object, at(seconds)).expect("valid test event")
}

fn new_run(priority: i64) -> NewRun {
    NewRun { priority, ..NewRun::new(json!({"title": "unit"})) }
}

#[tokio::test]
async fn claims_by_priority_and_drives_a_run_with_events() {
    let store = test_store().await;
    let low = store.enqueue(new_run(1), at(0)).await.expect("enqueue");
    let high = store.enqueue(new_run(9), at(1)).await.expect("enqueue");
    let middle = store.enqueue(new_run(5), at(2)).await.expect("enqueue");
    let mut order = Vec::new();
    while let Some(run) = store.claim("pod-a", "default", at(3)).await.expect("claim") {
        assert_eq!((run.status, run.attempt, run.rev), (RunStatus::Scheduled, 1, 1));
        order.push(run.id);
    }
    assert_eq!(order, [high.id, middle.id, low.id]);

    let run_id = "run-unit-1";
    let enqueued = event("e1", "ai.run.enqueued", run_id, 10, None, json!({"priority": 3}));
    let outcomes = store.apply_events(vec![enqueued.clone()], at(10)).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Applied]);
    let claimed = store.claim("pod-b", "default", at(11)).await.expect("claim").expect("the new run");
    assert_eq!(claimed.id.as_str(), run_id);
    let mut batch = vec![
        event("e2", "ai.run.started", run_id, 12, Some(1), json!({"pod_id": "pod-b", "gpu": "H100"})),
        event(
            "e3",
            "ai.run.stage_progress",
            run_id,
            13,
            Some(1),
            json!({"stage": "Stage_1", "iteration": 3, "max_iterations": 14, "progress": 0.25, "good_nodes": 2}),
        ),
    ];
    batch[1].seq = Some(7);
    let outcomes = store.apply_events(batch.clone(), at(14)).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    let run = store.get(&claimed.id).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Running);
    let current = run.current_stage.as_ref().expect("current stage");
    assert_eq!((current.name.as_str(), current.iteration, current.good_nodes), ("Stage_1", 3, 2));

    let mut again = batch.clone();
    again.insert(0, enqueued);
    let outcomes = store.apply_events(again, at(15)).await.expect("apply again");
    assert_eq!(outcomes, [Outcome::Duplicate; 3]);
    let stale = event("e4", "ai.run.heartbeat", run_id, 16, Some(2), json!({"gpu_util": 50.0}));
    assert_eq!(store.apply_events(vec![stale], at(16)).await.expect("apply"), [Outcome::Stale]);

    let raw: Collection<Document> = store.runs.clone_with_type();
    let stored = raw.find_one(doc! { "_id": run_id }).await.expect("find").expect("stored run");
    assert!(matches!(stored.get("createdAt"), Some(Bson::DateTime(_))), "{stored:?}");
    assert!(matches!(stored.get("claimedAt"), Some(Bson::DateTime(_))), "{stored:?}");
    assert_eq!(stored.get_document("currentStage").and_then(|c| c.get_i64("goodNodes")), Ok(2));
    let stage_1 = stored.get_document("stageTiming").and_then(|t| t.get_document("Stage_1")).expect("Stage_1");
    assert!(matches!(stage_1.get("lastActivityAt"), Some(Bson::DateTime(_))), "{stage_1:?}");
    assert_eq!(stored.get_i64("lastEventSeq"), Ok(7));
    assert_eq!(stored.get_str("claimedBy"), Ok("pod-b"));
    let stage = store.stages.find_one(doc! { "runId": run_id, "name": "Stage_1" }).await.expect("find");
    let stage = stage.expect("stage mirrored");
    assert_eq!((stage.get_str("status"), stage.get_f64("progress")), (Ok("RUNNING"), Ok(0.25)));
    assert!(matches!(stage.get("lastActivityAt"), Some(Bson::DateTime(_))), "{stage:?}");
    let events = store.events.find_one(doc! { "id": "e2" }).await.expect("find").expect("stored event");
    assert!(matches!(events.get("time"), Some(Bson::String(_))), "time stays RFC 3339: {events:?}");
    assert!(matches!(events.get(EVENT_RECEIVED_AT), Some(Bson::DateTime(_))), "{events:?}");
    store.drop_database().await.expect("drop");
}

#[tokio::test]
async fn recovers_from_a_call_that_failed_mid_way() {
    let store = test_store().await;
    let run_id = "run-unit-2";
    let enqueued = event("r1", "ai.run.enqueued", run_id, 0, None, json!({}));
    // A call claimed the pair, then died before storing anything: the retry applies it.
    store.events_seen.insert_one(seen_document(&enqueued, at(0))).await.expect("claim");
    assert_eq!(store.apply_events(vec![enqueued.clone()], at(1)).await.expect("apply"), [Outcome::Applied]);
    assert!(store.get(&run_id.parse().expect("id")).await.expect("get").is_some());
    // The claim expired (TTL) after the event was stored: still a duplicate.
    store.events_seen.delete_many(doc! {}).await.expect("expire");
    assert_eq!(store.apply_events(vec![enqueued], at(2)).await.expect("apply"), [Outcome::Duplicate]);
    // Ideas keep the frontend's own fields of the hypothesis.
    store.hypotheses.insert_one(doc! { "_id": "hyp-1", "title": "from the frontend" }).await.expect("insert");
    let ideas = |id: &str, seconds: i64, name: &str| {
        let mut ideas = event(
            id,
            "ai.ideation.generated",
            run_id,
            seconds,
            None,
            json!({
                "hypothesis_id": "hyp-1",
                "ideas": [{"name": name}],
            }),
        );
        ideas.run_id = None;
        ideas
    };
    let batch = vec![ideas("r2", 5, "b"), ideas("r3", 3, "a"), ideas("r4", 6, "c"), ideas("r5", 4, "d")];
    assert_eq!(store.apply_events(batch, at(7)).await.expect("apply"), [Outcome::Applied; 4]);
    let stored = store.hypotheses.find_one(doc! { "_id": "hyp-1" }).await.expect("find").expect("hypothesis");
    assert_eq!(stored.get_str("title"), Ok("from the frontend"));
    assert_eq!(stored.get_document("ideaJson").and_then(|idea| idea.get_str("name")), Ok("c"), "the latest wins");
    let read = store.hypothesis_ideas("hyp-1").await.expect("ideas").expect("some");
    assert_eq!((read.idea_json, read.at.id.as_str()), (json!({"name": "c"}), "r4"));
    store.drop_database().await.expect("drop");
}

/// A request the web frontend made (ObjectId id, its own fields, a hypothesis whose
/// `ideation.status` it shows) is claimed and ended without losing the frontend's fields.
#[tokio::test]
async fn serves_the_frontends_ideation_requests() {
    let store = test_store().await;
    let id = ObjectId::new();
    store
        .hypotheses
        .insert_one(doc! { "_id": "hyp-9", "title": "LR", "ideation": { "status": "QUEUED" } })
        .await
        .expect("hypothesis");
    store
        .ideation
        .insert_one(doc! {
            "_id": id, "hypothesisId": "hyp-9", "status": "QUEUED", "createdAt": DateTime::from(at(0)),
            "prompt": "ideas on learning rates", "model": "gpt-5-mini",
        })
        .await
        .expect("request");
    let claimed = store.claim_ideation("pod-a", at(1)).await.expect("claim").expect("the request");
    assert_eq!((claimed.id.clone(), claimed.attempt), (id.to_hex(), 1));
    assert_eq!(claimed.document["prompt"], json!("ideas on learning rates"));
    assert_eq!(claimed.document["createdAt"], json!(at(0).to_string()), "dates read as text");
    let hypothesis = store.hypotheses.find_one(doc! { "_id": "hyp-9" }).await.expect("find").expect("kept");
    assert_eq!(hypothesis.get_document("ideation").expect("ideation").get_str("status"), Ok("RUNNING"));
    store.finish_ideation(&id.to_hex(), 1, None, at(2)).await.expect("finish").expect("live claim");
    let stored = store.ideation.find_one(doc! { "_id": id }).await.expect("find").expect("request");
    assert_eq!((stored.get_str("status"), stored.get_str("model")), (Ok("COMPLETED"), Ok("gpt-5-mini")));
    assert!(stored.get_datetime("finishedAt").is_ok(), "dates are stored as dates: {stored}");
    let hypothesis = store.hypotheses.find_one(doc! { "_id": "hyp-9" }).await.expect("find").expect("kept");
    assert_eq!(hypothesis.get_document("ideation").expect("ideation").get_str("status"), Ok("COMPLETED"));
    assert_eq!(hypothesis.get_str("title"), Ok("LR"));
    store.drop_database().await.expect("drop");
}

fn listed_ids(page: &Page<StoredEvent>) -> Vec<&str> {
    page.items.iter().map(|stored| stored.event.id.0.as_str()).collect()
}

/// A seq reserved but written late is waited for, never skipped; one that is never written
/// (its writer died) is passed at once when the event above it arrived long ago, else after
/// the grace period; a page cut short at an open gap says where to go on from; and the
/// newest-first page a tail starts from leaves out what lies above an open gap.
#[tokio::test]
async fn a_reader_waits_for_a_late_write_and_passes_a_dead_one() {
    let store = test_store().await;
    let run_id: RunId = "run-unit-gap".parse().expect("id");
    let log = |id: &str, seconds| event(id, "ai.run.log", run_id.as_str(), seconds, None, json!({"message": id}));
    // Received now unless said otherwise: how long ago an event arrived is what tells a gap
    // that may still fill from a dead one.
    let now = Timestamp::now;
    store.apply_events(vec![log("g1", 0)], now()).await.expect("apply");
    let first = store.list_events(&run_id, &EventFilter::default()).await.expect("list");
    assert_eq!(listed_ids(&first), ["g1"]);
    let after = |page: &Page<StoredEvent>| EventFilter {
        cursor: page.items.last().map(|last| last.cursor.clone()),
        ..Default::default()
    };

    // A slow writer has reserved seq 2 but not written it; another writer stores seq 3.
    let slow = store.reserve_seqs(&run_id, 1).await.expect("reserve");
    assert_eq!(slow, 2);
    store.apply_events(vec![log("g3", 3)], now()).await.expect("apply");
    // Written once the reader holds back at the gap (whatever the machine's load), so the
    // reader must see it.
    let late_write = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !store.gaps.waiting_at(&run_id, 2) {
            assert!(std::time::Instant::now() < deadline, "the reader never held back at the gap");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.events.insert_one(event_document(&log("g2", 2), now(), Some(slow))).await.expect("late write");
    };
    let after_g1 = after(&first);
    let (page, ()) = tokio::join!(store.list_events(&run_id, &after_g1), late_write);
    let page = page.expect("list");
    assert_eq!(listed_ids(&page), ["g2", "g3"], "held back at the gap until it was filled");

    // Seq 4's writer died long ago (the event above it arrived in the past): passed at once,
    // even by a reader that never saw the gap before (a fresh `runs logs`).
    store.reserve_seqs(&run_id, 1).await.expect("reserve");
    store.apply_events(vec![log("g5", 5)], at(5)).await.expect("apply");
    let page = store.list_events(&run_id, &after(&page)).await.expect("list");
    assert_eq!(listed_ids(&page), ["g5"]);
    assert!(!store.gaps.waiting_at(&run_id, 4), "no grace period at an old dead gap");

    // Seq 6's writer dies now: the reader passes the gap after the grace period.
    store.reserve_seqs(&run_id, 1).await.expect("reserve");
    store.apply_events(vec![log("g7", 7)], now()).await.expect("apply");
    let started = std::time::Instant::now();
    let page = store.list_events(&run_id, &after(&page)).await.expect("list");
    assert_eq!(listed_ids(&page), ["g7"]);
    assert!(started.elapsed() >= GAP_GRACE - Duration::from_millis(200), "waited {:?}", started.elapsed());

    // Seq 8 stored, 9 reserved, 10 stored: the page ends at the open gap and says there is more.
    store.apply_events(vec![log("g8", 8)], now()).await.expect("apply");
    store.reserve_seqs(&run_id, 1).await.expect("reserve");
    store.apply_events(vec![log("g10", 10)], now()).await.expect("apply");
    let page = store.list_events(&run_id, &after(&page)).await.expect("list");
    assert_eq!(listed_ids(&page), ["g8"]);
    assert_eq!(page.next.as_deref(), Some(page.items[0].cursor.as_str()), "a cut page is not the end");

    // A tail starting now starts below the open gap.
    let newest = store.list_recent_events(&run_id, &EventFilter::default()).await.expect("recent");
    assert_eq!(listed_ids(&newest), ["g8", "g7", "g5", "g3", "g2", "g1"]);
    store.drop_database().await.expect("drop");
}

/// Events stored before `storeSeq` existed come first, by `_id`, and their ObjectId cursors
/// keep working in both directions; the events stored since follow them.
#[tokio::test]
async fn events_stored_before_seqs_come_first() {
    let store = test_store().await;
    let run_id: RunId = "run-unit-old".parse().expect("id");
    let log = |id: &str, seconds| event(id, "ai.run.log", run_id.as_str(), seconds, None, json!({"message": id}));
    for (id, seconds) in [("old1", 0), ("old2", 1)] {
        store.events.insert_one(event_document(&log(id, seconds), at(seconds), None)).await.expect("old event");
    }
    store.apply_events(vec![log("new1", 2)], at(2)).await.expect("apply");
    let all = store.list_events(&run_id, &EventFilter::default()).await.expect("list");
    assert_eq!(listed_ids(&all), ["old1", "old2", "new1"]);
    assert_eq!(all.items[0].cursor.len(), 24, "an ObjectId cursor: {}", all.items[0].cursor);
    let after_old1 = EventFilter { cursor: Some(all.items[0].cursor.clone()), ..Default::default() };
    assert_eq!(listed_ids(&store.list_events(&run_id, &after_old1).await.expect("list")), ["old2", "new1"]);
    let before_new1 = EventFilter { cursor: Some(all.items[2].cursor.clone()), ..Default::default() };
    let older = store.list_recent_events(&run_id, &before_new1).await.expect("recent");
    assert_eq!(listed_ids(&older), ["old2", "old1"]);
    store.drop_database().await.expect("drop");
}
