//! Where a worker claims runs and checks on its claim: the store itself (the embedded file,
//! or MongoDB with the pod's credentials), or the control plane's queue endpoints for a pod
//! that holds no database credentials. Both end in the same `Store::claim`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::emit::{Client, SendError};
use crate::ideation::IdeationRequest;
use crate::queue::{fence, lease};
use crate::run::{CancelRequest, Run, RunId, RunStatus};
use crate::store::{self, Store};
use crate::time::Timestamp;

#[derive(Clone)]
pub enum Queue {
    Store(Arc<dyn Store>),
    /// `POST /api/queue/claim` and `GET /api/queue/runs/{id}?attempt=N`.
    Http(Client),
}

/// Where a claimed run stands, as its worker needs to know.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimState {
    pub status: RunStatus,
    /// Whether the worker's attempt is still the run's live claim; when false it must stop.
    pub live: bool,
    #[serde(default)]
    pub cancel_requested: Option<CancelRequest>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store could not be reached")]
    Store(#[from] store::Error),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(
        "the control plane's answer is not what a worker expects ({0}); are --server and this worker the same version?"
    )]
    Answer(String),
    #[error("run {0} is gone from the store")]
    Gone(RunId),
    #[error("the control plane refused the event: {0}")]
    Refused(String),
}

impl Error {
    /// A wrong token will not fix itself: the worker stops instead of polling forever.
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Send(SendError::Auth { .. }))
    }
}

impl Queue {
    /// Claims the next run of `queue` for `worker`, if one waits.
    pub async fn claim(&self, worker: &str, queue: &str) -> Result<Option<Run>, Error> {
        match self {
            Queue::Store(store) => Ok(store.claim(worker, queue, Timestamp::now()).await?),
            Queue::Http(client) => {
                let body = json!({ "worker": worker, "queue": queue, "mode": "experiment" });
                match client.request_json(reqwest::Method::POST, "/api/queue/claim", Some(&body)).await? {
                    None => Ok(None),
                    Some(answer) => {
                        serde_json::from_value(answer).map(Some).map_err(|err| Error::Answer(err.to_string()))
                    }
                }
            }
        }
    }

    /// Claims the oldest queued ideation request for `worker`, if one waits.
    pub async fn claim_ideation(&self, worker: &str) -> Result<Option<IdeationRequest>, Error> {
        match self {
            Queue::Store(store) => Ok(store.claim_ideation(worker, Timestamp::now()).await?),
            Queue::Http(client) => {
                let body = json!({ "worker": worker, "mode": "ideation" });
                match client.request_json(reqwest::Method::POST, "/api/queue/claim", Some(&body)).await? {
                    None => Ok(None),
                    Some(Value::Object(document)) => {
                        IdeationRequest::from_document(document).map(Some).map_err(|err| Error::Answer(err.to_string()))
                    }
                    Some(other) => Err(Error::Answer(format!("an ideation request that is not an object: {other}"))),
                }
            }
        }
    }

    /// Stores one event of no run (the ideas of an ideation request); a retry is a duplicate.
    pub async fn deliver(&self, event: Map<String, Value>) -> Result<(), Error> {
        match self {
            Queue::Store(store) => {
                let now = Timestamp::now();
                let event =
                    crate::event::from_json_object(event, now).map_err(|err| Error::Refused(err.to_string()))?;
                store.apply_events(vec![event], now).await?;
                Ok(())
            }
            Queue::Http(client) => {
                let line = Value::Object(event).to_string();
                let answer = client.send_lines(&[line]).await?;
                match answer.rejected.first() {
                    Some(rejected) => Err(Error::Refused(rejected.reason.clone())),
                    None => Ok(()),
                }
            }
        }
    }

    /// Ends claim `attempt` of ideation request `id`: completed, or failed with `error`.
    /// False when that claim was no longer live (nothing changed).
    pub async fn finish_ideation(&self, id: &str, attempt: u32, error: Option<String>) -> Result<bool, Error> {
        match self {
            Queue::Store(store) => Ok(store.finish_ideation(id, attempt, error, Timestamp::now()).await?.is_some()),
            Queue::Http(client) => {
                let path = format!("/api/queue/ideation/{id}/finish");
                let body = json!({ "attempt": attempt, "error": error });
                live_unless_conflict(client.request_json(reqwest::Method::POST, &path, Some(&body)).await)
            }
        }
    }

    /// Claim `attempt`'s worker of ideation request `id` is alive; false when that claim is no
    /// longer live (the request ended, was lost, or was claimed again) and the worker must stop.
    pub async fn hear_ideation(&self, id: &str, attempt: u32) -> Result<bool, Error> {
        match self {
            Queue::Store(store) => Ok(store.hear_ideation(id, attempt, Timestamp::now()).await?.is_some()),
            Queue::Http(client) => {
                let path = format!("/api/queue/ideation/{id}/heartbeat");
                live_unless_conflict(
                    client.request_json(reqwest::Method::POST, &path, Some(&json!({ "attempt": attempt }))).await,
                )
            }
        }
    }

    /// Frees runs and ideation requests of lost workers before claiming, when the worker is on the store (through
    /// --server the control plane sweeps). A failure is logged and changes nothing.
    pub async fn sweep(&self, policy: &lease::Policy) {
        let Queue::Store(store) = self else { return };
        if let Err(err) = crate::sweep::once(store.as_ref(), policy, Timestamp::now()).await {
            tracing::warn!(error = %crate::emit::error_chain(&err), "lost-worker sweep failed");
        }
    }

    /// Where the run of claim `attempt` stands now.
    pub async fn check(&self, run_id: &RunId, attempt: u32) -> Result<ClaimState, Error> {
        match self {
            Queue::Store(store) => {
                let run = store.get(run_id).await?.ok_or_else(|| Error::Gone(run_id.clone()))?;
                let live = fence::is_live(&run, attempt);
                Ok(ClaimState { status: run.status, live, cancel_requested: run.cancel_requested })
            }
            Queue::Http(client) => {
                let path = format!("/api/queue/runs/{run_id}?attempt={attempt}");
                let answer = client
                    .request_json(reqwest::Method::GET, &path, None)
                    .await?
                    .ok_or_else(|| Error::Answer("an empty answer".into()))?;
                serde_json::from_value(answer).map_err(|err| Error::Answer(err.to_string()))
            }
        }
    }
}

/// An ideation claim endpoint's answer: 409 says the claim is not live.
fn live_unless_conflict(answer: Result<Option<Value>, SendError>) -> Result<bool, Error> {
    match answer {
        Ok(_) => Ok(true),
        Err(SendError::Rejected { status: 409, .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}
