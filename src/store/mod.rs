//! Storage of runs and events behind one trait, [`Store`], with two backends:
//! `sqlite` (the embedded default, one file shared by the processes of one machine) and
//! `mongo` (the production store for many pods). Both pass one behavioural suite
//! (`tests/store_contract.rs`). The rules of what an event does live in `reduce` and
//! `queue::fence`; the backends share them through [`plan`], so they cannot drift apart.

pub mod mongo;
mod page;
mod review;
pub mod sqlite;
pub mod stats;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, LogLevel, Payload};
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::queue::{budget, fence, lease, retry, stall};
use crate::redact;
use crate::reduce;
use crate::run::{EventKey, NewRun, Run, RunId, RunStatus, TraceId};
use crate::time::Timestamp;

pub use mongo::MongoStore;
pub(crate) use page::PageFill;
pub use sqlite::SqliteStore;
pub use stats::Stats;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors a caller branches on get their own variant; the rest carry their source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("run {0} already exists")]
    AlreadyExists(RunId),
    #[error("ideation request {0} already exists")]
    IdeationExists(String),
    #[error("cannot {action} run {id}: it is {status}; {hint}")]
    InvalidTransition { id: RunId, status: RunStatus, action: &'static str, hint: &'static str },
    #[error("invalid cursor {0:?}: pass the `next` value of a previous page")]
    InvalidCursor(String),
    #[error("stored document for {what} is unreadable")]
    Corrupt { what: String, source: serde_json::Error },
    #[error("stored document for {what} is unreadable")]
    CorruptBson { what: String, source: Box<mongodb::bson::de::Error> },
    #[error("could not encode {what} for MongoDB")]
    Encode { what: String, source: Box<mongodb::bson::ser::Error> },
    #[error("{0} kept changing under concurrent writers; retry")]
    Contention(String),
    #[error("embedded store error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("MongoDB error")]
    Mongo(#[from] mongodb::error::Error),
    #[error("embedded store worker stopped")]
    Join(#[from] tokio::task::JoinError),
    /// The group this write shared a transaction with did not commit; nothing of it is stored.
    #[error("embedded store could not commit: {0}")]
    Commit(String),
    #[error("embedded store at {path}: {reason}")]
    Open { path: String, reason: String },
}

/// What became of one event handed to [`Store::apply_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored and applied to its run (or hypothesis).
    Applied,
    /// Its (`source`, `id`) pair was seen before: acknowledged, changes nothing.
    Duplicate,
    /// Stored, but refused by the fence: its `attempt` is not the run's live claim.
    Stale,
    /// Stored; its run does not exist (yet). It is applied when the run is created.
    Orphan,
}

/// What one [`Store::prune_logs`] call deleted, and where the next call goes on from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub deleted: u64,
    /// `None`: nothing older is left past this point.
    pub next: Option<String>,
}

/// A page of results and the cursor for the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[schema(required = true)]
    pub next: Option<String>,
}

/// Which runs to list: newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Any of these statuses; empty means all.
    pub statuses: Vec<RunStatus>,
    pub queue: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// Which events of a run to list: in the order they were stored.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Any of these types; empty means all.
    pub types: Vec<String>,
    /// Only `ai.run.log` lines at or above this level (other types are left out when set).
    /// A line without a level counts as `info`.
    pub min_level: Option<LogLevel>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// An event as stored, with its position in the store's order.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub cursor: String,
    pub received_at: Timestamp,
    pub event: Event,
}

/// A file a run stored through object storage (`ai.artifact.registered`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub run_id: RunId,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub registered_at: Timestamp,
    /// The registration event; a later one for the same key replaces it.
    pub at: EventKey,
}

/// A hypothesis's ideas from `ai.ideation.generated`; `ideaJson` is the first idea.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HypothesisIdeas {
    #[serde(rename = "_id")]
    pub id: String,
    pub ideas: Vec<Value>,
    pub idea_json: Value,
    pub at: EventKey,
}

/// An edit of a run for [`Store::update_if`]; it may be called more than once.
pub type RunChange = Box<dyn Fn(&mut Run) -> bool + Send + Sync>;

