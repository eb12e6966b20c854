//! What the ingest endpoints answer (202): one event's outcome, or a batch's counts and
//! rejected lines. `serve` and a worker's local endpoint write them; clients read them.

use serde::{Deserialize, Serialize};

use crate::event::wire::Rejected;
use crate::store::Outcome;

/// What became of one accepted event: applied (stored and applied), duplicate (its `source`
/// and `id` were seen before; changes nothing), stale (stored, but its attempt is not the
/// run's live claim), orphan (stored; its run does not exist yet), spooled (worker only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// Stored and applied to its run (or hypothesis).
    Applied,
    /// Seen before: acknowledged, changes nothing.
    Duplicate,
    /// Stored, but its `attempt` is not the run's live claim.
    Stale,
    /// Stored; its run does not exist yet.
    Orphan,
    /// Kept on the pod's disk by a worker's local endpoint, in its ordered stream to the
    /// control plane (never answered by `serve`).
    Spooled,
}

impl From<Outcome> for EventOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => EventOutcome::Applied,
            Outcome::Duplicate => EventOutcome::Duplicate,
            Outcome::Stale => EventOutcome::Stale,
            Outcome::Orphan => EventOutcome::Orphan,
        }
    }
}

/// The answer to one event (`POST /api/ingest/event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventAnswer {
    pub id: String,
    pub outcome: EventOutcome,
}

/// The answer to a batch (`POST /api/ingest/events`): counts by outcome, and each rejected
/// line with its reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    /// Stored: applied, stale (fenced) or orphan (run not created yet); from a worker's
    /// local endpoint, spooled.
    pub accepted: usize,
    pub applied: usize,
    pub duplicate: usize,
    pub stale: usize,
    pub orphan: usize,
    /// Kept on the pod's disk; only a worker's local endpoint answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spooled: Option<usize>,
    pub rejected: Vec<Rejected>,
}

impl BatchAnswer {
    /// Counts `outcome` for one stored event.
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Orphan => self.orphan += 1,
        }
        self.accepted = self.applied + self.stale + self.orphan;
    }

    /// Adds the answer to a part of a larger batch; `position` turns the part's 1-based
    /// line numbers into the whole batch's.
    pub fn add_part(&mut self, part: BatchAnswer, position: impl Fn(usize) -> usize) {
        self.accepted += part.accepted;
        self.applied += part.applied;
        self.duplicate += part.duplicate;
        self.stale += part.stale;
        self.orphan += part.orphan;
        if let Some(spooled) = part.spooled {
            *self.spooled.get_or_insert(0) += spooled;
        }
        self.rejected.extend(
            part.rejected
                .into_iter()
                .map(|rejected| Rejected { line: position(rejected.line), reason: rejected.reason }),
        );
    }
}
