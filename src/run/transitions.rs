//! How a run document changes outside the reducer (creation, claim, word from its worker,
//! reset) and the facts derived from it.

use super::{Attempt, AttemptStage, NewRun, Run, RunError, RunStatus, TraceId};
use crate::redact;
use crate::time::Timestamp;

/// The newest attempts a run document keeps (the older ones stay in its events).
pub const MAX_ATTEMPTS_KEPT: usize = 50;

/// Stages kept per ended attempt (`Attempt::stages`): a pipeline has a handful.
pub const MAX_STAGES_KEPT: usize = 32;

impl Run {
    /// A freshly queued run. Every run is born here (an operator's, or an `ai.run.enqueued`
    /// event's), so this is where what the creator sent loses its secrets.
    pub fn queued(new_run: NewRun, now: Timestamp) -> Self {
        let mut idea = new_run.idea;
        redact::redact_value(&mut idea);
        Run {
            id: new_run.id,
            hypothesis_id: new_run.hypothesis_id.map(redact::redact_string),
            trace_id: Some(new_run.trace_id),
            trace_state: new_run.trace_state.map(redact::redact_string),
            status: RunStatus::Queued,
            priority: new_run.priority,
            queue: redact::redact_string(new_run.queue),
            idea,
            current_stage: None,
            stage_timing: Default::default(),
            error: None,
            error_type: None,
            error_message: None,
            failed_at: None,
            pod: None,
            created_at: now,
            updated_at: now,
            claimed_at: None,
            started_at: None,
            completed_at: None,
            heartbeat_at: None,
            heard_at: None,
            silent_since: None,
            lost_at: None,
            progress_at: None,
            stalled_since: None,
            duration_s: None,
            last_event_seq: 0,
            claimed_by: None,
            attempt: 0,
            retry_count: 0,
            retry_max: new_run.retry_max.map(|max| max.min(super::MAX_RETRIES)),
            budget_usd: new_run.budget_usd,
            cost: Default::default(),
            not_before: None,
            retry_stopped: None,
            attempts: Vec::new(),
            review: None,
            alerts: Vec::new(),
            cancel_requested: None,
            canceled: None,
            resources: None,
            metrics: Vec::new(),
            nodes: Vec::new(),
            paper: None,
            validation: None,
            rev: 0,
        }
    }

    /// Marks the run claimed by `worker`: the one place a claim changes a run, for both stores.
    pub fn claim(&mut self, worker: &str, now: Timestamp) {
        self.status = RunStatus::Scheduled;
        self.claimed_by = Some(worker.to_owned());
        self.claimed_at = Some(now);
        self.attempt += 1;
        self.updated_at = now;
        self.progress_at = Some(now);
        self.stalled_since = None;
        self.not_before = None;
        // A run stored before trace ids existed gets the one derived from its id.
        self.trace_id.get_or_insert_with(|| TraceId::of_run(&self.id));
        self.heard(now);
    }

    /// The worker holding the run was heard from at `now` (the store's clock).
    pub fn heard(&mut self, now: Timestamp) {
        self.heard_at = Some(self.heard_at.map_or(now, |heard_at| heard_at.max(now)));
        self.silent_since = None;
    }

    /// The run made progress at `now` (the store's clock): a stall is over.
    pub fn made_progress(&mut self, now: Timestamp) {
        self.progress_at = Some(self.progress_at.map_or(now, |at| at.max(now)));
        self.stalled_since = None;
    }

    /// Puts the run back in the queue for a fresh attempt (an operator's reset of a FAILED or
    /// CANCELED run, the requeue of a lost one, an automatic retry); its old attempt is fenced
    /// out and kept in `attempts`. Progress, timing and nodes of the old attempt are cleared:
    /// the new attempt starts over. What spans attempts (their history, the run's retry limit,
    /// its alerts, its cost) is kept.
    pub fn reset(&mut self, now: Timestamp) {
        self.end_attempt(now);
        let kept = Run::queued(
            NewRun {
                id: self.id.clone(),
                hypothesis_id: self.hypothesis_id.take(),
                priority: self.priority,
                queue: std::mem::take(&mut self.queue),
                idea: std::mem::take(&mut self.idea),
                retry_max: self.retry_max,
                budget_usd: self.budget_usd,
                trace_id: self.trace_id_or_derived(),
                trace_state: self.trace_state.take(),
            },
            self.created_at,
        );
        *self = Run {
            attempt: self.attempt,
            retry_count: self.retry_count + 1,
            attempts: std::mem::take(&mut self.attempts),
            alerts: std::mem::take(&mut self.alerts),
            cost: std::mem::take(&mut self.cost),
            rev: self.rev,
            last_event_seq: self.last_event_seq,
            updated_at: now,
            ..kept
        };
    }

