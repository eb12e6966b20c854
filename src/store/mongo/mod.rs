//! The MongoDB store: runs (the queue, claimed by an update conditional on status), events, dedup
//! claims, stages, artifacts and hypotheses, in the collections the user's frontend reads.
//! No multi-document transactions: every write is repeatable or a compare-and-swap on `rev`.

mod apply;
mod bson;
mod cost;
mod ideation;
mod mirror;
mod pages;
mod prune;
mod runs;
mod sequence;
mod stats;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::{Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};

use self::bson::{corrupt, error_code, is_duplicate_key};
pub use self::sequence::GAP_GRACE;
use self::sequence::{Gaps, SEQUENCE_COLLECTION};
use super::{
    Artifact, Error, EventFilter, HypothesisIdeas, IdeationChange, Outcome, Page, Pruned, Result, Rules, RunChange,
    RunFilter, Stats, Store, StoredEvent, cancel_run, reset_run,
};
use crate::event::Event;
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::run::{NewRun, Run, RunId, RunStatus};
use crate::time::Timestamp;

/// Database used when neither the caller nor the URL names one.
const DEFAULT_DATABASE: &str = "scientist";

/// How long `events_seen` remembers a (source, id) pair; the seeds' value. After that the
/// unique index on `events` still catches a duplicate.
const SEEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Without this a wrong URL hangs for the driver's default 30 s before saying so.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Pooled connections idle longer than this are closed by the driver rather than reused:
/// servers and proxies drop idle connections (SecantusDB after 300 s), and reusing such a
/// connection fails a non-retryable command with a broken pipe.
const MAX_IDLE_TIME: Duration = Duration::from_secs(60);

/// Compare-and-swap attempts on one document before giving up with `Contention`. Each failed
/// attempt means another writer succeeded, so this is only reached under absurd contention.
const MAX_CAS_TRIES: usize = 100;

/// Queue-head candidates read per claim: enough that concurrent claimers racing for the
/// head each find one left to take.
const CLAIM_CANDIDATES: i64 = 32;

const DUPLICATE_KEY: i32 = 11000;
const NAMESPACE_EXISTS: i32 = 48;

/// Fields this store adds to an event's JSON form in `events` (camelCase, so they cannot
/// clash with CloudEvents attribute names, which are lower-case letters and digits).
const EVENT_RUN_ID: &str = "runId";
const EVENT_TIME_AT: &str = "timeAt";
const EVENT_RECEIVED_AT: &str = "receivedAt";
/// The event's place in its run's order (see `sequence`).
const EVENT_SEQ: &str = "storeSeq";

/// Where `GET /health` writes its probe document.
pub const HEALTH_COLLECTION: &str = "health";

/// The MongoDB store. Cheap to clone; clones share the client's connection pool.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    runs: Collection<Run>,
    events: Collection<Document>,
    events_seen: Collection<Document>,
    stages: Collection<Document>,
    artifacts: Collection<Document>,
    hypotheses: Collection<Document>,
    ideation: Collection<Document>,
    /// Per-run counters of `storeSeq`.
    sequences: Collection<Document>,
    /// Gaps in the event order this process has seen, shared by clones.
    gaps: Arc<Gaps>,
    /// What this handle's writes apply (`store::Rules`).
    rules: Rules,
}

