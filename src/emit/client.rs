//! An HTTP client of the ingest API (`scientist serve`, or a worker's local endpoint):
//! sends one event or a batch and sorts every failure into rejected, auth or unreachable,
//! which decide whether sending again can help.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::event::wire::Rejected;
use crate::limits::{self, MAX_BATCH_EVENTS, MAX_BODY_BYTES};
use crate::server::BatchAnswer;

/// Why events were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The events are invalid (or too large); sending them again will not help.
    #[error("the control plane rejected the event ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the control plane at {url} refused the token ({status}): set SCIENTIST_TOKEN or --token")]
    Auth { url: String, status: u16 },
    /// Nothing was stored; sending the same events again later is safe.
    #[error("the control plane at {url} could not take the event: {reason}; nothing was stored, send it again")]
    Unreachable { url: String, reason: String },
}

impl SendError {
    /// Whether the same events may be accepted later (keep them in the spool).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SendError::Rejected { .. })
    }
}

/// The answer to one event: the control plane's outcome (`applied`, `duplicate`, `stale`,
/// `orphan`), or `spooled` from a worker's local endpoint (kept on the pod's disk, in its
/// ordered stream to the control plane).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub id: String,
    pub outcome: String,
}

/// A connection-reusing client of one ingest API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Long enough for a slow store, short enough that a hung server does not hang a pipeline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, SendError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|err| SendError::Unreachable { url: base.to_owned(), reason: err.to_string() })?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one event in structured mode.
    pub async fn send_one(&self, event: &Map<String, Value>) -> Result<Receipt, SendError> {
        let body = Value::Object(event.clone()).to_string();
        // The server would answer 413 before reading it all; say so without sending.
        limits::check_event(body.len()).map_err(|message| SendError::Rejected { status: 413, message })?;
        let answer = self.post("/api/ingest/event", "application/cloudevents+json", body).await?;
        serde_json::from_value(answer).map_err(|err| self.unreachable(format!("unexpected answer: {err}")))
    }

    /// Sends events as NDJSON, in requests within the server's limits; the answer's
    /// rejected line numbers count from 1 at the first event given. An event too large to
    /// send at all is rejected here.
    pub async fn send_batch(&self, events: &[Map<String, Value>]) -> Result<BatchAnswer, SendError> {
        let lines: Vec<String> = events.iter().map(|event| Value::Object(event.clone()).to_string()).collect();
        self.send_lines(&lines).await
    }

    /// Sends events already serialized (one JSON object each, no newline), as
    /// [`send_batch`](Self::send_batch) does: the worker's spool keeps them in this form.
    ///
    /// A request the server refuses whole (413, 400, …) is halved and each half sent again,
    /// until the refused event stands alone: it alone is reported rejected, and every other
    /// event is still delivered, in order.
    pub async fn send_lines<L: AsRef<str>>(&self, events: &[L]) -> Result<BatchAnswer, SendError> {
        let mut total = BatchAnswer::default();
        // The requests still to send, in order, as the indices of their events.
        let mut parts: VecDeque<Vec<usize>> = VecDeque::new();
        let (mut part, mut part_bytes) = (Vec::new(), 0);
        for (index, event) in events.iter().enumerate() {
            let bytes = event.as_ref().len();
            if let Err(reason) = limits::check_event(bytes) {
                total.rejected.push(Rejected { line: index + 1, reason });
                continue;
            }
            if part.len() == MAX_BATCH_EVENTS || part_bytes + bytes + 1 > MAX_BODY_BYTES {
                parts.push_back(std::mem::take(&mut part));
                part_bytes = 0;
            }
            part.push(index);
            part_bytes += bytes + 1;
        }
        if !part.is_empty() {
            parts.push_back(part);
        }
        while let Some(mut part) = parts.pop_front() {
            let mut body = String::new();
            for &index in &part {
                body.push_str(events[index].as_ref());
                body.push('\n');
            }
            match self.post("/api/ingest/events", "application/x-ndjson", body).await {
                Ok(answer) => self.add_part(&mut total, answer, &part)?,
                Err(SendError::Rejected { message, .. }) if part.len() == 1 => {
                    total.rejected.push(Rejected { line: part[0] + 1, reason: message });
                }
                Err(SendError::Rejected { .. }) => {
                    let second = part.split_off(part.len() / 2);
                    parts.push_front(second);
                    parts.push_front(part);
                }
                Err(err) => return Err(err),
            }
        }
        total.rejected.sort_by_key(|rejected| rejected.line);
        Ok(total)
    }

    /// A JSON request to another endpoint of the API (the queue endpoints): `Ok(None)` for
    /// an answer without a body (204), failures sorted as for events.
    pub async fn request_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, SendError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.unreachable(describe(&err)))?;
        let status = response.status().as_u16();
        if status == 204 {
            return Ok(None);
        }
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        check_status(&url, status, answer).map(Some)
    }

    /// Adds the answer to one request of `send_lines` (events `part`) to `total`.
    fn add_part(&self, total: &mut BatchAnswer, answer: Value, part: &[usize]) -> Result<(), SendError> {
        let answer: BatchAnswer =
            serde_json::from_value(answer).map_err(|err| self.unreachable(format!("unexpected answer: {err}")))?;
        total.accepted += answer.accepted;
        total.applied += answer.applied;
        total.duplicate += answer.duplicate;
        total.stale += answer.stale;
        total.orphan += answer.orphan;
        total.rejected.extend(answer.rejected.into_iter().map(|rejected| Rejected {
            line: part.get(rejected.line.wrapping_sub(1)).map_or(rejected.line, |index| index + 1),
            reason: rejected.reason,
        }));
        Ok(())
    }

    async fn post(&self, path: &str, content_type: &str, body: String) -> Result<Value, SendError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.unreachable(describe(&err)))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        check_status(&url, status, answer)
    }

    fn unreachable(&self, reason: String) -> SendError {
        SendError::Unreachable { url: self.base.clone(), reason }
    }
}

/// Sorts an answer by status: 2xx is the answer, the rest an error that says whether
/// sending again can help.
fn check_status(url: &str, status: u16, answer: Value) -> Result<Value, SendError> {
    let message = || answer.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
    match status {
        200..=299 => Ok(answer),
        401 | 403 => Err(SendError::Auth { url: url.to_owned(), status }),
        // 409: a conflict with what is stored (a claim no longer live) stays one.
        400 | 409 | 413 | 415 | 422 => Err(SendError::Rejected { status, message: message() }),
        // Anything else (a wrong URL's 404, a 5xx, a proxy's 502) may pass later.
        _ => Err(SendError::Unreachable { url: url.to_owned(), reason: format!("HTTP {status}: {}", message()) }),
    }
}

/// reqwest's error with its causes ("error sending request: … Connection refused").
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