/// An edit of an ideation request for [`Store::update_ideation_if`]; it may be called more
/// than once.
pub type IdeationChange = Box<dyn Fn(&mut IdeationRequest) -> bool + Send + Sync>;

/// The storage contract. Every method is atomic on its own; see each for what that covers.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a QUEUED run. Errors with `AlreadyExists` when the id is taken.
    async fn enqueue(&self, new_run: NewRun, now: Timestamp) -> Result<Run>;

    async fn get(&self, id: &RunId) -> Result<Option<Run>>;

    /// Runs matching `filter`, newest first, with a cursor for the next page.
    async fn list(&self, filter: &RunFilter) -> Result<Page<Run>>;

    /// Atomically claims the next QUEUED run of `queue` (highest priority, then oldest)
    /// for `worker`: SCHEDULED, `claimedBy`, `claimedAt`, `attempt + 1`. No run is ever
    /// claimed twice, whatever the number of concurrent claimers and processes.
    async fn claim(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>>;

    /// Stores each event whose (`source`, `id`) pair is new and applies it to its run, in
    /// order. Returns one outcome per event. When this returns Ok every event is durably
    /// stored (acknowledge only then); on Err, retrying the same events is always safe.
    async fn apply_events(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>>;

    /// A run's events in stored order, after `filter.cursor`. The order is one every process
    /// agrees on, and a page never hands out an event while one before it may still be
    /// stored: a live tail that follows `cursor`s misses nothing (on MongoDB a page may wait
    /// up to `mongo::GAP_GRACE` for an event whose writer is mid-way). Cursors are opaque.
    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>>;

    /// A run's events newest first, before `filter.cursor` (a cursor from either listing);
    /// `next` continues backwards. For the latest log lines, and for where a live tail starts.
    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>>;

    /// Re-reads run `id` and lets `change` edit it, in one conditional write (a transaction on
    /// SQLite; on MongoDB a compare-and-set, redone on the newer version when another writer
    /// got there first). `change` always sees the run as stored and returns false to leave it
    /// as it is. The run as written; `None` when `change` declined or there is no such run.
    async fn update_if(&self, id: &RunId, now: Timestamp, change: RunChange) -> Result<Option<Run>>;

    /// Runs with an alert due at or before `now` (`Run::alerts_due`), the earliest due first,
    /// at most `limit`: what the alert sender delivers next (from an index, on both stores).
    async fn due_alerts(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>>;

    /// FAILED or CANCELED back to QUEUED: claim and error cleared, `retryCount + 1`.
    async fn reset(&self, id: &RunId, now: Timestamp) -> Result<Run>;

    /// Cancels a QUEUED run at once; for a SCHEDULED or RUNNING run records the request,
    /// which its worker acts on (it then emits `ai.run.canceled`).
    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>, now: Timestamp) -> Result<Run>;

    /// A person's decision on run `id`'s review (`queue::review`): taken only on a run
    /// AWAITING_HUMAN whose review is undecided, in one conditional write, then recorded by
    /// the event that ends the run (`ai.run.completed`, or `ai.run.failed` with `REJECTED`),
    /// or, for an approval between stages, put back in RUNNING for its waiting worker. The
    /// run as it is then. Errors with `InvalidTransition` for any other run; repeating the
    /// same decision after an error is safe (it writes the record the first try left out).
    async fn decide_review(&self, id: &RunId, decision: crate::queue::review::Decision, now: Timestamp) -> Result<Run> {
        review::decide(self, id, decision, now).await
    }

    /// Number of runs in each status (statuses with none are left out).
    async fn counts(&self) -> Result<Vec<(RunStatus, u64)>>;

    /// Durably writes one tiny record, the way every write commits (SQLite: a `BEGIN
    /// IMMEDIATE` transaction; MongoDB: majority, journaled). Ok means the store takes writes
    /// now; `GET /health` calls it, at most every few seconds.
    async fn probe_write(&self, now: Timestamp) -> Result<()>;

    /// Deletes up to `limit` log events (`ai.run.log`) received before `cutoff`, going on
    /// from `from` (the previous call's `next`; `None` to start). Each call is one short
    /// write, so ingest is never held up for long. Runs, their other events and artifacts
    /// are kept; a run document already holds what its log lines changed.
    async fn prune_logs(&self, cutoff: Timestamp, from: Option<String>, limit: usize) -> Result<Pruned>;

    /// When the newest stored event was received (`None` in an empty store): the store's
    /// own record of the time, which retention trusts over a clock that may have jumped.
    async fn last_received_at(&self) -> Result<Option<Timestamp>>;

    /// The whole store's figures at `now` (see [`Stats`]), from indexed queries only: cheap
    /// enough to call every few seconds whatever the number of runs and events. The cost
    /// section covers runs created in the `cost_window` before `now` (and all time).
    async fn stats(&self, now: Timestamp, cost_window: std::time::Duration) -> Result<Stats>;

    /// Up to two run ids starting with `prefix`, in id order: one means the prefix names a
    /// run, two that it is ambiguous, none that no run matches.
    async fn resolve_prefix(&self, prefix: &str) -> Result<Vec<RunId>>;

    /// A run's registered artifacts, by key.
    async fn artifacts(&self, run_id: &RunId) -> Result<Vec<Artifact>>;

    /// A hypothesis's generated ideas, if any were reported.
    async fn hypothesis_ideas(&self, id: &str) -> Result<Option<HypothesisIdeas>>;

    /// Creates a QUEUED ideation request. Errors with `IdeationExists` when the id is taken.
    async fn enqueue_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest>;

    async fn get_ideation(&self, id: &str) -> Result<Option<IdeationRequest>>;

    /// Ideation requests, oldest first, in any of `statuses` (all when empty); at most `limit`.
    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> Result<Vec<IdeationRequest>>;

    /// Atomically claims the oldest QUEUED ideation request for `worker` (RUNNING,
    /// `claimedBy`, `attempt + 1`); never the same one twice. On MongoDB the hypothesis's
    /// `ideation.status` follows, for the web frontend.
    async fn claim_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>>;

    /// Changes ideation request `id` as `change` says, atomically, as [`Store::update_if`]
    /// does a run (on MongoDB only our fields are written, and the hypothesis's
    /// `ideation.status` follows). The request as written; `None` when `change` declined or
    /// there is no such request.
    async fn update_ideation_if(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>>;

    /// Ends claim `attempt` of request `id` (see `IdeationRequest::finish`): the request as
    /// ended, or `None` when that claim was not live and nothing changed.
    async fn finish_ideation(
        &self,
        id: &str,
        attempt: u32,
        error: Option<String>,
        now: Timestamp,
    ) -> Result<Option<IdeationRequest>> {
        self.update_ideation_if(id, Box::new(move |request| request.finish(attempt, error.clone(), now))).await
    }

    /// Claim `attempt`'s worker of request `id` is heard from (see `IdeationRequest::hear`):
    /// the request, or `None` when that claim is not live and the worker must stop.
    async fn hear_ideation(&self, id: &str, attempt: u32, now: Timestamp) -> Result<Option<IdeationRequest>> {
        self.update_ideation_if(id, Box::new(move |request| request.hear(attempt, now))).await
    }
}

/// What a newly stored event did to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// The event created the run: the backend must [`replay`] the run's stored events
    /// (this one included) onto the fresh run, then insert it.
    Created,
    Updated,
    Stale,
    Orphan,
}

impl Effect {
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Effect::Created | Effect::Updated => Outcome::Applied,
            Effect::Stale => Outcome::Stale,
            Effect::Orphan => Outcome::Orphan,
        }
    }
}