impl MongoStore {
    /// Connects to `url` and creates the collections and indexes it needs (idempotently).
    /// The database is `database`, else the one the URL names, else `scientist`.
    ///
    /// # Errors
    /// `Mongo` when the URL is invalid, the server cannot be reached (after 10 s unless the
    /// URL sets `serverSelectionTimeoutMS`) or an index conflicts with an existing one.
    pub async fn connect(url: &str, database: Option<&str>) -> Result<Self> {
        let mut options = ClientOptions::parse(url).await?;
        options.server_selection_timeout.get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.max_idle_time.get_or_insert(MAX_IDLE_TIME);
        options.app_name.get_or_insert_with(|| "scientist".to_owned());
        let name = database
            .map(str::to_owned)
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(options)?;
        // SPEC: acknowledged means durably committed, so majority and journaled.
        let durable = WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build();
        let db = client.database_with_options(
            &name,
            DatabaseOptions::builder().write_concern(durable).read_concern(ReadConcern::majority()).build(),
        );
        // Fail here, with the driver's reason, rather than at the first query.
        db.run_command(doc! { "ping": 1 }).await?;
        let store = MongoStore {
            runs: db.collection("runs"),
            events: db.collection("events"),
            events_seen: db.collection("events_seen"),
            stages: db.collection("stages"),
            artifacts: db.collection("artifacts"),
            hypotheses: db.collection("hypotheses"),
            ideation: db.collection("ideation_requests"),
            sequences: db.collection(SEQUENCE_COLLECTION),
            gaps: Arc::default(),
            rules: Rules::default(),
            db,
        };
        store.ensure_schema().await?;
        Ok(store)
    }

    /// This handle, applying `rules` in its writes.
    pub fn with_rules(self, rules: Rules) -> Self {
        MongoStore { rules, ..self }
    }

    /// The client this handle shares (to shut it down before the process ends).
    pub fn client(&self) -> mongodb::Client {
        self.db.client().clone()
    }

    /// Drops the whole database (tests use one database each).
    pub async fn drop_database(&self) -> Result<()> {
        self.db.drop().await?;
        Ok(())
    }

    /// Creates the indexes; `createIndexes` is a no-op for an identical existing index.
    async fn ensure_schema(&self) -> Result<()> {
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        let unique = |keys: Document| {
            IndexModel::builder().keys(keys).options(IndexOptions::builder().unique(true).build()).build()
        };
        self.runs
            .create_indexes([
                // Claim: the filter's fields, then the sort's.
                index(doc! { "status": 1, "queue": 1, "priority": -1, "createdAt": 1, "_id": 1 }),
                // Listing, newest first, with or without a status filter.
                index(doc! { "createdAt": -1, "_id": -1 }),
                index(doc! { "status": 1, "createdAt": -1, "_id": -1 }),
                // Stats: throughput windows.
                index(doc! { "status": 1, "completedAt": 1 }),
                index(doc! { "status": 1, "failedAt": 1 }),
                // The alert sender: runs with an undelivered alert, earliest due first.
                index(doc! { "alerts.dueAt": 1 }),
                // Stats: reviews by decision (only reviewed runs have one).
                IndexModel::builder()
                    .keys(doc! { "review.decision": 1 })
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            ])
            .await?;
        // Stats: the all-time cost sums.
        self.runs.create_indexes(cost::cost_indexes().map(index)).await?;
        self.events
            .create_indexes([
                unique(doc! { "source": 1, "id": 1 }),
                index(doc! { EVENT_RUN_ID: 1, EVENT_SEQ: 1, "_id": 1 }),
            ])
            .await?;
        let ttl = IndexOptions::builder().expire_after(SEEN_TTL).build();
        self.events_seen
            .create_index(IndexModel::builder().keys(doc! { "processedAt": 1 }).options(ttl).build())
            .await?;
        self.artifacts.create_index(unique(doc! { "runId": 1, "key": 1 })).await?;
        self.stages.create_index(unique(doc! { "runId": 1, "name": 1 })).await?;
        self.ideation.create_index(index(doc! { "status": 1, "createdAt": 1, "_id": 1 })).await?;
        match self.db.create_collection("hypotheses").await {
            Err(err) if error_code(&err) != Some(NAMESPACE_EXISTS) => Err(err.into()),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn enqueue(&self, new_run: NewRun, now: Timestamp) -> Result<Run> {
        let mut run = Run::queued(new_run, now);
        crate::store::before_save(&mut run, &self.rules, now);
        match self.runs.insert_one(&run).await {
            Ok(_) => Ok(run),
            Err(err) if is_duplicate_key(&err) => Err(Error::AlreadyExists(run.id)),
            Err(err) => Err(err.into()),
        }
    }

    async fn get(&self, id: &RunId) -> Result<Option<Run>> {
        Ok(self.runs.find_one(doc! { "_id": id.as_str() }).await?)
    }

    async fn list(&self, filter: &RunFilter) -> Result<Page<Run>> {
        self.list_runs(filter).await
    }

    async fn claim(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        self.claim_next(worker, queue, now).await
    }

    async fn apply_events(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        self.apply_batch(events, now).await
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        self.events_page(run_id, filter, true).await
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        self.events_page(run_id, filter, false).await
    }

    async fn update_if(&self, id: &RunId, now: Timestamp, change: RunChange) -> Result<Option<Run>> {
        let changed = self.update_run(id, now, |mut run| Ok(change(&mut run).then_some(run))).await;
        match changed {
            Err(Error::NotFound(_)) => Ok(None),
            changed => changed,
        }
    }

    async fn due_alerts(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.runs_with_alerts_due(now, limit).await
    }

    async fn reset(&self, id: &RunId, now: Timestamp) -> Result<Run> {
        let run = self.update_run(id, now, |run| reset_run(run, now).map(Some)).await?;
        run.ok_or_else(|| Error::NotFound(id.clone()))
    }

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>, now: Timestamp) -> Result<Run> {
        let run = self.update_run(id, now, |run| cancel_run(run, by, reason.clone(), now).map(Some)).await?;
        run.ok_or_else(|| Error::NotFound(id.clone()))
    }

    async fn counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.count_by_status().await
    }

