//! The lost-worker sweeper: lists the held runs and the running ideation requests and
//! applies the lease rules of `queue::lease` to each through the store's conditional writes
//! (`Store::update_if`, `Store::apply_events`, `Store::update_ideation_if`). Every `serve`
//! replica sweeps on a timer ([`keep_sweeping`]) and every worker on the store before each
//! claim ([`once`]); any number may sweep at once, since each write re-checks the stored run.
//! The same sweeps end forgotten reviews ([`reviews`], `queue::review`).

use std::sync::Arc;
use std::time::Duration;

use crate::event::FailureCode;
use crate::ideation::{IdeationRequest, IdeationStatus};
use crate::queue::lease::{self, Action, OnLost, Policy};
use crate::queue::review;
use crate::queue::stall::{self, OnStall};
use crate::run::{Run, RunId, RunStatus};
use crate::store::{self, Outcome, RunFilter, Store};
use crate::time::Timestamp;

/// What a sweep did to one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Swept {
    pub run_id: RunId,
    pub attempt: u32,
    pub worker: Option<String>,
    pub action: Action,
}

/// Sweeps every held run once at `now`: flags the silent, fails or requeues the lost, and
/// writes the record of any run a stopped sweeper decided lost.
pub async fn runs(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<Vec<Swept>> {
    let mut swept = Vec::new();
    let mut filter =
        RunFilter { statuses: lease::SWEPT_STATUSES.to_vec(), limit: store::MAX_LIMIT, ..RunFilter::default() };
    loop {
        let page = store.list(&filter).await?;
        for run in &page.items {
            if let Some(done) = one_run(store, run, policy, now).await? {
                swept.push(done);
            }
        }
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(swept),
        }
    }
}

/// One run as a sweeper listed it (the store may have moved on since): the record it awaits
/// when a stopped sweeper decided it lost, else nothing when its worker is heard (or already
/// flagged silent), else the whole of what its standing calls for: [`decide`], then the
/// record (which, for a lost run, fails it).
pub async fn one_run(store: &dyn Store, listed: &Run, policy: &Policy, now: Timestamp) -> store::Result<Option<Swept>> {
    if lease::awaits_record(listed, now) {
        return Ok(store_record(store, listed, Action::Failed, policy, now)
            .await?
            .then(|| swept(listed, Action::Failed)));
    }
    let Some((decided, action)) = decide(store, listed, policy, now).await? else { return Ok(None) };
    match action {
        Action::FlaggedSilent => Ok(Some(swept(listed, action))),
        // The record of a requeue is of the attempt it ended: built from the run as listed,
        // still held by that attempt.
        Action::Requeued => {
            store_record(store, listed, action, policy, now).await?;
            Ok(Some(swept(listed, action)))
        }
        // A second sweeper that wrote the record first (see `lease::awaits_record`) reports it.
        Action::Failed => {
            Ok(store_record(store, &decided, action, policy, now).await?.then(|| swept(&decided, action)))
        }
    }
}

/// The first step of a sweep of one listed run: the conditional write that takes the
/// decision on the run as stored (`lease::take`: same attempt, still held, still as
/// silent). The run as written and what was done; `None` when there was nothing to do or
/// the stored run no longer called for it. A run decided lost is still held: its record,
/// the second step, fails it.
pub async fn decide(
    store: &dyn Store,
    listed: &Run,
    policy: &Policy,
    now: Timestamp,
) -> store::Result<Option<(Run, Action)>> {
    let Some(action) = lease::decide(listed, policy, now) else { return Ok(None) };
    let (attempt, policy) = (listed.attempt, *policy);
    let change = Box::new(move |run: &mut Run| lease::take(run, attempt, action, &policy, now));
    Ok(store.update_if(&listed.id, now, change).await?.map(|written| (written, action)))
}

/// Stores the record of `action` on `run` (see `lease::record`); whether it was applied (a
/// lost run's record fails it in the same write; a duplicate or a stale record does nothing).
async fn store_record(
    store: &dyn Store,
    run: &Run,
    action: Action,
    policy: &Policy,
    now: Timestamp,
) -> store::Result<bool> {
    let Some(record) = lease::record(run, action, policy, now) else { return Ok(false) };
    Ok(store.apply_events(vec![record], now).await? == [Outcome::Applied])
}

fn swept(run: &Run, action: Action) -> Swept {
    Swept { run_id: run.id.clone(), attempt: run.attempt, worker: run.claimed_by.clone(), action }
}

/// What a stall sweep did to one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Stalled {
    pub run_id: RunId,
    pub attempt: u32,
    pub worker: Option<String>,
    /// Stopped (`--on-stall cancel`), not only flagged.
    pub stopped: bool,
}

/// Sweeps the RUNNING runs once at `now` for stalls (`queue::stall`): flags each whose
/// worker is heard but which made no progress for its stall time (one conditional write
/// that re-checks the stored run), and with `--on-stall cancel` stores the record that stops
/// a flagged one (the same for every sweeper, so it is applied once).
pub async fn stalls(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<Vec<Stalled>> {
    let mut done = Vec::new();
    let mut filter = RunFilter { statuses: vec![RunStatus::Running], limit: store::MAX_LIMIT, ..RunFilter::default() };
    loop {
        let page = store.list(&filter).await?;
        for listed in &page.items {
            let flagged = match listed.stalled_since {
                Some(_) => Some(listed.clone()),
                None if stall::is_stalled(listed, policy, now) => {
                    let (attempt, policy) = (listed.attempt, *policy);
                    let change = Box::new(move |run: &mut Run| stall::flag(run, attempt, &policy, now));
                    store.update_if(&listed.id, now, change).await?
                }
                None => None,
            };
            let Some(flagged) = flagged else { continue };
            let mut stopped = false;
            if policy.stall.on_stall == OnStall::Cancel
                && let Some(record) = stall::record(&flagged, policy, now)
            {
                stopped = store.apply_events(vec![record], now).await? == [Outcome::Applied];
            }
            if listed.stalled_since.is_none() || stopped {
                let worker = flagged.claimed_by.clone();
                done.push(Stalled { run_id: flagged.id.clone(), attempt: flagged.attempt, worker, stopped });
            }
        }
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(done),
        }
    }
}

