//! Live tail: `GET /api/runs/{id}/events/stream` sends a run's events as Server-Sent
//! Events, first those after the cursor, then each new one as it is stored. Each SSE `id`
//! is the event's cursor, so a client that reconnects with `Last-Event-ID` misses nothing.
//!
//! Events ingested by this process wake the tail at once; events stored by another process
//! (a second `serve`, a worker on the embedded store) are found by polling every second.
//! The stream ends once the run is finished and everything stored has been sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;

use super::AppState;
use super::error::ApiError;
use super::error::extract::{Path, Query};
use super::read::{EventView, EventsQuery};
use crate::run::RunId;
use crate::store::{self, EventFilter, Store, StoredEvent};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub(super) async fn stream(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    if query.newest_first()? {
        return Err(ApiError::BadRequest("the live tail sends events oldest first: leave order out".into()));
    }
    let mut filter = query.filter()?;
    if let Some(last_seen) = headers.get("last-event-id").and_then(|value| value.to_str().ok()) {
        filter.cursor = Some(last_seen.to_owned());
    }
    let (woken, stopping) = (state.stored.subscribe(), state.stopping.subscribe());
    let mut tail = Tail { store: state.store, id, filter, woken, stopping, pending: VecDeque::new(), ended: false };
    // The first page is read before the answer starts, so that a missing run is a 404 and an
    // invalid cursor a 400, as on every other endpoint, rather than an SSE `error` event.
    if tail.fetch().await? == Fetched::Finished {
        tail.ended = true;
    }
    Ok(Sse::new(futures_util::stream::unfold(tail, Tail::next)).keep_alive(KeepAlive::default()))
}

struct Tail {
    store: Arc<dyn Store>,
    id: RunId,
    filter: EventFilter,
    /// Changes whenever this process stores events.
    woken: tokio::sync::watch::Receiver<u64>,
    /// Becomes true when the server shuts down.
    stopping: tokio::sync::watch::Receiver<bool>,
    pending: VecDeque<StoredEvent>,
    /// Set after a store error, on shutdown, or when the run was found finished with nothing
    /// left to read: nothing more is sent once `pending` is empty.
    ended: bool,
}

impl Tail {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Tail)> {
        loop {
            if let Some(stored) = self.pending.pop_front() {
                return Some((Ok(sse_event(stored)), self));
            }
            if self.ended {
                return None;
            }
            match self.fetch().await {
                Ok(Fetched::Events) => {}
                Ok(Fetched::Finished) => return None,
                Ok(Fetched::Nothing) => self.wait().await,
                Err(err) => {
                    tracing::warn!(run = %self.id, error = %err, "live tail stopped: store error");
                    self.ended = true;
                    return Some((Ok(SseEvent::default().event("error").data(err.to_string())), self));
                }
            }
        }
    }

    async fn fetch(&mut self) -> Result<Fetched, store::Error> {
        // Read the status first: a run seen finished before a page that comes back empty
        // has no more events to send.
        // Runs are never deleted: a missing one never existed.
        let run = self.store.get(&self.id).await?.ok_or_else(|| store::Error::NotFound(self.id.clone()))?;
        let finished = run.status.is_terminal();
        let page = self.store.list_events(&self.id, &self.filter).await?;
        if let Some(last) = page.items.last() {
            self.filter.cursor = Some(last.cursor.clone());
            self.pending.extend(page.items);
            return Ok(Fetched::Events);
        }
        Ok(if finished { Fetched::Finished } else { Fetched::Nothing })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.woken.changed() => {}
            _ = self.stopping.wait_for(|stopping| *stopping) => self.ended = true,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

#[derive(PartialEq)]
enum Fetched {
    Events,
    Nothing,
    Finished,
}

fn sse_event(stored: StoredEvent) -> SseEvent {
    let cursor = stored.cursor.clone();
    let view = EventView::from(stored);
    SseEvent::default()
        .id(cursor)
        .json_data(&view)
        .unwrap_or_else(|err| SseEvent::default().event("error").data(err.to_string()))
}
