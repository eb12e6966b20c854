//! Reading the ingest API's requests, shared by `serve` and a worker's local endpoint: the
//! events of a request body (by its media type and `ce-*` headers), the bearer token, the
//! one body limit, and the error shape every refusal has (`{"error": "…"}`).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;

use crate::event::wire::{self, Batch};
use crate::event::{self, Event};
use crate::limits::{self, MAX_BATCH_EVENTS, MAX_BODY_BYTES};
use crate::time::Timestamp;

/// Why a request body holds no events to take; each kind has its status in the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// Neither an event nor a batch media type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a limit of `crate::limits` (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not a valid event or batch (400); the message names the problem.
    #[error("{0}")]
    Invalid(String),
}

impl ParseError {
    pub fn status(&self) -> StatusCode {
        match self {
            ParseError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ParseError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ParseError::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }
}

fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The one event of a `POST /api/ingest/event` request: binary mode when it has `ce-*`
/// headers, else structured mode.
pub fn parse_event(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Event, ParseError> {
    let media_type = media_type(headers);
    if headers.contains_key("ce-specversion") {
        let ce_headers = headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let content_type = (!media_type.is_empty()).then_some(media_type.as_str());
        wire::parse_binary(ce_headers, content_type, body, now)
    } else if media_type == "application/cloudevents+json" || media_type == "application/json" {
        wire::parse_structured(body, now)
    } else {
        return Err(ParseError::UnsupportedMediaType(format!(
            "content type {media_type:?} is not an event: send application/cloudevents+json (structured mode), \
             ce-* headers (binary mode), or a batch to /api/ingest/events"
        )));
    }
    .map_err(|err| match err {
        event::Error::TooLarge(message) => ParseError::TooLarge(message),
        other => ParseError::Invalid(other.to_string()),
    })
}

/// The events of a `POST /api/ingest/events` request, good lines and rejected ones, within
/// `MAX_BATCH_EVENTS`.
pub fn parse_batch(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Batch, ParseError> {
    let parsed = match media_type(headers).as_str() {
        "application/x-ndjson" | "application/ndjson" => wire::parse_ndjson(body, now),
        "application/cloudevents-batch+json" => {
            wire::parse_json_batch(body, now).map_err(|err| ParseError::Invalid(err.to_string()))?
        }
        other => {
            return Err(ParseError::UnsupportedMediaType(format!(
                "content type {other:?} is not a batch: send application/x-ndjson (one event a line) \
                 or application/cloudevents-batch+json (a JSON array)"
            )));
        }
    };
    let total = parsed.events.len() + parsed.rejected.len();
    if total > MAX_BATCH_EVENTS {
        return Err(ParseError::TooLarge(limits::batch_too_large(total)));
    }
    Ok(parsed)
}

/// The token of an `Authorization: Bearer <token>` header. The scheme name is matched in
/// any case (RFC 7235: `bearer` and `BEARER` are the same scheme); `None` when the header
/// is missing, not text, another scheme, or has no token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A refusal in the API's one error shape: `{"error": message}` with `status`.
pub fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The one request body limit (`limits::MAX_BODY_BYTES`), refused in the error shape: for
/// `serve` and for a worker's local endpoint alike.
pub fn limit_body<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        // Both: the extractors' own 2 MiB default must not undercut the one limit, and a
        // declared length over it is refused before the body is read.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::map_response(explain_too_large))
}

/// The body limit answers 413 in plain text; say what to do instead, in the error shape.
async fn explain_too_large(response: Response) -> Response {
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|value| value == "application/json");
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    refusal(StatusCode::PAYLOAD_TOO_LARGE, limits::body_too_large())
}