    /// Records the live attempt in `attempts`, once: when the run ends, or when it is put back
    /// in the queue while held (its worker lost). A run never claimed has no attempt to keep.
    pub fn end_attempt(&mut self, now: Timestamp) {
        if self.attempt == 0 || self.attempts.last().is_some_and(|last| last.attempt == self.attempt) {
            return;
        }
        let gpus = super::cost::pod_gpus(self);
        if let Some((model, count)) = &gpus {
            let seconds = super::cost::attempt_seconds(self);
            self.cost.add_attempt(model, *count, seconds);
        }
        let outcome = match self.status {
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled => self.status.as_str(),
            _ => "LOST",
        };
        self.attempts.push(Attempt {
            attempt: self.attempt,
            claimed_by: self.claimed_by.clone(),
            pod: self.pod.as_ref().map(|pod| pod.id.clone()),
            claimed_at: self.claimed_at,
            started_at: self.started_at,
            // The store's clock, as for `heardAt`: thrashing is judged by it.
            ended_at: now,
            outcome: outcome.to_owned(),
            gpu_count: gpus.as_ref().map(|(_, count)| *count),
            gpu: gpus.map(|(model, _)| model),
            // The traceback stays in the attempt's events: a history of many must not grow the
            // run document by a traceback each.
            error: self.error.clone().map(|error| RunError { traceback: None, ..error }),
            stages: self.attempt_stages(),
        });
        let excess = self.attempts.len().saturating_sub(MAX_ATTEMPTS_KEPT);
        self.attempts.drain(..excess);
    }
}

/// Facts derived from a run document, shared by both stores (which index them) and the CLI.
impl Run {
    /// The stages the live attempt started (at or after its claim: `stageTiming` keeps the
    /// stages of earlier attempts until they run again), by start, at most
    /// [`MAX_STAGES_KEPT`].
    pub fn attempt_stages(&self) -> Vec<AttemptStage> {
        let mut stages: Vec<AttemptStage> = self
            .stage_timing
            .iter()
            .filter_map(|(name, timing)| {
                let started_at = timing.started_at.filter(|at| self.claimed_at.is_none_or(|claimed| *at >= claimed))?;
                Some(AttemptStage { name: name.clone(), started_at, completed_at: timing.completed_at })
            })
            .collect();
        stages.sort_by_key(|stage| stage.started_at);
        stages.truncate(MAX_STAGES_KEPT);
        stages
    }

    /// When a worker last showed signs of life for this run: when the store last heard from
    /// it, else (runs claimed before `heardAt` existed) its latest heartbeat, start or claim.
    pub fn last_seen_at(&self) -> Option<Timestamp> {
        self.heard_at.or_else(|| [self.heartbeat_at, self.started_at, self.claimed_at].into_iter().flatten().max())
    }

    /// When the run reached its terminal state (completed, failed or canceled).
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.completed_at.or(self.failed_at).or(self.canceled.as_ref().map(|canceled| canceled.at))
    }

    /// The stretch during which the run held a GPU: from its start to its end, or to its
    /// latest heartbeat while it has not ended. `None` when its pod reported no GPU.
    pub fn gpu_interval(&self) -> Option<(Timestamp, Timestamp)> {
        self.pod.as_ref()?.gpu.as_ref()?;
        let started_at = self.started_at?;
        let until = self.finished_at().or(self.heartbeat_at).unwrap_or(started_at);
        Some((started_at, until.max(started_at)))
    }

    /// How long the run has taken: its reported `duration_s`, else from start to end (or to
    /// `now` while it runs). `None` before it starts.
    pub fn elapsed_s(&self, now: Timestamp) -> Option<f64> {
        if let Some(duration_s) = self.duration_s {
            return Some(duration_s);
        }
        let started_at = self.started_at?;
        let until = self.finished_at().unwrap_or(now);
        Some(until.seconds_since(started_at).max(0.0))
    }

    /// How long each completed stage took: `duration_s` as reported, else its elapsed time.
    pub fn completed_stage_durations(&self) -> impl Iterator<Item = (&str, f64)> {
        self.stage_timing.iter().filter_map(|(name, timing)| {
            timing.completed_at?;
            Some((name.as_str(), timing.duration_s.or(timing.elapsed_s)?))
        })
    }
}
