//! Stalled runs: a RUNNING run whose worker is heard (heartbeats arrive, so the lease holds)
//! but which has made no progress (no stage, progress, node, metric or artifact event, no
//! log line: `Run::progress_at`) for the stall time: `--stall-after`, or the current stage's
//! `stall_after` from the pipeline file. Such a run is flagged `stalledSince` and its status
//! is unchanged; the next sign of progress clears the flag. With `--on-stall cancel` the
//! sweeper then stops it: an `ai.run.failed` record with code STALLED (retryable, so the
//! retry policy applies), which fails the run, and its worker, seeing its claim no longer
//! live, stops the child. The rules only; the sweeper that applies them is `crate::sweep`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::lease::{self, Standing};
use crate::event::{Event, FailureCode, payload};
use crate::run::{Run, RunStatus};
use crate::time::Timestamp;

/// What becomes of a stalled run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStall {
    /// Flagged `stalledSince`, nothing else: a person (or an alert) decides.
    Flag,
    /// Flagged, then failed with code STALLED (retryable).
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub after: Duration,
    pub on_stall: OnStall,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { after: Duration::from_secs(30 * 60), on_stall: OnStall::Flag }
    }
}

/// How long `run` may go without progress: its current stage's own stall time (the pipeline
/// file's `stall_after`, sent with the stage's start), else `policy.after`.
pub fn allowed(run: &Run, policy: &Policy) -> Duration {
    run.current_stage
        .as_ref()
        .and_then(|stage| run.stage_timing.get(stage.name.as_str()))
        .and_then(|timing| timing.stall_after_s)
        // Events are checked at the door; a stored value from before that is still no panic.
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok().filter(|after| !after.is_zero()))
        .unwrap_or(policy.after)
}

/// Whether `run` is stalled at `now`: RUNNING, its worker heard, no progress for [`allowed`].
pub fn is_stalled(run: &Run, lease: &lease::Policy, now: Timestamp) -> bool {
    if run.status != RunStatus::Running || lease::standing(run, lease, now) != Some(Standing::Heard) {
        return false;
    }
    // A run claimed before `progressAt` existed is judged from its next progress, never
    // from its start: an upgrade must not stop every long run at its first sweep.
    let Some(since) = run.progress_at.or_else(|| run.last_seen_at()) else { return false };
    now.seconds_since(since) >= allowed(run, &lease.stall).as_secs_f64()
}

/// Flags `run` stalled at `now`, on the run as stored: false, leaving it, unless it is still
/// claim `attempt`, not flagged yet, and stalled.
pub fn flag(run: &mut Run, attempt: u32, lease: &lease::Policy, now: Timestamp) -> bool {
    if run.attempt != attempt || run.stalled_since.is_some() || !is_stalled(run, lease, now) {
        return false;
    }
    run.stalled_since = Some(now);
    true
}

/// The `ai.run.failed` record that stops a flagged run (`--on-stall cancel`), the same for
/// every sweeper; `None` while the run is not flagged.
pub fn record(run: &Run, lease: &lease::Policy, now: Timestamp) -> Option<Event> {
    let since = run.stalled_since?;
    let message = format!(
        "no progress for {} while its worker was heard; stopped (--on-stall cancel)",
        humantime::format_duration(allowed(run, &lease.stall))
    );
    let stage = run.current_stage.as_ref().map(|stage| stage.name.as_str().to_owned());
    let extra = Map::from_iter([("run_id".to_owned(), Value::from(run.id.as_str()))]);
    let failed = payload::Failed { stage, extra, ..payload::Failed::of(FailureCode::Stalled, message) };
    let id = format!("stalled:{}:{}:{}", run.id, run.attempt, since.millis());
    lease::sweep_record(run, &id, since, &failed, now)
}

