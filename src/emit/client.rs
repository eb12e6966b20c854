//! An HTTP client of the ingest API (`scientist serve`, or a worker's local endpoint):
//! sends one event or a batch and sorts every failure into rejected, auth or unreachable,
//! which decide whether sending again can help.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::event::wire::Rejected;
use crate::server::{BatchAnswer, MAX_BATCH_EVENTS, MAX_BODY_BYTES};

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
        if body.len() > MAX_BODY_BYTES {
            // The server would answer 413 before reading it all; say so without sending.
            return Err(SendError::Rejected { status: 413, message: too_large(body.len()) });
        }
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
    pub async fn send_lines<L: AsRef<str>>(&self, events: &[L]) -> Result<BatchAnswer, SendError> {
        let mut total = BatchAnswer::default();
        let mut body = String::new();
        let mut lines = Vec::new(); // the 1-based line of each event in `body`
        for (index, event) in events.iter().enumerate() {
            let event = event.as_ref();
            if event.len() + 1 > MAX_BODY_BYTES {
                total.rejected.push(Rejected { line: index + 1, reason: too_large(event.len() + 1) });
                continue;
            }
            if lines.len() == MAX_BATCH_EVENTS || body.len() + event.len() + 1 > MAX_BODY_BYTES {
                self.send_part(&mut total, std::mem::take(&mut body), std::mem::take(&mut lines)).await?;
            }
            body.push_str(event);
            body.push('\n');
            lines.push(index + 1);
        }
        if !lines.is_empty() {
            self.send_part(&mut total, body, lines).await?;
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

    async fn send_part(&self, total: &mut BatchAnswer, body: String, lines: Vec<usize>) -> Result<(), SendError> {
        let answer = self.post("/api/ingest/events", "application/x-ndjson", body).await?;
        let part: BatchAnswer =
            serde_json::from_value(answer).map_err(|err| self.unreachable(format!("unexpected answer: {err}")))?;
        total.accepted += part.accepted;
        total.applied += part.applied;
        total.duplicate += part.duplicate;
        total.stale += part.stale;
        total.orphan += part.orphan;
        total.rejected.extend(part.rejected.into_iter().map(|rejected| Rejected {
            line: lines.get(rejected.line.wrapping_sub(1)).copied().unwrap_or(rejected.line),
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

fn too_large(bytes: usize) -> String {
    format!("the event is {bytes} bytes; the limit is {MAX_BODY_BYTES}: store large content as an artifact")
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
