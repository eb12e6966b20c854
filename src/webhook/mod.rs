//! Delivering the marks on run documents (`alert::Mark`) from `serve`: alerts to webhooks,
//! and ended attempts' spans to the trace collector (`otlp`); at least once, each by one
//! replica at a time, retried with backoff, surviving restarts.
//!
//! Every few seconds the sender asks the store for runs with an alert due (an indexed
//! query). For each due mark it takes the delivery with a conditional write (`take`: the
//! mark's `dueAt` moves to the end of a hold and `claim` names this try), so that of several
//! replicas one alone sends it; POSTs it to every webhook that has not acknowledged it yet
//! (`post`, signed as `sign` says, with the body `body` builds); then records the try
//! (`record`): delivered when all answered 2xx, else due again after a jittered exponential
//! backoff. All of that state is in the store: a sender that dies mid-way leaves the mark
//! held until its hold ends, and any replica (or the same one restarted) takes it over.
//! It runs as its own task and only reads and writes run documents, so ingest and sweeps
//! never wait on a webhook.

mod body;
mod claim;
mod post;
mod sign;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

pub use self::body::{Format, body, key};
pub use self::claim::Tried;
pub use self::post::{IDEMPOTENCY_HEADER, Webhook};
pub use self::sign::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
use crate::alert::Kind;
use crate::backoff::{jitter, jittered_exponential};
use crate::otlp::Exporter;
use crate::run::RunId;
use crate::store::{self, Store};
use crate::time::Timestamp;

/// What a spans mark's `sentTo` records once the collector took it.
const SPANS_DESTINATION: &str = "otlp";

/// Runs read per look at the store.
const BATCH: usize = 100;

/// Deliveries in flight at once: a slow webhook holds up only its own.
const CONCURRENT: usize = 8;

/// How a sender delivers (`serve --alert-*`).
#[derive(Clone)]
pub struct Config {
    pub webhooks: Vec<Webhook>,
    /// Signs every POST when set (see `sign`).
    pub secret: Option<String>,
    pub format: Format,
    /// Where the API is reached, for the body's links (no trailing slash).
    pub public_url: String,
    /// The longest one POST may take.
    pub timeout: Duration,
    /// The first retry's delay; each further one doubles, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// How often the store is asked for due alerts.
    pub every: Duration,
    /// This sender's name in the claims it writes.
    pub replica: String,
}

/// Without the secret, which nothing shows.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("webhooks", &self.webhooks)
            .field("signed", &self.secret.is_some())
            .field("format", &self.format)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// A running sender's configuration and HTTP client.
pub struct Sender {
    config: Config,
    client: reqwest::Client,
    /// Where spans marks go (`--otlp-endpoint`); without it they are left to a sender that has one.
    spans: Option<Exporter>,
}

