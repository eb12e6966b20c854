//! Human review: what a person's decision, or a forgotten review, does to a run
//! AWAITING_HUMAN. The rules only, no I/O; `store::Store::decide_review` and
//! `sweep::reviews` apply them.
//!
//! A pipeline asks with `ai.run.review_requested` (the reducer puts the run in AWAITING_HUMAN
//! with its `review`). A decision is written in two steps, each safe to repeat, as a lost
//! worker's failure is (`queue::lease`): [`take`] records the decision on the stored run in
//! one conditional write (only an AWAITING_HUMAN run whose review is undecided, so a
//! decision is taken once, whoever races), then the run's [`record`] goes through
//! `apply_events`:
//! - approved after the last stage: its `ai.run.completed` completes the run;
//! - approved between stages (`holdsWorker`): [`take`] itself puts the run back in RUNNING,
//!   for the worker that waits on it; the record is a log line;
//! - rejected, or timed out: its `ai.run.failed` (`REJECTED`, `REVIEW_TIMEOUT`, not
//!   retryable) fails the run, and stops a waiting worker.
//!
//! A run still AWAITING_HUMAN with a decision ([`awaits_record`]) is one whose decider stopped
//! between the steps: a retry of the same decision, or the next sweep, writes the record,
//! which is the same whoever builds it (a second copy is a duplicate).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::event::{self, Event, EventData, FailureCode, LogLevel, payload};
use crate::redact;
use crate::run::{Review, ReviewDecision, Run, RunStatus};
use crate::time::Timestamp;

/// Where the records of review decisions come from.
pub const REVIEW_SOURCE: &str = "scientist://review";

/// Who decides a timed-out review.
pub const TIMEOUT_DECIDER: &str = "scientist (review timeout)";

/// A decision on a run's review.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: ReviewDecision,
    /// The operator (`operator:alice`) or the API caller.
    pub by: String,
    /// The approver's comment, or why the run was rejected.
    pub comment: Option<String>,
}

/// Takes `decision` on `run` as stored at `now`: false, leaving it as it is, unless the run
/// is AWAITING_HUMAN with an undecided review. An approval between stages puts the run back
/// in RUNNING at once (its worker waits for it); any other decision is ended by its
/// [`record`].
pub fn take(run: &mut Run, decision: &Decision, now: Timestamp) -> bool {
    if run.status != RunStatus::AwaitingHuman {
        return false;
    }
    let Some(review) = run.review.as_mut().filter(|review| review.decision.is_none()) else { return false };
    review.decision = Some(decision.verdict);
    review.decided_by = Some(redact::redact_string(decision.by.clone()));
    review.decided_at = Some(now);
    review.comment = decision.comment.clone().map(redact::redact_string);
    if decision.verdict == ReviewDecision::Approved && review.holds_worker {
        run.status = RunStatus::Running;
        // The wait was a person's, not a stall of the pipeline.
        run.made_progress(now);
    }
    true
}

/// Whether `run`'s review waited past `timeout` undecided at `now` (by the request's time).
pub fn timed_out(run: &Run, timeout: Duration, now: Timestamp) -> bool {
    let Some(review) = run.review.as_ref().filter(|review| review.decision.is_none()) else { return false };
    let timeout_s = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    run.status == RunStatus::AwaitingHuman && now >= review.requested_at.plus_seconds(timeout_s)
}

/// [`take`]s the timeout's decision on `run` as stored, if its review still timed out.
pub fn take_timeout(run: &mut Run, timeout: Duration, now: Timestamp) -> bool {
    if !timed_out(run, timeout, now) {
        return false;
    }
    let comment = format!("no decision within {} of the request", humantime::format_duration(timeout));
    let decision =
        Decision { verdict: ReviewDecision::TimedOut, by: TIMEOUT_DECIDER.to_owned(), comment: Some(comment) };
    take(run, &decision, now)
}

/// Whether `run`'s review was decided and the record that ends the run is not written yet.
pub fn awaits_record(run: &Run) -> bool {
    run.status == RunStatus::AwaitingHuman && run.review.as_ref().is_some_and(|review| review.decision.is_some())
}

/// The event that records `run`'s decided review, at the decision's time, so that every
/// writer builds the same one: the `ai.run.completed` or `ai.run.failed` that ends the run
/// (stamped with its attempt), or for an approval between stages a log line. `None` while
/// the review is undecided.
pub fn record(run: &Run, now: Timestamp) -> Option<Event> {
    let review = run.review.as_ref()?;
    let (verdict, decided_at) = (review.decision?, review.decided_at?);
    let by = review.decided_by.as_deref().unwrap_or("(unknown)");
    let stage = review.stage.clone();
    // The run's id goes in `data` too, as every emitter's does.
    let extra = Map::from_iter([("run_id".to_owned(), Value::from(run.id.as_str()))]);
    let (data, attempt): (Box<dyn EventData>, _) = match verdict {
        ReviewDecision::Approved if review.holds_worker => {
            let message = format!("review{} approved by {by}{}; the worker goes on", of_stage(review), note(review));
            let log = payload::Log { message, level: Some(LogLevel::Info), source: Some("review".into()), extra };
            // Of no effect on the run, which the approval already put back in RUNNING.
            (Box::new(log), None)
        }
        ReviewDecision::Approved => {
            // The pipeline's time, not the reviewer's.
            let duration_s = run.started_at.map(|started| review.requested_at.seconds_since(started).max(0.0));
            (Box::new(payload::Completed { duration_s, extra }), Some(run.attempt))
        }
        ReviewDecision::Rejected | ReviewDecision::TimedOut => {
            let (code, message) = if verdict == ReviewDecision::Rejected {
                (FailureCode::Rejected, format!("rejected by {by}{}", note(review)))
            } else {
                (FailureCode::ReviewTimeout, format!("review{} timed out{}", of_stage(review), note(review)))
            };
            (Box::new(payload::Failed { stage, extra, ..payload::Failed::of(code, message) }), Some(run.attempt))
        }
    };
    let id = format!("review-{}:{}:{}:{}", verdict.as_str(), run.id, run.attempt, review.requested_at.millis());
    let mut object = Map::new();
    for (name, value) in [
        ("specversion", json!("1.0")),
        ("id", json!(id)),
        ("source", json!(REVIEW_SOURCE)),
        ("type", json!(data.event_type().name())),
        ("subject", json!(format!("run/{}", run.id))),
        ("time", json!(decided_at.to_string())),
        ("data", Value::Object(data.to_data())),
    ] {
        object.insert(name.into(), value);
    }
    if let Some(attempt) = attempt {
        object.insert("attempt".into(), json!(attempt));
    }
    // Built here from known-good parts; a unit test holds every record valid.
    event::from_json_object(object, now).ok()
}