/// The policies a store applies in its own writes, so that they hold whoever writes: the
/// retries of runs that fail retryably, which alerts runs raise, what runs cost and may cost.
/// Set by the process that opens the store (`serve`, a worker on a store); a store opened by
/// other commands has none (its writes keep the dollars the last priced write derived).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub retries: retry::Policy,
    pub alerts: crate::alert::Raise,
    pub costs: std::sync::Arc<budget::Costs>,
}

/// What every run write does last, on both backends: derives the run's cost, stops a run
/// over its budget, raises the alerts the run now calls for.
pub(crate) fn before_save(run: &mut Run, rules: &Rules, now: Timestamp) {
    crate::run::cost::derive(run, rules.costs.prices.as_ref());
    budget::enforce(run, &rules.costs, now);
    crate::alert::raise(run, &rules.alerts, now);
}

/// Whether `payload` shows a run making progress (what `stalledSince` is judged by):
/// stages, progress, metrics, nodes, artifacts, paper and validation steps, log lines.
fn is_progress(payload: &Payload) -> bool {
    !matches!(
        payload,
        Payload::Started(_)
            | Payload::Heartbeat(_)
            | Payload::Enqueued(_)
            | Payload::Completed(_)
            | Payload::Failed(_)
            | Payload::Canceled(_)
            | Payload::IdeationGenerated(_)
            | Payload::Unknown
    )
}

