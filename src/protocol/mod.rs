//! The wire contract between `serve` and its clients (workers, `scientist emit`, a worker's
//! local endpoint): the endpoints' paths, request and answer bodies, worker modes, claim
//! state, and reading events out of HTTP requests. Both sides import it; it imports
//! neither. The size limits sit one layer lower, in `crate::limits`, because `event`
//! checks them too.

pub mod answer;
pub mod claim;
pub mod http;

pub use answer::{BatchAnswer, EventAnswer, EventOutcome};
pub use claim::{ClaimCheck, ClaimRequest, ClaimState, IdeationFinish, IdeationHeard, WorkerMode};

/// The endpoints a client of the control plane calls (the server's route table names
/// these and the rest).
pub mod path {
    use crate::run::RunId;

    /// One event: structured (`application/cloudevents+json`) or binary (`ce-*` headers).
    pub const INGEST_EVENT: &str = "/api/ingest/event";
    /// A batch: NDJSON or `application/cloudevents-batch+json`.
    pub const INGEST_EVENTS: &str = "/api/ingest/events";
    /// Takes the next run or ideation request ([`super::ClaimRequest`]).
    pub const CLAIM: &str = "/api/queue/claim";

    /// Where claim `attempt` of run `id` stands ([`super::ClaimState`]).
    pub fn claim_check(id: &RunId, attempt: u32) -> String {
        format!("/api/queue/runs/{id}?attempt={attempt}")
    }

    /// Keeps an ideation claim from being lost ([`super::IdeationHeard`]).
    pub fn ideation_heartbeat(id: &str) -> String {
        format!("/api/queue/ideation/{id}/heartbeat")
    }

    /// Ends an ideation claim ([`super::IdeationFinish`]).
    pub fn ideation_finish(id: &str) -> String {
        format!("/api/queue/ideation/{id}/finish")
    }
}
