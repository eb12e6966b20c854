//! One behavioural suite for every store: each case is a generic body over `Store`,
//! stamped out per backend by `store_suite!`, so SQLite and MongoDB cannot drift apart.
//! MongoDB cases need the server `scripts/test` starts; without it they fail, never skip.

mod common;
#[path = "store_contract/cost.rs"]
mod cost_cases;
#[path = "store_contract/cost_stats.rs"]
mod cost_stats_cases;
#[path = "store_contract/eta.rs"]
mod eta_cases;
#[path = "store_contract/review.rs"]
mod review_cases;
#[path = "common/stores.rs"]
mod stores;
#[path = "store_contract/trace.rs"]
mod trace_cases;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{at, attempt_event, event, event_from};
use cost_cases::*;
use cost_stats_cases::*;
use eta_cases::*;
use review_cases::*;
use scientist::event::{FailureCode, LogLevel};
use scientist::ideation::{IdeationStatus, NewIdeation};
use scientist::queue::fence;
use scientist::queue::lease::{self, Action, OnLost};
use scientist::run::{NewRun, Run, RunId, RunStatus, Stage};
use scientist::store::stats::Flagged;
use scientist::store::stats::cost::DEFAULT_WINDOW;
use scientist::store::{Error, EventFilter, Outcome, RunFilter, Store};
use scientist::sweep;
use serde_json::json;
use stores::TestStore;
use trace_cases::*;

fn new_run(priority: i64) -> NewRun {
    NewRun { priority, ..NewRun::new(json!({"title": "test idea"})) }
}

/// Enqueues a run and claims it; returns its id (attempt 1, claimed by `pod-a`).
async fn claimed_run(store: &dyn Store) -> RunId {
    let run = store.enqueue(new_run(0), at(0)).await.expect("enqueue");
    let claimed = store.claim("pod-a", "default", at(1)).await.expect("claim").expect("a queued run");
    assert_eq!(claimed.id, run.id);
    run.id
}

async fn enqueue_and_get_round_trip(store: &dyn Store) {
    let mut wanted = new_run(7);
    wanted.hypothesis_id = Some("hyp-1".into());
    let run = store.enqueue(wanted.clone(), at(0)).await.expect("enqueue");
    assert_eq!(run.status, RunStatus::Queued);
    let stored = store.get(&run.id).await.expect("get").expect("stored");
    assert_eq!(stored, run);
    assert_eq!(stored.idea, json!({"title": "test idea"}));
    let err = store.enqueue(wanted, at(1)).await.expect_err("same id twice");
    assert!(matches!(&err, Error::AlreadyExists(id) if *id == run.id), "{err:?}");
    assert!(store.get(&"no-such-run".parse().expect("id")).await.expect("get").is_none());
}

async fn claims_highest_priority_then_oldest(store: &dyn Store) {
    let low = store.enqueue(new_run(0), at(0)).await.expect("enqueue");
    let high_old = store.enqueue(new_run(5), at(1)).await.expect("enqueue");
    let high_new = store.enqueue(new_run(5), at(2)).await.expect("enqueue");
    let negative = store.enqueue(new_run(-1), at(3)).await.expect("enqueue");
    let mut order = Vec::new();
    while let Some(run) = store.claim("pod-a", "default", at(10)).await.expect("claim") {
        assert_eq!(run.status, RunStatus::Scheduled);
        assert_eq!(run.claimed_by.as_deref(), Some("pod-a"));
        assert_eq!(run.claimed_at, Some(at(10)));
        assert_eq!(run.attempt, 1);
        assert_eq!(store.get(&run.id).await.expect("get").as_ref(), Some(&run), "claim returns the stored run");
        order.push(run.id);
    }
    assert_eq!(order, [high_old.id, high_new.id, low.id, negative.id]);
}

/// A claim writes exactly what `Run::claim` (and the store's `updatedAt` and `rev`) makes of
/// the run as stored: MongoDB writes it as one hand-made update, which must not drift from
/// `Run::claim`. A fresh run, then a reset one with an older attempt, a silent flag and a
/// `heardAt` later than the claim's clock (which `Run::heard` keeps).
async fn claim_writes_what_run_claim_makes(store: &dyn Store) {
    async fn claim_and_compare(store: &dyn Store, id: &RunId, now: scientist::time::Timestamp) {
        let before = store.get(id).await.expect("get").expect("the queued run");
        let claimed = store.claim("pod-c", "default", now).await.expect("claim").expect("the queued run");
        let mut expected = before;
        expected.claim("pod-c", now);
        expected.rev += 1;
        expected.updated_at = now;
        assert_eq!(claimed, expected, "the claim returns what Run::claim makes");
        assert_eq!(store.get(id).await.expect("get"), Some(expected), "and stores it");
    }
    let run = store.enqueue(new_run(0), at(0)).await.expect("enqueue");
    claim_and_compare(store, &run.id, at(1)).await;
    let failed = store.update_if(
        &run.id,
        at(2),
        Box::new(|run| {
            run.status = RunStatus::Failed;
            true
        }),
    );
    failed.await.expect("fail").expect("changed");
    store.reset(&run.id, at(3)).await.expect("reset");
    let silent = store.update_if(
        &run.id,
        at(4),
        Box::new(|run| {
            run.silent_since = Some(at(4));
            run.heard_at = Some(at(50));
            true
        }),
    );
    silent.await.expect("mark silent").expect("changed");
    claim_and_compare(store, &run.id, at(5)).await;
}

async fn claims_only_from_its_queue(store: &dyn Store) {
    let run = store.enqueue(NewRun { queue: "gpu-a100".into(), ..new_run(0) }, at(0)).await.expect("enqueue");
    assert!(store.claim("pod-a", "default", at(1)).await.expect("claim").is_none());
    let claimed = store.claim("pod-a", "gpu-a100", at(1)).await.expect("claim").expect("its queue");
    assert_eq!(claimed.id, run.id);
}

/// 16 concurrent claimers (on two handles: two processes) over 1,000 runs: each claimed once.
async fn concurrent_claimers_claim_each_run_once(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    const RUNS: usize = 1000;
    const CLAIMERS: usize = 16;
    let mut queued = HashSet::new();
    for index in 0..RUNS {
        let run = store.enqueue(new_run((index % 7) as i64), at(index as i64)).await.expect("enqueue");
        queued.insert(run.id);
    }
    let mut tasks = Vec::new();
    for claimer in 0..CLAIMERS {
        let handle = if claimer % 2 == 0 { store.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let worker = format!("pod-{claimer}");
            let mut claimed = Vec::new();
            while let Some(run) = handle.claim(&worker, "default", at(5000)).await.expect("claim") {
                assert_eq!(run.claimed_by.as_deref(), Some(worker.as_str()));
                claimed.push(run.id);
            }
            claimed
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("claimer task"));
    }
    assert_eq!(claimed.len(), RUNS, "every run claimed, none twice");
    let unique: HashSet<RunId> = claimed.into_iter().collect();
    assert_eq!(unique, queued);
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts, [(RunStatus::Scheduled, RUNS as u64)]);
}

