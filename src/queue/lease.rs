//! Leases: what becomes of a run whose worker stops being heard from. The rules only, no
//! I/O; the sweeper that applies them to a store is `crate::sweep`.
//!
//! A claimed run's worker is heard from through its claim and every event of its attempt
//! (`Run::heard_at`, the store's clock). Silent for `silent_after`, the run is flagged
//! `silentSince` and nothing else changes: unreachable is not dead, and a network blip must
//! not kill a healthy run. Silent for the whole `lease`, it is lost: failed with code
//! `FailureCode::WorkerLost` (retryable) or put back in the queue, per [`OnLost`].
//!
//! Each decision is taken on a listed run ([`decide`]) and taken again on the run as stored,
//! inside one conditional write ([`take`]: same attempt, still held, still as silent), so a
//! worker heard meanwhile, a finished run or a newer attempt is left alone. A failure is
//! written in two steps, each safe to repeat: [`take`] marks the still-held run `lostAt`,
//! then the run's [`record`] (its `ai.run.failed`) is stored and fails the run in one
//! `apply_events` write. A run is thus never FAILED by a sweep without its record; a held run
//! marked `lostAt` ([`awaits_record`]) is one whose sweeper stopped between the steps, and
//! the next sweep writes the record (its id is the same for every sweeper: a duplicate).
//!
//! Ideation requests follow the same lease (`IdeationRequest::lose`).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::event::{self, Event, EventData, FailureCode, LogLevel, payload};
use crate::run::{Run, RunStatus};
use crate::time::Timestamp;

/// The statuses the sweeper lists: those in which a worker may hold a run ([`is_held`]).
pub const SWEPT_STATUSES: [RunStatus; 3] = [RunStatus::Scheduled, RunStatus::Running, RunStatus::AwaitingHuman];

/// Whether a worker holds `run` and must be heard from: SCHEDULED or RUNNING, or
/// AWAITING_HUMAN with a review asked between stages (its worker waits, holding the run). A
/// review after the last stage waits on a person, not a worker, and is never swept.
pub fn is_held(run: &Run) -> bool {
    match run.status {
        RunStatus::Scheduled | RunStatus::Running => true,
        RunStatus::AwaitingHuman => run.review.as_ref().is_some_and(|review| review.holds_worker),
        _ => false,
    }
}

/// Where the sweeper's own records come from.
/// Under `authority::OWN_SOURCES`, which no client may send under.
pub(crate) const SWEEP_SOURCE: &str = "scientist://sweep";

/// What becomes of a lost run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// What becomes of a heard run that makes no progress (`queue::stall`).
    pub stall: super::stall::Policy,
    /// A review nobody decided this long is failed with `REVIEW_TIMEOUT` by the same sweeps
    /// (`queue::review`); `None`: a review waits for a person however long it takes.
    pub review_timeout: Option<Duration>,
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
        Ok(Policy { silent_after, lease, on_lost, stall: super::stall::Policy::default(), review_timeout: None })
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
    if !is_held(run) {
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

/// What a sweep does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FlaggedSilent,
    Failed,
    Requeued,
}

/// What a sweep at `now` should do to `run` as it was listed: nothing when its worker is
/// heard, already flagged silent, or already decided lost.
pub fn decide(run: &Run, policy: &Policy, now: Timestamp) -> Option<Action> {
    if run.lost_at.is_some() {
        return None;
    }
    match standing(run, policy, now)? {
        Standing::Heard => None,
        Standing::Silent if run.silent_since.is_some() => None,
        Standing::Silent => Some(Action::FlaggedSilent),
        Standing::Lost => Some(match policy.on_lost {
            OnLost::Fail => Action::Failed,
            OnLost::Requeue => Action::Requeued,
        }),
    }
}

/// Takes `action`, decided on claim `attempt` of a listed run, on `run` as stored: false,
/// leaving it as it is, unless the stored run still calls for it (same attempt, still held,
/// still as silent). A failure only marks the run `lostAt`: its [`record`] fails it.
pub fn take(run: &mut Run, attempt: u32, action: Action, policy: &Policy, now: Timestamp) -> bool {
    if run.attempt != attempt || decide(run, policy, now) != Some(action) {
        return false;
    }
    match action {
        Action::FlaggedSilent => run.silent_since = Some(now),
        Action::Failed => run.lost_at = Some(now),
        Action::Requeued => run.reset(now),
    }
    true
}

/// Whether `run` was decided lost before `now` and is still held: its sweeper stopped
/// before the record that fails it was written. A decision of this very instant is a
/// concurrent sweeper's, which is writing the record now.
pub fn awaits_record(run: &Run, now: Timestamp) -> bool {
    is_held(run) && run.lost_at.is_some_and(|lost_at| lost_at < now)
}

/// Whether `event` is a sweep's record rather than word from a worker.
pub fn is_sweep_record(event: &Event) -> bool {
    event.source == SWEEP_SOURCE
}

