//! The control plane over HTTP: a connection-reusing client of `serve`'s API (or of a
//! worker's local endpoint, which speaks the ingest part of it). Every failure is sorted
//! into rejected, auth or unreachable, which decide whether sending again can help.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ControlPlane, Error};
use crate::event::wire::Rejected;
use crate::ideation::IdeationRequest;
use crate::limits::{self, MAX_BATCH_EVENTS, MAX_BODY_BYTES};
use crate::protocol::{
    BatchAnswer, ClaimRequest, ClaimState, EventAnswer, IdeationFinish, IdeationHeard, WorkerMode, path,
};
use crate::run::{Run, RunId};

/// Why a request was not answered as hoped.
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

/// `serve` (or a worker's local endpoint) at one base URL.
#[derive(Clone)]
pub struct HttpControlPlane {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Long enough for a slow store, short enough that a hung server does not hang a pipeline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// reqwest's own default.
const MAX_REDIRECTS: usize = 10;

/// Whether `base` names an https URL (the scheme in any case).
fn is_https(base: &str) -> bool {
    base.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

impl std::fmt::Debug for HttpControlPlane {
    /// The URL only: the token is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpControlPlane").field("base", &self.base).finish_non_exhaustive()
    }
}

impl HttpControlPlane {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: Option<String>) -> Result<HttpControlPlane, SendError> {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).tcp_nodelay(true);
        if !is_https(base) {
            // Loading the system's CA roots is most of a one-shot `emit`'s start-up, and a
            // plain-HTTP control plane never needs them; a redirect to https is refused
            // with a message that says to use the https URL instead.
            builder = builder.tls_certs_only(Vec::new()).redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() == "https" {
                    attempt.error("the control plane redirects to https: give its https URL")
                } else if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            }));
        }
        let http =
            builder.build().map_err(|err| SendError::Unreachable { url: base.to_owned(), reason: err.to_string() })?;
        Ok(HttpControlPlane { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `url`, carrying the token.
    pub(super) fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends events already serialized (one JSON object each, no newline) as NDJSON, in
    /// requests within the server's limits; the answer's rejected line numbers count from 1
    /// at the first event given. An event too large to send at all is rejected here.
    ///
    /// A request the server refuses whole (413, 400, …) is halved and each half sent again,
    /// until the refused event stands alone: it alone is reported rejected, and every other
    /// event is still delivered, in order.
    async fn post_lines<L: AsRef<str>>(&self, events: &[L]) -> Result<BatchAnswer, SendError> {
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
            match self.post(path::INGEST_EVENTS, "application/x-ndjson", body).await {
                Ok(answer) => {
                    let answer: BatchAnswer = self.parse_answer(answer)?;
                    let position = |line: usize| part.get(line.wrapping_sub(1)).map_or(line, |index| index + 1);
                    total.add_part(answer, position);
                }
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
    async fn request_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<Value>, SendError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| self.unreachable(crate::errors::chain(&err)))?;
        let status = response.status().as_u16();
        if status == 204 {
            return Ok(None);
        }
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        check_status(&url, status, answer).map(Some)
    }

    async fn post(&self, path: &str, content_type: &str, body: String) -> Result<Value, SendError> {
        let url = format!("{}{path}", self.base);
        let request =
            self.request(reqwest::Method::POST, &url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        let response = request.send().await.map_err(|err| self.unreachable(crate::errors::chain(&err)))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        check_status(&url, status, answer)
    }

    /// An ingest answer of the expected shape; anything else may pass later (a proxy's page).
    fn parse_answer<T: DeserializeOwned>(&self, answer: Value) -> Result<T, SendError> {
        serde_json::from_value(answer).map_err(|err| self.unreachable(format!("unexpected answer: {err}")))
    }

    fn unreachable(&self, reason: String) -> SendError {
        SendError::Unreachable { url: self.base.clone(), reason }
    }

    async fn claim_as(&self, request: &ClaimRequest) -> Result<Option<Value>, Error> {
        Ok(self.request_json(reqwest::Method::POST, path::CLAIM, Some(request)).await?)
    }
}

#[async_trait]
impl ControlPlane for HttpControlPlane {
    async fn claim(&self, worker: &str, queue: &str) -> Result<Option<Run>, Error> {
        let request = ClaimRequest { worker: worker.to_owned(), queue: queue.to_owned(), mode: WorkerMode::Experiment };
        match self.claim_as(&request).await? {
            None => Ok(None),
            Some(answer) => serde_json::from_value(answer).map(Some).map_err(|err| Error::Answer(err.to_string())),
        }
    }

    async fn claim_ideation(&self, worker: &str) -> Result<Option<IdeationRequest>, Error> {
        let request = ClaimRequest {
            worker: worker.to_owned(),
            queue: crate::run::DEFAULT_QUEUE.to_owned(),
            mode: WorkerMode::Ideation,
        };
        match self.claim_as(&request).await? {
            None => Ok(None),
            Some(Value::Object(document)) => {
                IdeationRequest::from_document(document).map(Some).map_err(|err| Error::Answer(err.to_string()))
            }
            Some(other) => Err(Error::Answer(format!("an ideation request that is not an object: {other}"))),
        }
    }

    async fn check(&self, run_id: &RunId, attempt: u32) -> Result<ClaimState, Error> {
        let answer = self
            .request_json(reqwest::Method::GET, &path::claim_check(run_id, attempt), None::<&()>)
            .await?
            .ok_or_else(|| Error::Answer("an empty answer".into()))?;
        serde_json::from_value(answer).map_err(|err| Error::Answer(err.to_string()))
    }

    async fn hear_ideation(&self, id: &str, attempt: u32) -> Result<bool, Error> {
        let heard = IdeationHeard { attempt };
        live_unless_conflict(
            self.request_json(reqwest::Method::POST, &path::ideation_heartbeat(id), Some(&heard)).await,
        )
    }

    async fn finish_ideation(&self, id: &str, attempt: u32, error: Option<String>) -> Result<bool, Error> {
        let finish = IdeationFinish { attempt, error };
        live_unless_conflict(self.request_json(reqwest::Method::POST, &path::ideation_finish(id), Some(&finish)).await)
    }

    async fn send_event(&self, event: &Map<String, Value>) -> Result<EventAnswer, Error> {
        let body = Value::Object(event.clone()).to_string();
        // The server would answer 413 before reading it all; say so without sending.
        limits::check_event(body.len()).map_err(|message| SendError::Rejected { status: 413, message })?;
        let answer = self.post(path::INGEST_EVENT, "application/cloudevents+json", body).await?;
        Ok(self.parse_answer(answer)?)
    }

    async fn send_lines(&self, lines: &[Arc<str>]) -> Result<BatchAnswer, Error> {
        Ok(self.post_lines(lines).await?)
    }

    fn describe(&self) -> String {
        self.base.clone()
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

/// An ideation claim endpoint's answer: 409 says the claim is not live.
fn live_unless_conflict(answer: Result<Option<Value>, SendError>) -> Result<bool, Error> {
    match answer {
        Ok(_) => Ok(true),
        Err(SendError::Rejected { status: 409, .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn https_is_told_by_its_scheme_in_any_case() {
        assert!(is_https("https://scientist.example"));
        assert!(is_https("HTTPS://scientist.example"));
        assert!(!is_https("http://127.0.0.1:8080"));
        assert!(!is_https("http"));
    }

    #[tokio::test]
    async fn a_plain_http_control_plane_that_redirects_to_https_is_told_to_give_the_https_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut request).await.expect("read");
            let answer = "HTTP/1.1 308 Permanent Redirect\r\nlocation: https://127.0.0.1:9/api/ingest/events\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            socket.write_all(answer.as_bytes()).await.expect("write");
        });
        let plane = HttpControlPlane::new(&base, None).expect("client");
        let line: Arc<str> = Arc::from(r#"{"type":"ai.run.log"}"#);
        let err = plane.send_lines(&[line]).await.expect_err("a redirect to https is not followed");
        let reason = crate::errors::chain(&err);
        assert!(reason.contains("redirects to https"), "{reason}");
        server.await.expect("the server");
    }
}