impl Sender {
    pub fn new(config: Config, spans: Option<Exporter>) -> Result<Sender, reqwest::Error> {
        // A redirect is no acknowledgement: a 30x is a failed try (a 301 would turn the POST
        // into a body-less GET whose 200 looks delivered; a 307 would carry the signed body
        // to another host).
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("scientist/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { config, client, spans })
    }

    /// Delivers due alerts until `stop` completes (checked between looks at the store, so a
    /// delivery under way is finished and recorded first).
    pub async fn keep_sending(self, store: Arc<dyn Store>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let found = match self.send_due(&*store).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(error = %crate::errors::chain(&err), "could not read the alerts due; trying again");
                    0
                }
            };
            // A full batch means more may be due: look again at once.
            let pause = if found == BATCH { Duration::ZERO } else { jitter(self.config.every, 0.2) };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One look at the store: delivers what is due now. How many runs had something due.
    async fn send_due(&self, store: &dyn Store) -> store::Result<usize> {
        let now = Timestamp::now();
        let runs = store.due_alerts(now, BATCH).await?;
        let due: Vec<(RunId, String, Kind)> = runs
            .iter()
            .flat_map(|run| {
                let due = run
                    .alerts
                    .iter()
                    .filter(move |mark| mark.due_at.is_some_and(|due| due <= now) && self.delivers(mark.kind));
                due.map(|mark| (run.id.clone(), mark.id.clone(), mark.kind))
            })
            .collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENT, |(run_id, mark_id, kind)| self.deliver(store, run_id, mark_id, kind))
            .await;
        Ok(runs.len())
    }

    /// Whether this sender has somewhere to deliver marks of `kind` (another process may have
    /// raised them: a worker on a store with flags this `serve` lacks).
    fn delivers(&self, kind: Kind) -> bool {
        match kind {
            Kind::Spans => self.spans.is_some(),
            _ => !self.config.webhooks.is_empty(),
        }
    }

    /// How long a delivery is held: twice what its sends may take, so that a live sender
    /// always records its try before another may take over.
    fn hold(&self, kind: Kind) -> Duration {
        let sends = if kind == Kind::Spans { 1 } else { self.config.webhooks.len().max(1) };
        self.config.timeout.saturating_mul(2 * sends as u32)
    }

    /// Takes, sends and records one mark; a store error leaves it to the end of the hold.
    async fn deliver(&self, store: &dyn Store, run_id: RunId, mark_id: String, kind: Kind) {
        let claim_id = format!("{}/{}", self.config.replica, uuid::Uuid::new_v4().simple());
        let now = Timestamp::now();
        let until = claim::later(now, self.hold(kind));
        let (id, claimer) = (mark_id.clone(), claim_id.clone());
        let taken =
            store.update_if(&run_id, now, Box::new(move |run| claim::take(run, &id, &claimer, now, until))).await;
        let run = match taken {
            Ok(Some(run)) => run,
            // Delivered or taken by another sender meanwhile.
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(run = %run_id, mark = %mark_id, error = %crate::errors::chain(&err), "could not take a delivery");
                return;
            }
        };
        let Some(mark) = run.alerts.iter().find(|mark| mark.id == mark_id) else { return };
        let (tried, destinations) = match (&self.spans, kind) {
            (Some(exporter), Kind::Spans) => {
                (export_spans(exporter, &run, mark).await, vec![SPANS_DESTINATION.to_owned()])
            }
            _ => self.post_alert(&run, mark).await,
        };
        if let Some(failure) = &tried.failure {
            tracing::warn!(run = %run_id, mark = %mark_id, tries = mark.tries + 1, error = %failure, "not delivered; will retry");
        }
        let (first, max) = (self.config.backoff, self.config.backoff_max);
        let now = Timestamp::now();
        let record = move |run: &mut crate::run::Run| {
            claim::record(run, &mark_id, &claim_id, &tried, &destinations, now, |tries| {
                jittered_exponential(first, max, tries)
            })
        };
        match store.update_if(&run_id, now, Box::new(record)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(run = %run_id, kind = kind.as_str(), "a delivery's hold ran out before its try was recorded; another sender may send it again")
            }
            Err(err) => {
                tracing::warn!(run = %run_id, kind = kind.as_str(), error = %crate::errors::chain(&err), "could not record a delivery's try; it is sent again")
            }
        }
    }

    /// POSTs alert `mark` to every webhook that has not acknowledged it yet. What the try did,
    /// and every webhook's fingerprint (all must acknowledge it).
    async fn post_alert(&self, run: &crate::run::Run, mark: &crate::alert::Mark) -> (Tried, Vec<String>) {
        let key = body::key(&run.id, mark);
        let bytes = body::body(self.config.format, &run.id, mark, &self.config.public_url);
        let secret = self.config.secret.as_deref().map(str::as_bytes);
        let mut tried = Tried::default();
        let mut failures = Vec::new();
        for webhook in
            self.config.webhooks.iter().filter(|webhook| !mark.sent_to.iter().any(|sent| sent == webhook.fingerprint()))
        {
            match post::post(&self.client, webhook, &key, &bytes, secret).await {
                Ok(()) => tried.acked.push(webhook.fingerprint().to_owned()),
                Err(why) => failures.push(why),
            }
        }
        if !failures.is_empty() {
            tried.failure = Some(failures.join("; "));
        }
        let webhooks = self.config.webhooks.iter().map(|webhook| webhook.fingerprint().to_owned()).collect();
        (tried, webhooks)
    }
}

/// Sends an ended attempt's spans (mark `spans:<attempt>`, whose facts name the attempt).
async fn export_spans(exporter: &Exporter, run: &crate::run::Run, mark: &crate::alert::Mark) -> Tried {
    match exporter.export(run, mark.facts.attempt).await {
        Ok(()) => Tried { acked: vec![SPANS_DESTINATION.to_owned()], failure: None },
        Err(why) => Tried { acked: Vec::new(), failure: Some(why) },
    }
}
