//! What an event may do, by who sent it. A pod's token (the `ingest` scope alone) reports on
//! the run its worker holds and adds data to it; creating a run, or starting, ending or
//! cancelling one without that claim's `attempt`, takes an operator (the `admin` scope).
//!
//! Sound outside the store's transaction: runs are never deleted, a type never changes, and
//! an event with an `attempt` is still fenced by the store (`fence::admits`) when applied.
//! The one fact that can change in between, whether a run is held, only gates data events.

use std::fmt;

use crate::event::{Event, Payload};
use crate::run::Run;

/// Who sent an event, from the scopes of its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// An operator or CI script (`admin` scope; any token when none is configured), or a
    /// process that holds the store itself: any event.
    Admin,
    /// A pod (`ingest` scope without `admin`): see [`pod_may_send`].
    Pod,
}

/// Why a pod may not send an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `source` under [`OWN_SOURCES`]: only scientist's own records carry one.
    Reserved,
    /// `ai.run.enqueued`.
    Creates,
    /// The run it names does not exist.
    NoSuchRun,
    /// A status change (started, completed, failed, canceled, a review asked) without `attempt`.
    NoAttempt,
    /// Data without `attempt` for a run no worker holds (queued, or finished).
    NotHeld,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Reserved => {
                "sources under scientist:// are scientist's own (its sweeper's and reviews' records, whose ids \
                 anyone could guess): send events under a source of your own, such as pod://NAME"
            }
            Refusal::Creates => "creating a run takes the admin scope: a pod's ingest token cannot enqueue runs",
            Refusal::NoSuchRun => {
                "no such run: a pod's ingest token reports only on runs its worker holds (the admin scope may send \
                 events for runs not created yet)"
            }
            Refusal::NoAttempt => {
                "a pod's ingest token may start, end or cancel only the run its worker holds: stamp the event with \
                 that claim's `attempt` (the worker does), or use an admin token"
            }
            Refusal::NotHeld => {
                "no worker holds this run: a pod's ingest token adds data only to held runs (stamp the claim's \
                 `attempt`, or use an admin token)"
            }
        })
    }
}

/// Where scientist's own records come from (`scientist://sweep`, `scientist://review`). No
/// client may send under them: a record's id is predictable, and an event sent first under
/// it would make the real record a duplicate, never applied.
pub const OWN_SOURCES: &str = "scientist://";

/// Whether any client, whatever its scope, may send `event`: not under [`OWN_SOURCES`].
pub fn client_may_send(event: &Event) -> Result<(), Refusal> {
    if event.source.starts_with(OWN_SOURCES) { Err(Refusal::Reserved) } else { Ok(()) }
}

/// Whether a pod may send `event` about `run` as stored now (`None`: no such run).
pub fn pod_may_send(run: Option<&Run>, event: &Event) -> Result<(), Refusal> {
    pod_may_send_for_its_claim(event)?;
    let Some(run) = run else {
        // Events about no run (a hypothesis's ideas) are not a run's business.
        return if event.run_id.is_none() { Ok(()) } else { Err(Refusal::NoSuchRun) };
    };
    if event.attempt.is_some() {
        // The store's fence admits it only while that attempt is the live claim.
        return Ok(());
    }
    if event.payload.changes_status() {
        return Err(Refusal::NoAttempt);
    }
    if run.claimed_by.is_none() || run.status.is_terminal() {
        return Err(Refusal::NotHeld);
    }
    Ok(())
}

/// Whether a pod may send `event` about the run it holds, stamped with its live claim (as
/// a worker's stream stamps what its child sends): only creating runs is refused.
pub fn pod_may_send_for_its_claim(event: &Event) -> Result<(), Refusal> {
    client_may_send(event)?;
    match event.payload {
        Payload::Enqueued(_) => Err(Refusal::Creates),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use crate::event::EventType;
    use crate::run::NewRun;
    use crate::time::Timestamp;

    #[test]
    fn no_client_sends_under_scientists_own_sources() {
        for own in [crate::queue::lease::SWEEP_SOURCE, crate::queue::review::REVIEW_SOURCE] {
            assert!(own.starts_with(OWN_SOURCES), "{own}");
        }
        let forged = crate::event::from_json_object(
            serde_json::from_value(json!({"specversion": "1.0", "id": "lost:r1:1", "source": "scientist://sweep",
                "type": "ai.run.log", "subject": "run/r1", "data": {"message": "x"}}))
            .expect("an object"),
            Timestamp::EPOCH,
        )
        .expect("a valid event");
        assert_eq!(client_may_send(&forged), Err(Refusal::Reserved));
        assert_eq!(pod_may_send_for_its_claim(&forged), Err(Refusal::Reserved));
    }

    fn event(event_type: EventType, attempt: Option<u32>) -> Event {
        let mut object = json!({"specversion": "1.0", "id": "e", "source": "pod://p", "type": event_type.name(),
            "subject": "run/r1", "data": {"stage": "Stage_1", "message": "m", "reason": "r"}});
        if let Some(attempt) = attempt {
            object["attempt"] = json!(attempt);
        }
        crate::event::from_test_json(object, Timestamp::EPOCH)
    }

    #[test]
    fn a_pod_reports_on_held_runs_and_ends_them_only_with_an_attempt() {
        let now = Timestamp::EPOCH;
        let mut run = Run::queued(NewRun::new(json!(null)), now);
        assert_eq!(pod_may_send(Some(&run), &event(EventType::RunLog, None)), Err(Refusal::NotHeld));
        assert_eq!(pod_may_send(None, &event(EventType::RunLog, None)), Err(Refusal::NoSuchRun));
        run.claim("pod-a", now);
        assert_eq!(pod_may_send(Some(&run), &event(EventType::RunLog, None)), Ok(()));
        assert_eq!(pod_may_send(Some(&run), &event(EventType::RunCanceled, None)), Err(Refusal::NoAttempt));
        assert_eq!(pod_may_send(Some(&run), &event(EventType::RunCanceled, Some(1))), Ok(()));
        assert_eq!(pod_may_send(Some(&run), &event(EventType::RunEnqueued, Some(1))), Err(Refusal::Creates));
    }
}