/// Sweeps the held ideation requests once at `now`: fails or requeues those whose worker
/// was silent for the whole lease. Each is one conditional write that re-checks the stored
/// request, as for runs.
pub async fn ideation(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<Vec<IdeationRequest>> {
    let lease = policy.lease.as_secs_f64();
    let requeue = policy.on_lost == OnLost::Requeue;
    let mut lost = Vec::new();
    for listed in store.list_ideation(&[IdeationStatus::Running], store::MAX_LIMIT).await? {
        if listed.silent_for(now).is_none_or(|silent| silent < lease) {
            continue;
        }
        let attempt = listed.attempt;
        let error = format!(
            "{}: no word from worker {} for the whole lease ({})",
            FailureCode::WorkerLost,
            listed.claimed_by.as_deref().unwrap_or("(none)"),
            humantime::format_duration(policy.lease)
        );
        let change = Box::new(move |request: &mut IdeationRequest| request.lose(attempt, lease, requeue, &error, now));
        lost.extend(store.update_ideation_if(&listed.id, change).await?);
    }
    Ok(lost)
}

/// One sweep of runs and ideation requests, each change logged: what `serve` does every
/// tick and a worker on the store before each claim.
pub async fn once(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<()> {
    runs(store, policy, now).await?.iter().for_each(log);
    for stalled in stalls(store, policy, now).await? {
        let worker = stalled.worker.as_deref().unwrap_or("(none)");
        let what = if stalled.stopped { "failed STALLED (retryable)" } else { "is stalled; still running" };
        let after = humantime::format_duration(policy.stall.after);
        tracing::warn!(run = %stalled.run_id, attempt = stalled.attempt, worker, "run {} {what}: its worker is heard but it made no progress (stall time {after}, or its stage's)", stalled.run_id);
    }
    reviews(store, policy.review_timeout, now).await?.iter().for_each(log_review);
    for request in ideation(store, policy, now).await? {
        let worker = request.claimed_by.as_deref().unwrap_or("(none)");
        let what = match request.status {
            IdeationStatus::Queued => "requeued",
            _ => "failed WORKER_LOST",
        };
        let id = &request.id;
        tracing::warn!(request = %id, attempt = request.attempt, worker, "ideation request {id} {what}: its worker was silent for the whole lease");
    }
    Ok(())
}

/// Sweeps the runs AWAITING_HUMAN once at `now`: fails those whose review waited past
/// `timeout` undecided (`REVIEW_TIMEOUT`), and writes the record of any decision whose decider
/// stopped before it (`queue::review`). The runs whose record this sweep applied.
pub async fn reviews(store: &dyn Store, timeout: Option<Duration>, now: Timestamp) -> store::Result<Vec<Run>> {
    let mut ended = Vec::new();
    let mut filter =
        RunFilter { statuses: vec![RunStatus::AwaitingHuman], limit: store::MAX_LIMIT, ..RunFilter::default() };
    loop {
        let page = store.list(&filter).await?;
        for listed in &page.items {
            // A decision of this very instant is its decider's, writing the record now.
            let decided_before = listed.review.as_ref().and_then(|review| review.decided_at).is_some_and(|at| at < now);
            let decided = if review::awaits_record(listed) && decided_before {
                Some(listed.clone())
            } else if let Some(timeout) = timeout.filter(|timeout| review::timed_out(listed, *timeout, now)) {
                let change = Box::new(move |run: &mut Run| review::take_timeout(run, timeout, now));
                store.update_if(&listed.id, now, change).await?
            } else {
                None
            };
            let Some(record) = decided.as_ref().and_then(|run| review::record(run, now)) else { continue };
            if store.apply_events(vec![record], now).await? == [Outcome::Applied] {
                ended.extend(decided);
            }
        }
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(ended),
        }
    }
}

/// One line per review a sweep ended.
fn log_review(run: &Run) {
    let review = run.review.as_ref();
    let decision = review.and_then(|review| review.decision).map_or("decided", |decision| decision.as_str());
    let by = review.and_then(|review| review.decided_by.as_deref()).unwrap_or("(unknown)");
    tracing::warn!(run = %run.id, attempt = run.attempt, "run {}: its review ended ({decision} by {by})", run.id);
}

/// Sweeps every `every` until the task is dropped, logging what each sweep did. A failed
/// sweep is logged once and retried at the next tick.
pub async fn keep_sweeping(store: Arc<dyn Store>, policy: Policy, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match once(store.as_ref(), &policy, Timestamp::now()).await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::error!(error = %crate::errors::chain(&err), "lost-worker sweep failed; retrying every {}", humantime::format_duration(every));
            }
            Err(_) => {}
        }
    }
}

/// One line per run a sweep changed.
pub fn log(swept: &Swept) {
    let worker = swept.worker.as_deref().unwrap_or("(none)");
    let what = match swept.action {
        Action::FlaggedSilent => "is silent: its worker has not been heard from; still held",
        Action::Failed => "failed WORKER_LOST (retryable): its worker was silent for the whole lease",
        Action::Requeued => "requeued: its worker was silent for the whole lease",
    };
    tracing::warn!(run = %swept.run_id, attempt = swept.attempt, worker, "run {} {what}", swept.run_id);
}
