//! Leases: what becomes of a run whose worker stops being heard from.
//!
//! A claimed run's worker is heard from through its claim and every event of its attempt
//! (`Run::heard_at`, the store's clock). Silent for `silent_after`, the run is flagged
//! `silentSince` and nothing else changes: unreachable is not dead, and a network blip must
//! not kill a healthy run. Silent for the whole `lease`, it is lost: failed with code
//! WORKER_LOST (retryable) or put back in the queue, per [`OnLost`]. Each change is one
//! conditional write that re-reads the run ([`Store::update_if`]), so a worker heard from
//! meanwhile, a finished run or a newer attempt is left alone, and several sweepers (every
//! `serve` replica, every worker on the store) can sweep at once.
//!
//! Ideation requests follow the same lease: a RUNNING request whose worker (its claim, then
//! its heartbeats) was silent for the whole lease is failed with WORKER_LOST or requeued.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::event::{self, Event};
use crate::ideation::{IdeationRequest, IdeationStatus};
use crate::reduce;
use crate::run::{Run, RunId, RunStatus};
use crate::store::{self, RunFilter, Store};
use crate::time::Timestamp;

/// The failure code of a run whose worker was lost.
pub const WORKER_LOST: &str = "WORKER_LOST";

/// The statuses in which a worker holds a run and must be heard from. AWAITING_HUMAN waits
/// on a person, not a worker, and is never swept.
const SWEPT_STATUSES: [RunStatus; 2] = [RunStatus::Scheduled, RunStatus::Running];

/// Where the sweeper's own records come from.
const SWEEP_SOURCE: &str = "scientist://sweep";

/// What becomes of a lost run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLost {
    /// FAILED with code WORKER_LOST, retryable: an operator decides (`runs reset`).
    Fail,
    /// Back to QUEUED for the next worker (`retryCount` + 1); the old attempt is fenced out.
    Requeue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub silent_after: Duration,
    pub lease: Duration,
    pub on_lost: OnLost,
}

impl Policy {
    /// A policy whose lease outlasts its silence, or why not.
    pub fn new(silent_after: Duration, lease: Duration, on_lost: OnLost) -> Result<Policy, String> {
        if silent_after.is_zero() || lease <= silent_after {
            return Err(format!(
                "the lease ({}) must be longer than the silence that flags a run ({}), and both above zero",
                humantime::format_duration(lease),
                humantime::format_duration(silent_after)
            ));
        }
        Ok(Policy { silent_after, lease, on_lost })
    }
}

/// How a held run's worker stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Heard,
    Silent,
    Lost,
}

/// Where `run`'s worker stands at `now`; `None` when no worker holds the run.
pub fn standing(run: &Run, policy: &Policy, now: Timestamp) -> Option<Standing> {
    if !SWEPT_STATUSES.contains(&run.status) {
        return None;
    }
    let silent_s = now.seconds_since(run.last_seen_at()?);
    Some(if silent_s >= policy.lease.as_secs_f64() {
        Standing::Lost
    } else if silent_s >= policy.silent_after.as_secs_f64() {
        Standing::Silent
    } else {
        Standing::Heard
    })
}

/// What a sweep did to one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Swept {
    pub run_id: RunId,
    pub attempt: u32,
    pub worker: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FlaggedSilent,
    Failed,
    Requeued,
}

/// Sweeps every held run once at `now`: flags the silent, fails or requeues the lost.
pub async fn sweep(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<Vec<Swept>> {
    let mut swept = Vec::new();
    let mut filter = RunFilter { statuses: SWEPT_STATUSES.to_vec(), limit: store::MAX_LIMIT, ..RunFilter::default() };
    loop {
        let page = store.list(&filter).await?;
        for run in &page.items {
            if let Some(done) = sweep_run(store, run, policy, now).await? {
                swept.push(done);
            }
        }
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(swept),
        }
    }
}

/// One run as a sweeper listed it (the store may have moved on since): nothing when its
/// worker is heard (or already flagged silent), else the conditional write its standing
/// calls for, which re-checks the run as stored.
pub async fn sweep_run(
    store: &dyn Store,
    listed: &Run,
    policy: &Policy,
    now: Timestamp,
) -> store::Result<Option<Swept>> {
    let action = match standing(listed, policy, now) {
        None | Some(Standing::Heard) => return Ok(None),
        Some(Standing::Silent) if listed.silent_since.is_some() => return Ok(None),
        Some(Standing::Silent) => Action::FlaggedSilent,
        Some(Standing::Lost) => match policy.on_lost {
            OnLost::Fail => Action::Failed,
            OnLost::Requeue => Action::Requeued,
        },
    };
    let (attempt, policy) = (listed.attempt, *policy);
    let wanted = if action == Action::FlaggedSilent { Standing::Silent } else { Standing::Lost };
    let record = record(listed, action, &policy, now);
    let failure = record.clone();
    // Re-checked on the stored run: the same attempt, still held, still as silent.
    let change = Box::new(move |run: &mut Run| {
        if run.attempt != attempt || standing(run, &policy, now) != Some(wanted) {
            return false;
        }
        match (action, &failure) {
            (Action::FlaggedSilent, _) if run.silent_since.is_some() => return false,
            (Action::FlaggedSilent, _) => run.silent_since = Some(now),
            (Action::Failed, Some(failure)) => reduce::apply(run, failure),
            (Action::Requeued, _) => run.reset(now),
            (Action::Failed, None) => return false,
        }
        true
    });
    if store.update_if(&listed.id, now, change).await?.is_none() {
        return Ok(None);
    }
    if let Some(record) = record {
        // The run's history says what happened. Its id is the same for every sweeper, so a
        // second one's record is a duplicate.
        store.apply_events(vec![record], now).await?;
    }
    Ok(Some(Swept { run_id: listed.id.clone(), attempt, worker: listed.claimed_by.clone(), action }))
}

