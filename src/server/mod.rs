//! The body of `scientist serve`: an axum HTTP server over a `Store`, stateless so that
//! any number of replicas can share one MongoDB. Every endpoint is listed once in
//! [`endpoints`] with the scope it needs; the router and the OpenAPI test both read that
//! table. Only `error.rs` turns errors into status codes.

mod admin;
mod auth;
mod conn;
mod download;
mod error;
mod health;
mod ingest;
mod metrics;
mod openapi;
mod queue;
mod read;
mod tail;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::middleware;
use axum::routing::{MethodRouter, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Scope, Tokens};
pub use conn::{Limits, REFUSAL_SLOTS};
pub use download::Downloads;
pub use error::ApiError;
pub use health::ProbeTimes;

use crate::protocol::http::limit_body;
use crate::protocol::path;
use crate::store::Store;

/// A request that has not been answered by then gets 408; the store work it started is
/// either committed or rolled back, so a retry is safe. Live tails are exempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    tokens: Tokens,
    metrics: Arc<metrics::Metrics>,
    /// Bumped after each commit of ingested events; wakes this process's live tails.
    stored: Arc<tokio::sync::watch::Sender<u64>>,
    /// Set when the server begins to shut down: live tails end so that it can.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    limits: Limits,
    write_probe: Arc<health::WriteProbe>,
    /// Where artifact downloads come from; `None`: downloads say which flag to pass.
    downloads: Option<Downloads>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, tokens: Tokens) -> Self {
        let (stored, _) = tokio::sync::watch::channel(0);
        let (stopping, _) = tokio::sync::watch::channel(false);
        let write_probe = Arc::new(health::WriteProbe::new(store.clone(), ProbeTimes::default()));
        AppState {
            store,
            tokens,
            metrics: Arc::default(),
            stored: Arc::new(stored),
            stopping: Arc::new(stopping),
            limits: Limits::default(),
            write_probe,
            downloads: None,
        }
    }

    /// The same state serving artifact downloads as `downloads` says.
    pub fn with_downloads(self, downloads: Downloads) -> Self {
        AppState { downloads: Some(downloads), ..self }
    }

    /// The same state with these connection and request limits (`Limits::default()` else).
    pub fn with_limits(self, limits: Limits) -> Self {
        AppState { limits, ..self }
    }

    /// The same state with the `/health` write probe run this often and cut off this soon.
    pub fn with_probe_times(self, times: ProbeTimes) -> Self {
        let write_probe = Arc::new(health::WriteProbe::new(self.store.clone(), times));
        AppState { write_probe, ..self }
    }
}

/// One endpoint of the API and who may call it (`None`: anyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub scope: Option<Scope>,
}

/// Every endpoint with its handler: the single list the router is built from.
fn routes() -> Vec<(Endpoint, MethodRouter<AppState>)> {
    use Scope::{Admin, Ingest, Read};
    let endpoint = |method: Method, path, scope| Endpoint { method, path, scope };
    vec![
        (endpoint(Method::GET, "/health", None), get(health)),
        (endpoint(Method::GET, "/metrics", Some(Read)), get(metrics::serve)),
        (endpoint(Method::GET, "/api/openapi.json", Some(Read)), get(serve_openapi)),
        (endpoint(Method::POST, path::INGEST_EVENT, Some(Ingest)), post(ingest::one)),
        (endpoint(Method::POST, path::INGEST_EVENTS, Some(Ingest)), post(ingest::batch)),
        (endpoint(Method::POST, path::CLAIM, Some(Ingest)), post(queue::claim)),
        (endpoint(Method::GET, "/api/queue/runs/{id}", Some(Ingest)), get(queue::check)),
        (endpoint(Method::POST, "/api/queue/ideation/{id}/heartbeat", Some(Ingest)), post(queue::hear_ideation)),
        (endpoint(Method::POST, "/api/queue/ideation/{id}/finish", Some(Ingest)), post(queue::finish_ideation)),
        (endpoint(Method::GET, "/api/runs", Some(Read)), get(read::runs)),
        (endpoint(Method::GET, "/api/run-ids", Some(Read)), get(read::run_ids)),
        (endpoint(Method::POST, "/api/runs", Some(Admin)), post(admin::enqueue)),
        (endpoint(Method::GET, "/api/runs/{id}", Some(Read)), get(read::run)),
        (endpoint(Method::GET, "/api/runs/{id}/events", Some(Read)), get(read::events)),
        (endpoint(Method::GET, "/api/runs/{id}/events/stream", Some(Read)), get(tail::stream)),
        (endpoint(Method::GET, "/api/runs/{id}/artifacts", Some(Read)), get(read::artifacts)),
        (endpoint(Method::GET, download::PATH, Some(Read)), get(download::artifact)),
        (endpoint(Method::POST, "/api/runs/{id}/reset", Some(Admin)), post(admin::reset)),
        (endpoint(Method::POST, "/api/runs/{id}/cancel", Some(Admin)), post(admin::cancel)),
        (endpoint(Method::POST, "/api/runs/{id}/approve", Some(Admin)), post(admin::approve)),
        (endpoint(Method::POST, "/api/runs/{id}/reject", Some(Admin)), post(admin::reject)),
        (endpoint(Method::GET, "/api/stats", Some(Read)), get(read::stats)),
        (endpoint(Method::GET, "/api/ideation", Some(Read)), get(read::ideation)),
        (endpoint(Method::POST, "/api/ideation", Some(Admin)), post(admin::enqueue_ideation)),
    ]
}

