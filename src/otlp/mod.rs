//! Runs' timelines as OpenTelemetry traces: each ended attempt's span and its stages' spans,
//! sent over OTLP/HTTP (protobuf) to a collector (`--otlp-endpoint`), so that a run appears in
//! Jaeger, Tempo or Honeycomb next to its pipeline's own spans.
//!
//! Which attempts are due is the run document's outbox: every run write raises a
//! `alert::Kind::Spans` mark for each ended attempt (`alert::raise`), and `serve`'s sender
//! (`webhook::Sender`) takes each due mark, hands it to [`Exporter::export`] and records the
//! try, with the claims and retries alerts have. So a span is sent at least once, by one
//! replica at a time, whatever restarts on the way; a collector keeps a span sent twice once
//! (same trace and span id).

mod spans;

use std::time::Duration;

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use reqwest::Url;

pub use spans::attempt_spans;

use crate::run::Run;

/// Where a collector takes traces: `URL` as given when its path already ends in
/// `/v1/traces`, else with `/v1/traces` added (the OTLP convention for a base endpoint such
/// as `http://collector:4318`).
pub fn traces_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|err| {
        format!("{text:?} is not a URL ({err}); give the collector's OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: an OTLP/HTTP endpoint is http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{}: credentials in the URL would be logged; pass them in OTEL_EXPORTER_OTLP_HEADERS",
            url.host_str().unwrap_or("the endpoint")
        ));
    }
    if !url.path().ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// Sends attempts' spans to one collector. Headers (an API key) come from the standard
/// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, read by the exporter.
pub struct Exporter {
    /// The SDK's exporter is not to be called concurrently: one export at a time.
    inner: tokio::sync::Mutex<opentelemetry_otlp::SpanExporter>,
    url: Url,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter to `url` (see [`traces_url`]) whose every export ends within `timeout`.
    pub fn new(url: Url, timeout: Duration) -> Result<Exporter, String> {
        // A redirect is no acknowledgement, as for alerts.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!("scientist/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("making the OTLP HTTP client: {err}"))?;
        let mut inner = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.as_str())
            .with_timeout(timeout)
            .build()
            .map_err(|err| format!("--otlp-endpoint {url}: {err}"))?;
        let resource = Resource::builder_empty()
            .with_service_name("scientist")
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        inner.set_resource(&resource);
        Ok(Exporter { inner: tokio::sync::Mutex::new(inner), url })
    }

    /// Where it sends (for messages: the URL holds no credentials).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends the spans of `run`'s ended attempt `attempt`: Ok once the collector answered 2xx.
    /// An attempt no longer kept in `attempts` has nothing to send (Ok).
    pub async fn export(&self, run: &Run, attempt: u32) -> Result<(), String> {
        let Some(ended) = run.attempts.iter().find(|ended| ended.attempt == attempt) else { return Ok(()) };
        let batch = attempt_spans(run, ended);
        self.inner.lock().await.export(batch).await.map_err(|err| format!("OTLP export to {}: {err}", self.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_one_is_kept() {
        let url = |text: &str| traces_url(text).map(|url| url.to_string());
        assert_eq!(url("http://127.0.0.1:4318").as_deref(), Ok("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(url("http://collector:4318/").as_deref(), Ok("http://collector:4318/v1/traces"));
        assert_eq!(url("https://api.honeycomb.io/v1/traces").as_deref(), Ok("https://api.honeycomb.io/v1/traces"));
        assert_eq!(url("http://gw/otlp").as_deref(), Ok("http://gw/otlp/v1/traces"));
        for bad in ["collector:4318", "ftp://collector", "http://user:key@collector:4318", "not a url"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
