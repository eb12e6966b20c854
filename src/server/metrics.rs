//! `GET /metrics` in Prometheus (OpenMetrics) text format: ingest outcomes and request
//! latencies counted as they happen; runs by status, the queue and what runs cost read from
//! the store at scrape time, so every `serve` replica reports the same fleet.
//!
//! The cost counters (`scientist_cost_usd_total{queue,kind}`, `scientist_llm_tokens_total
//! {model,kind}`) are the store's all-time sums (`stats::cost::AllTimeCost`), not a window's,
//! so they do not fall as a window slides; at most `TOP_SERIES` queues and models are named,
//! the rest summed under `other`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;
use crate::run::RunStatus;
use crate::store::Outcome;
use crate::store::stats::cost::{AllTimeCost, DEFAULT_WINDOW};
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlagLabel {
    flag: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueCostLabels {
    queue: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTokenLabels {
    model: String,
    kind: &'static str,
}

/// The cost counters: the all-time sums the latest scrape read, encoded as they are (a
/// family would keep the series of a queue that has since dropped out of the top ones).
#[derive(Debug, Default)]
struct CostCounters {
    latest: Mutex<AllTimeCost>,
}

impl Collector for CostCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = crate::store::lock(&self.latest).clone();
        let help = "Dollars runs have spent, all runs, by queue and kind (gpu, llm)";
        let counter = ConstCounter::new(0.0_f64);
        let mut family = encoder.encode_descriptor("cost_usd", help, None, counter.metric_type())?;
        for queue in &latest.by_queue {
            for (kind, usd) in [("gpu", queue.gpu_usd), ("llm", queue.llm_usd)] {
                let labels = QueueCostLabels { queue: queue.queue.clone(), kind };
                ConstCounter::new(usd).encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "LLM tokens runs have used, all runs, by model and kind (input, output, cached)";
        let mut family = encoder.encode_descriptor("llm_tokens", help, None, counter.metric_type())?;
        for model in &latest.by_model {
            let kinds =
                [("input", model.input_tokens), ("output", model.output_tokens), ("cached", model.cached_tokens)];
            for (kind, tokens) in kinds {
                let labels = ModelTokenLabels { model: model.model.clone(), kind };
                ConstCounter::new(tokens).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The server's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    ingested: Family<OutcomeLabel, Counter>,
    requests: Family<RequestLabels, Histogram>,
    runs: Family<StatusLabel, Gauge>,
    flagged: Family<FlagLabel, Gauge>,
    queue_depth: Gauge,
    oldest_queued_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    costs: Arc<CostCounters>,
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
        let flagged = Family::<FlagLabel, Gauge>::default();
        registry.register(
            "runs_flagged",
            "Held runs flagged silent (worker not heard from) or stalled (heard, no progress)",
            flagged.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "QUEUED runs", queue_depth.clone());
        let oldest_queued_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "oldest_queued_age_seconds",
            "Age of the oldest QUEUED run (0 when none)",
            oldest_queued_age.clone(),
        );
        let costs = Arc::new(CostCounters::default());
        registry.register_collector(Box::new(costs.clone()));
        Metrics { registry, ingested, requests, runs, flagged, queue_depth, oldest_queued_age, costs }
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
    let stats = state.store.stats(Timestamp::now(), DEFAULT_WINDOW).await?;
    let metrics = &state.metrics;
    for status in RunStatus::ALL {
        let count = stats.by_status.get(status);
        metrics.runs.get_or_create(&StatusLabel { status: status.as_str() }).set(count as i64);
    }
    for (flag, count) in [("silent", stats.flagged.silent), ("stalled", stats.flagged.stalled)] {
        metrics.flagged.get_or_create(&FlagLabel { flag }).set(count as i64);
    }
    metrics.queue_depth.set(stats.queue.depth as i64);
    metrics.oldest_queued_age.set(stats.queue.oldest_age_s.unwrap_or(0.0));
    *crate::store::lock(&metrics.costs.latest) = stats.cost.all_time;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}