/// Every endpoint of the API.
pub fn endpoints() -> Vec<Endpoint> {
    routes().into_iter().map(|(endpoint, _)| endpoint).collect()
}

/// The routes with their auth, request timing, body limit and timeout.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (endpoint, handler) in routes() {
        let handler = match endpoint.scope {
            Some(scope) => {
                handler.route_layer(middleware::from_fn_with_state((state.tokens.clone(), scope), auth::require))
            }
            None => handler,
        };
        // The limit covers the handler, up to the answer's head; a body streams after it. So
        // a download keeps the limit (a hung object store gets a 408) while its body (a
        // 10 GB checkpoint to a slow reader) takes as long as it needs; `conn` cuts off a
        // reader that takes nothing. Live tails are exempt.
        let handler = if endpoint.path.ends_with("/stream") {
            handler
        } else {
            handler.layer(middleware::from_fn_with_state(state.limits.request_timeout, time_limit))
        };
        // An artifact key is the rest of the path, slashes included: axum's `{*key}`.
        router = router.route(&endpoint.path.replace("{key}", "{*key}"), handler);
    }
    let router = router.route_layer(middleware::from_fn_with_state(state.clone(), metrics::record_latency));
    limit_body(router)
        // A bug must cost one request a 500, not the connection (or the process).
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes, then finishes the requests in flight
/// (live tails end at once). Connections are bounded by the state's [`Limits`]: slow or
/// idle clients are closed, and past the cap new ones get a 503 instead of a wait.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let stopping = state.stopping.clone();
    conn::serve(listener, router(state), limits, stopping, shutdown).await
}

/// 200 when the store answers reads and took a write recently, 503 with the reason when not.
async fn health(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    let checked = match state.store.counts().await {
        Err(err) => Err(format!("the store does not answer reads: {}", crate::errors::chain(&err))),
        Ok(_) => state.write_probe.check().await.map_err(|reason| format!("the store refuses writes: {reason}")),
    };
    match checked {
        Ok(()) => (StatusCode::OK, axum::Json(Health { status: HealthStatus::Ok, error: None })),
        Err(reason) => {
            // /health needs no token: keep secrets that a driver message might quote out of it.
            let reason = crate::redact::redact_text(&reason).into_owned();
            tracing::warn!(%reason, "health check failed");
            let answer = Health { status: HealthStatus::Unavailable, error: Some(reason) };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(answer))
        }
    }
}

/// What `GET /health` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    status: HealthStatus,
    /// With `unavailable`: `the store does not answer reads: …` or `the store refuses writes: …`,
    /// and the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    Ok,
    Unavailable,
}

/// Answers 408, in our error shape, when the handler has not answered within `limit`.
/// Dropping the handler is safe: a store call cut off midway may be repeated (the `Store`
/// contract), so the client may retry.
async fn time_limit(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::Timeout(limit)),
    }
}

async fn serve_openapi() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], openapi::DOCUMENT.as_str())
}
