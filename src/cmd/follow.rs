//! `--follow`: watches a run until it ends, through a [`Tail`]: by polling a store (its
//! event cursor and the run document), or over `--server` through the live tail.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use super::RunEnded;
use super::view::{Kept, Look, duration, printable, remaining};
use crate::control::{Operator, Tail};
use crate::run::{CurrentStage, Eta, Run, RunId, RunStatus};
use crate::store::{EventFilter, StoredEvent};
use crate::time::Timestamp;

/// Default pause between two looks at the run document (and between two rounds of
/// polling the store for events; over `--server`, events come as they are stored).
pub(crate) const DEFAULT_INTERVAL: &str = "1s";

/// A tail that starts after the newest matching event stored now.
pub(crate) async fn tail_from_latest(
    operator: &dyn Operator,
    run_id: &RunId,
    filter: EventFilter,
) -> anyhow::Result<Box<dyn Tail>> {
    let newest = EventFilter { limit: 1, cursor: None, ..filter.clone() };
    let page = operator.list_recent_events(run_id, &newest).await?;
    let cursor = page.items.first().map(|stored| stored.cursor.clone());
    operator.tail(run_id, EventFilter { cursor, ..filter }).await
}

/// What one round found.
pub(crate) enum Update<'r> {
    Events(Vec<StoredEvent>),
    Run(&'r Run),
}

