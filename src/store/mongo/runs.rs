//! Run writes on MongoDB: the queue's claim, and the compare-and-swap on `rev` that every
//! other change of a run goes through.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::bson::to_i64;
use super::{CLAIM_CANDIDATES, MAX_CAS_TRIES, MongoStore};
use crate::run::{DEFAULT_QUEUE, Run, RunId, RunStatus, TraceId};
use crate::store::{Error, Result, before_save};
use crate::time::Timestamp;

impl MongoStore {
    /// Reads the head of the queue, then claims the first candidate still QUEUED with one
    /// update whose filter requires that status: the claim is atomic, so no run is claimed
    /// twice. A claimer that loses a race moves on to the next candidate with a point
    /// update, instead of every claimer re-running the sorted query against one document
    /// (a single sorted `findOneAndUpdate` does that, and under many pods polling at once it
    /// turns into write-conflict retries; on SecantusDB it made 16 claimers 100× slower).
    pub(super) async fn claim_next(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        // Exactly what `Run::claim` and `save_run` do (`heard` keeps a later `heardAt`):
        // the contract test `claim_writes_what_run_claim_makes` holds the two together.
        let update = doc! {
            "$set": {
                "status": RunStatus::Scheduled.as_str(),
                "claimedBy": worker,
                "claimedAt": DateTime::from(now),
                "updatedAt": DateTime::from(now),
                "progressAt": DateTime::from(now),
            },
            "$max": { "heardAt": DateTime::from(now) },
            "$unset": { "silentSince": "", "stalledSince": "", "notBefore": "" },
            "$inc": { "attempt": 1, "rev": 1 },
        };
        // A run waiting out a retry's backoff is not claimed before its `notBefore`.
        let mut queued = doc! {
            "status": RunStatus::Queued.as_str(),
            "queue": queue,
            "notBefore": { "$not": { "$gt": DateTime::from(now) } },
        };
        if queue == DEFAULT_QUEUE {
            // Runs the web frontend creates directly carry no `queue`: they are the default pool's.
            queued.insert("queue", doc! { "$in": [queue, Bson::Null] });
        }
        let ids = self.runs.clone_with_type::<Document>();
        // Each round that finds every candidate taken means others claimed them all.
        for _ in 0..MAX_CAS_TRIES {
            let head: Vec<Document> = ids
                .find(queued.clone())
                .sort(doc! { "priority": -1, "createdAt": 1, "_id": 1 })
                .projection(doc! { "_id": 1, "traceId": 1 })
                .limit(CLAIM_CANDIDATES)
                .await?
                .try_collect()
                .await?;
            if head.is_empty() {
                return Ok(None);
            }
            let mut candidates: Vec<(Bson, bool)> = head
                .into_iter()
                .filter_map(|doc| Some((doc.get("_id").cloned()?, doc.contains_key("traceId"))))
                .collect();
            // The head first, so a lone claimer takes runs in strict order.
            let mut next = 0;
            while !candidates.is_empty() {
                let (id, traced) = candidates.swap_remove(next);
                let mut still_queued = queued.clone();
                still_queued.insert("_id", id.clone());
                let mut update = update.clone();
                if !traced {
                    // As `Run::claim` does for a run stored before trace ids: derived from the
                    // id, so a claim that races this one would write the same.
                    let trace_id = id.as_str().and_then(|id| id.parse::<RunId>().ok()).map(|id| TraceId::of_run(&id));
                    if let (Some(trace_id), Ok(set)) = (trace_id, update.get_document_mut("$set")) {
                        set.insert("traceId", trace_id.to_string());
                    }
                }
                if self.runs.update_one(still_queued, update).await?.modified_count == 1 {
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
        Err(Error::Contention(format!("the head of queue {queue}")))
    }

    /// Runs with an alert due by `now`: `alerts.dueAt` is indexed (multikey), and an
    /// ascending sort on an array sorts by its earliest element, as `Run::alerts_due` does.
    pub(super) async fn runs_with_alerts_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .runs
            .find(doc! { "alerts.dueAt": { "$lte": DateTime::from(now) } })
            .sort(doc! { "alerts.dueAt": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Loads a run, changes it and writes it back unless another writer changed it meanwhile,
    /// in which case it starts over on the new version. `None` when `change` declines.
    pub(super) async fn update_run(
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
    pub(super) async fn save_run(&self, before: &Run, run: &mut Run, now: Timestamp) -> Result<bool> {
        before_save(run, &self.rules, now);
        run.updated_at = now;
        run.rev = before.rev + 1;
        let filter = doc! { "_id": run.id.as_str(), "rev": to_i64(before.rev) };
        if self.runs.replace_one(filter, &*run).await?.matched_count == 0 {
            return Ok(false);
        }
        self.mirror_stages(Some(before), run).await?;
        Ok(true)
    }
}

/// A random index below `len` (0 when `len` is 0), for spreading claimers; not for secrets.
fn random_below(len: usize) -> usize {
    let random = uuid::Uuid::new_v4().as_u128();
    if len == 0 { 0 } else { (random % len as u128) as usize }
}
