//! What an operator's commands (`runs …`, `stats`, `ideation …`) ask of where runs live:
//! [`Operator`], answered by a store the operator holds the credentials of, or by `serve`'s
//! read and admin API with a token (`api.rs`), so that the same command gives the same
//! output either way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::queue::review::Decision;
use crate::run::{NewRun, Run, RunId};
use crate::store::{Artifact, EventFilter, Page, RunFilter, Stats, Store, StoredEvent};
use crate::time::Timestamp;

#[async_trait]
pub trait Operator: Send + Sync {
    async fn get(&self, id: &RunId) -> anyhow::Result<Option<Run>>;

    /// Up to two run ids starting with `prefix` (see `Store::resolve_prefix`).
    async fn resolve_prefix(&self, prefix: &str) -> anyhow::Result<Vec<RunId>>;

    async fn list(&self, filter: &RunFilter) -> anyhow::Result<Page<Run>>;

    /// A run's events after the filter's cursor, oldest first.
    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>>;

    /// A run's latest events, newest first.
    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>>;

    async fn artifacts(&self, run_id: &RunId) -> anyhow::Result<Vec<Artifact>>;

    /// The figures at `now` (`SCIENTIST_NOW` for reproducible output), the cost section over
    /// the runs created in `cost_window` before it.
    async fn stats(&self, now: Timestamp, cost_window: Duration) -> anyhow::Result<Stats>;

    async fn enqueue(&self, new_run: NewRun) -> anyhow::Result<Run>;

    async fn reset(&self, id: &RunId) -> anyhow::Result<Run>;

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>) -> anyhow::Result<Run>;

    async fn decide_review(&self, id: &RunId, decision: Decision) -> anyhow::Result<Run>;

    async fn enqueue_ideation(&self, new: NewIdeation) -> anyhow::Result<IdeationRequest>;

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> anyhow::Result<Vec<IdeationRequest>>;

    /// Watches a run's events that match `filter`, after its cursor (`None`: from the first).
    async fn tail(&self, run_id: &RunId, filter: EventFilter) -> anyhow::Result<Box<dyn Tail>>;

    /// Where the runs are, for messages.
    fn describe(&self) -> String;
}

/// A run being watched: its new events and its document, until it ends.
#[async_trait]
pub trait Tail: Send {
    /// Every matching event stored since the last call that has reached this tail, oldest first.
    async fn drain(&mut self) -> anyhow::Result<Vec<StoredEvent>>;

    /// Every matching event stored since the last call, oldest first: after the run has
    /// ended, this is all of them.
    async fn drain_all(&mut self) -> anyhow::Result<Vec<StoredEvent>>;

    /// The run document now.
    async fn run(&mut self) -> anyhow::Result<Run>;

    /// Waits until new events may have arrived, at most `interval`.
    async fn wait(&mut self, interval: Duration);
}

/// Every event of `run_id` after the filter's cursor, page by page, oldest first; the
/// cursor moves to the last one.
pub async fn events_after(
    operator: &dyn Operator,
    run_id: &RunId,
    filter: &mut EventFilter,
) -> anyhow::Result<Vec<StoredEvent>> {
    let mut events = Vec::new();
    loop {
        let page = operator.list_events(run_id, filter).await?;
        if let Some(last) = page.items.last() {
            filter.cursor = Some(last.cursor.clone());
        }
        events.extend(page.items);
        if page.next.is_none() {
            return Ok(events);
        }
    }
}

/// The store itself, with the operator's credentials: writes are stamped by this clock.
#[async_trait]
impl Operator for Arc<dyn Store> {
    async fn get(&self, id: &RunId) -> anyhow::Result<Option<Run>> {
        Ok(Store::get(self.as_ref(), id).await?)
    }

    async fn resolve_prefix(&self, prefix: &str) -> anyhow::Result<Vec<RunId>> {
        Ok(Store::resolve_prefix(self.as_ref(), prefix).await?)
    }

    async fn list(&self, filter: &RunFilter) -> anyhow::Result<Page<Run>> {
        Ok(Store::list(self.as_ref(), filter).await?)
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>> {
        Ok(Store::list_events(self.as_ref(), run_id, filter).await?)
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>> {
        Ok(Store::list_recent_events(self.as_ref(), run_id, filter).await?)
    }

    async fn artifacts(&self, run_id: &RunId) -> anyhow::Result<Vec<Artifact>> {
        Ok(Store::artifacts(self.as_ref(), run_id).await?)
    }

    async fn stats(&self, now: Timestamp, cost_window: Duration) -> anyhow::Result<Stats> {
        Ok(Store::stats(self.as_ref(), now, cost_window).await?)
    }

    async fn enqueue(&self, new_run: NewRun) -> anyhow::Result<Run> {
        Ok(Store::enqueue(self.as_ref(), new_run, Timestamp::now()).await?)
    }

    async fn reset(&self, id: &RunId) -> anyhow::Result<Run> {
        Ok(Store::reset(self.as_ref(), id, Timestamp::now()).await?)
    }

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>) -> anyhow::Result<Run> {
        Ok(Store::request_cancel(self.as_ref(), id, by, reason, Timestamp::now()).await?)
    }

    async fn decide_review(&self, id: &RunId, decision: Decision) -> anyhow::Result<Run> {
        Ok(Store::decide_review(self.as_ref(), id, decision, Timestamp::now()).await?)
    }

    async fn enqueue_ideation(&self, new: NewIdeation) -> anyhow::Result<IdeationRequest> {
        Ok(Store::enqueue_ideation(self.as_ref(), new, Timestamp::now()).await?)
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> anyhow::Result<Vec<IdeationRequest>> {
        Ok(Store::list_ideation(self.as_ref(), statuses, limit).await?)
    }

    async fn tail(&self, run_id: &RunId, filter: EventFilter) -> anyhow::Result<Box<dyn Tail>> {
        Ok(Box::new(StoreTail { store: self.clone(), run_id: run_id.clone(), filter }))
    }

    fn describe(&self) -> String {
        "the store".into()
    }
}

/// A run watched by polling the store: its event cursor, then its document. One round is
/// two or three indexed reads, so a round a second costs nothing, on either store.
struct StoreTail {
    store: Arc<dyn Store>,
    run_id: RunId,
    filter: EventFilter,
}

#[async_trait]
impl Tail for StoreTail {
    async fn drain(&mut self) -> anyhow::Result<Vec<StoredEvent>> {
        events_after(&self.store, &self.run_id, &mut self.filter).await
    }

    async fn drain_all(&mut self) -> anyhow::Result<Vec<StoredEvent>> {
        self.drain().await
    }

    async fn run(&mut self) -> anyhow::Result<Run> {
        Ok(self.store.get(&self.run_id).await?.ok_or_else(|| crate::store::Error::NotFound(self.run_id.clone()))?)
    }

    async fn wait(&mut self, interval: Duration) {
        tokio::time::sleep(interval).await;
    }
}