/// The one decision both backends make for every new event, on the run as stored now
/// (`None` when it does not exist), received at `now`.
pub(crate) fn apply_new_event(slot: &mut Option<Run>, event: &Event, now: Timestamp, rules: &Rules) -> Effect {
    match (slot.as_mut(), &event.payload) {
        (Some(run), _) => {
            if !fence::admits(run, event.attempt) || !stall::admits(run, event) {
                return Effect::Stale;
            }
            // An event of the live attempt is word from its worker, however late it was sent.
            if event.attempt.is_some() && !lease::is_sweep_record(event) {
                run.heard(now);
            }
            // Only the live attempt's own events: another pod's or a script's cannot keep a
            // hung run looking alive.
            if event.attempt.is_some() && !lease::is_sweep_record(event) && is_progress(&event.payload) {
                run.made_progress(now);
            }
            let ended = run.status.is_terminal();
            reduce::apply(run, event);
            // A review waits from when the store heard of it, by its clock (what
            // `--review-timeout` counts from), not the pod's.
            if let Payload::ReviewRequested(_) = event.payload
                && let Some(review) = run.review.as_mut().filter(|review| review.at == event.key())
            {
                review.requested_at = now;
            }
            // The write that ends an attempt is the one that decides its retry: once.
            if !ended && run.status.is_terminal() {
                retry::after_end(run, &rules.retries, now);
            }
            Effect::Updated
        }
        (None, Payload::Enqueued(enqueued)) => {
            let Some(id) = event.run_id.clone() else { return Effect::Orphan };
            let new_run = NewRun {
                id: id.clone(),
                hypothesis_id: enqueued.hypothesis_id.clone(),
                priority: enqueued.priority.unwrap_or(0),
                queue: enqueued.queue.clone().unwrap_or_else(|| crate::run::DEFAULT_QUEUE.into()),
                idea: enqueued.idea.clone().unwrap_or(Value::Null),
                retry_max: enqueued.retry_max,
                budget_usd: enqueued.budget_usd,
                // The creator's trace when it sent one; else derived from the event, so that
                // every store (and every replay) makes the same run of it.
                trace_id: event
                    .extension_str("traceparent")
                    .and_then(TraceId::from_traceparent)
                    .unwrap_or_else(|| TraceId::of_run(&id)),
                trace_state: event.extension_str("tracestate").map(str::to_owned),
            };
            *slot = Some(Run::queued(new_run, event.time));
            Effect::Created
        }
        (None, _) => Effect::Orphan,
    }
}

/// Whether a fact keyed `new` replaces one keyed `existing` (the later event wins).
pub(crate) fn replaces(existing: Option<&EventKey>, new: &EventKey) -> bool {
    existing.is_none_or(|existing| new > existing)
}

/// Replays a new run's stored events (oldest first) onto it, through the fence.
pub(crate) fn replay<'a>(run: &mut Run, events: impl IntoIterator<Item = &'a Event>) {
    for event in events {
        if fence::admits(run, event.attempt) {
            reduce::apply(run, event);
        }
    }
}

/// A record an event keeps outside its run document.
pub(crate) enum SideRecord {
    Artifact(Artifact),
    Hypothesis(HypothesisIdeas),
}

