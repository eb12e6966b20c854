//! A human review asked when a step ends (`review = true`, or the child's own
//! `ai.run.review_requested`): the request the worker sends, and the wait of a worker that
//! holds its claim between stages until the review is decided (`queue::review`).

use std::sync::Mutex;

use serde_json::Map;

use super::Context;
use super::pipeline::Step;
use super::supervise::StopReason;
use crate::capture::queue;
use crate::emit::{Draft, Reported, RunStream};
use crate::event::payload::ReviewRequested;
use crate::run::{ReviewDecision, Run, RunId, Stage};
use crate::sync::lock;

/// What follows a step that ended well.
pub(super) enum AfterStep {
    GoOn,
    /// The run awaits a review (with the request still to send): the worker's part is done.
    AwaitsReview(Option<ReviewRequested>),
}

/// After `step` ended well: whether it asks for a review (`review = true`, or its child sent
/// `ai.run.review_requested`, unless the child ended the run itself). After the last step
/// (`holds` false) the run is left to the reviewer; before it, the worker sends its request
/// (the child's went through the endpoint) and waits, holding the claim, for the decision.
pub(super) async fn after_step(
    context: &Context<'_>,
    run: &Run,
    stream: &RunStream,
    step: &Step,
    holds: bool,
    reported: &Mutex<Reported>,
    watcher: &mut (impl Future<Output = StopReason> + Unpin),
) -> Result<AfterStep, StopReason> {
    let (asked_by_child, ended_by_child) = {
        let mut reported = lock(reported);
        (std::mem::take(&mut reported.review_requested), reported.terminal.is_some())
    };
    if ended_by_child || !(step.review || asked_by_child) {
        return Ok(AfterStep::GoOn);
    }
    let request = (!asked_by_child).then(|| self::request(step, holds));
    if !holds {
        return Ok(AfterStep::AwaitsReview(request));
    }
    if let Some(request) = request {
        queue(stream, Draft::of(&request)).await;
    }
    await_decision(context, &run.id, run.attempt, step.stage, watcher).await?;
    Ok(AfterStep::GoOn)
}

/// The request for a review when `step` ended; `holds` while more steps follow.
fn request(step: &Step, holds: bool) -> ReviewRequested {
    let after = step.stage.map_or("the run's command".to_owned(), |stage| format!("stage {stage}"));
    let then = if holds { "the next stage waits for the decision" } else { "the run ends with the decision" };
    ReviewRequested {
        reason: format!("{after} ended and asks for a review (review = true); {then}"),
        options: None,
        stage: step.stage,
        holds_worker: Some(holds),
        extra: Map::new(),
    }
}

/// Waits, holding the claim, until the review of `stage` is decided: Ok when it is approved
/// (the next stage goes on), else why the run stops: rejected or timed out, or whatever
/// `watcher` sees first (a cancel, a lost claim, the worker's shutdown). The review is
/// checked every `cancel_poll`; a failed check changes nothing (`watcher` logs it).
pub(super) async fn await_decision(
    context: &Context<'_>,
    run_id: &RunId,
    attempt: u32,
    stage: Option<Stage>,
    watcher: &mut (impl Future<Output = StopReason> + Unpin),
) -> Result<(), StopReason> {
    crate::notice!(run = %run_id, "scientist work: run {run_id} awaits a review; the worker holds it until it is decided");
    let stage = stage.map(|stage| stage.as_str().to_owned());
    let mut ticks = tokio::time::interval(context.config.cancel_poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Cancel-safe: an interval tick can be awaited again.
            _ = ticks.tick() => {}
            // Not cancelled: the watcher is polled by reference and lives for the whole run.
            reason = &mut *watcher => {
                // A rejection's record fails the run: the watcher may see that first.
                let decided = decided(context, run_id, attempt, &stage).await;
                return Err(match (reason, decided) {
                    (StopReason::ClaimLost(_), Some(Err(ended))) => ended,
                    (reason, _) => reason,
                });
            }
        }
        match decided(context, run_id, attempt, &stage).await {
            None => {}
            Some(Ok(by)) => {
                crate::notice!(run = %run_id, "scientist work: run {run_id} approved by {by}; going on");
                return Ok(());
            }
            Some(Err(ended)) => return Err(ended),
        }
    }
}

/// The decision on the review of `stage`, if it is taken: Ok (who approved it) or why the
/// run stops. `None` while undecided, while the request is not stored yet (the run shows an
/// earlier review, or none), and when the check fails.
async fn decided(
    context: &Context<'_>,
    run_id: &RunId,
    attempt: u32,
    stage: &Option<String>,
) -> Option<Result<String, StopReason>> {
    let state = context.queue.check(run_id, attempt).await.ok()?;
    let review = state.review.filter(|review| review.stage == *stage)?;
    let by = review.decided_by;
    match review.decision? {
        ReviewDecision::Approved => Some(Ok(by.unwrap_or_else(|| "(unknown)".into()))),
        decision => Some(Err(StopReason::ReviewEnded { decision, by })),
    }
}