/// Watches until the run is terminal. `on_update` sees new events as they reach the tail,
/// and the run document every `interval`; after the terminal document comes one last
/// drain of everything stored, so events stored before the run ended are never missed.
/// Returns the final document.
pub(crate) async fn watch(
    tail: &mut dyn Tail,
    interval: Duration,
    mut on_update: impl FnMut(Update<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let mut next_look = tokio::time::Instant::now();
    loop {
        on_update(Update::Events(tail.drain().await?))?;
        if tokio::time::Instant::now() >= next_look {
            let run = tail.run().await?;
            on_update(Update::Run(&run))?;
            if run.status.is_terminal() {
                on_update(Update::Events(tail.drain_all().await?))?;
                return Ok(run);
            }
            next_look = tokio::time::Instant::now() + interval;
        }
        tail.wait(next_look.saturating_duration_since(tokio::time::Instant::now())).await;
    }
}

/// The exit a `--follow` ends with: Ok for COMPLETED, [`RunEnded`] (exit 8 or 9) otherwise.
pub(crate) fn outcome(run: &Run) -> anyhow::Result<()> {
    let detail = match run.status {
        RunStatus::Completed => return Ok(()),
        RunStatus::Failed => run.error.as_ref().map_or(String::new(), |e| format!(": {}: {}", e.error_type, e.message)),
        _ => run.canceled.as_ref().map_or(String::new(), |canceled| {
            let by = canceled.by.as_deref().map_or(String::new(), |by| format!(" by {by}"));
            let reason = canceled.reason.as_deref().map_or(String::new(), |reason| format!(": {reason}"));
            format!("{by}{reason}")
        }),
    };
    Err(RunEnded { id: run.id.clone(), status: run.status, detail }.into())
}

/// One NDJSON line of `runs show --follow --json` (and `runs logs --json`).
pub(crate) fn event_line(stored: &StoredEvent) -> Value {
    json!({
        "kind": "event",
        "cursor": stored.cursor,
        "receivedAt": stored.received_at,
        "event": Value::Object(stored.event.to_json()),
    })
}

pub(crate) fn run_line(run: &Run) -> anyhow::Result<Value> {
    Ok(json!({ "kind": "run", "run": serde_json::to_value(run)? }))
}

/// The live part of `runs show --follow` on stderr: a status line and one bar per stage.
/// indicatif draws nothing when stderr is not a terminal, nor with `LOG_FORMAT=json` (every
/// stderr line is JSON then); log lines still reach stdout.
pub(crate) struct LiveView {
    multi: MultiProgress,
    header: ProgressBar,
    stages: BTreeMap<String, ProgressBar>,
}

impl LiveView {
    pub fn new() -> Self {
        let json = crate::logging::Format::from_env() == crate::logging::Format::Json;
        let multi = MultiProgress::with_draw_target(if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        header.enable_steady_tick(Duration::from_millis(120));
        crate::logging::draw_around(Some(multi.clone()));
        Self { multi, header, stages: BTreeMap::new() }
    }

    /// Prints `line`, drawn with `look`, on stdout above the bars.
    pub fn println(&self, line: &str, look: Look) -> anyhow::Result<()> {
        self.multi.suspend(|| super::print_as(look, line))?;
        Ok(())
    }

    /// Redraws the header and the stage bars for `run`, with its remaining time `eta`
    /// (`~` when estimated).
    pub fn update(&mut self, run: &Run, eta: Option<Eta>, now: Timestamp) {
        let heartbeat = run
            .heartbeat_at
            .map_or(String::new(), |at| format!(" · heartbeat {} ago", duration(now.seconds_since(at))));
        // The pod id and stage names come from events: escaped like every view's text.
        let pod = run.pod.as_ref().map_or(String::new(), |pod| format!(" · {}", printable(&pod.id, Kept::Tabs)));
        let elapsed = run.elapsed_s(now).map_or(String::new(), |elapsed| format!(" · {}", duration(elapsed)));
        let left = eta.map_or(String::new(), |eta| format!(" · ETA {}", remaining(eta.run_s, eta.estimated)));
        self.header.set_message(format!("{} {}{pod}{elapsed}{left}{heartbeat}", run.id, run.status));
        let Some(current) = &run.current_stage else { return };
        for (name, timing) in &run.stage_timing {
            if timing.completed_at.is_some() {
                self.stage_bar(name).finish_with_message("done");
            }
        }
        let bar = self.stage_bar(current.name.as_str());
        if !bar.is_finished() {
            bar.set_position((current.progress.clamp(0.0, 1.0) * 1000.0) as u64);
            bar.set_message(stage_message(current, eta));
        }
    }

    fn stage_bar(&mut self, name: &str) -> ProgressBar {
        let multi = &self.multi;
        self.stages
            .entry(name.to_owned())
            .or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(1000));
                let style = ProgressStyle::with_template("  {prefix:8} [{bar:30}] {percent:>3}% {msg}")
                    .map(|style| style.progress_chars("█▉░"))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(printable(name, Kept::Tabs).into_owned());
                bar
            })
            .clone()
    }

    /// Removes the bars; what was printed on stdout stays.
    pub fn finish(self) {
        self.header.finish_and_clear();
        for bar in self.stages.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// What the current stage's bar says beside it: iterations, the tree search's nodes and best
/// metric when the pipeline reports them, and the stage's ETA.
fn stage_message(current: &CurrentStage, eta: Option<Eta>) -> String {
    let nodes = match (current.total_nodes, current.good_nodes, current.buggy_nodes) {
        (0, 0, 0) => String::new(),
        (total, good, buggy) => format!(" · nodes {good} good, {buggy} buggy of {total}"),
    };
    // The metric's text comes from an event: escaped like every view's text.
    let best =
        current.best_metric.as_ref().map_or(String::new(), |best| format!(" · best {}", printable(best, Kept::Tabs)));
    let eta = eta.map_or(String::new(), |eta| format!(" · ETA {}", remaining(eta.stage_s, eta.estimated)));
    format!("iteration {}/{}{nodes}{best}{eta}", current.iteration, current.max_iterations)
}

impl Drop for LiveView {
    /// Log lines go straight to stderr again, however the follow ended.
    fn drop(&mut self) {
        crate::logging::draw_around(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Stage;

    #[test]
    fn a_stage_bar_shows_nodes_and_the_best_metric_once_reported() {
        let mut current = CurrentStage::new(Stage::Stage2);
        (current.iteration, current.max_iterations) = (3, 5);
        assert_eq!(stage_message(&current, None), "iteration 3/5");

        (current.good_nodes, current.buggy_nodes, current.total_nodes) = (2, 1, 3);
        current.best_metric = Some("val_loss=0.25\u{1b}[2J".into());
        let eta = Eta { stage_s: 4.0, run_s: 20.0, estimated: true };
        assert_eq!(
            stage_message(&current, Some(eta)),
            "iteration 3/5 · nodes 2 good, 1 buggy of 3 · best val_loss=0.25\\u001b[2J · ETA ~4s"
        );
    }
}
