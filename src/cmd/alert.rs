//! The alert and span export flags: which marks runs raise (any process that ends runs in a
//! store) and how `serve` delivers them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use reqwest::Url;

use crate::alert::Raise;
use crate::otlp;
use crate::webhook::{self, Format, Webhook};

/// Which alerts runs raise. Each process that writes runs to the store raises the alerts of
/// the changes it makes (a worker on a store, `serve`): set these alike everywhere (the
/// environment variables make that easy). Only `serve` sends them.
#[derive(Debug, Clone, clap::Args)]
pub struct RaiseArgs {
    /// POST an alert to this URL for each run that fails (after its retries), is lost,
    /// stalls or awaits review; repeat the flag, or separate URLs with commas in the
    /// variable. Only `serve` sends alerts (at least once each, signed with --alert-secret);
    /// a worker on a store given the same URLs raises the alerts of the runs it ends.
    #[arg(long = "alert-webhook", value_name = "URL", env = "SCIENTIST_ALERT_WEBHOOKS", hide_env_values = true,
          value_delimiter = ',', value_parser = parse_webhook)]
    pub webhooks: Vec<Webhook>,

    /// Alert on completed runs too.
    #[arg(long = "alert-on-complete", env = "SCIENTIST_ALERT_ON_COMPLETE")]
    pub on_complete: bool,

    /// Send each ended attempt's span, and a child span per stage, to this OpenTelemetry
    /// collector over OTLP/HTTP (protobuf), e.g. http://127.0.0.1:4318 (`/v1/traces` is
    /// added). Headers such as an API key come from OTEL_EXPORTER_OTLP_HEADERS. Only `serve`
    /// sends them, retried as alerts are; a worker on a store given the same URL records the
    /// attempts it ends as due.
    #[arg(long = "otlp-endpoint", env = "SCIENTIST_OTLP_ENDPOINT", value_name = "URL", value_parser = otlp::traces_url)]
    pub otlp_endpoint: Option<Url>,
}

impl RaiseArgs {
    pub fn raise(&self) -> Raise {
        Raise { alerts: !self.webhooks.is_empty(), completed: self.on_complete, spans: self.otlp_endpoint.is_some() }
    }
}

/// How `serve` delivers alerts.
#[derive(Debug, Clone, clap::Args)]
pub struct AlertArgs {
    #[command(flatten)]
    pub raise: RaiseArgs,

    /// Key of the HMAC-SHA256 signature of each alert (`X-Scientist-Signature-256`, over
    /// `X-Scientist-Timestamp` + "." + body); never logged.
    #[arg(long = "alert-secret", value_name = "SECRET", env = "SCIENTIST_ALERT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// How alert bodies are written.
    #[arg(long = "alert-format", env = "SCIENTIST_ALERT_FORMAT", value_enum, default_value = "json")]
    pub format: Format,

    /// The longest one alert POST (or one span export) may take.
    #[arg(long = "alert-timeout", env = "SCIENTIST_ALERT_TIMEOUT", default_value = "10s",
          value_parser = super::positive_duration)]
    pub timeout: Duration,

    /// First retry of an alert not acknowledged with a 2xx; each further one doubles (with jitter).
    #[arg(long = "alert-backoff", env = "SCIENTIST_ALERT_BACKOFF", default_value = "10s",
          value_parser = super::positive_duration)]
    pub backoff: Duration,

    /// The longest wait between retries of one alert; it is retried until acknowledged.
    #[arg(long = "alert-backoff-max", env = "SCIENTIST_ALERT_BACKOFF_MAX", default_value = "30m",
          value_parser = super::positive_duration)]
    pub backoff_max: Duration,

    /// How often the store is checked for alerts to send.
    #[arg(long = "alert-every", env = "SCIENTIST_ALERT_EVERY", default_value = "2s",
          value_parser = super::positive_duration)]
    pub every: Duration,

    /// Where alert links point: the API as its readers reach it [default: http://<--listen>].
    #[arg(long, env = "SCIENTIST_PUBLIC_URL")]
    pub public_url: Option<String>,
}

fn parse_webhook(text: &str) -> Result<Webhook, String> {
    Webhook::parse(text)
}

impl AlertArgs {
    /// The sender of alerts and spans, `None` with neither webhooks nor a collector.
    pub fn sender(&self, listen: SocketAddr) -> anyhow::Result<Option<webhook::Sender>> {
        let spans = match &self.raise.otlp_endpoint {
            Some(url) => Some(otlp::Exporter::new(url.clone(), self.timeout).map_err(anyhow::Error::msg)?),
            None => None,
        };
        if self.raise.webhooks.is_empty() && spans.is_none() {
            return Ok(None);
        }
        if self.secret.as_deref().is_some_and(|secret| secret.trim().is_empty()) {
            return Err(super::UsageError(
                "--alert-secret (SCIENTIST_ALERT_SECRET) is empty: an empty key signs nothing; set a long random secret \
                 or leave it unset"
                    .into(),
            )
            .into());
        }
        if self.secret.is_none() && self.format == Format::Json && !self.raise.webhooks.is_empty() {
            crate::notice!(
                warn,
                "scientist serve: warning: alerts are sent unsigned; set SCIENTIST_ALERT_SECRET (or --alert-secret)"
            );
        }
        let public_url = self.public_url.clone().unwrap_or_else(|| format!("http://{listen}"));
        let config = webhook::Config {
            webhooks: self.raise.webhooks.clone(),
            secret: self.secret.clone(),
            format: self.format,
            public_url: public_url.trim_end_matches('/').to_owned(),
            timeout: self.timeout,
            backoff: self.backoff,
            backoff_max: self.backoff_max.max(self.backoff),
            every: self.every,
            replica: format!("serve-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
        };
        Ok(Some(webhook::Sender::new(config, spans).context("making the alert HTTP client")?))
    }
}