async fn events_drive_a_run_to_completion(store: &dyn Store) {
    let id = claimed_run(store).await;
    let run_id = id.as_str();
    let events = vec![
        attempt_event("e1", "ai.run.started", run_id, 2, 1, json!({"pod_id": "pod-a", "gpu": "H100"})),
        attempt_event("e2", "ai.run.stage_started", run_id, 3, 1, json!({"stage": "Stage_1", "desc": "initial"})),
        attempt_event(
            "e3",
            "ai.run.stage_progress",
            run_id,
            63,
            1,
            json!({"stage": "Stage_1", "iteration": 3, "max_iterations": 14, "progress": 0.21,
                   "good_nodes": 3, "buggy_nodes": 1, "total_nodes": 4, "best_metric": 0.83, "eta_s": 600}),
        ),
        attempt_event("e4", "ai.run.stage_completed", run_id, 103, 1, json!({"stage": "Stage_1", "duration_s": 100})),
        attempt_event("e5", "ai.run.completed", run_id, 200, 1, json!({"duration_s": 198})),
    ];
    let mut events = events;
    for (seq, event) in events.iter_mut().enumerate() {
        event.seq = Some(seq as u64 + 1);
    }
    let outcomes = store.apply_events(events, at(300)).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Applied; 5]);
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.pod.as_ref().map(|pod| (pod.id.as_str(), pod.gpu.as_deref())), Some(("pod-a", Some("H100"))));
    assert_eq!(run.started_at, Some(at(2)));
    assert_eq!(run.completed_at, Some(at(200)));
    assert_eq!(run.last_event_seq, 5);
    assert_eq!(run.updated_at, at(300));
    let stage = run.current_stage.expect("current stage");
    assert_eq!((stage.name, stage.iteration, stage.good_nodes, stage.buggy_nodes), (Stage::Stage1, 3, 3, 1));
    assert_eq!(stage.progress, 1.0, "a completed stage is complete");
    assert_eq!(stage.best_metric.as_deref(), Some("0.83"));
    let timing = &run.stage_timing["Stage_1"];
    assert_eq!((timing.started_at, timing.completed_at), (Some(at(3)), Some(at(103))));
    assert_eq!((timing.elapsed_s, timing.duration_s), (Some(100.0), Some(100.0)));
}

async fn duplicates_are_acknowledged_and_change_nothing(store: &dyn Store) {
    let id = claimed_run(store).await;
    let progress = |event_id: &str, iteration: u64| {
        event(event_id, "ai.run.stage_progress", id.as_str(), 5, json!({"stage": "Stage_2", "iteration": iteration}))
    };
    let first = store.apply_events(vec![progress("p1", 4)], at(6)).await.expect("apply");
    assert_eq!(first, [Outcome::Applied]);
    let before = store.get(&id).await.expect("get").expect("run");
    // Same (source, id) pair, different content: a duplicate by the spec, ignored.
    let again = store.apply_events(vec![progress("p1", 9), progress("p1", 9)], at(7)).await.expect("apply");
    assert_eq!(again, [Outcome::Duplicate, Outcome::Duplicate]);
    assert_eq!(store.get(&id).await.expect("get").expect("run"), before);
    let listed = store.list_events(&id, &EventFilter::default()).await.expect("events");
    assert_eq!(listed.items.len(), 1);
}

async fn stale_attempts_are_refused(store: &dyn Store) {
    let id = claimed_run(store).await;
    let failed = attempt_event(
        "f1",
        "ai.run.failed",
        id.as_str(),
        5,
        1,
        json!({"code": "OOM", "message": "CUDA out of memory"}),
    );
    assert_eq!(store.apply_events(vec![failed], at(5)).await.expect("apply"), [Outcome::Applied]);
    store.reset(&id, at(6)).await.expect("reset");
    let late = attempt_event("h1", "ai.run.heartbeat", id.as_str(), 7, 1, json!({"gpu_util": 0.5}));
    assert_eq!(store.apply_events(vec![late], at(7)).await.expect("apply"), [Outcome::Stale], "reset ended attempt 1");
    let reclaimed = store.claim("pod-b", "default", at(8)).await.expect("claim").expect("requeued run");
    assert_eq!((reclaimed.id.clone(), reclaimed.attempt), (id.clone(), 2));
    let old = attempt_event("s1", "ai.run.started", id.as_str(), 9, 1, json!({"pod_id": "pod-a"}));
    let new = attempt_event("s2", "ai.run.started", id.as_str(), 9, 2, json!({"pod_id": "pod-b"}));
    let outcomes = store.apply_events(vec![old, new], at(9)).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Stale, Outcome::Applied]);
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.pod.map(|pod| pod.id), Some("pod-b".into()));
    assert_eq!(run.heartbeat_at, None, "the stale heartbeat changed nothing");
    // Stale events are still stored: nothing sent is lost from the record.
    assert_eq!(store.list_events(&id, &EventFilter::default()).await.expect("events").items.len(), 4);
}

async fn terminal_states_are_sticky(store: &dyn Store) {
    let id = claimed_run(store).await;
    let run_id = id.as_str();
    let events = vec![
        event("c1", "ai.run.completed", run_id, 10, json!({})),
        event("f1", "ai.run.failed", run_id, 11, json!({"code": "EXIT_1", "message": "late"})),
        event("x1", "ai.run.canceled", run_id, 12, json!({"by": "op"})),
        event("s1", "ai.run.started", run_id, 1, json!({"pod_id": "pod-a"})),
    ];
    store.apply_events(events, at(13)).await.expect("apply");
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Completed);
    assert!(run.error.is_none() && run.canceled.is_none());
    assert_eq!(run.pod.map(|pod| pod.id), Some("pod-a".into()), "late data still lands");
}

async fn orphan_events_apply_when_their_run_is_created(store: &dyn Store) {
    let started = event("o1", "ai.run.started", "emitted-run", 2, json!({"pod_id": "pod-z"}));
    assert_eq!(store.apply_events(vec![started], at(2)).await.expect("apply"), [Outcome::Orphan]);
    assert!(store.get(&"emitted-run".parse().expect("id")).await.expect("get").is_none());
    let enqueued = event("o0", "ai.run.enqueued", "emitted-run", 1, json!({"priority": 3, "queue": "gpu"}));
    assert_eq!(store.apply_events(vec![enqueued], at(3)).await.expect("apply"), [Outcome::Applied]);
    let run = store.get(&"emitted-run".parse().expect("id")).await.expect("get").expect("created");
    assert_eq!((run.status, run.priority, run.queue.as_str()), (RunStatus::Running, 3, "gpu"));
    assert_eq!(run.pod.map(|pod| pod.id), Some("pod-z".into()));
    assert_eq!(run.created_at, at(1));
}

async fn list_pages_newest_first_with_filters(store: &dyn Store) {
    let mut ids = Vec::new();
    for index in 0..7 {
        ids.push(store.enqueue(new_run(0), at(index)).await.expect("enqueue").id);
    }
    let claimed = store.claim("pod-a", "default", at(10)).await.expect("claim").expect("run");
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(&RunFilter { limit: 3, cursor, ..Default::default() }).await.expect("list");
        pages.push(page.items.iter().map(|run| run.id.clone()).collect::<Vec<_>>());
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let newest_first: Vec<RunId> = ids.iter().rev().cloned().collect();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), newest_first);
    let scheduled =
        store.list(&RunFilter { statuses: vec![RunStatus::Scheduled], ..Default::default() }).await.expect("list");
    assert_eq!(scheduled.items.iter().map(|run| &run.id).collect::<Vec<_>>(), [&claimed.id]);
    let both = RunFilter { statuses: vec![RunStatus::Scheduled, RunStatus::Queued], ..Default::default() };
    assert_eq!(store.list(&both).await.expect("list").items.len(), 7);
    let bad = store.list(&RunFilter { cursor: Some("nonsense".into()), ..Default::default() }).await;
    assert!(matches!(bad, Err(Error::InvalidCursor(_))), "{bad:?}");
}

