//! Fencing: every claim increments a run's `attempt`, and workers stamp it on their events.
//!
//! An event stamped with an attempt is admitted only while that attempt is the run's live
//! claim: a worker wrongly presumed lost (its run reset or claimed again) can never
//! overwrite the new attempt. Events without an attempt (operators, CI scripts) are not fenced.

use crate::run::Run;

/// Whether an event stamped with `attempt` may change `run`.
pub fn admits(run: &Run, attempt: Option<u32>) -> bool {
    match attempt {
        None => true,
        // After a reset the run is unclaimed: no attempt is live until the next claim.
        Some(attempt) => attempt == run.attempt && run.claimed_by.is_some(),
    }
}

/// Whether the worker of claim `attempt` should go on with `run`: its events are admitted and
/// the run has not ended (finished, failed by a sweep, or canceled).
pub fn is_live(run: &Run, attempt: u32) -> bool {
    admits(run, Some(attempt)) && !run.status.is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{NewRun, Run};
    use crate::time::Timestamp;

    #[test]
    fn only_the_live_attempt_is_admitted() {
        let now = Timestamp::EPOCH;
        let mut run = Run::queued(NewRun::new(serde_json::Value::Null), now);
        assert!(admits(&run, None));
        assert!(!admits(&run, Some(0)), "an unclaimed run has no live attempt");
        run.claim("pod-a", now);
        assert!(admits(&run, Some(1)));
        run.status = crate::run::RunStatus::Failed;
        run.reset(now);
        assert!(!admits(&run, Some(1)), "reset ends the old attempt");
        run.claim("pod-b", now);
        assert!(!admits(&run, Some(1)));
        assert!(admits(&run, Some(2)));
    }
}
