//! The store contract's human-review cases (`queue::review`, `Store::decide_review`,
//! `sweep::reviews`), stamped out per backend by `store_suite!` with the others.

use std::sync::Arc;
use std::time::Duration;

use scientist::queue::review::{self, Decision, REVIEW_SOURCE};
use scientist::run::{ReviewDecision, Run, RunId, RunStatus};
use scientist::store::{Error, EventFilter, Outcome, Store};
use scientist::sweep;
use serde_json::json;

use super::{DEFAULT_WINDOW, at, attempt_event, claimed_run};

/// A claimed run (attempt 1) whose worker asked for a review of `stage` at 10 s.
async fn awaiting_run(store: &dyn Store, stage: &str, holds: bool) -> RunId {
    let id = claimed_run(store).await;
    let data =
        json!({"reason": "look at the results", "stage": stage, "holds_worker": holds, "options": ["go", "stop"]});
    let request = attempt_event(&format!("review-{id}"), "ai.run.review_requested", id.as_str(), 10, 1, data);
    assert_eq!(store.apply_events(vec![request], at(10)).await.expect("apply"), [Outcome::Applied]);
    id
}

fn decision(verdict: ReviewDecision, comment: &str) -> Decision {
    Decision { verdict, by: "operator:alice".into(), comment: Some(comment.into()) }
}

async fn review_events(store: &dyn Store, id: &RunId) -> Vec<scientist::event::Event> {
    let page = store.list_events(id, &EventFilter::default()).await.expect("events").items;
    page.into_iter().map(|stored| stored.event).filter(|event| event.source == REVIEW_SOURCE).collect()
}

fn is_refused(err: &Error, status: RunStatus) -> bool {
    matches!(err, Error::InvalidTransition { status: found, .. } if *found == status)
}

