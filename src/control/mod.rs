//! The control plane as its clients see it: one trait, [`ControlPlane`], for everything a
//! worker or `scientist emit` asks of it (claim a run or ideation request, check a claim,
//! keep and end an ideation claim, deliver events), with two implementations: `serve` over
//! HTTP ([`HttpControlPlane`], for pods without database credentials and for `emit`) and the
//! store itself ([`StoreControlPlane`]: the embedded file, or MongoDB with the pod's
//! credentials). Both end in the same `Store` calls; the wire shapes are `crate::protocol`.
//!
//! Operators' commands have their own trait, [`Operator`] (`operator.rs`): a store the
//! operator holds the credentials of, or `serve`'s read and admin API with a token
//! ([`ApiOperator`], `api.rs`, over the same HTTP client).

mod api;
pub mod contexts;
mod http;
mod operator;
mod store;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use api::{ApiFailure, ApiOperator};
pub use http::{HttpControlPlane, SendError};
pub use operator::{Operator, Tail, events_after};
pub use store::StoreControlPlane;

use crate::ideation::IdeationRequest;
use crate::protocol::{BatchAnswer, ClaimState, EventAnswer};
use crate::queue::lease;
use crate::run::{Run, RunId};

#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Claims the next run of `queue` for `worker`, if one waits.
    async fn claim(&self, worker: &str, queue: &str) -> Result<Option<Run>, Error>;

    /// Claims the oldest queued ideation request for `worker`, if one waits.
    async fn claim_ideation(&self, worker: &str) -> Result<Option<IdeationRequest>, Error>;

    /// Where the run of claim `attempt` stands now.
    async fn check(&self, run_id: &RunId, attempt: u32) -> Result<ClaimState, Error>;

    /// Claim `attempt`'s worker of ideation request `id` is alive; false when that claim is
    /// no longer live (the request ended, was lost, or was claimed again) and the worker
    /// must stop.
    async fn hear_ideation(&self, id: &str, attempt: u32) -> Result<bool, Error>;

    /// Ends claim `attempt` of ideation request `id`: completed, or failed with `error`.
    /// False when that claim was no longer live (nothing changed).
    async fn finish_ideation(&self, id: &str, attempt: u32, error: Option<String>) -> Result<bool, Error>;

    /// Delivers one event (a structured CloudEvent object).
    async fn send_event(&self, event: &Map<String, Value>) -> Result<EventAnswer, Error>;

    /// Delivers events (one structured CloudEvent JSON object a line, no newline), in order.
    /// Ok means every event was durably stored or refused for good (`rejected`, by 1-based
    /// position); Err means nothing may be assumed stored and the same lines can be
    /// delivered again (duplicates are ignored).
    async fn send_lines(&self, lines: &[Arc<str>]) -> Result<BatchAnswer, Error>;

    /// Frees runs and ideation requests of lost workers (before a claim). Only a worker on
    /// the store does it; `serve` sweeps for workers on HTTP. A failure is logged and
    /// changes nothing.
    async fn sweep(&self, _policy: &lease::Policy) {}

    /// Where events go, for log lines (never a URL with credentials).
    fn describe(&self) -> String;

    /// Stores one event of no run (the ideas of an ideation request); a retry is a
    /// duplicate. `Refused` when it is refused for good.
    async fn deliver(&self, event: Map<String, Value>) -> Result<(), Error> {
        let line: Arc<str> = Arc::from(Value::Object(event).to_string());
        let answer = self.send_lines(&[line]).await?;
        match answer.rejected.into_iter().next() {
            Some(rejected) => Err(Error::Refused(rejected.reason)),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store could not be reached")]
    Store(#[from] crate::store::Error),
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

    /// Whether trying the same request again later may succeed (keep the events).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Send(err) => err.is_retryable(),
            Error::Store(_) => true,
            Error::Answer(_) | Error::Gone(_) | Error::Refused(_) => false,
        }
    }
}
