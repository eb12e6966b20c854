//! The MongoDB store: runs (the queue, claimed by an update conditional on status), events, dedup
//! claims, stages, artifacts and hypotheses, in the collections the user's frontend reads.
//! No multi-document transactions: every write is repeatable or a compare-and-swap on `rev`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::stats::{self, FailureCount, HELD_STATUSES, StageDurations};
use super::{
    Artifact, Effect, Error, EventFilter, HypothesisIdeas, IdeationChange, LOG_EVENT_TYPE, Outcome, Page, Result,
    RunChange, RunFilter, SideRecord, Stats, Store, StoredEvent, apply_new_event, bounded_page, cancel_run,
    clamp_limit, level_names_at_or_above, parse_run_cursor, replaces, replay, reset_run, run_cursor, side_record,
};
use crate::event::{self, Event};
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::run::{DEFAULT_QUEUE, EventKey, NewRun, Run, RunId, RunStatus};
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
            db,
        };
        store.ensure_schema().await?;
        Ok(store)
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
            ])
            .await?;
        self.events
            .create_indexes([unique(doc! { "source": 1, "id": 1 }), index(doc! { EVENT_RUN_ID: 1, "_id": 1 })])
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

    /// A run's stored events, oldest first.
    async fn run_events(&self, id: &RunId) -> Result<Vec<Event>> {
        let documents: Vec<Document> =
            self.events.find(doc! { EVENT_RUN_ID: id.as_str() }).sort(doc! { "_id": 1 }).await?.try_collect().await?;
        documents.into_iter().map(|document| Ok(parse_stored_event(document)?.event)).collect()
    }

    /// The pairs among `events` whose `events_seen` claim is marked applied.
    async fn applied_pairs(&self, events: &[&Event]) -> Result<HashSet<(String, String)>> {
        let by_seen_id: HashMap<String, (String, String)> =
            events.iter().map(|event| (seen_id(event), pair(event))).collect();
        let ids: Vec<&String> = by_seen_id.keys().collect();
        let seen: Vec<Document> = self
            .events_seen
            .find(doc! { "_id": { "$in": ids }, "applied": true })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(seen.iter().filter_map(|seen| by_seen_id.get(seen.get_str("_id").ok()?).cloned()).collect())
    }

    /// Applies one run's new events from a batch, in order, with one conditional write
    /// (reloaded and redone when another writer got there first).
    async fn apply_to_run(&self, run_id: &RunId, events: &[&Event], now: Timestamp) -> Result<Vec<Effect>> {
        for _ in 0..MAX_CAS_TRIES {
            let before = self.runs.find_one(doc! { "_id": run_id.as_str() }).await?;
            let mut slot = before.clone();
            let mut effects = Vec::with_capacity(events.len());
            // Pairs already reflected in the run: the batch's, and those replayed on creation.
            let mut known: HashSet<(String, String)> = events.iter().map(|event| pair(event)).collect();
            for (position, event) in events.iter().enumerate() {
                let effect = apply_new_event(&mut slot, event, now);
                if effect == Effect::Created {
                    // Replay what was stored up to this event, as SQLite does; the batch's
                    // later events are applied next, by this loop.
                    let later: HashSet<_> = events[position + 1..].iter().map(|event| pair(event)).collect();
                    let stored: Vec<Event> =
                        self.run_events(run_id).await?.into_iter().filter(|e| !later.contains(&pair(e))).collect();
                    known.extend(stored.iter().map(pair));
                    if let Some(run) = slot.as_mut() {
                        replay(run, &stored);
                    }
                }
                effects.push(effect);
            }
            let Some(mut run) = slot else { return Ok(effects) };
            match &before {
                None => {
                    run.updated_at = now;
                    match self.runs.insert_one(&run).await {
                        Ok(_) => {}
                        // Created concurrently (another replica, or `enqueue`): apply onto it.
                        Err(err) if is_duplicate_key(&err) => continue,
                        Err(err) => return Err(err.into()),
                    }
                    self.mirror_stages(None, &run).await?;
                    self.catch_up(run_id, &known, now).await?;
                    return Ok(effects);
                }
                Some(before) => {
                    if self.save_run(before, &mut run, now).await? {
                        return Ok(effects);
                    }
                }
            }
        }
        Err(Error::Contention(format!("run {run_id}")))
    }

    /// Applies events stored while the run was being created. Another call may have stored
    /// an event for it after we read its events but before the run existed (it answered
    /// Orphan); SQLite's single writer cannot interleave like that, MongoDB can.
    async fn catch_up(&self, run_id: &RunId, known: &HashSet<(String, String)>, now: Timestamp) -> Result<()> {
        let missed: Vec<Event> =
            self.run_events(run_id).await?.into_iter().filter(|event| !known.contains(&pair(event))).collect();
        if missed.is_empty() {
            return Ok(());
        }
        self.update_run(run_id, now, |mut run| {
            replay(&mut run, &missed);
            Ok(Some(run))
        })
        .await
        .map(drop)
    }

    /// Loads a run, changes it and writes it back unless another writer changed it meanwhile,
    /// in which case it starts over on the new version. `None` when `change` declines.
    async fn update_run(
        &self,
        id: &RunId,
        now: Timestamp,
        mut change: impl FnMut(Run) -> Result<Option<Run>>,
    ) -> Result<Option<Run>> {
        for _ in 0..MAX_CAS_TRIES {
            let before = self.runs.find_one(doc! { "_id": id.as_str() }).await?;
            let before = before.ok_or_else(|| Error::NotFound(id.clone()))?;
            let Some(mut run) = change(before.clone())? else { return Ok(None) };
            if self.save_run(&before, &mut run, now).await? {
                return Ok(Some(run));
            }
        }
        Err(Error::Contention(format!("run {id}")))
    }

    /// Writes `run` over `before`, stamping `updatedAt` and bumping `rev` (as SQLite's
    /// `save_run` does), only if the stored run is still at `before.rev`. False when it was not.
    async fn save_run(&self, before: &Run, run: &mut Run, now: Timestamp) -> Result<bool> {
        run.updated_at = now;
        run.rev = before.rev + 1;
        let filter = doc! { "_id": run.id.as_str(), "rev": to_i64(before.rev) };
        if self.runs.replace_one(filter, &*run).await?.matched_count == 0 {
            return Ok(false);
        }
        self.mirror_stages(Some(before), run).await?;
        Ok(true)
    }

    /// Mirrors the stages a run write changed into `stages`, one document per (run, stage),
    /// for the seeds' frontend. `runRev` keeps a slower writer from overwriting a newer state.
    async fn mirror_stages(&self, before: Option<&Run>, run: &Run) -> Result<()> {
        let status_changed = before.is_none_or(|before| before.status != run.status);
        let mut names: BTreeSet<&str> = run
            .stage_timing
            .iter()
            .filter(|(name, timing)| status_changed || before.and_then(|b| b.stage_timing.get(*name)) != Some(timing))
            .map(|(name, _)| name.as_str())
            .collect();
        if let Some(current) = &run.current_stage
            && (status_changed || before.and_then(|b| b.current_stage.as_ref()) != Some(current))
        {
            names.insert(current.name.as_str());
        }
        let rev = to_i64(run.rev);
        for name in names {
            let fields = stage_document(run, name)?;
            let filter = doc! {
                "runId": run.id.as_str(),
                "name": name,
                "$or": [{ "runRev": { "$lt": rev } }, { "runRev": { "$exists": false } }],
            };
            // Two tries: a duplicate key means a newer write holds the document, or that a
            // concurrent first insert won the race, after which the second try updates it.
            for _ in 0..2 {
                match self.stages.update_one(filter.clone(), doc! { "$set": fields.clone() }).upsert(true).await {
                    Ok(_) => break,
                    Err(err) if is_duplicate_key(&err) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        // A reset clears the old attempt's stages.
        if let Some(before) = before {
            let gone: Vec<&str> = before
                .stage_timing
                .keys()
                .map(String::as_str)
                .chain(before.current_stage.as_ref().map(|current| current.name.as_str()))
                .filter(|name| {
                    !run.stage_timing.contains_key(*name)
                        && run.current_stage.as_ref().is_none_or(|current| current.name.as_str() != *name)
                })
                .collect();
            if !gone.is_empty() {
                self.stages
                    .delete_many(doc! { "runId": run.id.as_str(), "name": { "$in": gone }, "runRev": { "$lt": rev } })
                    .await?;
            }
        }
        Ok(())
    }

    /// The stored request with id `id` (a string, or the hex of a frontend's ObjectId), with
    /// its raw `_id` for conditional writes.
    async fn load_ideation(&self, id: &str) -> Result<Option<(Bson, IdeationRequest)>> {
        let found = self.ideation.find_one(doc! { "_id": { "$in": id_forms(id) } }).await?;
        found.map(ideation_from).transpose()
    }

    /// Writes our fields of `request` over the stored document with raw id `raw_id`, only if
    /// it is still as `before` was read (status, attempt, heard at). False when another
    /// writer changed it first.
    async fn save_ideation(&self, raw_id: &Bson, before: &IdeationRequest, request: &IdeationRequest) -> Result<bool> {
        let mut fields = to_document("ideation request", request)?;
        fields.remove("_id");
        // A request the frontend just created has no `attempt` yet: that is attempt 0.
        let attempt = if before.attempt == 0 {
            doc! { "$in": [0_i64, Bson::Null] }
        } else {
            doc! { "$eq": i64::from(before.attempt) }
        };
        // Null also matches a document without the field.
        let heard_at = to_document("ideation request", before)?.get("heardAt").cloned().unwrap_or(Bson::Null);
        let filter =
            doc! { "_id": raw_id.clone(), "status": before.status.as_str(), "attempt": attempt, "heardAt": heard_at };
        let matched = self.ideation.update_one(filter, doc! { "$set": fields }).await?.matched_count;
        if matched == 0 {
            return Ok(false);
        }
        if before.status == request.status {
            return Ok(true);
        }
        // The frontend reads a hypothesis's ideation progress from the hypothesis itself.
        let mirror = doc! { "ideation.status": request.status.as_str(), "ideation.requestId": request.id.as_str() };
        self.hypotheses
            .update_one(doc! { "_id": { "$in": id_forms(&request.hypothesis_id) } }, doc! { "$set": mirror })
            .await?;
        Ok(true)
    }

    /// One page of a run's events in `_id` order (`direction` 1) or newest first (-1), after
    /// or before `filter.cursor`. `_id`s are ObjectIds, so their order is the stored order.
    async fn events_page(&self, run_id: &RunId, filter: &EventFilter, direction: i32) -> Result<Page<StoredEvent>> {
        let limit = clamp_limit(filter.limit);
        let mut query = doc! { EVENT_RUN_ID: run_id.as_str() };
        if let Some(cursor) = &filter.cursor {
            let position = ObjectId::parse_str(cursor).map_err(|_| Error::InvalidCursor(cursor.clone()))?;
            let beyond = if direction > 0 { "$gt" } else { "$lt" };
            query.insert("_id", doc! { beyond: position });
        }
        let mut types = Vec::new();
        if !filter.types.is_empty() {
            types.push(doc! { "type": { "$in": &filter.types } });
        }
        if let Some(min_level) = filter.min_level {
            let mut names: Vec<Bson> = level_names_at_or_above(min_level).into_iter().map(Bson::from).collect();
            // `$in` with null also matches a missing field: a line without a level is info.
            if names.contains(&Bson::from("info")) {
                names.push(Bson::Null);
            }
            types.push(doc! { "type": LOG_EVENT_TYPE, "data.level": { "$in": names } });
        }
        if !types.is_empty() {
            query.insert("$and", types);
        }
        let cursor = self.events.find(query).sort(doc! { "_id": direction }).limit(limit as i64 + 1).await?;
        let rows = page_rows(cursor, limit, |document| {
            let event = parse_stored_event(document)?;
            let size = crate::limits::json_len(&event.event.data);
            Ok((event, size))
        })
        .await?;
        bounded_page(rows, limit, |event| event.cursor.clone())
    }

    async fn oldest_queued_at(&self) -> Result<Option<Timestamp>> {
        let oldest = self
            .runs
            .clone_with_type::<Document>()
            .find_one(doc! { "status": RunStatus::Queued.as_str() })
            .sort(doc! { "createdAt": 1 })
            .projection(doc! { "createdAt": 1 })
            .await?;
        oldest
            .map(|oldest| oldest.get_datetime("createdAt").map(|at| Timestamp::from_millis(at.timestamp_millis())))
            .transpose()
            .map_err(|err| corrupt("oldest queued run", err))
    }

    /// Held runs whose worker was heard from within the active window (`Run::last_seen_at`:
    /// `heardAt`, else for older runs the latest heartbeat, start or claim).
    async fn active_runs(&self, now: Timestamp) -> Result<Vec<Run>> {
        let held: Vec<&str> = HELD_STATUSES.iter().map(|status| status.as_str()).collect();
        let since = DateTime::from(stats::active_since(now));
        let older: Vec<Document> =
            ["heartbeatAt", "startedAt", "claimedAt"].iter().map(|field| doc! { *field: { "$gte": since } }).collect();
        let seen = doc! { "$or": [
            { "heardAt": { "$gte": since } },
            { "heardAt": { "$exists": false }, "$or": older },
        ] };
        Ok(self.runs.find(doc! { "status": { "$in": held }, "$and": [seen] }).await?.try_collect().await?)
    }

    async fn finished_since(&self, status: RunStatus, field: &str, now: Timestamp) -> Result<u64> {
        let since = DateTime::from(stats::throughput_since(now));
        Ok(self.runs.count_documents(doc! { "status": status.as_str(), field: { "$gte": since } }).await?)
    }

    /// Completed stages' durations (`duration_s`, else `elapsed_s`, as `Run::completed_stage_durations`),
    /// grouped by stage on the server, ranked here.
    async fn stage_durations(&self) -> Result<Vec<StageDurations>> {
        let pipeline = [
            doc! { "$project": { "stage": { "$objectToArray": "$stageTiming" } } },
            doc! { "$unwind": "$stage" },
            doc! { "$match": { "stage.v.completedAt": { "$type": "date" } } },
            doc! { "$project": { "name": "$stage.k", "seconds": { "$ifNull": ["$stage.v.duration_s", "$stage.v.elapsed_s"] } } },
            doc! { "$match": { "seconds": { "$type": "number" } } },
            doc! { "$group": { "_id": "$name", "seconds": { "$push": "$seconds" } } },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        let mut durations = Vec::with_capacity(groups.len());
        for group in groups {
            let stage = group.get_str("_id").map_err(|err| corrupt("stage durations", err))?.to_owned();
            let mut seconds: Vec<f64> = group
                .get_array("seconds")
                .map_err(|err| corrupt("stage durations", err))?
                .iter()
                .filter_map(bson_number)
                .collect();
            seconds.sort_by(f64::total_cmp);
            durations.extend(StageDurations::from_sorted(stage, &seconds));
        }
        Ok(durations)
    }

    async fn failure_codes(&self) -> Result<Vec<FailureCount>> {
        let pipeline = [
            doc! { "$match": { "status": RunStatus::Failed.as_str() } },
            doc! { "$group": { "_id": { "$ifNull": ["$errorType", stats::UNKNOWN_FAILURE] }, "count": { "$sum": 1 } } },
            doc! { "$sort": { "count": -1, "_id": 1 } },
            doc! { "$limit": stats::TOP_FAILURE_CODES as i64 },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        groups
            .into_iter()
            .map(|group| {
                let code = group.get_str("_id").map_err(|err| corrupt("failure code", err))?.to_owned();
                let count = group.get("count").and_then(bson_number).unwrap_or(0.0);
                Ok(FailureCount { code, count: count as u64 })
            })
            .collect()
    }

    /// The sum of `Run::gpu_interval` over all runs, on the server: from `startedAt` to the
    /// run's end, else its latest heartbeat, never past `now` and never negative.
    async fn gpu_seconds(&self, now: Timestamp) -> Result<f64> {
        let until = doc! { "$ifNull": ["$completedAt", "$failedAt", "$canceled.at", "$heartbeatAt", "$startedAt"] };
        let until = doc! { "$min": [until, DateTime::from(now)] };
        let pipeline = [
            doc! { "$match": { "pod.gpu": { "$type": "string" }, "startedAt": { "$type": "date" } } },
            doc! { "$project": { "millis": { "$max": [0, { "$subtract": [until, "$startedAt"] }] } } },
            doc! { "$group": { "_id": Bson::Null, "millis": { "$sum": "$millis" } } },
        ];
        let total: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        Ok(total.first().and_then(|total| total.get("millis")).and_then(bson_number).unwrap_or(0.0) / 1000.0)
    }

    async fn save_side_record(&self, record: SideRecord) -> Result<()> {
        match record {
            SideRecord::Artifact(artifact) => {
                let key = doc! { "runId": artifact.run_id.as_str(), "key": artifact.key.as_str() };
                let fields = to_document("artifact", &artifact)?;
                if !keep_latest(&self.artifacts, key, &artifact.at, fields).await? {
                    return Err(Error::Contention(format!("artifact {} of run {}", artifact.key, artifact.run_id)));
                }
            }
            SideRecord::Hypothesis(ideas) => {
                let key = doc! { "_id": ideas.id.as_str() };
                // `$set` of our fields only: the frontend's own fields of the hypothesis stay.
                let mut fields = to_document("hypothesis", &ideas)?;
                fields.remove("_id");
                if !keep_latest(&self.hypotheses, key, &ideas.at, fields).await? {
                    return Err(Error::Contention(format!("hypothesis {}", ideas.id)));
                }
            }
        }
        Ok(())
    }
}

/// Stores `fields` in the document matching `key` unless it holds a later fact already
/// ([`replaces`]): read, compare, then a write conditional on what was read, retried when
/// another writer changed it in between. False when it kept losing that race.
async fn keep_latest(
    collection: &Collection<Document>,
    key: Document,
    at: &EventKey,
    fields: Document,
) -> Result<bool> {
    for _ in 0..MAX_CAS_TRIES {
        let existing = collection.find_one(key.clone()).projection(doc! { "at": 1 }).await?;
        let Some(existing) = existing else {
            let mut document = key.clone();
            document.extend(fields.clone());
            match collection.insert_one(document).await {
                Ok(_) => return Ok(true),
                Err(err) if is_duplicate_key(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        };
        let existing_at = match existing.get("at") {
            None | Some(Bson::Null) => None,
            Some(stored) => Some(parse_event_key(stored)?),
        };
        if !replaces(existing_at.as_ref(), at) {
            return Ok(true);
        }
        let mut filter = key.clone();
        match &existing_at {
            // A document we have not written yet (a hypothesis the frontend created).
            None => {
                filter.insert("at", Bson::Null);
            }
            Some(existing_at) => {
                filter.insert("at.time", DateTime::from(existing_at.time));
                filter.insert("at.id", existing_at.id.as_str());
                filter.insert("at.source", existing_at.source.as_str());
            }
        }
        if collection.update_one(filter, doc! { "$set": fields.clone() }).await?.matched_count == 1 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[async_trait]
impl Store for MongoStore {
    async fn enqueue(&self, new_run: NewRun, now: Timestamp) -> Result<Run> {
        let run = Run::queued(new_run, now);
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
        let limit = clamp_limit(filter.limit);
        let mut query = Document::new();
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|status| status.as_str()).collect();
            query.insert("status", doc! { "$in": statuses });
        }
        if let Some(queue) = &filter.queue {
            query.insert("queue", queue.as_str());
        }
        if let Some(cursor) = &filter.cursor {
            let (millis, id) = parse_run_cursor(cursor)?;
            let created_at = DateTime::from_millis(millis);
            let older = doc! { "createdAt": { "$lt": created_at } };
            let same_time_lower_id = doc! { "createdAt": created_at, "_id": { "$lt": id } };
            query.insert("$or", vec![older, same_time_lower_id]);
        }
        let cursor = self.runs.find(query).sort(doc! { "createdAt": -1, "_id": -1 }).limit(limit as i64 + 1).await?;
        let rows = page_rows(cursor, limit, |run| {
            let size = crate::limits::json_len(&run);
            Ok((run, size))
        })
        .await?;
        bounded_page(rows, limit, run_cursor)
    }

    /// Reads the head of the queue, then claims the first candidate still QUEUED with one
    /// update whose filter requires that status: the claim is atomic, so no run is claimed
    /// twice. A claimer that loses a race moves on to the next candidate with a point
    /// update, instead of every claimer re-running the sorted query against one document
    /// (a single sorted `findOneAndUpdate` does that, and under many pods polling at once it
    /// turns into write-conflict retries; on SecantusDB it made 16 claimers 100× slower).
    async fn claim(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        // Exactly what `Run::claim` and `save_run` do.
        let update = doc! {
            "$set": {
                "status": RunStatus::Scheduled.as_str(),
                "claimedBy": worker,
                "claimedAt": DateTime::from(now),
                "heardAt": DateTime::from(now),
                "updatedAt": DateTime::from(now),
            },
            "$unset": { "silentSince": "" },
            "$inc": { "attempt": 1, "rev": 1 },
        };
        let mut queued = doc! { "status": RunStatus::Queued.as_str(), "queue": queue };
        if queue == DEFAULT_QUEUE {
            // Runs the web frontend creates directly carry no `queue`: they are the default pool's.
            queued.insert("queue", doc! { "$in": [queue, Bson::Null] });
        }
        let ids = self.runs.clone_with_type::<Document>();
        loop {
            let head: Vec<Document> = ids
                .find(queued.clone())
                .sort(doc! { "priority": -1, "createdAt": 1, "_id": 1 })
                .projection(doc! { "_id": 1 })
                .limit(CLAIM_CANDIDATES)
                .await?
                .try_collect()
                .await?;
            if head.is_empty() {
                return Ok(None);
            }
            let mut candidates: Vec<Bson> = head.into_iter().filter_map(|doc| doc.get("_id").cloned()).collect();
            // The head first, so a lone claimer takes runs in strict order.
            let mut next = 0;
            while !candidates.is_empty() {
                let id = candidates.swap_remove(next);
                let mut still_queued = queued.clone();
                still_queued.insert("_id", id.clone());
                if self.runs.update_one(still_queued, update.clone()).await?.modified_count == 1 {
                    // Ours unless it was reset and claimed again in between, which voids our claim.
                    let run = self.runs.find_one(doc! { "_id": id }).await?;
                    if let Some(run) = run.filter(|run| run.claimed_by.as_deref() == Some(worker)) {
                        return Ok(Some(run));
                    }
                }
                // Lost a race: the head is contended, so spread out over the other candidates
                // rather than queue up behind the other claimers on the same documents.
                next = random_below(candidates.len());
            }
            // Every candidate went to other claimers meanwhile: read the head again.
        }
    }

    /// Per event: claim its pair in `events_seen` (a claim already marked applied is a
    /// duplicate; an unmarked one was left by a call that failed mid-way and is taken over),
    /// store it in `events`, write its side record, apply it to its run, then mark the claim
    /// applied. Every step may be repeated: inserts tolerate duplicate keys and the reducer
    /// is idempotent. Each step is done for the whole batch at once, and each run touched
    /// is written once.
    async fn apply_events(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        // A pair repeated within the batch is a duplicate of its first occurrence, as in SQLite.
        let mut in_batch = HashSet::new();
        for (outcome, event) in outcomes.iter_mut().zip(&events) {
            if !in_batch.insert(pair(event)) {
                *outcome = Some(Outcome::Duplicate);
            }
        }

        let pending = undecided(&outcomes);
        let claims = pending.iter().map(|&i| seen_document(&events[i], now));
        let refused = insert_all(&self.events_seen, claims.collect()).await?;
        let claimed_now: HashSet<usize> =
            pending.iter().enumerate().filter(|(position, _)| !refused.contains(position)).map(|(_, &i)| i).collect();
        let seen_before: Vec<usize> = refused.iter().map(|&position| pending[position]).collect();
        if !seen_before.is_empty() {
            let seen_events: Vec<&Event> = seen_before.iter().map(|&i| &events[i]).collect();
            let applied = self.applied_pairs(&seen_events).await?;
            for i in seen_before {
                if applied.contains(&pair(&events[i])) {
                    outcomes[i] = Some(Outcome::Duplicate);
                }
            }
        }

        let pending = undecided(&outcomes);
        let documents = pending.iter().map(|&i| event_document(&events[i], now)).collect();
        for position in insert_all(&self.events, documents).await? {
            let i = pending[position];
            // Claimed just now, yet already stored: its claim expired (TTL) after an earlier
            // delivery, or a concurrent call is storing it (that call applies it). Either way
            // a duplicate. The claim is left unmarked so that, should that concurrent call
            // fail, its retry still applies the event.
            if claimed_now.contains(&i) {
                outcomes[i] = Some(Outcome::Duplicate);
            }
        }

        let pending = undecided(&outcomes);
        let mut by_run: Vec<(&RunId, Vec<usize>)> = Vec::new();
        let mut run_slot: HashMap<&RunId, usize> = HashMap::new();
        for &i in &pending {
            let event = &events[i];
            if let Some(record) = side_record(event) {
                self.save_side_record(record).await?;
            }
            match &event.run_id {
                None => outcomes[i] = Some(Outcome::Applied),
                Some(run_id) => {
                    let slot = *run_slot.entry(run_id).or_insert_with(|| {
                        by_run.push((run_id, Vec::new()));
                        by_run.len() - 1
                    });
                    by_run[slot].1.push(i);
                }
            }
        }
        for (run_id, indexes) in by_run {
            let run_events: Vec<&Event> = indexes.iter().map(|&i| &events[i]).collect();
            let effects = self.apply_to_run(run_id, &run_events, now).await?;
            for (i, effect) in indexes.into_iter().zip(effects) {
                outcomes[i] = Some(effect.outcome());
            }
        }

        if !pending.is_empty() {
            let ids: Vec<String> = pending.iter().map(|&i| seen_id(&events[i])).collect();
            self.events_seen.update_many(doc! { "_id": { "$in": ids } }, doc! { "$set": { "applied": true } }).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every event is decided above: duplicate, or applied to its run"))
            .collect())
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        self.events_page(run_id, filter, 1).await
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        self.events_page(run_id, filter, -1).await
    }

    async fn update_if(&self, id: &RunId, now: Timestamp, change: RunChange) -> Result<Option<Run>> {
        let changed = self.update_run(id, now, |mut run| Ok(change(&mut run).then_some(run))).await;
        match changed {
            Err(Error::NotFound(_)) => Ok(None),
            changed => changed,
        }
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
        let groups: Vec<Document> = self
            .runs
            .aggregate([doc! { "$group": { "_id": "$status", "count": { "$sum": 1 } } }])
            .await?
            .try_collect()
            .await?;
        let mut counts = Vec::with_capacity(groups.len());
        for group in groups {
            let status = group.get_str("_id").map_err(|err| corrupt("run status count", err))?;
            let status: RunStatus = status.parse().map_err(|reason: String| corrupt("run status", reason))?;
            let count = match group.get("count") {
                Some(Bson::Int32(count)) => i64::from(*count),
                Some(Bson::Int64(count)) => *count,
                other => return Err(corrupt("run status count", format!("count is {other:?}"))),
            };
            counts.push((status, count.max(0) as u64));
        }
        counts.sort_by_key(|(status, _)| RunStatus::ALL.iter().position(|s| s == status));
        Ok(counts)
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

    async fn stats(&self, now: Timestamp) -> Result<Stats> {
        let parts = stats::Parts {
            counts: self.counts().await?,
            oldest_queued_at: self.oldest_queued_at().await?,
            active_runs: self.active_runs(now).await?,
            completed: self.finished_since(RunStatus::Completed, "completedAt", now).await?,
            failed: self.finished_since(RunStatus::Failed, "failedAt", now).await?,
            stage_durations: self.stage_durations().await?,
            failure_codes: self.failure_codes().await?,
            gpu_seconds: self.gpu_seconds(now).await?,
        };
        Ok(Stats::assemble(parts, now))
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
        let request = IdeationRequest::queued(new, now);
        let mut document = to_document("ideation request", &request.document)?;
        document.extend(to_document("ideation request", &request)?);
        match self.ideation.insert_one(document).await {
            Ok(_) => Ok(request),
            Err(err) if is_duplicate_key(&err) => Err(Error::IdeationExists(request.id)),
            Err(err) => Err(err.into()),
        }
    }

    async fn get_ideation(&self, id: &str) -> Result<Option<IdeationRequest>> {
        Ok(self.load_ideation(id).await?.map(|(_, request)| request))
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> Result<Vec<IdeationRequest>> {
        let mut filter = Document::new();
        if !statuses.is_empty() {
            let names: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
            filter.insert("status", doc! { "$in": names });
        }
        let documents: Vec<Document> = self
            .ideation
            .find(filter)
            .sort(doc! { "createdAt": 1, "_id": 1 })
            .limit(clamp_limit(limit) as i64)
            .await?
            .try_collect()
            .await?;
        documents.into_iter().map(|document| Ok(ideation_from(document)?.1)).collect()
    }

    async fn claim_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
        for _ in 0..MAX_CAS_TRIES {
            let oldest = self
                .ideation
                .find_one(doc! { "status": IdeationStatus::Queued.as_str() })
                .sort(doc! { "createdAt": 1, "_id": 1 })
                .await?;
            let Some((raw_id, mut request)) = oldest.map(ideation_from).transpose()? else { return Ok(None) };
            let before = request.clone();
            request.claim(worker, now);
            if self.save_ideation(&raw_id, &before, &request).await? {
                return Ok(Some(request));
            }
        }
        Err(Error::Contention("the ideation queue".into()))
    }

    async fn update_ideation_if(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
        for _ in 0..MAX_CAS_TRIES {
            let Some((raw_id, before)) = self.load_ideation(id).await? else { return Ok(None) };
            let mut request = before.clone();
            if !change(&mut request) {
                return Ok(None);
            }
            if self.save_ideation(&raw_id, &before, &request).await? {
                return Ok(Some(request));
            }
        }
        Err(Error::Contention(format!("ideation request {id}")))
    }
}

/// The forms a document id may take: the string, and the ObjectId it spells if it is one
/// (documents the web frontend creates have ObjectId ids).
fn id_forms(id: &str) -> Vec<Bson> {
    let mut forms = vec![Bson::from(id)];
    if let Ok(object_id) = ObjectId::parse_str(id) {
        forms.push(Bson::ObjectId(object_id));
    }
    forms
}

/// Reads an `ideation_requests` document: its raw `_id`, and the request with an ObjectId
/// id spelled as hex.
fn ideation_from(mut document: Document) -> Result<(Bson, IdeationRequest)> {
    let raw_id = document.get("_id").cloned().unwrap_or(Bson::Null);
    if let Bson::ObjectId(object_id) = &raw_id {
        document.insert("_id", object_id.to_hex());
    }
    let what = || format!("ideation request {raw_id}");
    // Through raw BSON, as the driver reads runs: dates stay dates (not extended JSON).
    let raw = bson::to_raw_document_buf(&document)
        .map_err(|source| Error::Encode { what: what(), source: Box::new(source) })?;
    let typed: IdeationRequest = from_raw(&what(), raw.as_bytes())?;
    let Value::Object(whole) = plain_json(Bson::Document(document)) else {
        return Err(corrupt(what(), "not a document"));
    };
    Ok((raw_id, IdeationRequest { document: whole, ..typed }))
}

/// A document as the JSON a command reads: dates as RFC 3339 text (as the embedded store
/// keeps them), ObjectIds as hex, the rest as relaxed extended JSON.
fn plain_json(value: Bson) -> Value {
    match value {
        Bson::DateTime(at) => Value::from(Timestamp::from_millis(at.timestamp_millis()).to_string()),
        Bson::ObjectId(id) => Value::from(id.to_hex()),
        Bson::Document(document) => {
            Value::Object(document.into_iter().map(|(name, value)| (name, plain_json(value))).collect())
        }
        Bson::Array(values) => Value::Array(values.into_iter().map(plain_json).collect()),
        other => other.into_relaxed_extjson(),
    }
}

/// The (source, id) pair that identifies an event (the CloudEvents dedup key).
fn pair(event: &Event) -> (String, String) {
    (event.source.clone(), event.id.0.clone())
}

/// `events_seen` key: a document, so no choice of separator can make two pairs collide.
/// The `events_seen` key of an event's (source, id) pair. The length prefix makes it
/// unambiguous whatever the source contains; a string (not a sub-document) keeps `$in`
/// lookups on the `_id` index everywhere (SecantusDB scans for sub-document `$in`).
fn seen_id(event: &Event) -> String {
    format!("{}|{}|{}", event.source.len(), event.source, event.id)
}

fn seen_document(event: &Event, now: Timestamp) -> Document {
    doc! {
        "_id": seen_id(event),
        "runId": event.run_id.as_ref().map(RunId::as_str),
        "processedAt": DateTime::from(now),
        "applied": false,
    }
}

/// The stored form of an event: its JSON form (so `time` stays an RFC 3339 string that
/// `from_json_object` re-parses) plus the run, and both times as BSON Dates for queries.
fn event_document(event: &Event, now: Timestamp) -> Document {
    let mut document: Document = event.to_json().into_iter().map(|(name, value)| (name, json_to_bson(value))).collect();
    document.insert(EVENT_RUN_ID, event.run_id.as_ref().map(RunId::as_str));
    document.insert(EVENT_TIME_AT, DateTime::from(event.time));
    document.insert(EVENT_RECEIVED_AT, DateTime::from(now));
    document
}

fn parse_stored_event(mut document: Document) -> Result<StoredEvent> {
    let position = document.get_object_id("_id").map_err(|err| corrupt("stored event", err))?;
    let what = || format!("event {position}");
    let received_at = document.get_datetime(EVENT_RECEIVED_AT).map_err(|err| corrupt(what(), err))?;
    let received_at = Timestamp::from_millis(received_at.timestamp_millis());
    for added in ["_id", EVENT_RUN_ID, EVENT_TIME_AT, EVENT_RECEIVED_AT] {
        document.remove(added);
    }
    let object: Map<String, Value> =
        document.into_iter().map(|(name, value)| (name, value.into_relaxed_extjson())).collect();
    let event = event::from_json_object(object, received_at).map_err(|err| corrupt(what(), err))?;
    Ok(StoredEvent { cursor: position.to_hex(), received_at, event })
}

/// JSON to BSON without extended-JSON interpretation (a `{"$date": …}` in event data stays
/// a plain object). Integers beyond i64 become doubles: BSON has no unsigned 64-bit type.
/// The rows of one page from `cursor`, each with its size: read only as far as
/// `bounded_page` can use (one row past `limit` or past the byte bound), never the whole
/// result first.
async fn page_rows<D, T>(
    mut cursor: mongodb::Cursor<D>,
    limit: usize,
    row: impl Fn(D) -> Result<(T, usize)>,
) -> Result<Vec<Result<(T, usize)>>>
where
    D: DeserializeOwned + Send + Sync + Unpin,
{
    let (mut rows, mut bytes) = (Vec::new(), 0);
    while rows.len() <= limit && bytes <= crate::limits::MAX_PAGE_BYTES {
        let Some(document) = cursor.try_next().await? else { break };
        let (item, size) = row(document)?;
        bytes += size;
        rows.push(Ok((item, size)));
    }
    Ok(rows)
}

fn json_to_bson(value: Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(value) => Bson::Boolean(value),
        Value::Number(number) => match number.as_i64() {
            Some(value) => i32::try_from(value).map(Bson::Int32).unwrap_or(Bson::Int64(value)),
            None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(value) => Bson::String(value),
        Value::Array(values) => Bson::Array(values.into_iter().map(json_to_bson).collect()),
        Value::Object(object) => {
            Bson::Document(object.into_iter().map(|(name, value)| (name, json_to_bson(value))).collect())
        }
    }
}

/// `value` as a BSON document, through the driver's own (non-human-readable) serializer, so
/// `Timestamp`s become BSON Dates. (`bson::to_document` is human-readable in bson 2.x and
/// would turn them into strings.)
fn to_document<T: Serialize>(what: &str, value: &T) -> Result<Document> {
    let raw = bson::to_raw_document_buf(value)
        .map_err(|source| Error::Encode { what: what.to_owned(), source: Box::new(source) })?;
    from_raw(what, raw.as_bytes())
}

fn from_raw<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    bson::from_slice(bytes).map_err(|source| Error::CorruptBson { what: what.to_owned(), source: Box::new(source) })
}

fn parse_event_key(stored: &Bson) -> Result<EventKey> {
    let what = "stored event key `at`";
    let Bson::Document(document) = stored else { return Err(corrupt(what, "not a document")) };
    let bytes =
        bson::to_vec(document).map_err(|source| Error::Encode { what: what.to_owned(), source: Box::new(source) })?;
    from_raw(what, &bytes)
}

/// One `stages` document: the stage's timing, its progress while current, and a status.
fn stage_document(run: &Run, name: &str) -> Result<Document> {
    let timing = run.stage_timing.get(name);
    let mut fields = match timing {
        Some(timing) => to_document("stage timing", timing)?,
        None => Document::new(),
    };
    if let Some(current) = run.current_stage.as_ref().filter(|current| current.name.as_str() == name) {
        let mut progress = to_document("current stage", current)?;
        progress.remove("name");
        progress.remove("latest");
        fields.extend(progress);
    }
    let status = if timing.is_some_and(|timing| timing.completed_at.is_some()) {
        "COMPLETED"
    } else if run.status.is_terminal() {
        run.status.as_str()
    } else {
        "RUNNING"
    };
    fields.insert("runId", run.id.as_str());
    fields.insert("name", name);
    fields.insert("status", status);
    fields.insert("runRev", to_i64(run.rev));
    fields.insert("updatedAt", DateTime::from(run.updated_at));
    Ok(fields)
}

/// Inserts `documents` in one unordered round trip; returns the positions refused with a
/// duplicate key. Any other failure is an error.
async fn insert_all(collection: &Collection<Document>, documents: Vec<Document>) -> Result<HashSet<usize>> {
    if documents.is_empty() {
        return Ok(HashSet::new());
    }
    let err = match collection.insert_many(documents).ordered(false).await {
        Ok(_) => return Ok(HashSet::new()),
        Err(err) => err,
    };
    if let ErrorKind::InsertMany(failure) = err.kind.as_ref()
        && let (Some(errors), None) = (&failure.write_errors, &failure.write_concern_error)
        && errors.iter().all(|error| error.code == DUPLICATE_KEY)
    {
        return Ok(errors.iter().map(|error| error.index).collect());
    }
    Err(err.into())
}

/// A BSON number of any width as f64.
fn bson_number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Double(value) => Some(*value),
        Bson::Int32(value) => Some(f64::from(*value)),
        Bson::Int64(value) => Some(*value as f64),
        _ => None,
    }
}

fn error_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::InsertMany(failure) => failure.write_errors.as_ref()?.first().map(|error| error.code),
        _ => None,
    }
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt { what: what.into(), source: serde::de::Error::custom(reason.to_string()) }
}

/// Revisions count writes to one run: far below i64::MAX, BSON's largest integer.
/// A random index below `len` (0 when `len` is 0), for spreading claimers; not for secrets.
fn random_below(len: usize) -> usize {
    let random = uuid::Uuid::new_v4().as_u128();
    if len == 0 { 0 } else { (random % len as u128) as usize }
}

fn to_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

fn undecided(outcomes: &[Option<Outcome>]) -> Vec<usize> {
    outcomes.iter().enumerate().filter(|(_, outcome)| outcome.is_none()).map(|(i, _)| i).collect()
}

/// Checks of what is particular to this backend: document shapes in MongoDB and the
/// crash-recovery paths of `apply_events`. The behaviour both stores share is tested by
/// `tests/store_contract.rs`.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A store on a fresh database of the test server; drop it with `drop_database`.
    async fn test_store() -> MongoStore {
        let url = std::env::var("SCIENTIST_TEST_MONGODB_URL").unwrap_or_else(|_| {
            panic!(
                "SCIENTIST_TEST_MONGODB_URL is not set: start a server with `secantusd-py --host 127.0.0.1 \
                 --port 27017 --storage-path :memory:` (pip install SecantusDB) and export \
                 SCIENTIST_TEST_MONGODB_URL=mongodb://127.0.0.1:27017, or run scripts/test"
            )
        });
        let database = format!("scientist_unit_{}", ulid::Ulid::generate().to_string().to_lowercase());
        MongoStore::connect(&url, Some(&database)).await.expect("connect to the test MongoDB server")
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(1_761_159_600_000 + seconds * 1000)
    }

    fn event(id: &str, ty: &str, run_id: &str, seconds: i64, attempt: Option<u32>, data: Value) -> Event {
        let mut object = json!({
            "specversion": "1.0",
            "id": id,
            "source": "pod://unit",
            "type": ty,
            "subject": format!("run/{run_id}"),
            "time": at(seconds).to_string(),
            "data": data,
        });
        if let Some(attempt) = attempt {
            object["attempt"] = json!(attempt);
        }
        let Value::Object(object) = object else { unreachable!("built as an object") };
        event::from_json_object(object, at(seconds)).expect("valid test event")
    }

    fn new_run(priority: i64) -> NewRun {
        NewRun { priority, ..NewRun::new(json!({"title": "unit"})) }
    }

    #[tokio::test]
    async fn claims_by_priority_and_drives_a_run_with_events() {
        let store = test_store().await;
        let low = store.enqueue(new_run(1), at(0)).await.expect("enqueue");
        let high = store.enqueue(new_run(9), at(1)).await.expect("enqueue");
        let middle = store.enqueue(new_run(5), at(2)).await.expect("enqueue");
        let mut order = Vec::new();
        while let Some(run) = store.claim("pod-a", "default", at(3)).await.expect("claim") {
            assert_eq!((run.status, run.attempt, run.rev), (RunStatus::Scheduled, 1, 1));
            order.push(run.id);
        }
        assert_eq!(order, [high.id, middle.id, low.id]);

        let run_id = "run-unit-1";
        let enqueued = event("e1", "ai.run.enqueued", run_id, 10, None, json!({"priority": 3}));
        let outcomes = store.apply_events(vec![enqueued.clone()], at(10)).await.expect("apply");
        assert_eq!(outcomes, [Outcome::Applied]);
        let claimed = store.claim("pod-b", "default", at(11)).await.expect("claim").expect("the new run");
        assert_eq!(claimed.id.as_str(), run_id);
        let mut batch = vec![
            event("e2", "ai.run.started", run_id, 12, Some(1), json!({"pod_id": "pod-b", "gpu": "H100"})),
            event(
                "e3",
                "ai.run.stage_progress",
                run_id,
                13,
                Some(1),
                json!({"stage": "Stage_1", "iteration": 3, "max_iterations": 14, "progress": 0.25, "good_nodes": 2}),
            ),
        ];
        batch[1].seq = Some(7);
        let outcomes = store.apply_events(batch.clone(), at(14)).await.expect("apply");
        assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
        let run = store.get(&claimed.id).await.expect("get").expect("run");
        assert_eq!(run.status, RunStatus::Running);
        let current = run.current_stage.as_ref().expect("current stage");
        assert_eq!((current.name.as_str(), current.iteration, current.good_nodes), ("Stage_1", 3, 2));

        let mut again = batch.clone();
        again.insert(0, enqueued);
        let outcomes = store.apply_events(again, at(15)).await.expect("apply again");
        assert_eq!(outcomes, [Outcome::Duplicate; 3]);
        let stale = event("e4", "ai.run.heartbeat", run_id, 16, Some(2), json!({"gpu_util": 50.0}));
        assert_eq!(store.apply_events(vec![stale], at(16)).await.expect("apply"), [Outcome::Stale]);

        let raw: Collection<Document> = store.runs.clone_with_type();
        let stored = raw.find_one(doc! { "_id": run_id }).await.expect("find").expect("stored run");
        assert!(matches!(stored.get("createdAt"), Some(Bson::DateTime(_))), "{stored:?}");
        assert!(matches!(stored.get("claimedAt"), Some(Bson::DateTime(_))), "{stored:?}");
        assert_eq!(stored.get_document("currentStage").and_then(|c| c.get_i64("goodNodes")), Ok(2));
        let stage_1 = stored.get_document("stageTiming").and_then(|t| t.get_document("Stage_1")).expect("Stage_1");
        assert!(matches!(stage_1.get("lastActivityAt"), Some(Bson::DateTime(_))), "{stage_1:?}");
        assert_eq!(stored.get_i64("lastEventSeq"), Ok(7));
        assert_eq!(stored.get_str("claimedBy"), Ok("pod-b"));
        let stage = store.stages.find_one(doc! { "runId": run_id, "name": "Stage_1" }).await.expect("find");
        let stage = stage.expect("stage mirrored");
        assert_eq!((stage.get_str("status"), stage.get_f64("progress")), (Ok("RUNNING"), Ok(0.25)));
        assert!(matches!(stage.get("lastActivityAt"), Some(Bson::DateTime(_))), "{stage:?}");
        let events = store.events.find_one(doc! { "id": "e2" }).await.expect("find").expect("stored event");
        assert!(matches!(events.get("time"), Some(Bson::String(_))), "time stays RFC 3339: {events:?}");
        assert!(matches!(events.get(EVENT_RECEIVED_AT), Some(Bson::DateTime(_))), "{events:?}");
        store.drop_database().await.expect("drop");
    }

    #[tokio::test]
    async fn recovers_from_a_call_that_failed_mid_way() {
        let store = test_store().await;
        let run_id = "run-unit-2";
        let enqueued = event("r1", "ai.run.enqueued", run_id, 0, None, json!({}));
        // A call claimed the pair, then died before storing anything: the retry applies it.
        store.events_seen.insert_one(seen_document(&enqueued, at(0))).await.expect("claim");
        assert_eq!(store.apply_events(vec![enqueued.clone()], at(1)).await.expect("apply"), [Outcome::Applied]);
        assert!(store.get(&run_id.parse().expect("id")).await.expect("get").is_some());
        // The claim expired (TTL) after the event was stored: still a duplicate.
        store.events_seen.delete_many(doc! {}).await.expect("expire");
        assert_eq!(store.apply_events(vec![enqueued], at(2)).await.expect("apply"), [Outcome::Duplicate]);
        // Ideas keep the frontend's own fields of the hypothesis.
        store.hypotheses.insert_one(doc! { "_id": "hyp-1", "title": "from the frontend" }).await.expect("insert");
        let ideas = |id: &str, seconds: i64, name: &str| {
            let mut ideas = event(
                id,
                "ai.ideation.generated",
                run_id,
                seconds,
                None,
                json!({
                    "hypothesis_id": "hyp-1",
                    "ideas": [{"name": name}],
                }),
            );
            ideas.run_id = None;
            ideas
        };
        let batch = vec![ideas("r2", 5, "b"), ideas("r3", 3, "a"), ideas("r4", 6, "c"), ideas("r5", 4, "d")];
        assert_eq!(store.apply_events(batch, at(7)).await.expect("apply"), [Outcome::Applied; 4]);
        let stored = store.hypotheses.find_one(doc! { "_id": "hyp-1" }).await.expect("find").expect("hypothesis");
        assert_eq!(stored.get_str("title"), Ok("from the frontend"));
        assert_eq!(stored.get_document("ideaJson").and_then(|idea| idea.get_str("name")), Ok("c"), "the latest wins");
        let read = store.hypothesis_ideas("hyp-1").await.expect("ideas").expect("some");
        assert_eq!((read.idea_json, read.at.id.as_str()), (json!({"name": "c"}), "r4"));
        store.drop_database().await.expect("drop");
    }

    /// A request the web frontend made (ObjectId id, its own fields, a hypothesis whose
    /// `ideation.status` it shows) is claimed and ended without losing the frontend's fields.
    #[tokio::test]
    async fn serves_the_frontends_ideation_requests() {
        let store = test_store().await;
        let id = ObjectId::new();
        store
            .hypotheses
            .insert_one(doc! { "_id": "hyp-9", "title": "LR", "ideation": { "status": "QUEUED" } })
            .await
            .expect("hypothesis");
        store
            .ideation
            .insert_one(doc! {
                "_id": id, "hypothesisId": "hyp-9", "status": "QUEUED", "createdAt": DateTime::from(at(0)),
                "prompt": "ideas on learning rates", "model": "gpt-5-mini",
            })
            .await
            .expect("request");
        let claimed = store.claim_ideation("pod-a", at(1)).await.expect("claim").expect("the request");
        assert_eq!((claimed.id.clone(), claimed.attempt), (id.to_hex(), 1));
        assert_eq!(claimed.document["prompt"], json!("ideas on learning rates"));
        assert_eq!(claimed.document["createdAt"], json!(at(0).to_string()), "dates read as text");
        let hypothesis = store.hypotheses.find_one(doc! { "_id": "hyp-9" }).await.expect("find").expect("kept");
        assert_eq!(hypothesis.get_document("ideation").expect("ideation").get_str("status"), Ok("RUNNING"));
        store.finish_ideation(&id.to_hex(), 1, None, at(2)).await.expect("finish").expect("live claim");
        let stored = store.ideation.find_one(doc! { "_id": id }).await.expect("find").expect("request");
        assert_eq!((stored.get_str("status"), stored.get_str("model")), (Ok("COMPLETED"), Ok("gpt-5-mini")));
        assert!(stored.get_datetime("finishedAt").is_ok(), "dates are stored as dates: {stored}");
        let hypothesis = store.hypotheses.find_one(doc! { "_id": "hyp-9" }).await.expect("find").expect("kept");
        assert_eq!(hypothesis.get_document("ideation").expect("ideation").get_str("status"), Ok("COMPLETED"));
        assert_eq!(hypothesis.get_str("title"), Ok("LR"));
        store.drop_database().await.expect("drop");
    }
}
