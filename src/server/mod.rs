//! The body of `scientist serve`: an axum HTTP server over a `Store`. This slice has event
//! ingest (structured, binary, NDJSON and JSON batches), `/health` and bearer-token auth;
//! the read API, queue endpoints and metrics follow (issue 4). Only this module turns
//! errors into status codes (`error.rs`).

mod auth;
mod error;
mod ingest;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use auth::Tokens;

use crate::store::Store;

/// Largest request body accepted (a batch of `MAX_BATCH_EVENTS` events of a few KiB each).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most events in one batch; a larger batch is refused whole (split it and resend).
pub const MAX_BATCH_EVENTS: usize = 1000;

/// A request that has not been answered by then gets 408; the store work it started is
/// either committed or rolled back, so a retry is safe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Tokens,
}

/// The routes, with auth on everything but `/health`, a body limit and a timeout.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/ingest/event", post(ingest::one))
        .route("/api/ingest/events", post(ingest::batch))
        .route_layer(middleware::from_fn_with_state(state.tokens.clone(), auth::require_token));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// 200 when the store answers, 503 when it does not.
async fn health(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match state.store.counts().await {
        Ok(_) => (StatusCode::OK, axum::Json(json!({ "status": "ok" }))),
        Err(err) => {
            tracing::warn!(error = %err, "health check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "unavailable", "error": err.to_string() })))
        }
    }
}
