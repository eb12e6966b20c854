//! A run's remaining time when its pipeline sends no `eta_s`: estimated from the history of
//! its queue (the p50 duration of each stage over past COMPLETED runs) and from the current
//! iteration rate when `max_iterations` is known. Pure: runs in, seconds out; the reading
//! process loads and caches the history (`cmd::eta`).

use std::collections::BTreeMap;

use super::{Run, Stage};
use crate::time::Timestamp;

/// The most COMPLETED runs of a queue the history is drawn from (one page, newest first).
pub const HISTORY_RUNS: usize = 200;

/// The p50 duration of each stage over a queue's past completed runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub p50_s: BTreeMap<String, f64>,
    /// How many completed runs it was drawn from.
    pub runs: usize,
}

/// What is left of a run: of its current stage, and of the whole run (the sum over its
/// remaining stages in pipeline order). `estimated` unless the pipeline sent the figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eta {
    pub stage_s: f64,
    pub run_s: f64,
    pub estimated: bool,
}

impl History {
    /// From completed runs (others are ignored).
    pub fn from_runs<'a>(runs: impl IntoIterator<Item = &'a Run>) -> History {
        let mut seconds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut count = 0;
        for run in runs.into_iter().filter(|run| run.status == super::RunStatus::Completed) {
            count += 1;
            for (stage, duration_s) in run.completed_stage_durations() {
                seconds.entry(stage.to_owned()).or_default().push(duration_s);
            }
        }
        let p50_s = seconds
            .into_iter()
            .map(|(stage, mut seconds)| {
                seconds.sort_by(f64::total_cmp);
                let at = nearest_rank(seconds.len() as u64, 50) as usize;
                (stage, seconds[at])
            })
            .collect();
        History { p50_s, runs: count }
    }
}

impl Run {
    /// The remaining time of a RUNNING run in a known stage: the pipeline's `eta_s` when it
    /// sent one; else from the iteration rate (elapsed per iteration × iterations left),
    /// else the stage's p50 less its elapsed time; plus the p50 of each later stage.
    /// `None` when nothing is known to go by.
    pub fn eta(&self, history: &History, now: Timestamp) -> Option<Eta> {
        if self.status.is_terminal() {
            return None;
        }
        let current = self.current_stage.as_ref()?;
        let stage = current.name.as_str();
        let elapsed = self
            .stage_timing
            .get(stage)
            .and_then(|timing| timing.started_at)
            .map_or(0.0, |started_at| now.seconds_since(started_at).max(0.0));
        let (stage_s, estimated) = match current.eta_seconds {
            Some(eta) => (eta.max(0.0), false),
            None if current.max_iterations > 0 && current.iteration > 0 && elapsed > 0.0 => {
                let left = current.max_iterations.saturating_sub(current.iteration) as f64;
                (elapsed / current.iteration as f64 * left, true)
            }
            None => ((history.p50_s.get(stage)? - elapsed).max(0.0), true),
        };
        let later: f64 = Stage::ALL
            .iter()
            .skip_while(|later| **later != current.name)
            .skip(1)
            .filter(|later| self.stage_timing.get(later.as_str()).is_none_or(|timing| timing.completed_at.is_none()))
            .filter_map(|later| history.p50_s.get(later.as_str()))
            .sum();
        Some(Eta { stage_s, run_s: stage_s + later, estimated: estimated || later > 0.0 })
    }
}

/// The 0-based position of the nearest-rank `percentile` among `count` sorted values
/// (`count` > 0): the smallest value with at least `percentile`% of values at or below it.
/// One definition for the ETA's p50 and the stats' percentiles.
pub fn nearest_rank(count: u64, percentile: u64) -> u64 {
    (count * percentile).div_ceil(100).clamp(1, count) - 1
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::run::{CurrentStage, NewRun, RunStatus, StageTiming};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(seconds * 1000)
    }

    fn completed(durations: &[(&str, f64)]) -> Run {
        let mut run = Run::queued(NewRun::new(Value::Null), at(0));
        run.status = RunStatus::Completed;
        for (stage, duration_s) in durations {
            let timing = StageTiming { completed_at: Some(at(1)), duration_s: Some(*duration_s), ..Default::default() };
            run.stage_timing.insert((*stage).into(), timing);
        }
        run
    }

    fn running(stage: Stage, started: i64) -> Run {
        let mut run = Run::queued(NewRun::new(Value::Null), at(0));
        run.status = RunStatus::Running;
        run.current_stage = Some(CurrentStage::new(stage));
        run.stage_timing
            .insert(stage.as_str().into(), StageTiming { started_at: Some(at(started)), ..Default::default() });
        run
    }

    #[test]
    fn the_history_is_the_p50_of_completed_runs_only() {
        let mut failed = completed(&[("Stage_1", 1000.0)]);
        failed.status = RunStatus::Failed;
        let runs = [
            completed(&[("Stage_1", 10.0)]),
            completed(&[("Stage_1", 30.0), ("Stage_2", 5.0)]),
            completed(&[("Stage_1", 20.0)]),
            failed,
        ];
        let history = History::from_runs(&runs);
        assert_eq!(history.runs, 3);
        assert_eq!(history.p50_s, BTreeMap::from([("Stage_1".into(), 20.0), ("Stage_2".into(), 5.0)]));
    }

    #[test]
    fn the_eta_is_what_is_left_of_the_stage_and_the_later_stages() {
        let history = History::from_runs(&[completed(&[("Stage_1", 100.0), ("Stage_2", 50.0), ("Stage_4", 7.0)])]);
        let run = running(Stage::Stage1, 0);
        assert_eq!(run.eta(&history, at(40)), Some(Eta { stage_s: 60.0, run_s: 117.0, estimated: true }));
        // Past its p50, a stage is estimated as ending now.
        assert_eq!(run.eta(&history, at(400)).map(|eta| eta.stage_s), Some(0.0));
        let mut iterating = running(Stage::Stage2, 0);
        if let Some(current) = iterating.current_stage.as_mut() {
            (current.iteration, current.max_iterations) = (4, 10);
        }
        assert_eq!(iterating.eta(&history, at(20)), Some(Eta { stage_s: 30.0, run_s: 37.0, estimated: true }));
        let mut told = running(Stage::Stage4, 0);
        if let Some(current) = told.current_stage.as_mut() {
            current.eta_seconds = Some(12.0);
        }
        assert_eq!(told.eta(&history, at(1)), Some(Eta { stage_s: 12.0, run_s: 12.0, estimated: false }));
        assert_eq!(running(Stage::Paper, 0).eta(&history, at(1)), None, "no history, no iterations: unknown");
    }
}
