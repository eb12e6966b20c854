//! What `scientist stats`, `GET /api/stats` and `/metrics` report, as one serializable shape.
//! Each backend gathers the raw figures with its own indexed queries ([`Parts`]); the
//! arithmetic (windows, rates, percentile ranks) lives here once, so both report alike.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::run::{ReviewDecision, Run, RunId, RunStatus, Stage};
use crate::time::Timestamp;

pub mod cost;

/// A worker counts as active while a run it holds showed a heartbeat, start or claim this recently.
pub const ACTIVE_WINDOW_S: i64 = 5 * 60;

/// Throughput is counted over this many hours before `now`.
pub const THROUGHPUT_WINDOW_H: i64 = 24;

/// How many failure codes `failureCodes` lists, most common first.
pub const TOP_FAILURE_CODES: usize = 5;

/// Statuses in which a worker holds a run.
pub const HELD_STATUSES: [RunStatus; 3] = [RunStatus::Scheduled, RunStatus::Running, RunStatus::AwaitingHuman];

/// A snapshot of the whole store. The JSON form (camelCase) is stable; README documents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The `now` the figures were computed for.
    pub generated_at: Timestamp,
    pub total_runs: u64,
    pub by_status: StatusCounts,
    pub queue: QueueStats,
    /// One entry per run held by a worker seen within [`ACTIVE_WINDOW_S`], by worker then run.
    pub active_workers: Vec<ActiveWorker>,
    pub throughput: Throughput,
    /// Completed stages' durations, in pipeline order.
    pub stage_durations: Vec<StageDurations>,
    /// The most common `error.type` codes of FAILED runs, most common first.
    pub failure_codes: Vec<FailureCount>,
    /// Human reviews: runs awaiting one, and runs by what their latest review became.
    pub reviews: ReviewCounts,
    /// Held runs the sweep has flagged, of every worker, however long ago it was heard.
    pub flagged: Flagged,
    /// Hours runs held a GPU: start to end (or to the latest heartbeat while running), one
    /// GPU per run, over the runs' current attempts.
    pub gpu_hours: f64,
    /// Spend over the window (`stats --window`, `?window=`) and all time (`cost`).
    pub cost: cost::CostStats,
}

/// Runs in each status; every status is present, zero or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusCounts {
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub awaiting_human: u64,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl StatusCounts {
    pub fn get(&self, status: RunStatus) -> u64 {
        match status {
            RunStatus::Queued => self.queued,
            RunStatus::Scheduled => self.scheduled,
            RunStatus::Running => self.running,
            RunStatus::AwaitingHuman => self.awaiting_human,
            RunStatus::Completed => self.completed,
            RunStatus::Failed => self.failed,
            RunStatus::Canceled => self.canceled,
        }
    }

    fn slot(&mut self, status: RunStatus) -> &mut u64 {
        match status {
            RunStatus::Queued => &mut self.queued,
            RunStatus::Scheduled => &mut self.scheduled,
            RunStatus::Running => &mut self.running,
            RunStatus::AwaitingHuman => &mut self.awaiting_human,
            RunStatus::Completed => &mut self.completed,
            RunStatus::Failed => &mut self.failed,
            RunStatus::Canceled => &mut self.canceled,
        }
    }

    fn total(&self) -> u64 {
        RunStatus::ALL.iter().map(|status| self.get(*status)).sum()
    }
}

/// The queue: runs waiting to be claimed (all pools together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub depth: u64,
    /// `createdAt` of the oldest QUEUED run, absent when the queue is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_created_at: Option<Timestamp>,
    /// Its age in seconds at `generatedAt`.
    #[serde(rename = "oldestAge_s", default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
}

/// A worker and one run it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveWorker {
    /// `claimedBy`, else the pod the run reported.
    pub worker: String,
    pub run_id: RunId,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    pub last_seen_at: Timestamp,
    /// Set while the run is flagged stalled: heard, but no progress (`queue::stall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<Timestamp>,
}

/// Runs finished within the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    pub window_hours: i64,
    pub completed: u64,
    pub failed: u64,
    pub completed_per_hour: f64,
}

/// Durations of one stage over every run that completed it (nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageDurations {
    pub stage: String,
    pub count: u64,
    pub p50_s: f64,
    pub p90_s: f64,
    pub max_s: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureCount {
    pub code: String,
    pub count: u64,
}

/// Runs in [`HELD_STATUSES`] flagged by the sweep (`queue::lease`, `queue::stall`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Flagged {
    /// Not heard from for `--silent-after` (`silentSince`): unreachable, maybe dead.
    pub silent: u64,
    /// Heard, but no progress for `--stall-after` (`stalledSince`).
    pub stalled: u64,
}

/// Runs by review: awaiting a decision (AWAITING_HUMAN, undecided or not yet recorded), and
/// by the decision on their latest review (`review.decision`), whatever became of them since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewCounts {
    pub awaiting: u64,
    pub approved: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

/// The code reported for a FAILED run that carries none.
pub const UNKNOWN_FAILURE: &str = "UNKNOWN";

