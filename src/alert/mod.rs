//! Alerts: what a run raises when it fails, is lost, stalls, awaits review, completes or
//! nears its budget; and, through the same outbox, each ended attempt's trace spans.
//! An alert is raised on the run document itself, in the same write as the change that
//! calls for it (a [`Mark`]): an outbox on the document, atomic on both stores without a
//! transaction, so that no alert is lost between the change and its delivery. Delivering
//! marks (webhooks, claims, retries) is `webhook`'s job; this module only says which marks a
//! run's state calls for (`raise`).

mod raise;

use serde::{Deserialize, Serialize};

use crate::run::RunStatus;
use crate::time::Timestamp;

pub use raise::raise;

/// Why a run raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// FAILED, with no retry left (a retryable failure with attempts left is requeued instead).
    Failed,
    /// FAILED because its worker was silent for the whole lease (`WORKER_LOST`).
    Lost,
    /// Heard from but making no progress (`stalledSince`).
    Stalled,
    /// AWAITING_HUMAN: a review was requested.
    Review,
    /// COMPLETED (only with `serve --alert-on-complete`).
    Completed,
    /// Spent 80% of its budget (`queue::budget`); once per run.
    Budget,
    /// Not an alert: an ended attempt whose spans are due at the trace collector
    /// (`--otlp-endpoint`, sent by `otlp`), delivered with the same claims and retries.
    Spans,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Lost => "lost",
            Kind::Stalled => "stalled",
            Kind::Review => "review",
            Kind::Completed => "completed",
            Kind::Budget => "budget",
            Kind::Spans => "spans",
        }
    }
}

/// The run as it was when the alert was raised: every try sends the same body, whatever
/// the run does next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    pub status: RunStatus,
    pub attempt: u32,
    /// The error code (`error.type`) of a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The error message, the review's reason, or what a stall is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Why a retryable failure was not retried (attempts used up, thrashing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_stopped: Option<String>,
}

/// One alert a run raised, kept on the run: due until every webhook acknowledged it, then
/// kept (without `dueAt`) so that the same cause never raises it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Unique per run, cause and attempt (`failed:3`, `stalled:3:<stalledSince ms>`): with the
    /// run id, the receiver's idempotency key.
    pub id: String,
    pub kind: Kind,
    pub raised_at: Timestamp,
    /// When delivery is next due; `None` once delivered. While a sender holds the delivery
    /// (`claim`), the end of its hold: a sender that died is taken over then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// The sender delivering it now (replica and a token of this try).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Failed tries so far (the backoff's exponent).
    #[schema(required = true)]
    #[serde(default)]
    pub tries: u32,
    /// Webhooks that acknowledged it (fingerprints, not URLs: a Slack URL is a secret), so
    /// that a retry goes only to those that did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    /// Why the last try failed (status or transport error; never a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub facts: Facts,
}

impl crate::run::Run {
    /// When the earliest undelivered alert is due (indexed by both stores).
    pub fn alerts_due(&self) -> Option<Timestamp> {
        self.alerts.iter().filter_map(|mark| mark.due_at).min()
    }
}

/// Which marks runs raise: alerts when a webhook is configured (`--alert-webhook`), spans
/// when a trace collector is (`--otlp-endpoint`); none by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raise {
    pub alerts: bool,
    /// Completed runs too (opt-in).
    pub completed: bool,
    pub spans: bool,
}