async fn run_events_page_in_stored_order(store: &dyn Store) {
    let id = claimed_run(store).await;
    let events: Vec<_> = (0..5)
        .map(|n| {
            let ty = if n % 2 == 0 { "ai.run.log" } else { "ai.run.heartbeat" };
            event(&format!("ev{n}"), ty, id.as_str(), 10 - n, json!({"message": format!("line {n}")}))
        })
        .collect();
    store.apply_events(events, at(20)).await.expect("apply");
    let first = store.list_events(&id, &EventFilter { limit: 2, ..Default::default() }).await.expect("page 1");
    let ids = |page: &scientist::store::Page<scientist::store::StoredEvent>| {
        page.items.iter().map(|stored| stored.event.id.0.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["ev0", "ev1"], "stored order, not event time");
    let rest = store
        .list_events(&id, &EventFilter { cursor: first.next.clone(), limit: 10, ..Default::default() })
        .await
        .expect("page 2");
    assert_eq!(ids(&rest), ["ev2", "ev3", "ev4"]);
    assert!(rest.next.is_none());
    let logs = store
        .list_events(&id, &EventFilter { types: vec!["ai.run.log".into()], ..Default::default() })
        .await
        .expect("logs");
    assert_eq!(ids(&logs), ["ev0", "ev2", "ev4"]);
    assert_eq!(logs.items[0].received_at, at(20));
    assert_eq!(logs.items[0].event.time, at(10));
}

async fn log_lines_filter_by_minimum_level(store: &dyn Store) {
    let id = claimed_run(store).await;
    let log = |event_id: &str, level: Option<&str>| {
        let mut data = json!({"message": format!("line {event_id}")});
        if let Some(level) = level {
            data["level"] = json!(level);
        }
        event(event_id, "ai.run.log", id.as_str(), 5, data)
    };
    let events = vec![
        log("l-debug", Some("debug")),
        log("l-trace", Some("trace")),
        log("l-none", None),
        log("l-info", Some("info")),
        log("l-warn", Some("warn")),
        log("l-warning", Some("warning")),
        log("l-error", Some("error")),
        log("l-fatal", Some("fatal")),
        event("h1", "ai.run.heartbeat", id.as_str(), 5, json!({"gpu_util": 0.5})),
    ];
    store.apply_events(events, at(6)).await.expect("apply");
    let id = &id;
    let listed = |min_level: LogLevel, types: Vec<String>| async move {
        let filter = EventFilter { min_level: Some(min_level), types, ..Default::default() };
        let page = store.list_events(id, &filter).await.expect("events");
        page.items.into_iter().map(|stored| stored.event.id.0).collect::<Vec<_>>()
    };
    let everything = ["l-debug", "l-trace", "l-none", "l-info", "l-warn", "l-warning", "l-error", "l-fatal"];
    assert_eq!(listed(LogLevel::Debug, vec![]).await, everything, "debug and up: every log line, no heartbeat");
    assert_eq!(listed(LogLevel::Info, vec![]).await, everything[2..], "a line without a level is info");
    assert_eq!(listed(LogLevel::Warning, vec![]).await, everything[4..]);
    assert_eq!(listed(LogLevel::Error, vec![]).await, everything[6..]);
    let heartbeats_only = listed(LogLevel::Debug, vec!["ai.run.heartbeat".into()]).await;
    assert!(heartbeats_only.is_empty(), "a level selects log lines only: {heartbeats_only:?}");
    assert_eq!(listed(LogLevel::Error, vec!["ai.run.log".into()]).await, everything[6..]);
}

async fn old_log_lines_are_pruned_and_everything_else_kept(store: &dyn Store) {
    let id = claimed_run(store).await;
    let other = store.enqueue(new_run(0), at(0)).await.expect("enqueue").id;
    let log = |n: usize, run: &RunId| {
        event(&format!("log-{run}-{n}"), "ai.run.log", run.as_str(), 5, json!({"message": "x"}))
    };
    let old: Vec<_> = (0..5).map(|n| log(n, &id)).chain((0..3).map(|n| log(n, &other))).collect();
    let kept = event("beat", "ai.run.heartbeat", id.as_str(), 5, json!({"gpu_util": 0.5}));
    store.apply_events([old, vec![kept]].concat(), at(10)).await.expect("old events");
    store.apply_events((5..8).map(|n| log(n, &id)).collect(), at(100)).await.expect("new logs");
    let before = store.get(&id).await.expect("get").expect("run");
    // Pages of two, to cross several calls.
    let (mut deleted, mut from) = (0, None);
    loop {
        let pruned = store.prune_logs(at(50), from, 2).await.expect("prune");
        deleted += pruned.deleted;
        match pruned.next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    assert_eq!(deleted, 8, "the eight log lines received before the cutoff, of both runs");
    let left = store.list_events(&id, &EventFilter::default()).await.expect("events");
    let left: Vec<_> = left.items.iter().map(|stored| stored.event.id.0.clone()).collect();
    let newer = |n: usize| format!("log-{id}-{n}");
    assert_eq!(left, ["beat".to_owned(), newer(5), newer(6), newer(7)], "the heartbeat and newer lines stay");
    assert!(store.list_events(&other, &EventFilter::default()).await.expect("other").items.is_empty());
    assert_eq!(store.get(&id).await.expect("get").expect("run"), before, "the run document is untouched");
    assert_eq!(sweep_retention(store, at(50)).await, 0, "a second round finds nothing");
    assert_eq!(sweep_retention(store, at(101)).await, 3, "a later cutoff takes the newer lines");
}

/// A host clock in year 9999 makes every log look old; retention goes by the store's own
/// record of the time instead (its newest receipt, plus the time measured since).
async fn a_clock_far_ahead_deletes_nothing_the_stores_time_keeps(store: &dyn Store) {
    let id = claimed_run(store).await;
    let days = 24 * 60 * 60;
    let log = |n: i64| event(&format!("log-{n}"), "ai.run.log", id.as_str(), n, json!({"message": "x"}));
    store.apply_events(vec![log(0)], at(0)).await.expect("an old line");
    store.apply_events(vec![log(1)], at(40 * days)).await.expect("a recent line");
    assert_eq!(store.last_received_at().await.expect("newest"), Some(at(40 * days)));
    let clock = scientist::retention::Clock::from_store(store).await.expect("store time");
    let far = scientist::time::Timestamp::parse_rfc3339("9999-12-31T00:00:00Z").expect("year 9999");
    let retain = std::time::Duration::from_secs(30 * days as u64);
    let deleted = scientist::retention::prune_round(store, &clock, retain, far).await.expect("prune");
    assert_eq!(deleted, 1, "only the line older than 30 days by the store's time");
    let left = store.list_events(&id, &EventFilter::default()).await.expect("events");
    let left: Vec<_> = left.items.iter().map(|stored| stored.event.id.0.clone()).collect();
    assert!(left.contains(&"log-1".to_owned()) && !left.contains(&"log-0".to_owned()), "{left:?}");
}

async fn sweep_retention(store: &dyn Store, cutoff: scientist::time::Timestamp) -> u64 {
    scientist::retention::prune_once(store, cutoff).await.expect("prune")
}

async fn recent_events_page_newest_first(store: &dyn Store) {
    let id = claimed_run(store).await;
    let events: Vec<_> = (0..5)
        .map(|n| {
            let ty = if n % 2 == 0 { "ai.run.log" } else { "ai.run.heartbeat" };
            event(&format!("ev{n}"), ty, id.as_str(), n, json!({"message": format!("line {n}"), "level": "info"}))
        })
        .collect();
    store.apply_events(events, at(20)).await.expect("apply");
    let ids = |page: &scientist::store::Page<scientist::store::StoredEvent>| {
        page.items.iter().map(|stored| stored.event.id.0.clone()).collect::<Vec<_>>()
    };
    let newest = store.list_recent_events(&id, &EventFilter { limit: 2, ..Default::default() }).await.expect("page");
    assert_eq!(ids(&newest), ["ev4", "ev3"]);
    let older = EventFilter { limit: 10, cursor: newest.next.clone(), ..Default::default() };
    let older = store.list_recent_events(&id, &older).await.expect("older page");
    assert_eq!(ids(&older), ["ev2", "ev1", "ev0"]);
    assert!(older.next.is_none());
    // A cursor from the newest-first listing continues forwards too: a live tail starts there.
    let after = EventFilter { cursor: Some(newest.items[1].cursor.clone()), ..Default::default() };
    assert_eq!(ids(&store.list_events(&id, &after).await.expect("forward")), ["ev4"]);
    let logs = EventFilter { min_level: Some(LogLevel::Info), limit: 2, ..Default::default() };
    assert_eq!(ids(&store.list_recent_events(&id, &logs).await.expect("logs")), ["ev4", "ev2"]);
    let bad = store.list_recent_events(&id, &EventFilter { cursor: Some("x".into()), ..Default::default() }).await;
    assert!(matches!(bad, Err(Error::InvalidCursor(_))), "{bad:?}");
}

async fn reset_only_from_failed_or_canceled(store: &dyn Store) {
    let id = claimed_run(store).await;
    let err = store.reset(&id, at(2)).await.expect_err("a SCHEDULED run cannot be reset");
    assert!(matches!(err, Error::InvalidTransition { status: RunStatus::Scheduled, .. }), "{err:?}");
    let failed =
        event("f", "ai.run.failed", id.as_str(), 3, json!({"code": "OOM", "message": "oom", "retryable": true}));
    store.apply_events(vec![failed], at(3)).await.expect("apply");
    let failed_run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(failed_run.error.as_ref().map(|e| (e.error_type.as_str(), e.retryable)), Some(("OOM", true)));
    assert_eq!(failed_run.error_type.as_deref(), Some("OOM"), "flat copy for the seeds' frontend");
    let reset = store.reset(&id, at(4)).await.expect("reset");
    assert_eq!(reset.status, RunStatus::Queued);
    assert_eq!((reset.retry_count, reset.attempt), (1, 1));
    assert!(reset.claimed_by.is_none() && reset.error.is_none() && reset.error_type.is_none());
    assert_eq!(store.get(&id).await.expect("get").as_ref(), Some(&reset));
    let missing = store.reset(&"nope".parse().expect("id"), at(5)).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

async fn cancel_depends_on_status(store: &dyn Store) {
    let running = claimed_run(store).await;
    let queued = store.enqueue(new_run(0), at(2)).await.expect("enqueue");
    let canceled = store.request_cancel(&queued.id, "op", Some("not needed".into()), at(5)).await.expect("cancel");
    assert_eq!(canceled.status, RunStatus::Canceled);
    assert_eq!(canceled.canceled.as_ref().and_then(|c| c.reason.as_deref()), Some("not needed"));
    let requested = store.request_cancel(&running, "op", None, at(6)).await.expect("cancel");
    assert_eq!(requested.status, RunStatus::Scheduled, "its worker stops it");
    assert_eq!(requested.cancel_requested.as_ref().map(|r| (r.by.as_str(), r.at)), Some(("op", at(6))));
    let again = store.request_cancel(&queued.id, "op", None, at(7)).await;
    assert!(matches!(again, Err(Error::InvalidTransition { status: RunStatus::Canceled, .. })), "{again:?}");
}

/// A run awaiting review is canceled at once, and the attempt that asked is kept.
async fn canceling_a_run_awaiting_review_keeps_its_attempt(store: &dyn Store) {
    let id = claimed_run(store).await;
    let asked = attempt_event("rr", "ai.run.review_requested", id.as_str(), 3, 1, json!({"reason": "read it"}));
    store.apply_events(vec![asked], at(3)).await.expect("apply");
    assert_eq!(store.get(&id).await.expect("get").expect("run").status, RunStatus::AwaitingHuman);
    let canceled = store.request_cancel(&id, "op", None, at(5)).await.expect("cancel");
    assert_eq!(canceled.status, RunStatus::Canceled);
    let kept: Vec<_> = canceled.attempts.iter().map(|attempt| (attempt.attempt, attempt.outcome.as_str())).collect();
    assert_eq!(kept, [(1, "CANCELED")]);
    let queued = store.enqueue(new_run(0), at(6)).await.expect("enqueue");
    let canceled = store.request_cancel(&queued.id, "op", None, at(7)).await.expect("cancel");
    assert!(canceled.attempts.is_empty(), "a run never claimed has no attempt");
}

async fn counts_agree_with_list(store: &dyn Store) {
    for index in 0..5 {
        store.enqueue(new_run(0), at(index)).await.expect("enqueue");
    }
    let claimed = store.claim("pod-a", "default", at(9)).await.expect("claim").expect("run");
    store.request_cancel(&claimed.id, "op", None, at(10)).await.expect("cancel");
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts, [(RunStatus::Queued, 4), (RunStatus::Scheduled, 1)]);
    for (status, count) in counts {
        let listed = store.list(&RunFilter { statuses: vec![status], ..Default::default() }).await.expect("list");
        assert_eq!(listed.items.len() as u64, count);
    }
}

/// A store with one run of each kind `stats` reports on, seen at `at(400)`.
async fn seed_stats_scenario(store: &dyn Store) {
    let enqueue = |id: &str, priority: i64, seconds: i64| {
        event(&format!("{id}-enq"), "ai.run.enqueued", id, seconds, json!({"priority": priority}))
    };
    store.apply_events(vec![enqueue("run-a", 9, 0)], at(0)).await.expect("enqueue");
    assert_eq!(
        store.claim("pod-a", "default", at(1)).await.expect("claim").map(|run| run.id.to_string()),
        Some("run-a".into())
    );
    store.apply_events(vec![enqueue("run-stale", 9, 1)], at(1)).await.expect("enqueue");
    let stale = store.claim("pod-old", "default", at(2)).await.expect("claim").expect("run-stale");
    assert_eq!(stale.id.as_str(), "run-stale");
    let started = |run: &str, seconds: i64| {
        event(&format!("{run}-start"), "ai.run.started", run, seconds, json!({"pod_id": "pod-x", "gpu": "H100"}))
    };
    let failed = |run: &str, seconds: i64, code: Option<&str>| {
        let mut data = json!({"message": "it broke"});
        if let Some(code) = code {
            data["code"] = json!(code);
        }
        event(&format!("{run}-fail"), "ai.run.failed", run, seconds, data)
    };
    let events = vec![
        // run-a: running on pod-a's GPU since 2, Stage_1 done in 100 s, last heartbeat at 150.
        attempt_event("a1", "ai.run.started", "run-a", 2, 1, json!({"pod_id": "pod-a", "gpu": "H100"})),
        attempt_event("a2", "ai.run.stage_started", "run-a", 3, 1, json!({"stage": "Stage_1"})),
        attempt_event("a3", "ai.run.stage_completed", "run-a", 103, 1, json!({"stage": "Stage_1", "duration_s": 100})),
        attempt_event("a4", "ai.run.heartbeat", "run-a", 150, 1, json!({"gpu_util": 0.9})),
        // run-b: completed at 200 after a GPU start at 10; Stage_2 reports no duration (130 s elapsed).
        enqueue("run-b", 0, 4),
        started("run-b", 10),
        event("b1", "ai.run.stage_started", "run-b", 10, json!({"stage": "Stage_1"})),
        event("b2", "ai.run.stage_completed", "run-b", 60, json!({"stage": "Stage_1", "duration_s": 50})),
        event("b3", "ai.run.stage_started", "run-b", 60, json!({"stage": "Stage_2"})),
        event("b4", "ai.run.stage_completed", "run-b", 190, json!({"stage": "Stage_2"})),
        event("b5", "ai.run.completed", "run-b", 200, json!({})),
        // run-c: failed (OOM) at 300 after a GPU start at 100.
        enqueue("run-c", 0, 4),
        started("run-c", 100),
        failed("run-c", 300, Some("OOM")),
        enqueue("run-d", 0, 4),
        failed("run-d", 310, Some("OOM")),
        enqueue("run-e", 0, 4),
        failed("run-e", 320, Some("EXIT_1")),
        enqueue("run-f", 0, 4),
        failed("run-f", 330, None),
        enqueue("run-q1", 0, 5),
        enqueue("run-q2", 0, 7),
        enqueue("run-x", 0, 6),
    ];
    store.apply_events(events, at(340)).await.expect("apply");
    store.request_cancel(&"run-x".parse().expect("id"), "op", None, at(8)).await.expect("cancel");
}

async fn stats_report_every_figure(store: &dyn Store) {
    seed_stats_scenario(store).await;
    let stats = store.stats(at(400), DEFAULT_WINDOW).await.expect("stats");
    assert_eq!(stats.generated_at, at(400));
    assert_eq!(stats.total_runs, 10);
    let by_status: Vec<u64> = RunStatus::ALL.iter().map(|status| stats.by_status.get(*status)).collect();
    assert_eq!(by_status, [2, 1, 1, 0, 1, 4, 1], "QUEUED … CANCELED");
    assert_eq!(
        (stats.queue.depth, stats.queue.oldest_created_at, stats.queue.oldest_age_s),
        (2, Some(at(5)), Some(395.0))
    );
    let active: Vec<_> = stats
        .active_workers
        .iter()
        .map(|worker| (worker.worker.as_str(), worker.run_id.as_str(), worker.status, worker.last_seen_at))
        .collect();
    // Seen when its events were stored (the store's clock), not at their own times; pod-old
    // was last heard from when it claimed, at 2.
    assert_eq!(active, [("pod-a", "run-a", RunStatus::Running, at(340))]);
    assert_eq!(stats.active_workers[0].gpu.as_deref(), Some("H100"));
    assert_eq!(stats.active_workers[0].stage, Some(Stage::Stage1));
    assert_eq!((stats.throughput.completed, stats.throughput.failed, stats.throughput.window_hours), (1, 4, 24));
    assert_eq!(stats.throughput.completed_per_hour, 1.0 / 24.0);
    let durations: Vec<_> =
        stats.stage_durations.iter().map(|d| (d.stage.as_str(), d.count, d.p50_s, d.p90_s, d.max_s)).collect();
    assert_eq!(durations, [("Stage_1", 2, 50.0, 100.0, 100.0), ("Stage_2", 1, 130.0, 130.0, 130.0)]);
    let codes: Vec<_> = stats.failure_codes.iter().map(|f| (f.code.as_str(), f.count)).collect();
    assert_eq!(codes, [("OOM", 2), ("EXIT_1", 1), ("UNKNOWN", 1)]);
    // run-a 2→150 (latest heartbeat), run-b 10→200, run-c 100→300.
    assert!((stats.gpu_hours - 538.0 / 3600.0).abs() < 1e-9, "{}", stats.gpu_hours);
    assert_eq!(stats.flagged, Flagged::default());
    // A held run flagged stalled counts; a flag left on a finished run does not.
    for (id, when) in [("run-a", 350), ("run-b", 350)] {
        let flag = Box::new(move |run: &mut Run| {
            run.stalled_since = Some(at(when));
            true
        });
        store.update_if(&id.parse().expect("id"), at(when), flag).await.expect("flag").expect("changed");
    }
    let flagged = store.stats(at(400), DEFAULT_WINDOW).await.expect("stats").flagged;
    assert_eq!(flagged, Flagged { silent: 0, stalled: 1 });
    // Outside the windows: a day later nothing is active or recent; the rest stays.
    let later = store.stats(at(400 + 86_400), DEFAULT_WINDOW).await.expect("stats");
    assert!(later.active_workers.is_empty());
    assert_eq!((later.throughput.completed, later.throughput.failed), (0, 0));
    assert_eq!(later.stage_durations, stats.stage_durations);
}

async fn stats_of_an_empty_store(store: &dyn Store) {
    let stats = store.stats(at(0), DEFAULT_WINDOW).await.expect("stats");
    assert_eq!((stats.total_runs, stats.queue.depth, stats.queue.oldest_created_at), (0, 0, None));
    assert!(stats.active_workers.is_empty() && stats.stage_durations.is_empty() && stats.failure_codes.is_empty());
    assert_eq!(stats.gpu_hours, 0.0);
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(json["byStatus"]["AWAITING_HUMAN"], 0, "every status is present: {json}");
}

async fn resolves_unique_id_prefixes(store: &dyn Store) {
    for id in ["abc-1", "abd-2", "abd-3", "b"] {
        store.enqueue(NewRun { id: id.parse().expect("id"), ..new_run(0) }, at(0)).await.expect("enqueue");
    }
    let resolve = |prefix: &'static str| async move {
        let ids = store.resolve_prefix(prefix).await.expect("resolve");
        ids.into_iter().map(|id| id.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(resolve("abc").await, ["abc-1"]);
    assert_eq!(resolve("abd-2").await, ["abd-2"], "a whole id is its own prefix");
    assert_eq!(resolve("abd").await, ["abd-2", "abd-3"], "ambiguous: two are enough to say so");
    assert_eq!(resolve("a").await, ["abc-1", "abd-2"]);
    assert_eq!(resolve("b").await, ["b"]);
    assert!(resolve("c").await.is_empty());
    assert!(resolve("abc-10").await.is_empty());
}

async fn artifacts_and_ideas_are_recorded(store: &dyn Store) {
    let id = claimed_run(store).await;
    let register = |event_id: &str, seconds: i64, sha: &str| {
        event(
            event_id,
            "ai.artifact.registered",
            id.as_str(),
            seconds,
            json!({"key": "runs/x/plot.png", "bytes": 10, "sha256": sha, "content_type": "image/png", "kind": "plot"}),
        )
    };
    let ideas = common::event_from(json!({
        "specversion": "1.0", "id": "i1", "source": "pod://ideation", "type": "ai.ideation.generated",
        "data": {"hypothesis_id": "hyp-9", "ideas": [{"Name": "first"}, {"Name": "second"}]}
    }));
    // The later registration wins even when it arrives first.
    let outcomes = store.apply_events(vec![register("a2", 20, "bbb"), register("a1", 10, "aaa"), ideas], at(30)).await;
    assert_eq!(outcomes.expect("apply"), [Outcome::Applied; 3]);
    let artifacts = store.artifacts(&id).await.expect("artifacts");
    assert_eq!(artifacts.len(), 1);
    assert_eq!((artifacts[0].sha256.as_deref(), artifacts[0].registered_at), (Some("bbb"), at(20)));
    let hypothesis = store.hypothesis_ideas("hyp-9").await.expect("hypothesis").expect("ideas");
    assert_eq!(hypothesis.idea_json, json!({"Name": "first"}));
    assert_eq!(hypothesis.ideas.len(), 2);
}

/// Interleaved events for one run from 8 concurrent appliers on two handles: none lost.
async fn concurrent_appliers_lose_no_update(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    const APPLIERS: usize = 8;
    const EVENTS_EACH: usize = 12;
    let id = claimed_run(store.as_ref()).await;
    let mut tasks = Vec::new();
    for applier in 0..APPLIERS {
        let handle = if applier % 2 == 0 { store.clone() } else { other.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EVENTS_EACH {
                let node = event(
                    &format!("n-{applier}-{n}"),
                    "ai.node.created",
                    id.as_str(),
                    (n * APPLIERS + applier) as i64,
                    json!({"node_id": format!("node-{applier}-{n:02}"), "stage": "Stage_1"}),
                );
                let mut node = node;
                node.seq = Some((n * APPLIERS + applier) as u64);
                let outcome = handle.apply_events(vec![node], common::at(1000)).await.expect("apply");
                assert_eq!(outcome, [Outcome::Applied]);
            }
        }));
    }
    for task in tasks {
        task.await.expect("applier task");
    }
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!(run.nodes.len(), APPLIERS * EVENTS_EACH, "every node recorded");
    assert_eq!(run.last_event_seq, (APPLIERS * EVENTS_EACH - 1) as u64);
}

async fn update_if_sees_the_stored_run_and_may_decline(store: &dyn Store) {
    let run = store.enqueue(new_run(1), at(0)).await.expect("enqueue");
    let declined = store.update_if(&run.id, at(1), Box::new(|_| false)).await.expect("update_if");
    assert!(declined.is_none());
    assert_eq!(store.get(&run.id).await.expect("get").as_ref(), Some(&run), "a declined change writes nothing");
    let changed = store
        .update_if(
            &run.id,
            at(2),
            Box::new(|run| {
                // The change sees the stored run: priority 1, as enqueued.
                run.priority += 10;
                true
            }),
        )
        .await
        .expect("update_if")
        .expect("changed");
    assert_eq!((changed.priority, changed.updated_at), (11, at(2)));
    assert_eq!(store.get(&run.id).await.expect("get").as_ref(), Some(&changed));
    let missing = store.update_if(&"no-such-run".parse().expect("id"), at(3), Box::new(|_| true)).await;
    assert!(missing.expect("update_if").is_none());
}

async fn heard_at_follows_the_live_attempt_only(store: &dyn Store) {
    let id = claimed_run(store).await;
    let heard = |id: RunId| async move { store.get(&id).await.expect("get").expect("run").heard_at };
    assert_eq!(heard(id.clone()).await, Some(at(1)), "the claim is word from the worker");
    // The store's clock counts, not the event's: a spooled heartbeat sent long ago is news now.
    let late = attempt_event("h1", "ai.run.heartbeat", id.as_str(), 2, 1, json!({}));
    store.apply_events(vec![late], at(50)).await.expect("apply");
    assert_eq!(heard(id.clone()).await, Some(at(50)));
    let unstamped = event("l1", "ai.run.log", id.as_str(), 60, json!({"message": "from a CI script"}));
    let stale = attempt_event("h2", "ai.run.heartbeat", id.as_str(), 61, 7, json!({}));
    store.apply_events(vec![unstamped, stale], at(70)).await.expect("apply");
    assert_eq!(heard(id).await, Some(at(50)), "only the live attempt's worker is heard");
}

fn policy(on_lost: OnLost) -> lease::Policy {
    lease::Policy::new(Duration::from_secs(60), Duration::from_secs(600), on_lost).expect("a valid policy")
}

async fn silent_workers_are_flagged_then_their_runs_failed(store: &dyn Store) {
    let id = claimed_run(store).await;
    let policy = policy(OnLost::Fail);
    let get = |id: RunId| async move { store.get(&id).await.expect("get").expect("run") };
    assert!(sweep::runs(store, &policy, at(60)).await.expect("sweep").is_empty(), "59 s of silence is fine");
    let swept = sweep::runs(store, &policy, at(61)).await.expect("sweep");
    assert_eq!(swept.iter().map(|s| (&s.run_id, s.action)).collect::<Vec<_>>(), [(&id, Action::FlaggedSilent)]);
    let silent = get(id.clone()).await;
    assert_eq!((silent.status, silent.silent_since), (RunStatus::Scheduled, Some(at(61))), "flagged, still held");
    let flagged = |now| async move { store.stats(now, DEFAULT_WINDOW).await.expect("stats").flagged };
    assert_eq!(flagged(at(61)).await, Flagged { silent: 1, stalled: 0 }, "stats and /metrics count it");
    assert!(sweep::runs(store, &policy, at(90)).await.expect("sweep").is_empty(), "flagged once");
    // The worker is heard again: the flag clears and the lease starts over.
    let heartbeat = attempt_event("h1", "ai.run.heartbeat", id.as_str(), 100, 1, json!({"gpu_util": 0.9}));
    store.apply_events(vec![heartbeat], at(100)).await.expect("apply");
    assert_eq!(get(id.clone()).await.silent_since, None);
    assert_eq!(flagged(at(100)).await, Flagged::default());
    assert!(
        sweep::runs(store, &policy, at(650)).await.expect("sweep").iter().all(|s| s.action == Action::FlaggedSilent)
    );
    let swept = sweep::runs(store, &policy, at(700)).await.expect("sweep");
    assert_eq!(swept.iter().map(|s| (&s.run_id, s.action)).collect::<Vec<_>>(), [(&id, Action::Failed)]);
    let lost = get(id.clone()).await;
    assert_eq!(lost.status, RunStatus::Failed);
    let error = lost.error.as_ref().expect("an error");
    assert_eq!((error.error_type.as_str(), error.retryable), (FailureCode::WorkerLost.to_string().as_str(), true));
    assert!(error.message.contains("pod-a"), "{}", error.message);
    assert_eq!(lost.heard_at, Some(at(100)), "the sweep's own record is no word from the worker");
    assert!(!fence::is_live(&lost, 1), "the worker learns its run is over");
    let failed = EventFilter { types: vec!["ai.run.failed".into()], ..EventFilter::default() };
    let recorded = store.list_events(&id, &failed).await.expect("events").items;
    assert_eq!(recorded.len(), 1, "the failure is in the run's history");
    assert!(sweep::runs(store, &policy, at(800)).await.expect("sweep").is_empty(), "a failed run is not held");
    // The lost worker's late word changes nothing.
    let late = attempt_event("c1", "ai.run.completed", id.as_str(), 801, 1, json!({}));
    store.apply_events(vec![late], at(801)).await.expect("apply");
    assert_eq!(get(id).await.status, RunStatus::Failed);
}

async fn lost_runs_are_requeued_when_the_policy_says_so(store: &dyn Store) {
    let id = claimed_run(store).await;
    let swept = sweep::runs(store, &policy(OnLost::Requeue), at(601)).await.expect("sweep");
    assert_eq!(swept.iter().map(|s| (&s.run_id, s.action)).collect::<Vec<_>>(), [(&id, Action::Requeued)]);
    let requeued = store.get(&id).await.expect("get").expect("run");
    assert_eq!((requeued.status, requeued.claimed_by.as_deref(), requeued.retry_count), (RunStatus::Queued, None, 1));
    let old = attempt_event("h1", "ai.run.heartbeat", id.as_str(), 602, 1, json!({}));
    assert_eq!(store.apply_events(vec![old], at(602)).await.expect("apply"), [Outcome::Stale]);
    let reclaimed = store.claim("pod-b", "default", at(603)).await.expect("claim").expect("requeued");
    assert_eq!((reclaimed.id, reclaimed.attempt), (id.clone(), 2));
    let logs = EventFilter { types: vec!["ai.run.log".into()], ..EventFilter::default() };
    let recorded = store.list_events(&id, &logs).await.expect("events").items;
    assert_eq!(recorded.len(), 1, "the requeue is in the run's history");
}

/// A sweeper acts on what it listed; the write re-checks the stored run, so a worker heard
/// in between keeps its run.
async fn a_worker_heard_after_the_listing_keeps_its_run(store: &dyn Store) {
    let id = claimed_run(store).await;
    let listed = store.get(&id).await.expect("get").expect("run");
    let heartbeat = attempt_event("h1", "ai.run.heartbeat", id.as_str(), 590, 1, json!({}));
    store.apply_events(vec![heartbeat], at(590)).await.expect("apply");
    let swept = sweep::one_run(store, &listed, &policy(OnLost::Fail), at(601)).await.expect("sweep");
    assert_eq!(swept, None);
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.silent_since), (RunStatus::Scheduled, None));
}