fn of_stage(review: &Review) -> String {
    review.stage.as_ref().map_or(String::new(), |stage| format!(" of {stage}"))
}

fn note(review: &Review) -> String {
    review.comment.as_ref().map_or(String::new(), |comment| format!(": {comment}"))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::event::Payload;
    use crate::run::{EventKey, NewRun};

    /// A claimed run whose review was requested at 100 s (between stages when `holds`).
    fn awaiting(holds: bool) -> Run {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        run.claim("pod-a", Timestamp::EPOCH);
        run.started_at = Some(Timestamp::EPOCH.plus_seconds(10));
        run.status = RunStatus::AwaitingHuman;
        let at = Timestamp::EPOCH.plus_seconds(100);
        run.review = Some(Review {
            requested_at: at,
            reason: Some("check the paper".into()),
            stage: Some("paper".into()),
            options: None,
            holds_worker: holds,
            decision: None,
            decided_by: None,
            decided_at: None,
            comment: None,
            at: EventKey { time: at, id: "e1".into(), source: "pod://a".into() },
        });
        run
    }

    fn decision(verdict: ReviewDecision, comment: &str) -> Decision {
        Decision { verdict, by: "operator:alice".into(), comment: Some(comment.into()) }
    }

    #[test]
    fn a_review_is_decided_once_and_only_while_awaiting() {
        let now = Timestamp::EPOCH.plus_seconds(200);
        let mut run = awaiting(false);
        assert!(take(&mut run, &decision(ReviewDecision::Approved, "fine"), now));
        assert!(awaits_record(&run), "the record ends it");
        assert!(!take(&mut run, &decision(ReviewDecision::Rejected, "no"), now), "decided once");
        let review = run.review.as_ref().expect("review");
        assert_eq!((review.decision, review.decided_at), (Some(ReviewDecision::Approved), Some(now)));
        let mut running = awaiting(false);
        running.status = RunStatus::Running;
        assert!(!take(&mut running, &decision(ReviewDecision::Approved, "fine"), now), "nothing awaits");
    }

    #[test]
    fn an_approval_between_stages_lets_the_worker_go_on() {
        let now = Timestamp::EPOCH.plus_seconds(200);
        let mut run = awaiting(true);
        assert!(take(&mut run, &decision(ReviewDecision::Approved, "go on"), now));
        assert_eq!(run.status, RunStatus::Running);
        assert!(!awaits_record(&run));
        let log = record(&run, now).expect("a log line");
        assert!(matches!(&log.payload, Payload::Log(line) if line.message.contains("approved by operator:alice")));
        assert_eq!(log.attempt, None);
    }

    #[test]
    fn records_end_the_run_and_are_the_same_for_every_writer() {
        let now = Timestamp::EPOCH.plus_seconds(200);
        let mut approved = awaiting(false);
        assert!(record(&approved, now).is_none(), "undecided");
        take(&mut approved, &decision(ReviewDecision::Approved, "fine"), now);
        let completed = record(&approved, now).expect("valid");
        let Payload::Completed(data) = &completed.payload else { panic!("{:?}", completed.payload) };
        assert_eq!((data.duration_s, completed.attempt), (Some(90.0), Some(1)), "the pipeline's time");
        let again = record(&approved, now.plus_seconds(30)).expect("valid");
        assert_eq!((&again.id, again.time), (&completed.id, completed.time));

        let mut rejected = awaiting(true);
        take(&mut rejected, &decision(ReviewDecision::Rejected, "wrong baseline"), now);
        let failed = record(&rejected, now).expect("valid");
        let Payload::Failed(failure) = &failed.payload else { panic!("{:?}", failed.payload) };
        assert_eq!((failure.code.as_deref(), failure.retryable), (Some("REJECTED"), Some(false)));
        assert!(failure.message.as_deref().is_some_and(|m| m.contains("wrong baseline")), "{failure:?}");
        assert_ne!(failed.id, completed.id);
    }

    #[test]
    fn a_forgotten_review_times_out() {
        let mut run = awaiting(false);
        let hour = Duration::from_secs(3600);
        assert!(!take_timeout(&mut run, hour, Timestamp::EPOCH.plus_seconds(3699)));
        assert!(take_timeout(&mut run, hour, Timestamp::EPOCH.plus_seconds(3700)));
        let failed = record(&run, Timestamp::EPOCH.plus_seconds(3700)).expect("valid");
        let Payload::Failed(failure) = &failed.payload else { panic!("{:?}", failed.payload) };
        assert_eq!((failure.code.as_deref(), failure.retryable), (Some("REVIEW_TIMEOUT"), Some(false)));
        assert!(!take_timeout(&mut run, hour, Timestamp::EPOCH.plus_seconds(9999)), "decided once");
    }
}