/// After the last stage: the request puts the run in AWAITING_HUMAN with its review; an
/// approval completes it, recorded with who and when by an `ai.run.completed` in its events;
/// nothing decides it twice, and nothing but an awaiting run can be decided.
pub async fn a_review_after_the_last_stage_is_approved_once(store: &dyn Store) {
    let running = claimed_run(store).await;
    let err = store.decide_review(&running, decision(ReviewDecision::Rejected, "no"), at(5)).await.expect_err("held");
    assert!(is_refused(&err, RunStatus::Scheduled), "{err:?}");
    assert!(err.to_string().contains("only a run AWAITING_HUMAN"), "{err}");

    let id = awaiting_run(store, "paper", false).await;
    let awaiting = store.get(&id).await.expect("get").expect("run");
    assert_eq!(awaiting.status, RunStatus::AwaitingHuman);
    let review = awaiting.review.as_ref().expect("a review");
    assert_eq!(
        (review.requested_at, review.stage.as_deref(), review.holds_worker, review.decision),
        (at(10), Some("paper"), false, None)
    );
    assert_eq!(review.options, Some(json!(["go", "stop"])));

    let approved = store.decide_review(&id, decision(ReviewDecision::Approved, "fine"), at(20)).await.expect("approve");
    assert_eq!(approved.status, RunStatus::Completed);
    let review = approved.review.as_ref().expect("the review");
    assert_eq!(
        (review.decision, review.decided_by.as_deref(), review.decided_at, review.comment.as_deref()),
        (Some(ReviewDecision::Approved), Some("operator:alice"), Some(at(20)), Some("fine"))
    );
    assert_eq!(approved.completed_at, Some(at(20)));
    assert_eq!(approved.attempts.last().map(|attempt| attempt.outcome.as_str()), Some("COMPLETED"));
    let recorded = review_events(store, &id).await;
    assert_eq!(recorded.iter().map(|event| event.event_type.as_str()).collect::<Vec<_>>(), ["ai.run.completed"]);
    assert_eq!((recorded[0].time, recorded[0].attempt), (at(20), Some(1)));

    for verdict in [ReviewDecision::Approved, ReviewDecision::Rejected] {
        let err = store.decide_review(&id, decision(verdict, "again"), at(30)).await.expect_err("decided");
        assert!(is_refused(&err, RunStatus::Completed), "{err:?}");
    }
    assert_eq!(review_events(store, &id).await.len(), 1, "recorded once");
    let missing = "no-such-run".parse().expect("id");
    let err = store.decide_review(&missing, decision(ReviewDecision::Approved, ""), at(30)).await.expect_err("none");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

/// Between stages: an approval puts the run back in RUNNING for its waiting worker (whose
/// events go on being admitted); a rejection fails it with `REJECTED`, not retryable.
pub async fn a_review_between_stages_goes_on_when_approved_and_fails_when_rejected(store: &dyn Store) {
    let id = awaiting_run(store, "Stage_1", true).await;
    let approved =
        store.decide_review(&id, decision(ReviewDecision::Approved, "go on"), at(20)).await.expect("approve");
    assert_eq!(
        (approved.status, approved.claimed_by.as_deref(), approved.attempt),
        (RunStatus::Running, Some("pod-a"), 1)
    );
    assert_eq!(approved.progress_at, Some(at(20)), "the wait was not a stall");
    let log = review_events(store, &id).await;
    assert_eq!(log.iter().map(|event| event.event_type.as_str()).collect::<Vec<_>>(), ["ai.run.log"]);
    let next = attempt_event("next", "ai.run.stage_started", id.as_str(), 21, 1, json!({"stage": "Stage_2"}));
    assert_eq!(store.apply_events(vec![next], at(21)).await.expect("apply"), [Outcome::Applied], "the worker goes on");

    let id = awaiting_run(store, "Stage_1", true).await;
    let rejected =
        store.decide_review(&id, decision(ReviewDecision::Rejected, "wrong baseline"), at(20)).await.expect("reject");
    assert_eq!(rejected.status, RunStatus::Failed);
    let error = rejected.error.as_ref().expect("an error");
    assert_eq!(
        (error.error_type.as_str(), error.retryable, error.stage.as_deref()),
        ("REJECTED", false, Some("Stage_1"))
    );
    assert!(error.message.contains("operator:alice") && error.message.contains("wrong baseline"), "{}", error.message);
    assert!(store.get(&id).await.expect("get").is_some_and(|run| run.review.is_some_and(|review| {
        review.decision == Some(ReviewDecision::Rejected) && review.comment.as_deref() == Some("wrong baseline")
    })));
}

/// Two deciders racing on one review (an approval and a rejection, on two handles): one
/// decision is taken and recorded, the other refused.
pub async fn concurrent_deciders_decide_once(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let id = awaiting_run(store.as_ref(), "paper", false).await;
    let (first, second) = tokio::join!(
        store.decide_review(&id, decision(ReviewDecision::Approved, "yes"), at(20)),
        other.decide_review(&id, decision(ReviewDecision::Rejected, "no"), at(20)),
    );
    assert!(first.is_ok() != second.is_ok(), "exactly one decides: {first:?} / {second:?}");
    let run = store.get(&id).await.expect("get").expect("run");
    let decided = run.review.as_ref().and_then(|review| review.decision).expect("decided");
    let expected = if decided == ReviewDecision::Approved { RunStatus::Completed } else { RunStatus::Failed };
    assert_eq!(run.status, expected);
    assert_eq!(review_events(store.as_ref(), &id).await.len(), 1, "one record");
}

/// The sweep fails a review nobody decided within the timeout (`REVIEW_TIMEOUT`), once, and
/// writes the record of a decision whose decider stopped before it.
pub async fn forgotten_reviews_time_out_in_the_sweep(store: &dyn Store) {
    let hour = Duration::from_secs(3600);
    let id = awaiting_run(store, "paper", false).await;
    assert!(sweep::reviews(store, None, at(100_000)).await.expect("sweep").is_empty(), "no timeout: it waits");
    assert!(sweep::reviews(store, Some(hour), at(3609)).await.expect("sweep").is_empty(), "not yet");
    let ended = sweep::reviews(store, Some(hour), at(3610)).await.expect("sweep");
    assert_eq!(ended.iter().map(|run| &run.id).collect::<Vec<_>>(), [&id]);
    let run = store.get(&id).await.expect("get").expect("run");
    let error = run.error.as_ref().expect("an error");
    assert_eq!((run.status, error.error_type.as_str(), error.retryable), (RunStatus::Failed, "REVIEW_TIMEOUT", false));
    assert_eq!(run.review.as_ref().and_then(|review| review.decision), Some(ReviewDecision::TimedOut));
    assert!(sweep::reviews(store, Some(hour), at(3700)).await.expect("sweep").is_empty(), "once");
    assert_eq!(review_events(store, &id).await.len(), 1);

    // A decider that stopped after taking its decision: the next sweep records it.
    let id = awaiting_run(store, "paper", false).await;
    let taken = Box::new(|run: &mut Run| review::take(run, &decision(ReviewDecision::Approved, "ok"), at(20)));
    store.update_if(&id, at(20), taken).await.expect("take").expect("taken");
    assert_eq!(store.get(&id).await.expect("get").map(|run| run.status), Some(RunStatus::AwaitingHuman));
    let ended = sweep::reviews(store, None, at(25)).await.expect("sweep");
    assert_eq!(ended.iter().map(|run| &run.id).collect::<Vec<_>>(), [&id]);
    let run = store.get(&id).await.expect("get").expect("run");
    assert_eq!((run.status, run.completed_at), (RunStatus::Completed, Some(at(20))), "as decided");
    let retried = store.decide_review(&id, decision(ReviewDecision::Approved, "ok"), at(30)).await;
    assert!(retried.is_err(), "completed: nothing left to decide");

    // Stats count runs awaiting review and decided ones.
    awaiting_run(store, "paper", false).await;
    let reviews = store.stats(at(4000), DEFAULT_WINDOW).await.expect("stats").reviews;
    assert_eq!((reviews.awaiting, reviews.approved, reviews.rejected, reviews.timed_out), (1, 1, 0, 1));
}
