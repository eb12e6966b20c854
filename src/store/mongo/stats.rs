//! The figures of `stats` on MongoDB, each from an indexed query or a server-side aggregation.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::MongoStore;
use super::bson::{bson_number, corrupt};
use crate::run::{ReviewDecision, Run, RunStatus};
use crate::store::stats::{self, FailureCount, HELD_STATUSES, StageDurations};
use crate::store::{Result, Stats};
use crate::time::Timestamp;

impl MongoStore {
    pub(super) async fn count_by_status(&self) -> Result<Vec<(RunStatus, u64)>> {
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

    pub(super) async fn gather_stats(&self, now: Timestamp, cost_window: Duration) -> Result<Stats> {
        let parts = stats::Parts {
            counts: self.count_by_status().await?,
            oldest_queued_at: self.oldest_queued_at().await?,
            active_runs: self.active_runs(now).await?,
            completed: self.finished_since(RunStatus::Completed, "completedAt", now).await?,
            failed: self.finished_since(RunStatus::Failed, "failedAt", now).await?,
            stage_durations: self.stage_durations().await?,
            failure_codes: self.failure_codes().await?,
            review_decisions: self.review_decisions().await?,
            flagged: stats::Flagged {
                silent: self.held_with("silentSince").await?,
                stalled: self.held_with("stalledSince").await?,
            },
            gpu_seconds: self.gpu_seconds(now).await?,
            cost: self.cost_parts(stats::cost::window_since(now, cost_window), now).await?,
        };
        Ok(Stats::assemble(parts, now, cost_window))
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

    /// Held runs that carry the flag `field` (the sweep sets it, the next word clears it).
    async fn held_with(&self, field: &str) -> Result<u64> {
        let held: Vec<&str> = HELD_STATUSES.iter().map(|status| status.as_str()).collect();
        Ok(self
            .runs
            .count_documents(doc! { "status": { "$in": held }, field: { "$exists": true, "$ne": null } })
            .await?)
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

    /// Runs by `review.decision`, from its sparse index.
    async fn review_decisions(&self) -> Result<Vec<(ReviewDecision, u64)>> {
        let pipeline = [
            doc! { "$match": { "review.decision": { "$exists": true } } },
            doc! { "$group": { "_id": "$review.decision", "count": { "$sum": 1 } } },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        groups
            .into_iter()
            .map(|group| {
                let decision = group.get_str("_id").map_err(|err| corrupt("review decision", err))?;
                let decision = ReviewDecision::ALL
                    .into_iter()
                    .find(|known| known.as_str() == decision)
                    .ok_or_else(|| corrupt("review decision", decision.to_owned()))?;
                let count = group.get("count").and_then(bson_number).unwrap_or(0.0);
                Ok((decision, count as u64))
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
}
