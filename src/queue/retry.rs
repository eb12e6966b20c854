//! Automatic retries: what becomes of a run that fails retryably. The rules only, no I/O;
//! the store applies [`after_end`] in the very write that ends an attempt, so the decision is
//! taken once, on the run as stored, whoever stores the failure (a worker's report, a
//! sweeper's record of a lost worker, on any replica).
//!
//! Off by default. A run that fails with `retryable: true` and has retries left goes back to
//! QUEUED with `notBefore` set after a backoff (exponential from `backoff`, capped at `cap`,
//! with up to half added by a jitter fixed per run and attempt); its failed attempt is kept
//! in `attempts`. A run failing retryably [`THRASH_FAILURES`] times within [`THRASH_WINDOW`]
//! is thrashing and is not retried again, whatever is left.

use std::time::Duration;

use crate::run::{Run, RunStatus};
use crate::time::Timestamp;

/// Failures within [`THRASH_WINDOW`] that make a run thrashing (as Dataproc counts them).
pub const THRASH_FAILURES: usize = 4;
pub const THRASH_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How many times, and how soon, a retryable failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Retries of a run (a run's own `retryMax` overrides it); 0 turns retries off.
    pub max: u32,
    /// The first retry's wait; each further one doubles it, up to `cap`.
    pub backoff: Duration,
    pub cap: Duration,
}

impl Policy {
    pub const OFF: Policy = Policy { max: 0, backoff: Duration::from_secs(60), cap: Duration::from_secs(60 * 60) };
}

impl Default for Policy {
    fn default() -> Self {
        Policy::OFF
    }
}

/// What becomes of a run whose attempt just ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Back to the queue, claimable from `not_before`.
    Retry { not_before: Timestamp },
    /// Not a retryable failure, or retries are off: it stays as it ended.
    Final,
    /// A retryable failure that is not retried, and why (used up, thrashing).
    Stopped(String),
}

/// What `policy` makes of `run`, whose attempt ended at `now` and is already in `attempts`.
pub fn decide(run: &Run, policy: &Policy, now: Timestamp) -> Decision {
    let Some(error) = run.error.as_ref().filter(|error| error.retryable && run.status == RunStatus::Failed) else {
        return Decision::Final;
    };
    let max = run.retry_max.unwrap_or(policy.max);
    if max == 0 {
        return Decision::Final;
    }
    let since = now.plus_seconds(-(THRASH_WINDOW.as_secs() as i64));
    let recent = run
        .attempts
        .iter()
        .filter(|attempt| attempt.ended_at >= since && attempt.error.as_ref().is_some_and(|error| error.retryable))
        .count();
    if recent >= THRASH_FAILURES {
        let window = humantime::format_duration(THRASH_WINDOW);
        return Decision::Stopped(format!("thrashing: {recent} retryable failures within {window}; not retried"));
    }
    if run.retry_count >= max {
        return Decision::Stopped(format!("{} failed retryably after {max} retries; none left", error.error_type));
    }
    let delay = crate::backoff::jittered_exponential(policy.backoff, policy.cap, run.retry_count);
    let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    Decision::Retry { not_before: Timestamp::from_millis(now.millis().saturating_add(millis)) }
}

/// Applies [`decide`] to `run`, whose attempt ended at `now` (it just reached a terminal
/// status): records the attempt, then requeues it or notes why it stays failed.
pub fn after_end(run: &mut Run, policy: &Policy, now: Timestamp) {
    run.end_attempt(now);
    match decide(run, policy, now) {
        Decision::Retry { not_before } => {
            run.reset(now);
            run.not_before = Some(not_before);
        }
        Decision::Final => {}
        Decision::Stopped(reason) => run.retry_stopped = Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::run::{EventKey, NewRun, RunError};

    fn policy(max: u32) -> Policy {
        Policy { max, backoff: Duration::from_secs(60), cap: Duration::from_secs(600) }
    }

    /// A run claimed and failed at `at` with `retryable`.
    fn failed(run: &mut Run, retryable: bool, at: Timestamp) {
        run.claim("pod-a", at);
        run.status = RunStatus::Failed;
        let key = EventKey { time: at, id: format!("f{}", run.attempt), source: "pod://a".into() };
        run.error = Some(RunError {
            error_type: "SIGNAL_9".into(),
            message: "killed".into(),
            traceback: None,
            stage: None,
            retryable,
            failed_at: at,
            at: key,
        });
        run.failed_at = Some(at);
    }

    #[test]
    fn a_retryable_failure_is_requeued_after_a_growing_capped_backoff() {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        let mut now = Timestamp::EPOCH;
        for (retry, base_s) in [(0, 60), (1, 120), (2, 240)] {
            now = now.plus_seconds(3600);
            failed(&mut run, true, now);
            after_end(&mut run, &policy(5), now);
            assert_eq!(
                (run.status, run.retry_count, run.attempts.len()),
                (RunStatus::Queued, retry + 1, retry as usize + 1)
            );
            let wait = run.not_before.expect("a backoff").seconds_since(now);
            assert!(wait >= base_s as f64 && wait <= base_s as f64 * 1.5, "retry {retry}: {wait}");
            assert_eq!(run.attempts.last().map(|a| a.outcome.as_str()), Some("FAILED"));
        }
        for retries in 4..=6 {
            now = now.plus_seconds(3600);
            failed(&mut run, true, now);
            after_end(&mut run, &policy(5), now);
            assert_eq!(run.status == RunStatus::Queued, retries <= 5, "failure {retries}");
        }
        assert_eq!(run.status, RunStatus::Failed, "five retries used");
        assert!(run.retry_stopped.as_deref().is_some_and(|why| why.contains("none left")), "{:?}", run.retry_stopped);
        assert_eq!(run.attempts.len(), 6, "every attempt kept");
    }

    #[test]
    fn non_retryable_failures_and_retries_off_stay_failed() {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        failed(&mut run, false, Timestamp::EPOCH);
        after_end(&mut run, &policy(3), Timestamp::EPOCH);
        assert_eq!((run.status, run.retry_stopped.as_deref()), (RunStatus::Failed, None));
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        failed(&mut run, true, Timestamp::EPOCH);
        after_end(&mut run, &policy(0), Timestamp::EPOCH);
        assert_eq!(run.status, RunStatus::Failed, "off by default");
        let mut run = Run { retry_max: Some(1), ..Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH) };
        failed(&mut run, true, Timestamp::EPOCH);
        after_end(&mut run, &policy(0), Timestamp::EPOCH);
        assert_eq!(run.status, RunStatus::Queued, "the run's own limit overrides the store's");
    }

    #[test]
    fn four_failures_in_ten_minutes_is_thrashing() {
        let mut run = Run::queued(NewRun::new(Value::Null), Timestamp::EPOCH);
        let mut now = Timestamp::EPOCH;
        for _ in 0..3 {
            failed(&mut run, true, now);
            after_end(&mut run, &policy(10), now);
            assert_eq!(run.status, RunStatus::Queued);
            now = now.plus_seconds(120);
        }
        failed(&mut run, true, now);
        after_end(&mut run, &policy(10), now);
        assert_eq!(run.status, RunStatus::Failed);
        assert!(
            run.retry_stopped.as_deref().is_some_and(|why| why.starts_with("thrashing")),
            "{:?}",
            run.retry_stopped
        );
    }
}