/// Whether a stall record may still stop `run`: only while the run is flagged (progress
/// since the sweep decided clears the flag, and then the record changes nothing).
pub fn admits(run: &Run, event: &Event) -> bool {
    let is_stall_record = lease::is_sweep_record(event) && event.id.0.starts_with("stalled:");
    !is_stall_record || run.stalled_since.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{NewRun, Stage, StageTiming};

    fn policy(on_stall: OnStall) -> lease::Policy {
        let mut policy =
            lease::Policy::new(Duration::from_secs(60), Duration::from_secs(600), lease::OnLost::Fail).expect("valid");
        policy.stall = Policy { after: Duration::from_secs(1800), on_stall };
        policy
    }

    fn running() -> Run {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        run.claim("pod-a", Timestamp::EPOCH);
        run.status = RunStatus::Running;
        run
    }

    #[test]
    fn a_heard_run_without_progress_is_stalled_after_the_stall_time() {
        let mut run = running();
        let at = |seconds| Timestamp::EPOCH.plus_seconds(seconds);
        run.heard(at(1799));
        assert!(!is_stalled(&run, &policy(OnStall::Flag), at(1799)));
        run.heard(at(1800));
        assert!(is_stalled(&run, &policy(OnStall::Flag), at(1800)));
        assert!(!flag(&mut run, 2, &policy(OnStall::Flag), at(1800)), "another attempt's decision");
        assert!(flag(&mut run, 1, &policy(OnStall::Flag), at(1800)));
        assert!(!flag(&mut run, 1, &policy(OnStall::Flag), at(1801)), "flagged once");
        run.made_progress(at(1900));
        assert_eq!(run.stalled_since, None, "progress clears the flag");
        assert!(!is_stalled(&run, &policy(OnStall::Flag), at(1901)));
        // A silent worker is the lease's business, not a stall.
        assert!(!is_stalled(&run, &policy(OnStall::Flag), at(1900 + 1800 + 61)));
    }

    #[test]
    fn a_run_from_before_progress_was_kept_is_judged_from_its_worker_not_its_start() {
        let mut run = running();
        run.progress_at = None;
        run.heard(Timestamp::EPOCH.plus_seconds(86_400));
        assert!(!is_stalled(&run, &policy(OnStall::Cancel), Timestamp::EPOCH.plus_seconds(86_401)));
    }

    #[test]
    fn a_stage_may_allow_longer() {
        let mut run = running();
        run.current_stage = Some(crate::run::CurrentStage::new(Stage::Stage2));
        let timing = StageTiming { stall_after_s: Some(7200.0), ..StageTiming::default() };
        run.stage_timing.insert("Stage_2".into(), timing);
        run.heard(Timestamp::EPOCH.plus_seconds(3600));
        assert!(!is_stalled(&run, &policy(OnStall::Flag), Timestamp::EPOCH.plus_seconds(3600)));
        assert_eq!(allowed(&run, &policy(OnStall::Flag).stall), Duration::from_secs(7200));
    }

    #[test]
    fn the_stop_record_is_a_retryable_stalled_failure_only_while_flagged() {
        let mut run = running();
        assert!(record(&run, &policy(OnStall::Cancel), Timestamp::EPOCH).is_none(), "not flagged");
        run.heard(Timestamp::EPOCH.plus_seconds(1800));
        assert!(flag(&mut run, 1, &policy(OnStall::Cancel), Timestamp::EPOCH.plus_seconds(1800)));
        let stop = record(&run, &policy(OnStall::Cancel), Timestamp::EPOCH.plus_seconds(1801)).expect("a valid event");
        let crate::event::Payload::Failed(failure) = &stop.payload else { panic!("{:?}", stop.payload) };
        assert_eq!((failure.code.as_deref(), failure.retryable), (Some("STALLED"), Some(true)));
        assert!(admits(&run, &stop));
        run.made_progress(Timestamp::EPOCH.plus_seconds(1802));
        assert!(!admits(&run, &stop), "progress since the decision voids the record");
    }
}
