//! `serve`'s read and admin API as an [`Operator`], for operators without database
//! credentials: the same answers as the store gives them, over the control plane's one
//! HTTP client. `--follow` reads the live tail (Server-Sent Events) and resumes from the
//! last event it got after a dropped connection or a restarted `serve`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::HttpControlPlane;
use super::operator::{Operator, Tail};
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::queue::review::Decision;
use crate::run::{NewRun, ReviewDecision, Run, RunId};
use crate::store::{Artifact, EventFilter, Page, RunFilter, Stats, StoredEvent};
use crate::time::Timestamp;

/// Why the API did not answer as asked. The command line gives each its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// Bad input, a missing object, a conflict with its state: the server's own message,
    /// which names the problem and the fix (as the store's would).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The token is missing, wrong, or lacks the scope the request needs.
    #[error("the control plane at {url} refused the request ({status}): {message}")]
    Auth { url: String, status: u16, message: String },
    /// No answer, an answer that is not the API's, or the server failed: trying later may work.
    #[error("the control plane at {url} did not answer as expected: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Without a token, what to set; with one, the server's message says which scope it lacks.
const TOKEN_HINT: &str = "set SCIENTIST_TOKEN, or token_file in the context (read scope to read, admin to change)";

/// How long a follower keeps trying to reach a control plane that went away.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(5 * 60);

/// A live tail that sent nothing, not even its keep-alive (every 15 s), for this long is dead.
const SILENT_STREAM: Duration = Duration::from_secs(45);

/// After the first new event, how long a tail waits for the rest of a burst.
const BURST: Duration = Duration::from_millis(20);

/// The operator's view of one `serve`.
#[derive(Debug, Clone)]
pub struct ApiOperator {
    plane: HttpControlPlane,
}

impl ApiOperator {
    pub fn new(plane: HttpControlPlane) -> Self {
        ApiOperator { plane }
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, ApiFailure> {
        let mut url = Url::parse(self.plane.base()).map_err(|err| self.unreachable(format!("not a URL: {err}")))?;
        url.path_segments_mut()
            .map_err(|()| self.unreachable("not a base URL".into()))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        Ok(url)
    }

    /// One request: the answer's JSON on 2xx, else the failure it stands for.
    async fn call(&self, method: Method, url: Url, body: Option<Value>) -> Result<Value, ApiFailure> {
        let mut request = self.plane.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| self.unreachable(crate::errors::chain(&err)))?;
        let status = response.status();
        let answer: Option<Value> = response.json().await.ok();
        if status.is_success() {
            return answer.ok_or_else(|| self.unreachable(format!("HTTP {status} without a JSON body")));
        }
        Err(self.failure(status, answer))
    }

    async fn get_json<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<T> {
        let answer = self.call(Method::GET, self.url(segments, query)?, None).await?;
        Ok(self.parse(answer)?)
    }

    async fn post_json<T: DeserializeOwned>(&self, segments: &[&str], body: Value) -> anyhow::Result<T> {
        let answer = self.call(Method::POST, self.url(segments, &[])?, Some(body)).await?;
        Ok(self.parse(answer)?)
    }

    fn parse<T: DeserializeOwned>(&self, answer: Value) -> Result<T, ApiFailure> {
        serde_json::from_value(answer).map_err(|err| {
            self.unreachable(format!(
                "an answer this command cannot read ({err}); are serve and this CLI the same version?"
            ))
        })
    }

    /// Sorts a failed answer. Only an error in the API's own shape is the API speaking: a
    /// 404 without one is a URL that is not a `serve`.
    fn failure(&self, status: StatusCode, answer: Option<Value>) -> ApiFailure {
        let message = answer.as_ref().and_then(|answer| answer.get("error")).and_then(Value::as_str).map(str::to_owned);
        let code = status.as_u16();
        match (code, message) {
            (401, message) => ApiFailure::Auth {
                url: self.plane.base().to_owned(),
                status: code,
                message: format!("{}; {TOKEN_HINT}", message.unwrap_or_else(|| "no token, or a wrong one".into())),
            },
            (403, Some(message)) => ApiFailure::Auth { url: self.plane.base().to_owned(), status: code, message },
            (400 | 404 | 409 | 413 | 422, Some(message)) => ApiFailure::Refused { status: code, message },
            (_, message) => self.unreachable(format!(
                "HTTP {status}: {}",
                message.unwrap_or_else(|| "not an answer of scientist's API; check --server".into())
            )),
        }
    }