/// Every replica sweeps: two at once fail a lost run once and record it once.
async fn concurrent_sweepers_act_once(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let id = claimed_run(store.as_ref()).await;
    let policy = policy(OnLost::Fail);
    let (first, second) =
        tokio::join!(sweep::runs(store.as_ref(), &policy, at(700)), sweep::runs(other.as_ref(), &policy, at(700)));
    let actions: Vec<Action> =
        first.expect("sweep").into_iter().chain(second.expect("sweep")).map(|swept| swept.action).collect();
    assert_eq!(actions, [Action::Failed]);
    let failed = EventFilter { types: vec!["ai.run.failed".into()], ..EventFilter::default() };
    assert_eq!(store.list_events(&id, &failed).await.expect("events").items.len(), 1);
}

/// A sweeper that stops between its two steps (the decision, then the record that fails
/// the run) never leaves a FAILED run without its `ai.run.failed`: the run stays held,
/// marked lost, and the next sweep writes the record, which fails it.
async fn a_sweeper_stopped_before_the_record_leaves_it_to_the_next_sweep(store: &dyn Store) {
    let id = claimed_run(store).await;
    let policy = policy(OnLost::Fail);
    let failed = EventFilter { types: vec!["ai.run.failed".into()], ..EventFilter::default() };
    let listed = store.get(&id).await.expect("get").expect("run");
    let (decided, action) = sweep::decide(store, &listed, &policy, at(700)).await.expect("decide").expect("lost");
    assert_eq!((action, decided.lost_at), (Action::Failed, Some(at(700))));
    // The sweeper stops here.
    let held = store.get(&id).await.expect("get").expect("run");
    assert_eq!((held.status, held.error.as_ref()), (RunStatus::Scheduled, None), "not failed without its record");
    assert!(store.list_events(&id, &failed).await.expect("events").items.is_empty());
    assert!(
        sweep::decide(store, &held, &policy, at(710)).await.expect("decide").is_none(),
        "the decision is taken once"
    );

    let swept = sweep::runs(store, &policy, at(715)).await.expect("the next sweep");
    assert_eq!(swept.iter().map(|s| (&s.run_id, s.action)).collect::<Vec<_>>(), [(&id, Action::Failed)]);
    let lost = store.get(&id).await.expect("get").expect("run");
    assert_eq!(lost.status, RunStatus::Failed);
    let error = lost.error.as_ref().expect("an error");
    assert_eq!(
        (error.error_type.as_str(), error.failed_at),
        (FailureCode::WorkerLost.to_string().as_str(), at(700)),
        "failed as decided"
    );
    let recorded = store.list_events(&id, &failed).await.expect("events").items;
    assert_eq!(recorded.len(), 1, "the failure is in the run's history");
    assert_eq!(recorded[0].event.time, at(700));
    assert!(sweep::runs(store, &policy, at(730)).await.expect("sweep").is_empty(), "repaired once");
    assert_eq!(store.list_events(&id, &failed).await.expect("events").items.len(), 1);
}