/// The event that records `action` on `run` as the sweep saw it (held by the lost
/// attempt), stamped with that attempt: for a failure its `ai.run.failed`, at the run's
/// `lostAt`, so that every sweeper builds the same record; for a requeue a warning log line
/// at `now` (stored, of no effect: the requeue ended the attempt it is stamped with). `None`
/// for a silent flag, which is no event, and for a failure not yet decided.
pub fn record(run: &Run, action: Action, policy: &Policy, now: Timestamp) -> Option<Event> {
    let time = match action {
        Action::FlaggedSilent => return None,
        Action::Failed => run.lost_at?,
        Action::Requeued => now,
    };
    let worker = run.claimed_by.as_deref().unwrap_or("(none)");
    let silent_s = run.last_seen_at().map_or(0.0, |seen| time.seconds_since(seen)).max(0.0);
    let message = format!(
        "no word from worker {worker} for {} (lease {})",
        humantime::format_duration(Duration::from_secs(silent_s as u64)),
        humantime::format_duration(policy.lease)
    );
    // The run's id goes in `data` too, as every emitter's does.
    let extra = Map::from_iter([("run_id".to_owned(), Value::from(run.id.as_str()))]);
    let (name, data): (&str, Box<dyn EventData>) = if action == Action::Requeued {
        let message = format!("{message}; requeued");
        let log = payload::Log { message, level: Some(LogLevel::Warning), source: Some("sweep".into()), extra };
        ("requeued", Box::new(log))
    } else {
        let stage = run.current_stage.as_ref().map(|stage| stage.name.as_str().to_owned());
        ("lost", Box::new(payload::Failed { stage, extra, ..payload::Failed::of(FailureCode::WorkerLost, message) }))
    };
    sweep_record(run, &format!("{name}:{}:{}", run.id, run.attempt), time, data.as_ref(), now)
}

/// A sweeper's event about `run`, stamped with its live attempt: the same `id` for every
/// sweeper that builds it, so that a second one is a duplicate.
pub(crate) fn sweep_record(
    run: &Run,
    id: &str,
    time: Timestamp,
    data: &dyn EventData,
    now: Timestamp,
) -> Option<Event> {
    let mut object = Map::new();
    for (name, value) in [
        ("specversion", json!("1.0")),
        ("id", json!(id)),
        ("source", json!(SWEEP_SOURCE)),
        ("type", json!(data.event_type().name())),
        ("subject", json!(format!("run/{}", run.id))),
        ("time", json!(time.to_string())),
        ("attempt", json!(run.attempt)),
        ("data", Value::Object(data.to_data())),
    ] {
        object.insert(name.into(), value);
    }
    // Built here from known-good parts; a unit test holds every record valid.
    event::from_json_object(object, now).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Payload};
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

    /// A worker waiting on a review between stages holds its run: if it dies, the run is lost
    /// like any held run. A review after the last stage holds no worker and is never swept.
    #[test]
    fn a_review_between_stages_is_held_by_its_worker_and_one_after_the_last_is_not() {
        let mut run = held_run();
        run.status = RunStatus::AwaitingHuman;
        let key = crate::run::EventKey { time: Timestamp::EPOCH, id: "r".into(), source: "pod://a".into() };
        let review = |holds_worker| crate::run::Review {
            requested_at: Timestamp::EPOCH,
            reason: None,
            stage: None,
            options: None,
            holds_worker,
            decision: None,
            decided_by: None,
            decided_at: None,
            comment: None,
            at: key.clone(),
        };
        let later = Timestamp::EPOCH.plus_seconds(601);
        run.review = Some(review(true));
        assert_eq!(standing(&run, &policy(), later), Some(Standing::Lost));
        run.review = Some(review(false));
        assert_eq!(standing(&run, &policy(), later), None);
    }

    /// A failure is decided once: the run marked `lostAt` waits for its record, which only a
    /// later sweep writes in the sweeper's stead.
    #[test]
    fn a_lost_run_is_marked_once_and_awaits_its_record() {
        let mut run = held_run();
        let now = Timestamp::EPOCH.plus_seconds(601);
        assert_eq!(decide(&run, &policy(), now), Some(Action::Failed));
        assert!(!take(&mut run, 2, Action::Failed, &policy(), now), "another attempt's decision");
        assert!(take(&mut run, 1, Action::Failed, &policy(), now));
        assert_eq!((run.status, run.lost_at), (RunStatus::Scheduled, Some(now)), "still held until its record");
        assert_eq!(decide(&run, &policy(), now.plus_seconds(1)), None, "decided once");
        assert!(!take(&mut run, 1, Action::Failed, &policy(), now.plus_seconds(1)));
        assert!(!awaits_record(&run, now), "a concurrent sweeper is writing it");
        assert!(awaits_record(&run, now.plus_seconds(1)));
        run.status = RunStatus::Failed;
        assert!(!awaits_record(&run, now.plus_seconds(1)), "its record was written");
    }

    /// The records are built from parts the validator must accept: a record that failed to
    /// build would leave a lost run held.
    #[test]
    fn every_record_is_a_valid_event_of_the_lost_attempt() {
        let mut run = held_run();
        let now = Timestamp::EPOCH.plus_seconds(601);
        assert!(record(&run, Action::Failed, &policy(), now).is_none(), "not decided yet");
        assert!(take(&mut run, 1, Action::Failed, &policy(), now));
        let failed = record(&run, Action::Failed, &policy(), now).expect("a valid failure");
        let Payload::Failed(failure) = &failed.payload else { panic!("{:?}", failed.payload) };
        assert_eq!((failure.code.as_deref(), failure.retryable), (Some("WORKER_LOST"), Some(true)));
        assert_eq!((failed.attempt, failed.run_id.as_ref()), (Some(1), Some(&run.id)));
        assert!(is_sweep_record(&failed));
        let later = record(&run, Action::Failed, &policy(), now.plus_seconds(30)).expect("a valid failure");
        assert_eq!((&later.id, later.time), (&failed.id, failed.time), "every sweeper's is the same");
        let requeued = record(&run, Action::Requeued, &policy(), now).expect("a valid log line");
        assert_eq!(requeued.event_type, EventType::RunLog.name());
        assert_ne!(requeued.id, failed.id);
        assert!(record(&run, Action::FlaggedSilent, &policy(), now).is_none());
    }
}
