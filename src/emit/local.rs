//! A worker's local endpoint: the ingest API (`POST /api/ingest/event`, `/api/ingest/events`)
//! on a loopback port, through which the child process (`scientist emit` with
//! `SCIENTIST_EMIT_URL`, or plain HTTP) joins the worker's ordered, sequenced, spooled
//! stream. An event is answered 202 `spooled` once it is synced to the worker's spool: the
//! child never waits for the control plane, whatever state it is in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::stream::{Draft, RunStream};
use crate::event::wire::Rejected;
use crate::event::{Event, EventId, EventType};
use crate::protocol::http::{ParseError, bearer_token, limit_body, parse_batch, parse_event, refusal};
use crate::protocol::{BatchAnswer, EventAnswer, EventOutcome, path};
use crate::queue::authority;
use crate::sync::lock;
use crate::time::Timestamp;

/// What the child reported about itself through the endpoint, for the worker's verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    /// The stage of its latest `ai.run.stage_started`.
    pub stage: Option<String>,
    /// The type of a terminal event it sent (`ai.run.failed`, …): the worker then does not
    /// send its own.
    pub terminal: Option<String>,
    /// It sent `ai.run.review_requested` during the step: the worker acts on it when the
    /// step ends, as on `review = true`. Cleared by the worker.
    pub review_requested: bool,
    /// The worker's part, set before each step: whether a review asked now holds the worker
    /// (a step before the last), and the step's stage. Both are stamped on the child's
    /// request (`holds_worker`, `stage`), so that the request says what the worker will do.
    pub review_holds: bool,
    pub step_stage: Option<crate::run::Stage>,
}

/// The run whose events the endpoint takes now.
struct Attached {
    stream: RunStream,
    reported: Arc<Mutex<Reported>>,
}

#[derive(Clone)]
struct LocalState {
    /// The child's bearer token: keeps other local users' processes out of the stream.
    token: Arc<str>,
    attached: Arc<Mutex<Option<Attached>>>,
}

/// The running endpoint; stops when dropped.
pub struct LocalEndpoint {
    url: String,
    state: LocalState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl LocalEndpoint {
    /// Listens on `addr` (a loopback address; port 0 picks a free one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<LocalEndpoint> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = LocalState { token: Arc::from(EventId::generate().0), attached: Arc::default() };
        let router = Router::new()
            .route("/health", get(|| async { axum::Json(json!({ "status": "ok" })) }))
            .route(path::INGEST_EVENT, post(one))
            .route(path::INGEST_EVENTS, post(batch));
        let router = limit_body(router).with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let serving = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(err) = serving.await {
                tracing::error!(error = %err, "the local event endpoint stopped");
            }
        });
        Ok(LocalEndpoint { url, state, _stop: stop })
    }

    /// The base URL to give the child as `SCIENTIST_EMIT_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token to give the child as `SCIENTIST_TOKEN`.
    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// Takes events for `stream`'s run from now on; returns what the child reports.
    pub fn attach(&self, stream: RunStream) -> Arc<Mutex<Reported>> {
        let reported = Arc::new(Mutex::new(Reported::default()));
        *lock(&self.state.attached) = Some(Attached { stream, reported: reported.clone() });
        reported
    }

    /// Refuses events until the next [`attach`](Self::attach).
    pub fn detach(&self) {
        *lock(&self.state.attached) = None;
    }
}

/// A refusal not yet turned into a response (a response is too large to pass around).
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refusal(self.status, self.message)
    }
}

impl From<ParseError> for Refusal {
    fn from(err: ParseError) -> Self {
        Refusal { status: err.status(), message: err.to_string() }
    }
}

impl LocalState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let given = bearer_token(headers).unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(self.token.as_bytes())) {
            return Ok(());
        }
        Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong token: send `Authorization: Bearer $SCIENTIST_TOKEN` (the worker sets it for its child)"
                .into(),
        })
    }

    /// The attached run's stream, or why there is none.
    fn stream(&self) -> Result<(RunStream, Arc<Mutex<Reported>>), Refusal> {
        match lock(&self.attached).as_ref() {
            Some(attached) => Ok((attached.stream.clone(), attached.reported.clone())),
            None => Err(Refusal {
                status: StatusCode::CONFLICT,
                message: "this worker is not running a run now; nothing to report to".into(),
            }),
        }
    }
}

