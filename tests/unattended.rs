//! Unattended operation on both stores: automatic retries (decided once, in the write that
//! stores the failure) and stalled runs (flagged by the sweeper, cleared by progress,
//! optionally stopped). Each case runs on SQLite and on MongoDB.

mod common;
#[path = "common/stores.rs"]
mod stores;

use std::time::Duration;

use common::{at, attempt_event};
use scientist::queue::lease::{self, OnLost};
use scientist::queue::retry;
use scientist::queue::stall::{self, OnStall};
use scientist::run::{NewRun, RunId, RunStatus};
use scientist::store::{Outcome, Rules, Store};
use scientist::sweep;
use serde_json::json;
use stores::TestStore;

fn retries(max: u32, backoff_s: u64) -> Rules {
    let backoff = Duration::from_secs(backoff_s);
    Rules { retries: retry::Policy { max, backoff, cap: backoff * 8 }, ..Rules::default() }
}

fn lease_policy(on_stall: OnStall) -> lease::Policy {
    let mut policy =
        lease::Policy::new(Duration::from_secs(60), Duration::from_secs(600), OnLost::Fail).expect("a valid policy");
    policy.stall = stall::Policy { after: Duration::from_secs(1800), on_stall };
    policy
}

/// Enqueues a run and claims it at `at(claim_s)` as `pod`; its attempt.
async fn enqueue_and_claim(store: &dyn Store, claim_s: i64) -> RunId {
    let run = store.enqueue(NewRun::new(json!({"title": "t"})), at(0)).await.expect("enqueue");
    let claimed = store.claim("pod-a", "default", at(claim_s)).await.expect("claim").expect("a queued run");
    assert_eq!(claimed.id, run.id);
    run.id
}

async fn fail(store: &dyn Store, id: &RunId, attempt: u32, seconds: i64, retryable: bool) -> Outcome {
    let data = json!({"code": "SIGNAL_9", "message": "killed", "retryable": retryable});
    let failed = attempt_event(&format!("failed-{id}-{attempt}"), "ai.run.failed", id.as_str(), seconds, attempt, data);
    let outcomes = store.apply_events(vec![failed], at(seconds)).await.expect("apply");
    outcomes[0]
}

/// Attempt 1 fails retryably: the run waits out its backoff in the queue, attempt 2
/// completes, and the run document keeps attempt 1 in its history.
async fn a_retryable_failure_is_retried_after_its_backoff_and_completes(test: &TestStore) {
    let store = test.handle_with(retries(3, 60)).await;
    let id = enqueue_and_claim(store.as_ref(), 1).await;
    assert_eq!(fail(store.as_ref(), &id, 1, 10, true).await, Outcome::Applied);
    let waiting = store.get(&id).await.expect("get").expect("run");
    assert_eq!((waiting.status, waiting.retry_count, waiting.claimed_by.as_deref()), (RunStatus::Queued, 1, None));
    let not_before = waiting.not_before.expect("a backoff");
    assert!(not_before >= at(70) && not_before <= at(100), "{not_before}");
    assert_eq!(waiting.attempts.len(), 1);
    let first = &waiting.attempts[0];
    assert_eq!((first.attempt, first.outcome.as_str(), first.claimed_by.as_deref()), (1, "FAILED", Some("pod-a")));
    assert_eq!(first.error.as_ref().map(|error| error.error_type.as_str()), Some("SIGNAL_9"));
    assert!(store.claim("pod-b", "default", at(69)).await.expect("claim").is_none(), "not before its backoff");
    let late = attempt_event("late", "ai.run.heartbeat", id.as_str(), 20, 1, json!({}));
    assert_eq!(store.apply_events(vec![late], at(20)).await.expect("apply"), [Outcome::Stale], "attempt 1 is over");
    let second = store.claim("pod-b", "default", at(100)).await.expect("claim").expect("claimable after");
    assert_eq!((second.attempt, second.not_before), (2, None));
    let done = attempt_event("done", "ai.run.completed", id.as_str(), 200, 2, json!({}));
    store.apply_events(vec![done], at(200)).await.expect("apply");
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.attempt, run.retry_count), (RunStatus::Completed, 2, 1));
    let outcomes: Vec<_> =
        run.attempts.iter().map(|a| (a.attempt, a.outcome.as_str(), a.claimed_by.as_deref())).collect();
    assert_eq!(outcomes, [(1, "FAILED", Some("pod-a")), (2, "COMPLETED", Some("pod-b"))]);
}

/// A non-retryable failure stays FAILED, whatever the retries left; so does any failure
/// with retries off (the default).
async fn a_non_retryable_failure_is_not_retried(test: &TestStore) {
    let store = test.handle_with(retries(3, 60)).await;
    let id = enqueue_and_claim(store.as_ref(), 1).await;
    fail(store.as_ref(), &id, 1, 10, false).await;
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.retry_count, run.attempts.len()), (RunStatus::Failed, 0, 1));
    let off = test.handle_with(Rules::default()).await;
    let id = enqueue_and_claim(off.as_ref(), 1).await;
    fail(off.as_ref(), &id, 1, 10, true).await;
    assert_eq!(off.get(&id).await.expect("get").expect("run").status, RunStatus::Failed, "retries are off");
}

