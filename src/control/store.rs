//! The control plane as the store itself, for a worker that holds the database (the
//! embedded file, or MongoDB with the pod's credentials): the same `Store` calls `serve`'s
//! handlers make, without HTTP.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{ControlPlane, Error};
use crate::event::wire::{self, Rejected};
use crate::ideation::IdeationRequest;
use crate::protocol::{BatchAnswer, ClaimState, EventAnswer};
use crate::queue::lease;
use crate::run::{Run, RunId};
use crate::store::Store;
use crate::time::Timestamp;

pub struct StoreControlPlane {
    store: Arc<dyn Store>,
    name: String,
}

impl StoreControlPlane {
    /// `name` says which store, for log lines (never a URL with credentials).
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>) -> Self {
        StoreControlPlane { store, name: name.into() }
    }
}

#[async_trait]
impl ControlPlane for StoreControlPlane {
    async fn claim(&self, worker: &str, queue: &str) -> Result<Option<Run>, Error> {
        Ok(self.store.claim(worker, queue, Timestamp::now()).await?)
    }

    async fn claim_ideation(&self, worker: &str) -> Result<Option<IdeationRequest>, Error> {
        Ok(self.store.claim_ideation(worker, Timestamp::now()).await?)
    }

    async fn check(&self, run_id: &RunId, attempt: u32) -> Result<ClaimState, Error> {
        let run = self.store.get(run_id).await?.ok_or_else(|| Error::Gone(run_id.clone()))?;
        Ok(ClaimState::of(run, attempt))
    }

    async fn hear_ideation(&self, id: &str, attempt: u32) -> Result<bool, Error> {
        Ok(self.store.hear_ideation(id, attempt, Timestamp::now()).await?.is_some())
    }

    async fn finish_ideation(&self, id: &str, attempt: u32, error: Option<String>) -> Result<bool, Error> {
        Ok(self.store.finish_ideation(id, attempt, error, Timestamp::now()).await?.is_some())
    }

    async fn send_event(&self, event: &Map<String, Value>) -> Result<EventAnswer, Error> {
        let now = Timestamp::now();
        let event =
            crate::event::from_json_object(event.clone(), now).map_err(|err| Error::Refused(err.to_string()))?;
        let id = event.id.to_string();
        let outcome = self.store.apply_events(vec![event], now).await?.into_iter().next();
        let outcome = outcome.ok_or_else(|| Error::Answer("the store answered no outcome for the event".into()))?;
        Ok(EventAnswer { id, outcome: outcome.into() })
    }

    async fn send_lines(&self, lines: &[Arc<str>]) -> Result<BatchAnswer, Error> {
        let now = Timestamp::now();
        let mut events = Vec::with_capacity(lines.len());
        let mut answer = BatchAnswer::default();
        for (index, line) in lines.iter().enumerate() {
            match wire::parse_structured(line.as_bytes(), now) {
                Ok(event) => events.push(event),
                Err(err) => answer.rejected.push(Rejected { line: index + 1, reason: err.to_string() }),
            }
        }
        if !events.is_empty() {
            for outcome in self.store.apply_events(events, now).await? {
                answer.count(outcome);
            }
        }
        Ok(answer)
    }

    async fn sweep(&self, policy: &lease::Policy) {
        if let Err(err) = crate::sweep::once(self.store.as_ref(), policy, Timestamp::now()).await {
            tracing::warn!(error = %crate::errors::chain(&err), "lost-worker sweep failed");
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
