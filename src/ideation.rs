//! Ideation requests: the `ideation_requests` queue that `scientist work --mode ideation`
//! (or `hybrid`, which serves it first) takes from. The web frontend creates a request when a
//! hypothesis asks for ideas (`scientist ideation create` does the same); a worker claims it,
//! runs the pipeline's `[ideation]` command and reports the ideas as `ai.ideation.generated`,
//! which lands on the hypothesis (`ideaJson` is the first idea), then ends the request.
//!
//! Our fields are written with `$set`-style updates only: whatever else the frontend keeps
//! in a request stays, and is handed to the ideation command as the request.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::redact;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IdeationStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl IdeationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IdeationStatus::Queued => "QUEUED",
            IdeationStatus::Running => "RUNNING",
            IdeationStatus::Completed => "COMPLETED",
            IdeationStatus::Failed => "FAILED",
        }
    }
}

impl fmt::Display for IdeationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdeationStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let all = [IdeationStatus::Queued, IdeationStatus::Running, IdeationStatus::Completed, IdeationStatus::Failed];
        let wanted = value.trim().to_ascii_uppercase();
        all.into_iter()
            .find(|status| status.as_str() == wanted)
            .ok_or_else(|| format!("unknown ideation status {value:?}; expected QUEUED, RUNNING, COMPLETED or FAILED"))
    }
}

/// One request for ideas about a hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdeationRequest {
    #[serde(rename = "_id")]
    pub id: String,
    pub hypothesis_id: String,
    pub status: IdeationStatus,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Timestamp>,
    /// When the store last heard from the claiming worker (its claim, then its heartbeats),
    /// by the store's clock: a RUNNING request not heard from for the lease is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_at: Option<Timestamp>,
    /// Fencing token, as a run's: incremented by every claim; only the live claim ends it.
    #[schema(required = true)]
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole stored document (the hypothesis text, the model, how many ideas: whatever its
    /// creator put there), as the ideation command reads it. Not a stored field itself.
    #[serde(skip)]
    pub document: Map<String, Value>,
}

/// What `scientist ideation create` (or `POST`-ing a frontend document) asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIdeation {
    pub id: String,
    pub hypothesis_id: String,
    /// Further fields of the request, handed to the ideation command.
    pub input: Map<String, Value>,
}

impl NewIdeation {
    /// The fields of `input` that scientist keeps itself (`_id`, `hypothesisId`, `status`,
    /// `claimedBy`, `error`…), which a creator may not set.
    pub fn kept_fields_in(input: &Map<String, Value>) -> Vec<&str> {
        let new = NewIdeation { id: String::new(), hypothesis_id: String::new(), input: Map::new() };
        let mut request = IdeationRequest::queued(new, Timestamp::EPOCH);
        request.claim("", Timestamp::EPOCH);
        request.finish(request.attempt, Some(String::new()), Timestamp::EPOCH);
        let kept = request.fields();
        input.keys().filter(|key| kept.contains_key(*key)).map(String::as_str).collect()
    }
}

impl IdeationRequest {
    /// A freshly queued request; what its creator sent loses its secrets here.
    pub fn queued(new: NewIdeation, now: Timestamp) -> IdeationRequest {
        let mut input = new.input;
        redact::redact_map(&mut input);
        let mut request = IdeationRequest {
            id: redact::redact_string(new.id),
            hypothesis_id: redact::redact_string(new.hypothesis_id),
            status: IdeationStatus::Queued,
            created_at: now,
            updated_at: Some(now),
            claimed_by: None,
            claimed_at: None,
            heard_at: None,
            attempt: 0,
            finished_at: None,
            error: None,
            document: input,
        };
        request.document = request.stored_document();
        request
    }

    /// Claimed by `worker`: the one place a claim changes a request, for both stores.
    pub fn claim(&mut self, worker: &str, now: Timestamp) {
        self.status = IdeationStatus::Running;
        self.claimed_by = Some(worker.to_owned());
        self.claimed_at = Some(now);
        self.heard_at = Some(now);
        self.attempt += 1;
        self.updated_at = Some(now);
        self.document = self.stored_document();
    }

    /// Ends the live claim `attempt`: COMPLETED, or FAILED with `error`. False (and nothing
    /// changed) when that claim is not live: the request was already ended or claimed again.
    pub fn finish(&mut self, attempt: u32, error: Option<String>, now: Timestamp) -> bool {
        if !self.is_held_by(attempt) {
            return false;
        }
        self.status = if error.is_some() { IdeationStatus::Failed } else { IdeationStatus::Completed };
        // The ideation command's own words (its stderr): the one place they are stored.
        self.error = error.map(redact::redact_string);
        self.finished_at = Some(now);
        self.updated_at = Some(now);
        self.document = self.stored_document();
        true
    }

    /// Claim `attempt`'s worker is heard from at `now`. False (and nothing changed) when that
    /// claim is not live: the worker must stop, the request is no longer its own.
    pub fn hear(&mut self, attempt: u32, now: Timestamp) -> bool {
        if !self.is_held_by(attempt) {
            return false;
        }
        self.heard_at = Some(now);
        self.document = self.stored_document();
        true
    }