/// Checks that the event is about the attached run and fits the control plane's limit as
/// the stream will send it, and notes what it reports.
fn admit(event: &Event, stream: &RunStream, reported: &Mutex<Reported>) -> Result<Draft, Refusal> {
    if event.run_id.as_ref() != Some(stream.run_id()) {
        let named = event.run_id.as_ref().map_or("none".to_owned(), ToString::to_string);
        let message = format!(
            "this worker runs run {}; the event names run {named}: send events about other runs to the control plane",
            stream.run_id()
        );
        return Err(Refusal { status: StatusCode::BAD_REQUEST, message });
    }
    // The control plane refuses these from a pod's token: refused here whatever the
    // worker's own token may do, so nothing accepted here is refused downstream.
    authority::pod_may_send_for_its_claim(event)
        .map_err(|refusal| Refusal { status: StatusCode::FORBIDDEN, message: refusal.to_string() })?;
    let mut reported = lock(reported);
    let mut object = event.to_json();
    if event.payload.event_type() == Some(EventType::RunReviewRequested)
        && let Some(Value::Object(data)) = object.get_mut("data")
    {
        data.insert("holds_worker".into(), Value::Bool(reported.review_holds));
        if let Some(stage) = reported.step_stage {
            data.insert("stage".into(), Value::from(stage.as_str()));
        }
    }
    let draft = Draft::from_object(object);
    stream.check_size(&draft).map_err(|message| Refusal { status: StatusCode::PAYLOAD_TOO_LARGE, message })?;
    match event.payload.event_type() {
        Some(EventType::RunStageStarted) => {
            if let Some(stage) = event.data.get("stage").and_then(Value::as_str) {
                reported.stage = Some(stage.to_owned());
            }
        }
        Some(EventType::RunCompleted | EventType::RunFailed | EventType::RunCanceled) => {
            reported.terminal.get_or_insert_with(|| event.event_type.clone());
        }
        Some(EventType::RunReviewRequested) => reported.review_requested = true,
        _ => {}
    }
    Ok(draft)
}

async fn one(State(state): State<LocalState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = state.authorize(&headers) {
        return refused.into_response();
    }
    let event = match parse_event(&headers, &body, Timestamp::now()) {
        Ok(event) => event,
        Err(err) => return Refusal::from(err).into_response(),
    };
    let (stream, reported) = match state.stream() {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let id = event.id.to_string();
    let draft = match admit(&event, &stream, &reported) {
        Ok(draft) => draft,
        Err(refused) => return refused.into_response(),
    };
    match stream.emit_synced(draft).await {
        Ok(()) => {
            (StatusCode::ACCEPTED, axum::Json(EventAnswer { id, outcome: EventOutcome::Spooled })).into_response()
        }
        Err(err) => refusal(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

async fn batch(State(state): State<LocalState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = state.authorize(&headers) {
        return refused.into_response();
    }
    let parsed = match parse_batch(&headers, &body, Timestamp::now()) {
        Ok(parsed) => parsed,
        Err(err) => return Refusal::from(err).into_response(),
    };
    let (stream, reported) = match state.stream() {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let mut rejected = parsed.rejected;
    let mut drafts = Vec::new();
    for (line, event) in &parsed.events {
        match admit(event, &stream, &reported) {
            Ok(draft) => drafts.push(draft),
            Err(refused) => rejected.push(Rejected { line: *line, reason: refused.message }),
        }
    }
    rejected.sort_by_key(|rejected| rejected.line);
    let spooled = drafts.len();
    if let Err(err) = stream.emit_all_synced(drafts).await {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
    }
    let answer = BatchAnswer { accepted: spooled, spooled: Some(spooled), rejected, ..BatchAnswer::default() };
    (StatusCode::ACCEPTED, axum::Json(answer)).into_response()
}