/// Whether `event` is a sweep's record rather than word from a worker.
pub fn is_sweep_record(event: &Event) -> bool {
    event.source == SWEEP_SOURCE
}

/// The event that records a lost run: its `ai.run.failed`, or for a requeue a warning log
/// line (stored, of no effect: the requeue ended the attempt it is stamped with). `None`
/// for a silent flag, which is no event.
fn record(run: &Run, action: Action, policy: &Policy, now: Timestamp) -> Option<Event> {
    let worker = run.claimed_by.as_deref().unwrap_or("(none)");
    let silent_s = run.last_seen_at().map_or(0.0, |seen| now.seconds_since(seen)).max(0.0);
    let message = format!(
        "no word from worker {worker} for {} (lease {})",
        humantime::format_duration(Duration::from_secs(silent_s as u64)),
        humantime::format_duration(policy.lease)
    );
    let (name, event_type, mut data) = match action {
        Action::FlaggedSilent => return None,
        Action::Requeued => (
            "requeued",
            "ai.run.log",
            json!({ "level": "warning", "source": "sweep", "message": format!("{message}; requeued") }),
        ),
        Action::Failed => (
            "lost",
            "ai.run.failed",
            json!({
                "code": WORKER_LOST,
                "message": message,
                "retryable": true,
                "stage": run.current_stage.as_ref().map(|stage| stage.name.as_str()),
            }),
        ),
    };
    data["run_id"] = Value::from(run.id.as_str());
    let mut object = Map::new();
    for (name, value) in [
        ("specversion", json!("1.0")),
        ("id", json!(format!("{name}:{}:{}", run.id, run.attempt))),
        ("source", json!(SWEEP_SOURCE)),
        ("type", json!(event_type)),
        ("subject", json!(format!("run/{}", run.id))),
        ("time", json!(now.to_string())),
        ("attempt", json!(run.attempt)),
        ("data", data),
    ] {
        object.insert(name.into(), value);
    }
    // Built here from known-good parts; a unit test holds every record valid.
    event::from_json_object(object, now).ok()
}

/// Sweeps the held ideation requests once at `now`: fails or requeues those whose worker
/// was silent for the whole lease. Each is one conditional write that re-checks the stored
/// request, as for runs.
pub async fn sweep_ideation(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<Vec<IdeationRequest>> {
    let lease = policy.lease.as_secs_f64();
    let requeue = policy.on_lost == OnLost::Requeue;
    let mut lost = Vec::new();
    for listed in store.list_ideation(&[IdeationStatus::Running], store::MAX_LIMIT).await? {
        if listed.silent_for(now).is_none_or(|silent| silent < lease) {
            continue;
        }
        let attempt = listed.attempt;
        let error = format!(
            "{WORKER_LOST}: no word from worker {} for the whole lease ({})",
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
pub async fn sweep_and_log(store: &dyn Store, policy: &Policy, now: Timestamp) -> store::Result<()> {
    sweep(store, policy, now).await?.iter().for_each(log);
    for request in sweep_ideation(store, policy, now).await? {
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

/// Sweeps every `every` until the task is dropped, logging what each sweep did. A failed
/// sweep is logged once and retried at the next tick.
pub async fn keep_sweeping(store: Arc<dyn Store>, policy: Policy, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match sweep_and_log(store.as_ref(), &policy, Timestamp::now()).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::run::NewRun;

    fn held_run() -> Run {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        run.claim("pod-a", Timestamp::EPOCH);
        run
    }

    fn policy() -> Policy {
        Policy::new(Duration::from_secs(60), Duration::from_secs(600), OnLost::Fail).expect("valid")
    }

    #[test]
    fn the_lease_must_outlast_the_silence() {
        let err = Policy::new(Duration::from_secs(60), Duration::from_secs(60), OnLost::Fail).expect_err("equal");
        assert!(err.contains("must be longer"), "{err}");
        assert!(Policy::new(Duration::ZERO, Duration::from_secs(1), OnLost::Requeue).is_err());
    }

    #[test]
    fn standing_follows_the_time_since_the_worker_was_heard() {
        let run = held_run();
        let after = |seconds| standing(&run, &policy(), Timestamp::EPOCH.plus_seconds(seconds));
        assert_eq!(
            [after(59), after(60), after(599), after(600)].map(Option::unwrap),
            [Standing::Heard, Standing::Silent, Standing::Silent, Standing::Lost]
        );
        let queued = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        assert_eq!(standing(&queued, &policy(), Timestamp::EPOCH.plus_seconds(10_000)), None);
    }

    /// The records are built from parts the validator must accept: a record that failed to
    /// build would leave a lost run held.
    #[test]
    fn every_record_is_a_valid_event_of_the_lost_attempt() {
        let run = held_run();
        let now = Timestamp::EPOCH.plus_seconds(601);
        let failed = record(&run, Action::Failed, &policy(), now).expect("a valid failure");
        let Payload::Failed(failure) = &failed.payload else { panic!("{:?}", failed.payload) };
        assert_eq!((failure.code.as_deref(), failure.retryable), (Some(WORKER_LOST), Some(true)));
        assert_eq!((failed.attempt, failed.run_id.as_ref()), (Some(1), Some(&run.id)));
        assert!(is_sweep_record(&failed));
        let requeued = record(&run, Action::Requeued, &policy(), now).expect("a valid log line");
        assert_eq!(requeued.event_type, "ai.run.log");
        assert_ne!(requeued.id, failed.id);
        assert!(record(&run, Action::FlaggedSilent, &policy(), now).is_none());
    }
}
