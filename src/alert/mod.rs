//! Alerts: webhook POSTs for runs that fail, are lost, stall, await review or complete.
//! An alert is raised on the run document itself, in the same write as the change that
//! calls for it (a [`Mark`]), so that none is lost between the change and its alert.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// One alert a run raised, kept on the run until a webhook acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Unique per run and cause (`failed:3`): the receiver's idempotency key with the run id.
    pub id: String,
    pub kind: String,
    pub raised_at: Timestamp,
    /// When delivery is next due; `None` once delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
}

impl crate::run::Run {
    /// When the earliest undelivered alert is due (indexed by both stores).
    pub fn alerts_due(&self) -> Option<Timestamp> {
        self.alerts.iter().filter_map(|mark| mark.due_at).min()
    }
}

/// Which alerts runs raise: none unless a webhook is configured (`serve --alert-webhook`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raise {
    pub enabled: bool,
    /// Completed runs too (opt-in).
    pub completed: bool,
}

/// Adds to `run` the marks of the alerts its state now calls for and has not raised yet.
pub fn raise(_run: &mut crate::run::Run, raise: &Raise, _now: Timestamp) {
    if !raise.enabled {
        return;
    }
}