fn new_ideation(id: &str, hypothesis: &str) -> NewIdeation {
    let serde_json::Value::Object(input) = json!({"hypothesis": "smaller learning rates help", "numIdeas": 2}) else {
        unreachable!("an object literal")
    };
    NewIdeation { id: id.into(), hypothesis_id: hypothesis.into(), input }
}

async fn ideation_requests_are_claimed_oldest_first_and_ended_by_their_live_claim(store: &dyn Store) {
    let first = store.enqueue_ideation(new_ideation("idea-1", "hyp-1"), at(0)).await.expect("enqueue");
    store.enqueue_ideation(new_ideation("idea-2", "hyp-2"), at(1)).await.expect("enqueue");
    let err = store.enqueue_ideation(new_ideation("idea-1", "hyp-1"), at(2)).await.expect_err("same id twice");
    assert!(matches!(&err, Error::IdeationExists(id) if id == "idea-1"), "{err:?}");
    assert_eq!(store.get_ideation("idea-1").await.expect("get").as_ref(), Some(&first));
    assert_eq!(first.document["numIdeas"], json!(2), "the creator's fields are kept");

    let claimed = store.claim_ideation("pod-a", at(3)).await.expect("claim").expect("a queued request");
    assert_eq!((claimed.id.as_str(), claimed.status, claimed.attempt), ("idea-1", IdeationStatus::Running, 1));
    assert_eq!(claimed.claimed_by.as_deref(), Some("pod-a"));
    assert_eq!(claimed.document["hypothesis"], json!("smaller learning rates help"));
    let second = store.claim_ideation("pod-b", at(4)).await.expect("claim").expect("the other request");
    assert_eq!(second.id, "idea-2");
    assert!(store.claim_ideation("pod-c", at(5)).await.expect("claim").is_none(), "nothing is claimed twice");

    assert!(store.finish_ideation("idea-1", 2, None, at(6)).await.expect("finish").is_none(), "not its claim");
    let done = store.finish_ideation("idea-1", 1, None, at(6)).await.expect("finish").expect("ended");
    assert_eq!((done.status, done.finished_at), (IdeationStatus::Completed, Some(at(6))));
    assert!(store.finish_ideation("idea-1", 1, Some("late".into()), at(7)).await.expect("finish").is_none());
    let failed = store.finish_ideation("idea-2", 1, Some("model unavailable".into()), at(8)).await.expect("finish");
    assert_eq!(
        failed.map(|request| (request.status, request.error)),
        Some((IdeationStatus::Failed, Some("model unavailable".into())))
    );
    let stored = store.get_ideation("idea-1").await.expect("get").expect("stored");
    assert_eq!((stored.status, stored.document["numIdeas"].clone()), (IdeationStatus::Completed, json!(2)));

    let completed = store.list_ideation(&[IdeationStatus::Completed], 10).await.expect("list");
    assert_eq!(completed.iter().map(|request| request.id.as_str()).collect::<Vec<_>>(), ["idea-1"]);
    assert_eq!(store.list_ideation(&[], 10).await.expect("list").len(), 2);
    assert!(store.finish_ideation("no-such", 1, None, at(9)).await.expect("finish").is_none());
}