/// The raw figures a backend gathers for [`Stats::assemble`].
pub(crate) struct Parts {
    pub counts: Vec<(RunStatus, u64)>,
    pub oldest_queued_at: Option<Timestamp>,
    /// Runs in [`HELD_STATUSES`] seen since [`active_since`].
    pub active_runs: Vec<Run>,
    /// Runs COMPLETED / FAILED since [`throughput_since`].
    pub completed: u64,
    pub failed: u64,
    pub stage_durations: Vec<StageDurations>,
    pub failure_codes: Vec<FailureCount>,
    /// Runs by their latest review's decision (decisions with none may be left out).
    pub review_decisions: Vec<(ReviewDecision, u64)>,
    pub flagged: Flagged,
    pub gpu_seconds: f64,
    pub cost: cost::CostParts,
}

/// The earliest "last seen" time of an active worker's run.
pub(crate) fn active_since(now: Timestamp) -> Timestamp {
    now.plus_seconds(-ACTIVE_WINDOW_S)
}

/// Start of the throughput window.
pub(crate) fn throughput_since(now: Timestamp) -> Timestamp {
    now.plus_seconds(-THROUGHPUT_WINDOW_H * 3600)
}

pub(crate) use crate::run::nearest_rank;

impl StageDurations {
    /// From one stage's durations, sorted ascending; `None` when there are none.
    pub(crate) fn from_sorted(stage: String, sorted: &[f64]) -> Option<Self> {
        let max_s = *sorted.last()?;
        let count = sorted.len() as u64;
        let at = |percentile| sorted[nearest_rank(count, percentile) as usize];
        Some(Self { stage, count, p50_s: at(50), p90_s: at(90), max_s })
    }
}

/// Pipeline order for known stages, then by name.
pub(crate) fn sort_stages(durations: &mut [StageDurations]) {
    let order = |name: &str| Stage::try_from(name.to_owned()).map_or(Stage::ALL.len(), |stage| stage as usize);
    durations.sort_by(|a, b| (order(&a.stage), &a.stage).cmp(&(order(&b.stage), &b.stage)));
}

impl Stats {
    /// `cost_window`: how far back the cost section goes (by creation time, see `cost`).
    pub(crate) fn assemble(parts: Parts, now: Timestamp, cost_window: Duration) -> Stats {
        let mut by_status = StatusCounts::default();
        for (status, count) in parts.counts {
            *by_status.slot(status) += count;
        }
        let oldest_age_s = parts.oldest_queued_at.map(|oldest| now.seconds_since(oldest).max(0.0));
        let mut active_workers: Vec<ActiveWorker> = parts.active_runs.iter().filter_map(active_worker).collect();
        active_workers.sort_by(|a, b| (&a.worker, &a.run_id).cmp(&(&b.worker, &b.run_id)));
        let mut reviews = ReviewCounts { awaiting: by_status.get(RunStatus::AwaitingHuman), ..ReviewCounts::default() };
        for (decision, count) in parts.review_decisions {
            *match decision {
                ReviewDecision::Approved => &mut reviews.approved,
                ReviewDecision::Rejected => &mut reviews.rejected,
                ReviewDecision::TimedOut => &mut reviews.timed_out,
            } += count;
        }
        let mut stage_durations = parts.stage_durations;
        sort_stages(&mut stage_durations);
        Stats {
            generated_at: now,
            total_runs: by_status.total(),
            queue: QueueStats {
                depth: by_status.get(RunStatus::Queued),
                oldest_created_at: parts.oldest_queued_at,
                oldest_age_s,
            },
            by_status,
            active_workers,
            throughput: Throughput {
                window_hours: THROUGHPUT_WINDOW_H,
                completed: parts.completed,
                failed: parts.failed,
                completed_per_hour: parts.completed as f64 / THROUGHPUT_WINDOW_H as f64,
            },
            stage_durations,
            failure_codes: parts.failure_codes,
            reviews,
            flagged: parts.flagged,
            gpu_hours: parts.gpu_seconds / 3600.0,
            cost: cost::CostStats::assemble(parts.cost, now, cost_window),
        }
    }
}

fn active_worker(run: &Run) -> Option<ActiveWorker> {
    let pod = run.pod.as_ref();
    Some(ActiveWorker {
        worker: run.claimed_by.clone().or_else(|| pod.map(|pod| pod.id.clone()))?,
        run_id: run.id.clone(),
        status: run.status,
        stage: run.current_stage.as_ref().map(|current| current.name),
        progress: run.current_stage.as_ref().map(|current| current.progress),
        gpu: pod.and_then(|pod| pod.gpu.clone()),
        last_seen_at: run.last_seen_at()?,
        stalled_since: run.stalled_since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(1, 50), 0);
        assert_eq!(nearest_rank(1, 90), 0);
        assert_eq!(nearest_rank(10, 50), 4);
        assert_eq!(nearest_rank(10, 90), 8);
        assert_eq!(nearest_rank(4, 50), 1);
        assert_eq!(nearest_rank(3, 90), 2);
        let durations = StageDurations::from_sorted("Stage_1".into(), &[1.0, 2.0, 3.0, 4.0]).expect("some");
        assert_eq!((durations.p50_s, durations.p90_s, durations.max_s, durations.count), (2.0, 4.0, 4.0, 4));
        assert!(StageDurations::from_sorted("Stage_1".into(), &[]).is_none());
    }
}