    /// How long the live claim's worker has been silent at `now`; `None` when no worker holds
    /// the request.
    pub fn silent_for(&self, now: Timestamp) -> Option<f64> {
        if self.status != IdeationStatus::Running {
            return None;
        }
        let heard = self.heard_at.or(self.claimed_at).unwrap_or(self.created_at);
        Some(now.seconds_since(heard).max(0.0))
    }

    /// Ends claim `attempt` as lost (its worker silent for `lease` at `now`): FAILED with
    /// `error`, or back to QUEUED for the next worker when `requeue`. False (and nothing
    /// changed) when that claim is no longer live or its worker was heard within the lease.
    pub fn lose(&mut self, attempt: u32, lease: f64, requeue: bool, error: &str, now: Timestamp) -> bool {
        if !self.is_held_by(attempt) || self.silent_for(now).is_none_or(|silent| silent < lease) {
            return false;
        }
        if requeue {
            self.status = IdeationStatus::Queued;
            self.updated_at = Some(now);
            self.document = self.stored_document();
            return true;
        }
        self.finish(attempt, Some(error.to_owned()), now)
    }

    fn is_held_by(&self, attempt: u32) -> bool {
        self.status == IdeationStatus::Running && self.attempt == attempt
    }

    /// Our fields alone, as `$set` writes them.
    pub fn fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            _ => Map::new(),
        }
    }

    /// The stored document with our fields brought up to date.
    fn stored_document(&self) -> Map<String, Value> {
        let mut document = self.document.clone();
        document.extend(self.fields());
        document
    }

    /// Reads a stored document: our fields typed, the whole of it kept as `document`.
    pub fn from_document(document: Map<String, Value>) -> Result<IdeationRequest, serde_json::Error> {
        let mut request: IdeationRequest = serde_json::from_value(Value::Object(document.clone()))?;
        request.document = document;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn kept_fields_are_every_field_scientist_writes() {
        let keys = ["_id", "hypothesisId", "status", "createdAt", "claimedBy", "attempt", "finishedAt", "error"];
        let mut input: Map<String, Value> = keys.iter().map(|key| (key.to_string(), json!(1))).collect();
        input.insert("hypothesis".into(), json!("h"));
        input.insert("numIdeas".into(), json!(3));
        let mut kept = NewIdeation::kept_fields_in(&input);
        kept.sort_unstable();
        let mut expected = keys.to_vec();
        expected.sort_unstable();
        assert_eq!(kept, expected);
    }

    use super::*;

    #[test]
    fn the_creators_fields_survive_claim_and_finish() {
        let Value::Object(input) = json!({"hypothesis": "smaller learning rates help", "numIdeas": 3}) else {
            unreachable!()
        };
        let new = NewIdeation { id: "req-1".into(), hypothesis_id: "hyp-1".into(), input };
        let mut request = IdeationRequest::queued(new, Timestamp::EPOCH);
        request.claim("pod-a", Timestamp::EPOCH);
        assert!(!request.finish(2, None, Timestamp::EPOCH), "only the live claim ends it");
        assert!(request.finish(1, Some("model unavailable".into()), Timestamp::EPOCH));
        assert!(!request.finish(1, None, Timestamp::EPOCH), "ended once");
        let stored = IdeationRequest::from_document(request.document.clone()).expect("reads back");
        assert_eq!(stored, request);
        assert_eq!((stored.status, stored.document["numIdeas"].clone()), (IdeationStatus::Failed, json!(3)));
        assert_eq!(stored.document["status"], json!("FAILED"));
    }

    #[test]
    fn a_claim_is_lost_only_when_its_worker_was_silent_for_the_lease() {
        let new = NewIdeation { id: "req-1".into(), hypothesis_id: "hyp-1".into(), input: Map::new() };
        let mut request = IdeationRequest::queued(new, Timestamp::EPOCH);
        request.claim("pod-a", Timestamp::EPOCH);
        let at = |seconds| Timestamp::EPOCH.plus_seconds(seconds);
        assert!(request.hear(1, at(30)));
        assert!(!request.hear(2, at(30)), "not its claim");
        assert_eq!(request.silent_for(at(40)), Some(10.0));
        assert!(!request.lose(1, 60.0, false, "lost", at(89)), "heard 59 s ago");
        assert!(!request.lose(2, 60.0, false, "lost", at(90)), "not the live claim");
        let mut requeued = request.clone();
        assert!(requeued.lose(1, 60.0, true, "lost", at(90)));
        assert_eq!((requeued.status, requeued.silent_for(at(90))), (IdeationStatus::Queued, None));
        assert!(request.lose(1, 60.0, false, "lost", at(90)));
        assert_eq!((request.status, request.error.as_deref()), (IdeationStatus::Failed, Some("lost")));
        assert!(!request.hear(1, at(91)), "a lost claim is no longer its worker's");
    }
}