/// A claimed request's worker is heard through its heartbeats; silent for the whole lease,
/// the request is failed WORKER_LOST, or requeued, and the old claim can do nothing more.
async fn lost_ideation_requests_are_failed_or_requeued(store: &dyn Store) {
    store.enqueue_ideation(new_ideation("idea-1", "hyp-1"), at(0)).await.expect("enqueue");
    store.enqueue_ideation(new_ideation("idea-2", "hyp-2"), at(1)).await.expect("enqueue");
    let claimed = store.claim_ideation("pod-a", at(2)).await.expect("claim").expect("idea-1");
    assert_eq!(claimed.heard_at, Some(at(2)), "the claim is word from the worker");
    let heard = store.hear_ideation("idea-1", 1, at(100)).await.expect("hear").expect("a live claim");
    assert_eq!(heard.heard_at, Some(at(100)));
    assert!(store.hear_ideation("idea-1", 2, at(100)).await.expect("hear").is_none(), "not its claim");
    assert!(store.hear_ideation("no-such", 1, at(100)).await.expect("hear").is_none());

    let fail = policy(OnLost::Fail);
    assert!(sweep::ideation(store, &fail, at(699)).await.expect("sweep").is_empty(), "heard 599 s ago");
    let lost = sweep::ideation(store, &fail, at(700)).await.expect("sweep");
    assert_eq!(lost.iter().map(|request| request.id.as_str()).collect::<Vec<_>>(), ["idea-1"]);
    let stored = store.get_ideation("idea-1").await.expect("get").expect("stored");
    assert_eq!(stored.status, IdeationStatus::Failed);
    let error = stored.error.unwrap_or_default();
    assert!(error.contains(&FailureCode::WorkerLost.to_string()) && error.contains("pod-a"), "{error}");
    assert!(store.hear_ideation("idea-1", 1, at(701)).await.expect("hear").is_none(), "the worker must stop");
    assert!(store.finish_ideation("idea-1", 1, None, at(702)).await.expect("finish").is_none());

    store.claim_ideation("pod-b", at(800)).await.expect("claim").expect("idea-2");
    let requeued = sweep::ideation(store, &policy(OnLost::Requeue), at(1400)).await.expect("sweep");
    assert_eq!(
        requeued.iter().map(|request| (request.id.as_str(), request.status)).collect::<Vec<_>>(),
        [("idea-2", IdeationStatus::Queued)]
    );
    let reclaimed = store.claim_ideation("pod-c", at(1401)).await.expect("claim").expect("requeued");
    assert_eq!((reclaimed.id.as_str(), reclaimed.attempt, reclaimed.heard_at), ("idea-2", 2, Some(at(1401))));
    assert!(store.hear_ideation("idea-2", 1, at(1402)).await.expect("hear").is_none(), "the old claim is fenced");
    assert!(sweep::ideation(store, &fail, at(1500)).await.expect("sweep").is_empty(), "the new claim is heard");
}