    async fn probe_write(&self, now: Timestamp) -> Result<()> {
        // One document that every replica overwrites: the collection never grows. The
        // database's write concern (majority, journaled) applies, as for every write.
        self.db
            .collection::<Document>(HEALTH_COLLECTION)
            .update_one(doc! { "_id": "write-probe" }, doc! { "$set": { "at": mongodb::bson::DateTime::from(now) } })
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn prune_logs(&self, cutoff: Timestamp, from: Option<String>, limit: usize) -> Result<Pruned> {
        self.prune_old_logs(cutoff, from, limit).await
    }

    async fn last_received_at(&self) -> Result<Option<Timestamp>> {
        self.newest_received_at().await
    }

    async fn stats(&self, now: Timestamp, cost_window: std::time::Duration) -> Result<Stats> {
        self.gather_stats(now, cost_window).await
    }

    async fn resolve_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
        // Ids starting with the prefix sort right after it: read two from there.
        let ids: Vec<Document> = self
            .runs
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$gte": prefix } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .limit(2)
            .await?
            .try_collect()
            .await?;
        let mut matches = Vec::new();
        for id in ids {
            let id = id.get_str("_id").map_err(|err| corrupt("run id", err))?;
            if id.starts_with(prefix) {
                matches.push(RunId::try_from(id.to_owned()).map_err(|reason| corrupt("run id", reason))?);
            }
        }
        Ok(matches)
    }

    async fn artifacts(&self, run_id: &RunId) -> Result<Vec<Artifact>> {
        let artifacts: Collection<Artifact> = self.artifacts.clone_with_type();
        Ok(artifacts.find(doc! { "runId": run_id.as_str() }).sort(doc! { "key": 1 }).await?.try_collect().await?)
    }

    async fn hypothesis_ideas(&self, id: &str) -> Result<Option<HypothesisIdeas>> {
        let hypotheses: Collection<HypothesisIdeas> = self.hypotheses.clone_with_type();
        // Only hypotheses an event reported ideas for; the frontend creates bare ones too.
        Ok(hypotheses.find_one(doc! { "_id": id, "at": { "$exists": true } }).await?)
    }

    async fn enqueue_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest> {
        self.insert_ideation(new, now).await
    }

    async fn get_ideation(&self, id: &str) -> Result<Option<IdeationRequest>> {
        Ok(self.load_ideation(id).await?.map(|(_, request)| request))
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> Result<Vec<IdeationRequest>> {
        self.list_ideation_requests(statuses, limit).await
    }

    async fn claim_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
        self.claim_oldest_ideation(worker, now).await
    }

    async fn update_ideation_if(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
        self.update_ideation(id, change).await
    }
}