    fn unreachable(&self, reason: String) -> ApiFailure {
        ApiFailure::Unreachable { url: self.plane.base().to_owned(), reason }
    }

    fn events_query(filter: &EventFilter, newest_first: bool) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if !filter.types.is_empty() {
            query.push(("type", filter.types.join(",")));
        }
        if let Some(level) = filter.min_level {
            query.push(("level", level.as_str().to_owned()));
        }
        if filter.limit > 0 {
            query.push(("limit", filter.limit.to_string()));
        }
        if let Some(cursor) = &filter.cursor {
            query.push(("cursor", cursor.clone()));
        }
        if newest_first {
            query.push(("order", "newest".into()));
        }
        query
    }

    async fn events(
        &self,
        run_id: &RunId,
        filter: &EventFilter,
        newest_first: bool,
    ) -> anyhow::Result<Page<StoredEvent>> {
        let page: Page<EventAnswer> = self
            .get_json(&["api", "runs", run_id.as_str(), "events"], &Self::events_query(filter, newest_first))
            .await?;
        let items = page.items.into_iter().map(|answer| answer.stored()).collect::<Result<_, _>>();
        Ok(Page { items: items.map_err(|reason| self.unreachable(reason))?, next: page.next })
    }
}

/// An event as the API shows it (`GET /api/runs/{id}/events`, the live tail).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventAnswer {
    cursor: String,
    received_at: Timestamp,
    event: Map<String, Value>,
}

impl EventAnswer {
    /// Read back as the stores read their own rows.
    fn stored(self) -> Result<StoredEvent, String> {
        let event = crate::event::from_json_object(self.event, self.received_at)
            .map_err(|err| format!("an event the API sent is not valid ({err})"))?;
        Ok(StoredEvent { cursor: self.cursor, received_at: self.received_at, event })
    }
}

#[derive(Deserialize)]
struct RunIds {
    ids: Vec<RunId>,
}

