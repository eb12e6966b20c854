//! Which alerts a run's state calls for, raised once each.

use super::{Facts, Kind, Mark, Raise};
use crate::run::{Run, RunStatus};
use crate::time::Timestamp;

/// `error.type` of a run failed by a sweep because its worker fell silent
/// (`event::failure::FailureCode::WorkerLost`; a code's string never changes).
const WORKER_LOST: &str = "WORKER_LOST";

/// Adds to `run` the marks of the alerts its state now calls for and has not raised yet,
/// due at once. Called by every run write (`store::before_save`), so that an alert is
/// stored in the same write as the change that calls for it.
pub fn raise(run: &mut Run, raise: &Raise, now: Timestamp) {
    if raise.alerts {
        for (kind, id) in called_for(run, raise) {
            let facts = facts(run, kind);
            push(run, kind, id, facts, now);
        }
    }
    if raise.spans {
        for (id, facts) in spans_due(run) {
            push(run, Kind::Spans, id, facts, now);
        }
    }
}

/// Adds mark `id`, due at once, unless the run raised it before.
fn push(run: &mut Run, kind: Kind, id: String, facts: Facts, now: Timestamp) {
    if run.alerts.iter().any(|mark| mark.id == id) {
        return;
    }
    run.alerts.push(Mark {
        id,
        kind,
        raised_at: now,
        due_at: Some(now),
        claim: None,
        tries: 0,
        sent_to: Vec::new(),
        delivered_at: None,
        last_error: None,
        facts,
    });
}

/// A spans mark for each ended attempt kept in `attempts` (`spans:<attempt>`): what its
/// span says of it.
fn spans_due(run: &Run) -> Vec<(String, Facts)> {
    let facts = |attempt: &crate::run::Attempt| Facts {
        status: run.status,
        attempt: attempt.attempt,
        code: attempt.error.as_ref().map(|error| error.error_type.clone()),
        message: None,
        stage: None,
        pod: attempt.pod.clone().or_else(|| attempt.claimed_by.clone()),
        retry_stopped: None,
    };
    run.attempts.iter().map(|attempt| (format!("spans:{}", attempt.attempt), facts(attempt))).collect()
}

/// The alerts `run`'s state calls for, each with its mark id: one cause of one attempt
/// (a second stall of the same attempt is a new cause, keyed by when it began).
fn called_for(run: &Run, raise: &Raise) -> Vec<(Kind, String)> {
    let attempt = run.attempt;
    let mut called = Vec::new();
    match run.status {
        RunStatus::Failed if run.error.as_ref().is_some_and(|error| error.error_type == WORKER_LOST) => {
            called.push((Kind::Lost, format!("lost:{attempt}")));
        }
        RunStatus::Failed => called.push((Kind::Failed, format!("failed:{attempt}"))),
        RunStatus::Completed if raise.completed => called.push((Kind::Completed, format!("completed:{attempt}"))),
        RunStatus::AwaitingHuman => {
            let requested = run.review.as_ref().map_or(0, |review| review.requested_at.millis());
            called.push((Kind::Review, format!("review:{attempt}:{requested}")));
        }
        // Lost, then put back in the queue (a retry, or `--on-lost requeue`): still lost.
        RunStatus::Queued if lost_attempt(run).is_some() => called.push((Kind::Lost, format!("lost:{attempt}"))),
        _ => {}
    }
    // Once per run, whatever the attempt: the budget spans them.
    if run.cost.is_near_budget() {
        called.push((Kind::Budget, "budget".to_owned()));
    }
    // Only a held run stalls; a flag left on an ended run is not news.
    if let (Some(since), RunStatus::Scheduled | RunStatus::Running) = (run.stalled_since, run.status) {
        called.push((Kind::Stalled, format!("stalled:{attempt}:{}", since.millis())));
    }
    called
}

/// The run's latest attempt when its worker was lost and the run was put back in the queue.
fn lost_attempt(run: &Run) -> Option<&crate::run::Attempt> {
    run.attempts.last().filter(|last| {
        last.attempt == run.attempt
            && (last.outcome == "LOST" || last.error.as_ref().is_some_and(|error| error.error_type == WORKER_LOST))
    })
}