/// Four retryable failures within ten minutes: thrashing, not retried again.
async fn a_thrashing_run_stops_retrying(test: &TestStore) {
    let store = test.handle_with(retries(10, 1)).await;
    let id = enqueue_and_claim(store.as_ref(), 1).await;
    let mut seconds = 10;
    for attempt in 1..=4 {
        fail(store.as_ref(), &id, attempt, seconds, true).await;
        let run = store.get(&id).await.expect("get").expect("run");
        if attempt < 4 {
            assert_eq!(run.status, RunStatus::Queued, "attempt {attempt} is retried");
            seconds += 30;
            let claimed = store.claim("pod-a", "default", at(seconds)).await.expect("claim").expect("after 1-8 s");
            assert_eq!(claimed.attempt, attempt + 1);
        } else {
            assert_eq!((run.status, run.attempts.len()), (RunStatus::Failed, 4));
            let why = run.retry_stopped.expect("why it stopped");
            assert!(why.starts_with("thrashing"), "{why}");
        }
    }
}

/// Two replicas sweep a lost run at once: its retry is decided once (one requeue, one
/// attempt in the history), since the failure record is the same for both.
async fn two_sweepers_decide_a_lost_runs_retry_once(test: &TestStore) {
    let (one, two) = (test.handle_with(retries(3, 60)).await, test.handle_with(retries(3, 60)).await);
    let id = enqueue_and_claim(one.as_ref(), 1).await;
    let policy = lease_policy(OnStall::Flag);
    let (a, b) = tokio::join!(sweep::runs(one.as_ref(), &policy, at(700)), sweep::runs(two.as_ref(), &policy, at(700)));
    let (a, b) = (a.expect("sweep"), b.expect("sweep"));
    assert!(!a.is_empty() || !b.is_empty(), "one of them failed it");
    // A sweeper stopped between its two steps leaves the record to the next sweep.
    sweep::runs(two.as_ref(), &policy, at(701)).await.expect("sweep");
    let run = one.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.retry_count, run.attempts.len()), (RunStatus::Queued, 1, 1));
    assert_eq!(run.attempts[0].error.as_ref().map(|error| error.error_type.as_str()), Some("WORKER_LOST"));
}

/// A RUNNING run whose worker heartbeats but which prints and reports nothing is flagged
/// stalled; a log line clears the flag; the status never changes.
async fn a_heard_run_without_progress_is_flagged_stalled_and_cleared_by_a_log_line(test: &TestStore) {
    let store = test.store.clone();
    let id = enqueue_and_claim(store.as_ref(), 0).await;
    let started = attempt_event("s", "ai.run.started", id.as_str(), 0, 1, json!({"pod_id": "pod-a"}));
    store.apply_events(vec![started], at(0)).await.expect("apply");
    let policy = lease_policy(OnStall::Flag);
    for (n, seconds) in [1000, 1790, 1830].into_iter().enumerate() {
        let beat = attempt_event(&format!("b{n}"), "ai.run.heartbeat", id.as_str(), seconds, 1, json!({}));
        store.apply_events(vec![beat], at(seconds)).await.expect("apply");
    }
    assert!(sweep::stalls(store.as_ref(), &policy, at(1799)).await.expect("sweep").is_empty(), "not yet");
    let flagged = sweep::stalls(store.as_ref(), &policy, at(1840)).await.expect("sweep");
    assert_eq!(flagged.iter().map(|s| (&s.run_id, s.stopped)).collect::<Vec<_>>(), [(&id, false)]);
    assert!(sweep::stalls(store.as_ref(), &policy, at(1850)).await.expect("sweep").is_empty(), "flagged once");
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.stalled_since), (RunStatus::Running, Some(at(1840))));
    let line = attempt_event("l", "ai.run.log", id.as_str(), 1860, 1, json!({"message": "epoch 2"}));
    store.apply_events(vec![line], at(1860)).await.expect("apply");
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.stalled_since), (RunStatus::Running, None), "progress clears it");
}

/// With `--on-stall cancel` a stalled run fails with STALLED (retryable), so the retry
/// policy puts it back in the queue; two sweepers stop it once.
async fn a_stalled_run_is_stopped_and_retried_when_the_policy_says_so(test: &TestStore) {
    let (one, two) = (test.handle_with(retries(2, 60)).await, test.handle_with(retries(2, 60)).await);
    let id = enqueue_and_claim(one.as_ref(), 0).await;
    let started = attempt_event("s", "ai.run.started", id.as_str(), 0, 1, json!({"pod_id": "pod-a"}));
    let beat = attempt_event("b", "ai.run.heartbeat", id.as_str(), 1830, 1, json!({}));
    one.apply_events(vec![started], at(0)).await.expect("apply");
    one.apply_events(vec![beat], at(1830)).await.expect("apply");
    let policy = lease_policy(OnStall::Cancel);
    let (a, b) =
        tokio::join!(sweep::stalls(one.as_ref(), &policy, at(1840)), sweep::stalls(two.as_ref(), &policy, at(1840)));
    let stopped = a.expect("sweep").into_iter().chain(b.expect("sweep")).filter(|s| s.stopped).count();
    assert_eq!(stopped, 1, "stopped once");
    let run = one.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.retry_count, run.attempts.len()), (RunStatus::Queued, 1, 1));
    let error = run.attempts[0].error.as_ref().expect("the stall");
    assert_eq!((error.error_type.as_str(), error.retryable), ("STALLED", true));
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let test_store = TestStore::$backend().await;
                        super::$name(&test_store).await;
                        test_store.cleanup().await;
                    }
                };
            }

            case!(a_retryable_failure_is_retried_after_its_backoff_and_completes);
            case!(a_non_retryable_failure_is_not_retried);
            case!(a_thrashing_run_stops_retrying);
            case!(two_sweepers_decide_a_lost_runs_retry_once);
            case!(a_heard_run_without_progress_is_flagged_stalled_and_cleared_by_a_log_line);
            case!(a_stalled_run_is_stopped_and_retried_when_the_policy_says_so);
        }
    };
}

suite!(sqlite);
suite!(mongo);
