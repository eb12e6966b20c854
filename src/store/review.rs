//! A person's decision on a run's review, on either backend: `queue::review`'s two steps
//! (the conditional write that takes the decision, then the record that ends the run)
//! through the store's own `update_if` and `apply_events`.

use super::{Error, Result, Store};
use crate::queue::review::{self, Decision};
use crate::run::{ReviewDecision, Run, RunId, RunStatus};
use crate::time::Timestamp;

/// See [`Store::decide_review`].
pub(super) async fn decide<S: Store + ?Sized>(
    store: &S,
    id: &RunId,
    decision: Decision,
    now: Timestamp,
) -> Result<Run> {
    let verdict = decision.verdict;
    let change = Box::new(move |run: &mut Run| review::take(run, &decision, now));
    let (run, taken) = match store.update_if(id, now, change).await? {
        Some(run) => (run, true),
        None => (store.get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?, false),
    };
    let decided = run.review.as_ref().and_then(|review| review.decision);
    // A retry of the same decision, whose first try stopped before the record, writes it.
    let retried = review::awaits_record(&run) && decided == Some(verdict);
    if !(taken || retried) {
        return Err(refusal(run, verdict, decided));
    }
    match review::record(&run, now) {
        Some(record) => {
            store.apply_events(vec![record], now).await?;
            store.get(id).await?.ok_or_else(|| Error::NotFound(id.clone()))
        }
        // An approval between stages: the run as the decision left it (RUNNING), not as its
        // worker, already on the next stage, may have made it since.
        None => Ok(run),
    }
}

fn refusal(run: Run, verdict: ReviewDecision, decided: Option<ReviewDecision>) -> Error {
    let action = match verdict {
        ReviewDecision::Approved => "approve",
        ReviewDecision::Rejected | ReviewDecision::TimedOut => "reject",
    };
    let hint = match decided {
        Some(_) if run.status == RunStatus::AwaitingHuman => "its review was already decided otherwise",
        _ => "only a run AWAITING_HUMAN (its pipeline asked for a review) can be approved or rejected",
    };
    Error::InvalidTransition { id: run.id, status: run.status, action, hint }
}
