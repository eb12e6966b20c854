//! `GET /metrics` in Prometheus (OpenMetrics) text format: ingest outcomes and request
//! latencies counted as they happen; runs by status and the queue read from the store at
//! scrape time, so every `serve` replica reports the same fleet.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;
use crate::run::RunStatus;
use crate::store::Outcome;
use crate::time::Timestamp;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The server's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    ingested: Family<OutcomeLabel, Counter>,
    requests: Family<RequestLabels, Histogram>,
    runs: Family<StatusLabel, Gauge>,
    queue_depth: Gauge,
    oldest_queued_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("scientist");
        let ingested = Family::<OutcomeLabel, Counter>::default();
        registry.register("ingest_events", "Events received, by outcome", ingested.clone());
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("http_request_duration_seconds", "HTTP request latency", requests.clone());
        let runs = Family::<StatusLabel, Gauge>::default();
        registry.register("runs", "Runs by status", runs.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "QUEUED runs", queue_depth.clone());
        let oldest_queued_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "oldest_queued_age_seconds",
            "Age of the oldest QUEUED run (0 when none)",
            oldest_queued_age.clone(),
        );
        Metrics { registry, ingested, requests, runs, queue_depth, oldest_queued_age }
    }
}

impl Metrics {
    pub fn count_ingested(&self, outcomes: &[Outcome], rejected: usize) {
        for outcome in outcomes {
            let outcome = match outcome {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
                Outcome::Stale => "stale",
                Outcome::Orphan => "orphan",
            };
            self.ingested.get_or_create(&OutcomeLabel { outcome }).inc();
        }
        if rejected > 0 {
            self.ingested.get_or_create(&OutcomeLabel { outcome: "rejected" }).inc_by(rejected as u64);
        }
    }
}

/// Middleware: times every request under its route pattern (not its path, which would make
/// one series per run id).
pub(super) async fn record_latency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(request).await;
    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    state.metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

pub(super) async fn serve(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.store.stats(Timestamp::now()).await?;
    let metrics = &state.metrics;
    for status in RunStatus::ALL {
        let count = stats.by_status.get(status);
        metrics.runs.get_or_create(&StatusLabel { status: status.as_str() }).set(count as i64);
    }
    metrics.queue_depth.set(stats.queue.depth as i64);
    metrics.oldest_queued_age.set(stats.queue.oldest_age_s.unwrap_or(0.0));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}