/// What the alert says about `run`, as it is now.
fn facts(run: &Run, kind: Kind) -> Facts {
    let current_stage = run.current_stage.as_ref().map(|stage| stage.name.to_string());
    let (code, message, stage) = match kind {
        Kind::Failed | Kind::Lost => {
            // A lost run put back in the queue keeps its error in the attempt it ended.
            let error = run.error.as_ref().or_else(|| lost_attempt(run).and_then(|lost| lost.error.as_ref()));
            let lost = (kind == Kind::Lost).then(|| WORKER_LOST.to_owned());
            (
                error.map(|error| error.error_type.clone()).or(lost),
                error.map(|error| error.message.clone()),
                error.and_then(|error| error.stage.clone()).or(current_stage),
            )
        }
        Kind::Review => {
            let review = run.review.as_ref();
            (
                None,
                review.and_then(|review| review.reason.clone()),
                review.and_then(|review| review.stage.clone()).or(current_stage),
            )
        }
        Kind::Stalled => {
            let since = run.progress_at.or(run.stalled_since);
            (None, since.map(|since| format!("no progress since {since}")), current_stage)
        }
        Kind::Completed | Kind::Spans => (None, None, current_stage),
        Kind::Budget => {
            let (spent, budget) = (run.cost.total_usd, run.cost.budget_usd.unwrap_or(0.0));
            (None, Some(format!("spent ${spent:.2} of its ${budget:.2} budget")), current_stage)
        }
    };
    Facts {
        status: run.status,
        attempt: run.attempt,
        code,
        message,
        stage,
        pod: run.pod.as_ref().map(|pod| pod.id.clone()).or_else(|| run.claimed_by.clone()),
        retry_stopped: run.retry_stopped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::{EventKey, NewRun, Review, RunError};

    const ON: Raise = Raise { alerts: true, completed: false, spans: false };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_761_159_600_000 + seconds * 1000)
    }

    fn run_in(status: RunStatus) -> Run {
        let mut run = Run::queued(NewRun::new(json!({})), at(0));
        run.claim("pod-a", at(1));
        run.status = status;
        run
    }

    fn failed(code: &str) -> Run {
        let mut run = run_in(RunStatus::Failed);
        run.error = Some(RunError {
            error_type: code.to_owned(),
            message: "it broke".to_owned(),
            traceback: None,
            stage: Some("Stage_2".to_owned()),
            retryable: false,
            failed_at: at(5),
            at: EventKey { time: at(5), id: "e-1".to_owned(), source: "pod://a".to_owned() },
        });
        run
    }

    fn ids(run: &Run) -> Vec<(&str, Kind, Option<Timestamp>)> {
        run.alerts.iter().map(|mark| (mark.id.as_str(), mark.kind, mark.due_at)).collect()
    }

    /// Lost and then requeued (a retry, or `--on-lost requeue`): the run is QUEUED again,
    /// and still raises `lost`, once.
    #[test]
    fn a_lost_run_put_back_in_the_queue_still_raises_lost() {
        let mut run = run_in(RunStatus::Running);
        run.reset(at(700));
        assert_eq!(run.status, RunStatus::Queued);
        raise(&mut run, &ON, at(700));
        assert_eq!(ids(&run), [("lost:1", Kind::Lost, Some(at(700)))]);
        assert_eq!(run.alerts[0].facts.code.as_deref(), Some(WORKER_LOST));
        raise(&mut run, &ON, at(701));
        assert_eq!(run.alerts.len(), 1, "once");
        let mut fresh = Run::queued(NewRun::new(json!({})), at(0));
        raise(&mut fresh, &ON, at(1));
        assert!(fresh.alerts.is_empty(), "a queued run never claimed raises nothing");
    }

    #[test]
    fn a_failure_raises_one_alert_due_at_once_with_its_facts() {
        let mut run = failed("EXIT_1");
        raise(&mut run, &ON, at(6));
        assert_eq!(ids(&run), [("failed:1", Kind::Failed, Some(at(6)))]);
        let facts = &run.alerts[0].facts;
        assert_eq!(
            (facts.status, facts.code.as_deref(), facts.message.as_deref(), facts.stage.as_deref()),
            (RunStatus::Failed, Some("EXIT_1"), Some("it broke"), Some("Stage_2"))
        );
        assert_eq!(facts.pod.as_deref(), Some("pod-a"), "the claimer, before any start event named a pod");
    }

    #[test]
    fn a_lost_worker_raises_lost_not_failed() {
        let mut run = failed(WORKER_LOST);
        raise(&mut run, &ON, at(6));
        assert_eq!(ids(&run), [("lost:1", Kind::Lost, Some(at(6)))]);
    }

    #[test]
    fn review_and_completion_raise_theirs_and_completion_only_when_asked() {
        let mut run = run_in(RunStatus::AwaitingHuman);
        run.review = Some(Review {
            requested_at: at(3),
            reason: Some("read the paper".to_owned()),
            stage: None,
            options: None,
            holds_worker: false,
            decision: None,
            decided_by: None,
            decided_at: None,
            comment: None,
            at: crate::run::EventKey { time: at(3), id: "review-1".into(), source: "pod://a".into() },
        });
        raise(&mut run, &ON, at(4));
        let review_id = format!("review:1:{}", at(3).millis());
        assert_eq!(ids(&run), [(review_id.as_str(), Kind::Review, Some(at(4)))]);
        assert_eq!(run.alerts[0].facts.message.as_deref(), Some("read the paper"));

        let mut done = run_in(RunStatus::Completed);
        raise(&mut done, &ON, at(5));
        assert!(done.alerts.is_empty(), "completion alerts are opt-in");
        raise(&mut done, &Raise { alerts: true, completed: true, spans: false }, at(5));
        assert_eq!(ids(&done), [("completed:1", Kind::Completed, Some(at(5)))]);
    }

    #[test]
    fn each_stall_of_an_attempt_alerts_once() {
        let mut run = run_in(RunStatus::Running);
        run.stalled_since = Some(at(100));
        raise(&mut run, &ON, at(100));
        raise(&mut run, &ON, at(101));
        assert_eq!(run.alerts.len(), 1, "the same stall is not raised twice");
        run.stalled_since = None;
        raise(&mut run, &ON, at(102));
        run.stalled_since = Some(at(200));
        raise(&mut run, &ON, at(200));
        let stalls: Vec<&str> = run.alerts.iter().map(|mark| mark.id.as_str()).collect();
        assert_eq!(stalls, [format!("stalled:1:{}", at(100).millis()), format!("stalled:1:{}", at(200).millis())]);
    }

    #[test]
    fn nothing_is_raised_twice_even_once_delivered_and_a_new_attempt_raises_anew() {
        let mut run = failed("EXIT_1");
        raise(&mut run, &ON, at(6));
        run.alerts[0].due_at = None;
        raise(&mut run, &ON, at(7));
        assert_eq!(ids(&run), [("failed:1", Kind::Failed, None)]);
        // Reset and claimed again: attempt 2 fails too.
        run.claim("pod-b", at(8));
        run.status = RunStatus::Failed;
        raise(&mut run, &ON, at(9));
        assert_eq!(ids(&run), [("failed:1", Kind::Failed, None), ("failed:2", Kind::Failed, Some(at(9)))]);
    }

    #[test]
    fn none_when_disabled_or_for_runs_that_need_no_one() {
        let mut run = failed("EXIT_1");
        raise(&mut run, &Raise { alerts: false, completed: true, spans: false }, at(6));
        assert!(run.alerts.is_empty());
        for status in [RunStatus::Queued, RunStatus::Scheduled, RunStatus::Running, RunStatus::Canceled] {
            let mut run = run_in(status);
            raise(&mut run, &Raise { alerts: true, completed: true, spans: false }, at(6));
            assert!(run.alerts.is_empty(), "{status:?}");
        }
    }

    #[test]
    fn alerts_due_is_the_earliest_undelivered() {
        let mut run = run_in(RunStatus::Running);
        run.stalled_since = Some(at(10));
        raise(&mut run, &ON, at(10));
        run.status = RunStatus::Failed;
        raise(&mut run, &ON, at(20));
        assert_eq!(run.alerts_due(), Some(at(10)));
        run.alerts[0].due_at = None;
        assert_eq!(run.alerts_due(), Some(at(20)));
        run.alerts[1].due_at = None;
        assert_eq!(run.alerts_due(), None);
    }
}