#[async_trait]
impl Operator for ApiOperator {
    async fn get(&self, id: &RunId) -> anyhow::Result<Option<Run>> {
        match self.call(Method::GET, self.url(&["api", "runs", id.as_str()], &[])?, None).await {
            Ok(answer) => Ok(Some(self.parse(answer)?)),
            Err(ApiFailure::Refused { status: 404, .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn resolve_prefix(&self, prefix: &str) -> anyhow::Result<Vec<RunId>> {
        let answer: RunIds = self.get_json(&["api", "run-ids"], &[("prefix", prefix.to_owned())]).await?;
        Ok(answer.ids)
    }

    async fn list(&self, filter: &RunFilter) -> anyhow::Result<Page<Run>> {
        let mut query = Vec::new();
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|status| status.as_str()).collect();
            query.push(("status", statuses.join(",")));
        }
        if let Some(queue) = &filter.queue {
            query.push(("queue", queue.clone()));
        }
        if filter.limit > 0 {
            query.push(("limit", filter.limit.to_string()));
        }
        if let Some(cursor) = &filter.cursor {
            query.push(("cursor", cursor.clone()));
        }
        self.get_json(&["api", "runs"], &query).await
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>> {
        self.events(run_id, filter, false).await
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> anyhow::Result<Page<StoredEvent>> {
        self.events(run_id, filter, true).await
    }

    async fn artifacts(&self, run_id: &RunId) -> anyhow::Result<Vec<Artifact>> {
        self.get_json(&["api", "runs", run_id.as_str(), "artifacts"], &[]).await
    }

    async fn stats(&self, now: Timestamp, cost_window: Duration) -> anyhow::Result<Stats> {
        let window = format!("{}s", cost_window.as_secs());
        self.get_json(&["api", "stats"], &[("at", now.to_string()), ("window", window)]).await
    }

    async fn enqueue(&self, new_run: NewRun) -> anyhow::Result<Run> {
        let body = json!({
            "id": new_run.id,
            "idea": new_run.idea,
            "priority": new_run.priority,
            "queue": new_run.queue,
            "hypothesisId": new_run.hypothesis_id,
            "retryMax": new_run.retry_max,
            "budgetUsd": new_run.budget_usd,
        });
        self.post_json(&["api", "runs"], body).await
    }

    async fn reset(&self, id: &RunId) -> anyhow::Result<Run> {
        self.post_json(&["api", "runs", id.as_str(), "reset"], json!({})).await
    }

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>) -> anyhow::Result<Run> {
        self.post_json(&["api", "runs", id.as_str(), "cancel"], json!({"by": by, "reason": reason})).await
    }

    async fn decide_review(&self, id: &RunId, decision: Decision) -> anyhow::Result<Run> {
        let (action, body) = match decision.verdict {
            ReviewDecision::Approved => ("approve", json!({"by": decision.by, "comment": decision.comment})),
            ReviewDecision::Rejected => ("reject", json!({"by": decision.by, "reason": decision.comment})),
            ReviewDecision::TimedOut => {
                let message = "a review times out by serve's --review-timeout, not by a person's decision".into();
                return Err(ApiFailure::Refused { status: 400, message }.into());
            }
        };
        self.post_json(&["api", "runs", id.as_str(), action], body).await
    }

    async fn enqueue_ideation(&self, new: NewIdeation) -> anyhow::Result<IdeationRequest> {
        let body = json!({"id": new.id, "hypothesisId": new.hypothesis_id, "input": new.input});
        let document: Map<String, Value> = self.post_json(&["api", "ideation"], body).await?;
        Ok(IdeationRequest::from_document(document).map_err(|err| self.unreachable(err.to_string()))?)
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> anyhow::Result<Vec<IdeationRequest>> {
        let mut query = vec![("limit", limit.to_string())];
        if !statuses.is_empty() {
            let statuses: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
            query.push(("status", statuses.join(",")));
        }
        let documents: Vec<Map<String, Value>> = self.get_json(&["api", "ideation"], &query).await?;
        let requests = documents.into_iter().map(IdeationRequest::from_document).collect::<Result<_, _>>();
        Ok(requests.map_err(|err| self.unreachable(err.to_string()))?)
    }

    async fn tail(&self, run_id: &RunId, filter: EventFilter) -> anyhow::Result<Box<dyn Tail>> {
        let mut tail = LiveTail {
            api: self.clone(),
            run_id: run_id.clone(),
            filter,
            stream: None,
            pending: VecDeque::new(),
            lost_since: None,
        };
        // The first connection is made now, so that a wrong token fails at once; a control
        // plane that just went away is waited for, as after any later drop.
        match tail.connect().await {
            Ok(stream) => tail.stream = Some(stream),
            Err(err) => tail.lost(err)?,
        }
        Ok(Box::new(tail))
    }

    fn describe(&self) -> String {
        self.plane.base().to_owned()
    }
}

/// A run followed through `GET /api/runs/{id}/events/stream`.
struct LiveTail {
    api: ApiOperator,
    run_id: RunId,
    /// Its cursor is that of the last event handed out (or queued in `pending`).
    filter: EventFilter,
    /// The open stream; none while `serve` is away.
    stream: Option<SseStream>,
    pending: VecDeque<StoredEvent>,
    /// Since when the control plane could not be reached.
    lost_since: Option<Instant>,
}

impl LiveTail {
    async fn connect(&self) -> Result<SseStream, ApiFailure> {
        let query = ApiOperator::events_query(&self.filter, false);
        let url = self.api.url(&["api", "runs", self.run_id.as_str(), "events", "stream"], &query)?;
        let mut request = self.api.plane.request(Method::GET, url).header(reqwest::header::ACCEPT, "text/event-stream");
        // A tail lasts as long as the run; a silent one is noticed by its missing keep-alives.
        request = request.timeout(Duration::from_secs(7 * 24 * 60 * 60));
        if let Some(cursor) = &self.filter.cursor {
            request = request.header("last-event-id", cursor);
        }
        let response = request.send().await.map_err(|err| self.api.unreachable(crate::errors::chain(&err)))?;
        let status = response.status();
        if !status.is_success() {
            let answer = response.json().await.ok();
            return Err(self.api.failure(status, answer));
        }
        Ok(SseStream { response, messages: SseBuffer::default(), heard: Instant::now() })
    }

    /// Keeps trying to reach the control plane for [`RECONNECT_PATIENCE`]; any other failure
    /// (a refused token, a run gone) ends the watch at once.
    fn lost(&mut self, err: ApiFailure) -> Result<(), ApiFailure> {
        if !matches!(err, ApiFailure::Unreachable { .. }) {
            return Err(err);
        }
        let since = *self.lost_since.get_or_insert_with(|| {
            crate::notice!("lost the control plane ({err}); reconnecting, for up to {RECONNECT_PATIENCE:?}");
            Instant::now()
        });
        if since.elapsed() > RECONNECT_PATIENCE { Err(err) } else { Ok(()) }
    }

    fn found(&mut self) {
        if self.lost_since.take().is_some() {
            crate::notice!("the control plane at {} answers again; following on", self.api.describe());
        }
    }

    fn take(&mut self, message: SseMessage) -> Result<(), ApiFailure> {
        if message.event.as_deref() == Some("error") {
            return Err(self.api.unreachable(format!("the live tail stopped: {}", message.data)));
        }
        let answer: EventAnswer = serde_json::from_str(&message.data)
            .map_err(|err| self.api.unreachable(format!("a live tail message this command cannot read ({err})")))?;
        let stored = answer.stored().map_err(|reason| self.api.unreachable(reason))?;
        self.filter.cursor = Some(stored.cursor.clone());
        self.pending.push_back(stored);
        Ok(())
    }

    /// Reads what the stream sends until `deadline`, or until a burst of events has come.
    async fn read_until(&mut self, deadline: tokio::time::Instant) -> Result<(), ApiFailure> {
        let mut deadline = deadline;
        loop {
            let Some(stream) = self.stream.as_mut() else { return Ok(()) };
            match tokio::time::timeout_at(deadline, stream.next_message()).await {
                Err(_) if stream.heard.elapsed() > SILENT_STREAM => {
                    return Err(self.api.unreachable("the live tail went silent".into()));
                }
                Err(_) => return Ok(()),
                Ok(Ok(Some(message))) => {
                    self.take(message)?;
                    deadline = deadline.min(tokio::time::Instant::now() + BURST);
                }
                // `serve` ends a tail when the run is over or when it shuts down.
                Ok(Ok(None)) => {
                    self.stream = None;
                    return Ok(());
                }
                Ok(Err(err)) => return Err(err),
            }
        }
    }
}

#[async_trait]
impl Tail for LiveTail {
    async fn drain(&mut self) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(self.pending.drain(..).collect())
    }

    async fn drain_all(&mut self) -> anyhow::Result<Vec<StoredEvent>> {
        // The run has ended: page through what is left after the last event received.
        let mut events: Vec<StoredEvent> = self.pending.drain(..).collect();
        events.extend(super::operator::events_after(&self.api, &self.run_id, &mut self.filter).await?);
        Ok(events)
    }

    async fn run(&mut self) -> anyhow::Result<Run> {
        loop {
            let url = self.api.url(&["api", "runs", self.run_id.as_str()], &[])?;
            match self.api.call(Method::GET, url, None).await {
                Ok(answer) => {
                    self.found();
                    return Ok(self.api.parse(answer)?);
                }
                Err(err) => self.lost(err)?,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn wait(&mut self, interval: Duration) {
        let deadline = tokio::time::Instant::now() + interval;
        if self.stream.is_none() {
            match self.connect().await {
                Ok(stream) => {
                    self.found();
                    self.stream = Some(stream);
                }
                Err(err) => {
                    if let Err(err) = self.lost(err) {
                        crate::notice!(warn, "{err}");
                    }
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
        if let Err(err) = self.read_until(deadline).await {
            tracing::debug!(error = %err, "live tail interrupted; reconnecting");
            self.stream = None;
        }
    }
}

/// One Server-Sent Events message.
#[derive(Debug, PartialEq)]
struct SseMessage {
    event: Option<String>,
    data: String,
}

/// The largest message a live tail may send: one event at the size limit, with its cursor
/// and receipt time. More without a message's end is not `serve` speaking.
const MAX_MESSAGE_BYTES: usize = crate::limits::MAX_BODY_BYTES + 64 * 1024;

/// An open `text/event-stream` answer, read message by message.
struct SseStream {
    response: reqwest::Response,
    messages: SseBuffer,
    /// When the server last sent anything (a keep-alive included).
    heard: Instant,
}

impl SseStream {
    /// The next message; `None` when the server ended the stream. Cancel-safe: what was read
    /// stays in the buffer.
    async fn next_message(&mut self) -> Result<Option<SseMessage>, ApiFailure> {
        let failure = |reason: String, response: &reqwest::Response| ApiFailure::Unreachable {
            url: response.url().as_str().to_owned(),
            reason,
        };
        loop {
            if let Some(message) = self.messages.next() {
                return Ok(Some(message));
            }
            if self.messages.pending_bytes() > MAX_MESSAGE_BYTES {
                let reason = format!("the live tail sent over {MAX_MESSAGE_BYTES} bytes without ending a message");
                return Err(failure(reason, &self.response));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    self.heard = Instant::now();
                    self.messages.extend(&chunk);
                }
                Ok(None) => return Ok(None),
                Err(err) => return Err(failure(crate::errors::chain(&err), &self.response)),
            }
        }
    }
}

/// Bytes of an event stream, cut into messages at blank lines.
#[derive(Default)]
struct SseBuffer {
    bytes: Vec<u8>,
}

impl SseBuffer {
    fn extend(&mut self, chunk: &[u8]) {
        // Lines may end in CRLF; JSON data never holds a raw CR.
        self.bytes.extend(chunk.iter().filter(|byte| **byte != b'\r'));
    }

    fn pending_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The next complete message with an event or data (comments, the keep-alives, are skipped).
    fn next(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.bytes.windows(2).position(|pair| pair == b"\n\n")?;
            let block: Vec<u8> = self.bytes.drain(..end + 2).collect();
            let mut message = SseMessage { event: None, data: String::new() };
            let mut has_data = false;
            for line in String::from_utf8_lossy(&block).lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => message.event = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                        has_data = true;
                    }
                    _ => {} // `id` is the cursor, also in the data; `:` starts a comment
                }
            }
            if has_data || message.event.is_some() {
                return Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_blank_lines_whatever_the_chunks() {
        let stream =
            b": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\nevent: error\r\ndata: store down\r\ndata: again\r\n\r\n";
        for split in 0..stream.len() {
            let mut buffer = SseBuffer::default();
            let mut messages = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                buffer.extend(part);
                messages.extend(std::iter::from_fn(|| buffer.next()));
            }
            assert_eq!(
                messages,
                [
                    SseMessage { event: None, data: "{\"a\":1}".into() },
                    SseMessage { event: Some("error".into()), data: "store down\nagain".into() },
                ],
                "split at {split}"
            );
            assert_eq!(buffer.pending_bytes(), 0);
        }
    }

    /// Run ids are letters, digits and `-_.:`, never `.` or `..` (which a URL resolves).
    #[test]
    fn a_run_id_is_one_path_segment() {
        let plane = HttpControlPlane::new("http://127.0.0.1:8080/base/", None).expect("client");
        let api = ApiOperator::new(plane);
        let id: RunId = "a.b:c-_9".parse().expect("id");
        let url = api.url(&["api", "runs", id.as_str(), "events"], &[("cursor", "a&b=c".into())]).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/base/api/runs/a.b:c-_9/events?cursor=a%26b%3Dc");
        assert!(".".parse::<RunId>().is_err() && "..".parse::<RunId>().is_err());
    }

    #[test]
    fn levels_are_named_as_the_api_reads_them() {
        use crate::event::LogLevel;
        for level in [LogLevel::Debug, LogLevel::Info, LogLevel::Warning, LogLevel::Error] {
            assert_eq!(serde_json::to_value(level).expect("serializes"), level.as_str());
        }
    }
}