/// Every replica sweeps: two at once end a lost request once.
async fn concurrent_ideation_sweepers_act_once(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    store.enqueue_ideation(new_ideation("idea-1", "hyp-1"), at(0)).await.expect("enqueue");
    store.claim_ideation("pod-a", at(1)).await.expect("claim").expect("idea-1");
    let policy = policy(OnLost::Requeue);
    let (first, second) = tokio::join!(
        sweep::ideation(store.as_ref(), &policy, at(700)),
        sweep::ideation(other.as_ref(), &policy, at(700))
    );
    assert_eq!(first.expect("sweep").len() + second.expect("sweep").len(), 1);
    let stored = store.get_ideation("idea-1").await.expect("get").expect("stored");
    assert_eq!((stored.status, stored.attempt), (IdeationStatus::Queued, 1));
}

/// 8 claimers on two handles over 40 requests: each claimed exactly once.
async fn concurrent_ideation_claimers_claim_each_request_once(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    const REQUESTS: usize = 40;
    for index in 0..REQUESTS {
        store
            .enqueue_ideation(new_ideation(&format!("idea-{index:02}"), "hyp"), at(index as i64))
            .await
            .expect("enqueue");
    }
    let mut tasks = Vec::new();
    for claimer in 0..8 {
        let handle = if claimer % 2 == 0 { store.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(request) = handle.claim_ideation(&format!("pod-{claimer}"), at(100)).await.expect("claim") {
                mine.push(request.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("claimer"));
    }
    claimed.sort();
    let expected: Vec<String> = (0..REQUESTS).map(|index| format!("idea-{index:02}")).collect();
    assert_eq!(claimed, expected);
}

/// Pages are bounded by bytes as well as count, in both directions, and the cursor goes on
/// where a page ended: a listing of large events never builds an answer of every one.
async fn pages_of_large_documents_are_bounded_by_bytes(store: &dyn Store) {
    use scientist::limits::MAX_PAGE_BYTES;
    let id = claimed_run(store).await;
    let message = "x".repeat(MAX_PAGE_BYTES / 5);
    let events: Vec<_> = (0..12)
        .map(|n| {
            attempt_event(&format!("big-{n:02}"), "ai.run.log", id.as_str(), 10 + n, 1, json!({"message": message}))
        })
        .collect();
    store.apply_events(events, at(30)).await.expect("apply");
    for newest_first in [false, true] {
        let (mut seen, mut pages, mut cursor) = (Vec::new(), 0, None);
        loop {
            let filter = EventFilter { limit: 1000, cursor: cursor.clone(), ..Default::default() };
            let page = if newest_first {
                store.list_recent_events(&id, &filter).await
            } else {
                store.list_events(&id, &filter).await
            };
            let page = page.expect("page");
            let bytes: usize =
                page.items.iter().map(|stored| scientist::limits::json_len(&stored.event.to_json())).sum();
            assert!(!page.items.is_empty() && bytes <= MAX_PAGE_BYTES + MAX_PAGE_BYTES / 4, "{bytes} bytes in a page");
            seen.extend(page.items.iter().map(|stored| stored.event.id.0.clone()));
            pages += 1;
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected: Vec<String> = (0..12).map(|n| format!("big-{n:02}")).collect();
        if newest_first {
            expected.reverse();
        }
        assert_eq!(seen, expected, "every event once, in order");
        assert!(pages >= 3, "{pages} pages");
    }
    let big_idea = json!({"title": "big", "notes": "y".repeat(MAX_PAGE_BYTES / 5)});
    for _ in 0..8 {
        store.enqueue(NewRun::new(big_idea.clone()), at(40)).await.expect("enqueue");
    }
    let page = store.list(&RunFilter { limit: 1000, ..Default::default() }).await.expect("list");
    assert!(page.items.len() < 9 && page.next.is_some(), "{} runs on a page", page.items.len());
}

macro_rules! store_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let test_store = TestStore::$backend().await;
                        super::$name(test_store.store.as_ref()).await;
                        test_store.cleanup().await;
                    }
                };
            }

            /// A case on a handle with prices, a queue budget and alerts (`serve`'s rules).
            macro_rules! priced_case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let test_store = TestStore::$backend().await;
                        let priced = test_store.handle_with(priced_rules()).await;
                        super::$name(priced.as_ref()).await;
                        test_store.cleanup().await;
                    }
                };
            }

            macro_rules! two_handle_case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let test_store = TestStore::$backend().await;
                        let other = test_store.second_handle().await;
                        super::$name(test_store.store.clone(), other).await;
                        test_store.cleanup().await;
                    }
                };
            }

            case!(enqueue_and_get_round_trip);
            case!(claims_highest_priority_then_oldest);
            case!(claims_only_from_its_queue);
            case!(claim_writes_what_run_claim_makes);
            two_handle_case!(concurrent_claimers_claim_each_run_once);
            case!(events_drive_a_run_to_completion);
            case!(duplicates_are_acknowledged_and_change_nothing);
            case!(stale_attempts_are_refused);
            case!(terminal_states_are_sticky);
            case!(orphan_events_apply_when_their_run_is_created);
            case!(list_pages_newest_first_with_filters);
            case!(run_events_page_in_stored_order);
            case!(log_lines_filter_by_minimum_level);
            case!(recent_events_page_newest_first);
            case!(old_log_lines_are_pruned_and_everything_else_kept);
            case!(a_clock_far_ahead_deletes_nothing_the_stores_time_keeps);
            case!(pages_of_large_documents_are_bounded_by_bytes);
            case!(reset_only_from_failed_or_canceled);
            case!(cancel_depends_on_status);
            case!(canceling_a_run_awaiting_review_keeps_its_attempt);
            case!(counts_agree_with_list);
            case!(artifacts_and_ideas_are_recorded);
            case!(stats_report_every_figure);
            case!(stats_of_an_empty_store);
            case!(resolves_unique_id_prefixes);
            two_handle_case!(concurrent_appliers_lose_no_update);
            case!(update_if_sees_the_stored_run_and_may_decline);
            case!(heard_at_follows_the_live_attempt_only);
            case!(silent_workers_are_flagged_then_their_runs_failed);
            case!(lost_runs_are_requeued_when_the_policy_says_so);
            case!(a_worker_heard_after_the_listing_keeps_its_run);
            two_handle_case!(concurrent_sweepers_act_once);
            case!(a_sweeper_stopped_before_the_record_leaves_it_to_the_next_sweep);
            case!(ideation_requests_are_claimed_oldest_first_and_ended_by_their_live_claim);
            two_handle_case!(concurrent_ideation_claimers_claim_each_request_once);
            case!(lost_ideation_requests_are_failed_or_requeued);
            two_handle_case!(concurrent_ideation_sweepers_act_once);
            case!(a_review_after_the_last_stage_is_approved_once);
            case!(a_review_between_stages_goes_on_when_approved_and_fails_when_rejected);
            two_handle_case!(concurrent_deciders_decide_once);
            case!(forgotten_reviews_time_out_in_the_sweep);
            priced_case!(gpu_time_of_two_attempts_is_priced_by_each_model);
            priced_case!(budgets_alert_then_stop_the_run);
            priced_case!(stats_sum_cost_by_queue_and_hypothesis_over_the_window);
            priced_case!(a_run_created_by_its_events_is_costed_at_once);
            case!(a_queues_history_is_the_p50_of_its_completed_runs);
            case!(a_run_keeps_the_trace_id_it_was_enqueued_with);
            case!(an_enqueued_event_gives_its_traceparent_or_a_derived_trace_id);
            case!(a_run_stored_without_a_trace_id_gets_one_at_claim);
        }
    };
}

store_suite!(sqlite);
store_suite!(mongo);