pub(crate) fn side_record(event: &Event) -> Option<SideRecord> {
    match &event.payload {
        Payload::ArtifactRegistered(registered) => Some(SideRecord::Artifact(Artifact {
            run_id: event.run_id.clone()?,
            key: registered.key.clone(),
            bytes: registered.bytes,
            sha256: registered.sha256.clone(),
            content_type: registered.content_type.clone(),
            kind: registered.kind.clone(),
            registered_at: event.time,
            at: event.key(),
        })),
        Payload::IdeationGenerated(generated) => Some(SideRecord::Hypothesis(HypothesisIdeas {
            id: generated.hypothesis_id.clone(),
            ideas: generated.ideas.clone(),
            idea_json: generated.ideas.first().cloned().unwrap_or(Value::Null),
            at: event.key(),
        })),
        _ => None,
    }
}

/// Reset's rule, shared by both backends.
pub(crate) fn reset_run(mut run: Run, now: Timestamp) -> Result<Run> {
    if !matches!(run.status, RunStatus::Failed | RunStatus::Canceled) {
        return Err(Error::InvalidTransition {
            id: run.id,
            status: run.status,
            action: "reset",
            hint: "only FAILED or CANCELED runs can be reset",
        });
    }
    run.reset(now);
    Ok(run)
}

/// Cancel's rule, shared by both backends.
pub(crate) fn cancel_run(mut run: Run, by: &str, reason: Option<String>, now: Timestamp) -> Result<Run> {
    use crate::run::{CancelRequest, Cancellation};
    let by = &redact::redact_string(by.to_owned());
    let reason = reason.map(redact::redact_string);
    match run.status {
        status if status.is_terminal() => {
            Err(Error::InvalidTransition { id: run.id, status, action: "cancel", hint: "it has already finished" })
        }
        RunStatus::Scheduled | RunStatus::Running => {
            run.cancel_requested = Some(CancelRequest { by: by.to_owned(), reason, at: now });
            run.updated_at = now;
            Ok(run)
        }
        // Nobody holds a queued (or human-awaiting) run: cancel it at once.
        _ => {
            run.status = RunStatus::Canceled;
            run.canceled = Some(Cancellation { by: Some(by.to_owned()), reason, at: now });
            run.updated_at = now;
            // A run awaiting review ends its attempt here (a queued one has none live).
            run.end_attempt(now);
            Ok(run)
        }
    }
}

/// `next` cursor of a newest-first run page: the last run's (createdAt, id).
pub(crate) fn run_cursor(run: &Run) -> String {
    format!("{}:{}", run.created_at.millis(), run.id)
}

pub(crate) fn parse_run_cursor(cursor: &str) -> Result<(i64, String)> {
    cursor
        .split_once(':')
        .and_then(|(millis, id)| Some((millis.parse().ok()?, id.to_owned())))
        .ok_or_else(|| Error::InvalidCursor(cursor.to_owned()))
}

/// The `ai.run.log` event type, which `EventFilter::min_level` selects.
pub const LOG_EVENT_TYPE: &str = crate::event::EventType::RunLog.name();

/// The stored spellings of `data.level` (those `LogLevel` accepts) at or above `min`, with
/// `info` among them when a line without a level qualifies: both backends read a missing
/// level as `info`.
pub(crate) fn level_names_at_or_above(min: LogLevel) -> Vec<&'static str> {
    let spellings: [(LogLevel, &[&'static str]); 4] = [
        (LogLevel::Debug, &["debug", "trace"]),
        (LogLevel::Info, &["info"]),
        (LogLevel::Warning, &["warning", "warn"]),
        (LogLevel::Error, &["error", "critical", "fatal"]),
    ];
    spellings.into_iter().filter(|(level, _)| *level >= min).flat_map(|(_, names)| names.iter().copied()).collect()
}

/// Default page size, and the largest a caller may ask for.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

pub(crate) fn clamp_limit(limit: usize) -> usize {
    if limit == 0 { DEFAULT_LIMIT } else { limit.min(MAX_LIMIT) }
}

/// A poisoned lock only means another call panicked mid-way: what it guards stays usable
/// (SQLite rolled that call's work back; the MongoDB store's caches hold no half-made state).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
