//! Where a worker's event stream delivers: the control plane over HTTP ([`HttpSink`]), or
//! the store itself when the worker holds the database ([`StoreSink`]). Either way an Ok
//! means every event was durably stored or refused for good, so the spool may drop them.

use std::sync::Arc;

use async_trait::async_trait;

use super::client::{Client, SendError};
use crate::event::wire::{self, Rejected};
use crate::store::Store;
use crate::time::Timestamp;

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers events (one structured CloudEvent JSON object a line, in stream order).
    /// Ok lists the events refused for good, by 1-based position; Err means nothing may be
    /// assumed stored and the same lines can be delivered again (duplicates are ignored).
    async fn deliver(&self, lines: &[Arc<str>]) -> Result<Vec<Rejected>, SendError>;

    /// Where events go, for log lines.
    fn describe(&self) -> String;
}

/// The control plane's batch ingest endpoint.
pub struct HttpSink {
    client: Client,
}

impl HttpSink {
    pub fn new(client: Client) -> Self {
        HttpSink { client }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, lines: &[Arc<str>]) -> Result<Vec<Rejected>, SendError> {
        Ok(self.client.send_lines(lines).await?.rejected)
    }

    fn describe(&self) -> String {
        self.client.base().to_owned()
    }
}

/// The store, written directly (the embedded file, or MongoDB with the worker's credentials).
pub struct StoreSink {
    store: Arc<dyn Store>,
    name: String,
}

impl StoreSink {
    /// `name` says which store, for log lines (never a URL with credentials).
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>) -> Self {
        StoreSink { store, name: name.into() }
    }
}

#[async_trait]
impl Sink for StoreSink {
    async fn deliver(&self, lines: &[Arc<str>]) -> Result<Vec<Rejected>, SendError> {
        let now = Timestamp::now();
        let mut events = Vec::with_capacity(lines.len());
        let mut rejected = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            match wire::parse_structured(line.as_bytes(), now) {
                Ok(event) => events.push(event),
                Err(err) => rejected.push(Rejected { line: index + 1, reason: err.to_string() }),
            }
        }
        if !events.is_empty() {
            self.store.apply_events(events, now).await.map_err(|err| SendError::Unreachable {
                url: self.name.clone(),
                reason: crate::emit::error_chain(&err),
            })?;
        }
        Ok(rejected)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
