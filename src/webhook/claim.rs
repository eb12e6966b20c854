//! The two writes of one delivery, as edits of the run for `Store::update_if` (a
//! conditional write on both stores): take the mark while it is due, so that one sender
//! alone sends it, then record what the try did. Pure, so both are tested here.

use std::time::Duration;

use crate::alert::Mark;
use crate::run::Run;
use crate::time::Timestamp;

/// What one try of a delivery did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tried {
    /// Fingerprints of the webhooks that answered 2xx.
    pub acked: Vec<String>,
    /// Why the others did not, when some did not.
    pub failure: Option<String>,
}

/// `now` moved on by `delay`.
pub fn later(now: Timestamp, delay: Duration) -> Timestamp {
    Timestamp::from_millis(now.millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)))
}

fn mark_mut<'a>(run: &'a mut Run, id: &str) -> Option<&'a mut Mark> {
    run.alerts.iter_mut().find(|mark| mark.id == id)
}

/// Takes mark `id` for sender `claim` until `until`, if it is still due at `now` (not
/// delivered, not held by another sender whose hold is still on). False: leave it.
pub fn take(run: &mut Run, id: &str, claim: &str, now: Timestamp, until: Timestamp) -> bool {
    let Some(mark) = mark_mut(run, id) else { return false };
    if mark.due_at.is_none_or(|due| due > now) {
        return false;
    }
    mark.due_at = Some(until);
    mark.claim = Some(claim.to_owned());
    true
}

/// Records try `claim` of mark `id`: delivered once every webhook in `webhooks` (their
/// fingerprints) has acknowledged it, else due again after `backoff(failed tries so far)`.
/// False when the delivery is no longer this sender's (its hold ran out and another took it).
pub fn record(
    run: &mut Run,
    id: &str,
    claim: &str,
    tried: &Tried,
    webhooks: &[String],
    now: Timestamp,
    backoff: impl Fn(u32) -> Duration,
) -> bool {
    let Some(mark) = mark_mut(run, id) else { return false };
    if mark.claim.as_deref() != Some(claim) {
        return false;
    }
    mark.claim = None;
    for acked in &tried.acked {
        if !mark.sent_to.contains(acked) {
            mark.sent_to.push(acked.clone());
        }
    }
    if webhooks.iter().all(|webhook| mark.sent_to.contains(webhook)) {
        mark.due_at = None;
        mark.delivered_at = Some(now);
        mark.last_error = None;
    } else {
        mark.due_at = Some(later(now, backoff(mark.tries)));
        mark.tries += 1;
        mark.last_error = tried.failure.clone();
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::alert::{self, Raise};
    use crate::run::{NewRun, RunStatus};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_761_159_600_000 + seconds * 1000)
    }

    /// A run with one failed alert, due at 10 s.
    fn alerted() -> Run {
        let mut run = Run::queued(NewRun::new(json!({})), at(0));
        run.claim("pod-a", at(1));
        run.status = RunStatus::Failed;
        alert::raise(&mut run, &Raise { alerts: true, completed: false, spans: false }, at(10));
        run
    }

    const HOOKS: [&str; 2] = ["hook-a", "hook-b"];

    fn hooks() -> Vec<String> {
        HOOKS.map(str::to_owned).to_vec()
    }

    #[test]
    fn one_sender_takes_a_due_mark_and_another_cannot_until_its_hold_ends() {
        let mut run = alerted();
        assert!(!take(&mut run, "failed:1", "a", at(9), at(39)), "not due yet");
        assert!(take(&mut run, "failed:1", "a", at(10), at(40)));
        assert!(!take(&mut run, "failed:1", "b", at(20), at(50)), "held by a");
        assert_eq!(run.alerts_due(), Some(at(40)));
        // a died: at the end of its hold b takes over, and a's late record is refused.
        assert!(take(&mut run, "failed:1", "b", at(40), at(70)));
        let tried = Tried { acked: hooks(), failure: None };
        assert!(!record(&mut run, "failed:1", "a", &tried, &hooks(), at(41), |_| Duration::ZERO));
        assert!(!take(&mut run, "missing", "b", at(40), at(70)));
    }

    #[test]
    fn acknowledged_by_every_webhook_it_is_delivered_and_never_due_again() {
        let mut run = alerted();
        assert!(take(&mut run, "failed:1", "a", at(10), at(40)));
        let tried = Tried { acked: hooks(), failure: None };
        assert!(record(&mut run, "failed:1", "a", &tried, &hooks(), at(11), |_| Duration::ZERO));
        let mark = &run.alerts[0];
        assert_eq!((mark.due_at, mark.delivered_at, mark.claim.as_deref()), (None, Some(at(11)), None));
        assert!(!take(&mut run, "failed:1", "b", at(100), at(130)));
    }

    #[test]
    fn a_failed_try_backs_off_and_the_retry_goes_to_the_webhooks_that_did_not_answer() {
        let mut run = alerted();
        let backoff = |tries: u32| Duration::from_secs(5 << tries);
        assert!(take(&mut run, "failed:1", "a", at(10), at(40)));
        let half = Tried { acked: vec!["hook-a".to_owned()], failure: Some("hook 2: 500".to_owned()) };
        assert!(record(&mut run, "failed:1", "a", &half, &hooks(), at(12), backoff));
        let mark = &run.alerts[0];
        assert_eq!((mark.due_at, mark.tries, mark.last_error.as_deref()), (Some(at(17)), 1, Some("hook 2: 500")));
        assert_eq!(mark.sent_to, ["hook-a"]);
        assert!(take(&mut run, "failed:1", "a2", at(17), at(47)));
        let none = Tried { acked: Vec::new(), failure: Some("hook 2: timed out".to_owned()) };
        assert!(record(&mut run, "failed:1", "a2", &none, &hooks(), at(20), backoff));
        assert_eq!((run.alerts[0].due_at, run.alerts[0].tries), (Some(at(30)), 2), "the delay doubled");
        assert!(take(&mut run, "failed:1", "a3", at(30), at(60)));
        let rest = Tried { acked: vec!["hook-b".to_owned()], failure: None };
        assert!(record(&mut run, "failed:1", "a3", &rest, &hooks(), at(31), backoff));
        assert_eq!((run.alerts[0].due_at, run.alerts[0].delivered_at), (None, Some(at(31))));
    }
}
