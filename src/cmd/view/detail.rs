//! `runs show`: one run in sections (summary, stages with their bars, the error, artifacts,
//! recent logs), drawn with the [`Look`] of the rest of the views.

use super::{Ansi, Look, bytes, duration, log_line, moment, percent, remaining, render, scalar, status_ansi};
use crate::run::{Eta, Run, RunStatus, Stage};
use crate::store::{Artifact, StoredEvent};
use crate::time::Timestamp;

/// `runs show`: everything about one run, in sections.
pub(crate) fn run_detail(
    run: &Run,
    artifacts: &[Artifact],
    logs: &[StoredEvent],
    eta: Option<Eta>,
    now: Timestamp,
    look: Look,
) -> String {
    let mut sections = vec![summary(run, now, look)];
    if !run.stage_timing.is_empty() || run.current_stage.is_some() {
        sections.push(stages(run, eta, look));
    }
    if let Some(review) = review_panel(run, now, look) {
        sections.push(review);
    }
    if let Some(error) = error_panel(run, look) {
        sections.push(error);
    }
    if let Some(cost) = super::cost::cost_panel(run, look) {
        sections.push(cost);
    }
    if !run.attempts.is_empty() {
        sections.push(attempts_table(run, now, look));
    }
    if !artifacts.is_empty() {
        sections.push(artifacts_table(run, artifacts, look));
    }
    if !logs.is_empty() {
        let lines: Vec<String> = logs.iter().filter_map(|stored| log_line(stored, look)).collect();
        sections.push(format!("{}\n{}", look.title(&format!("Recent logs (last {})", lines.len())), lines.join("\n")));
    }
    sections.join("\n\n")
}

fn summary(run: &Run, now: Timestamp, look: Look) -> String {
    let heading = format!(
        "{} {}",
        look.title(&format!("Run {}", run.id)),
        look.paint(run.status.as_str(), status_ansi(run.status))
    );
    let mut table = look.bare_table();
    // Every value here may hold text from events: escaped as one line.
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_owned(), look.line(&value).into_owned()]);
    };
    row("queue", format!("{} (priority {})", run.queue, run.priority));
    let mut attempt = format!("{} (retries {})", run.attempt, run.retry_count);
    if let Some(worker) = &run.claimed_by {
        attempt.push_str(&format!(", claimed by {worker}"));
    }
    row("attempt", attempt);
    if let Some(hypothesis) = &run.hypothesis_id {
        row("hypothesis", hypothesis.clone());
    }
    if let Some(pod) = &run.pod {
        let facts: Vec<&str> = [Some(pod.id.as_str()), pod.gpu.as_deref(), pod.region.as_deref(), pod.image.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        row("pod", facts.join(" · "));
    }
    row("created", moment(run.created_at, now));
    if let Some(started_at) = run.started_at {
        row("started", moment(started_at, now));
    }
    if let Some(finished_at) = run.finished_at() {
        row("finished", moment(finished_at, now));
    }
    if let Some(elapsed) = run.elapsed_s(now) {
        row("duration", duration(elapsed));
    }
    if let Some(heartbeat_at) = run.heartbeat_at {
        row("heartbeat", moment(heartbeat_at, now));
    }
    if let Some(silent_since) = run.silent_since.filter(|_| !run.status.is_terminal()) {
        let heard =
            run.last_seen_at().map_or(String::new(), |heard_at| format!(", last heard {}", moment(heard_at, now)));
        row(
            "silent",
            format!(
                "flagged {}{heard}: its worker is not heard from; it fails WORKER_LOST (or is requeued) when the lease runs out",
                moment(silent_since, now)
            ),
        );
    }
    if let Some(stalled_since) = run.stalled_since.filter(|_| !run.status.is_terminal()) {
        let progress = run.progress_at.map_or(String::new(), |at| format!(", last progress {}", moment(at, now)));
        row(
            "stalled",
            format!(
                "flagged {}{progress}: its worker is heard but the run shows no progress (--stall-after)",
                moment(stalled_since, now)
            ),
        );
    }
    if let Some(not_before) = run.not_before.filter(|_| run.status == crate::run::RunStatus::Queued) {
        row("retry", format!("queued again; claimable from {} (backoff)", moment(not_before, now)));
    }
    if let Some(stopped) = &run.retry_stopped {
        row("retries", format!("stopped: {stopped}"));
    }
    if let Some(resources) = &run.resources {
        let sample: Vec<String> =
            resources.sample.iter().map(|(name, value)| format!("{name}={}", scalar(value))).collect();
        row("resources", sample.join(" "));
    }
    if let Some(current) = &run.current_stage {
        if let Some(best) = &current.best_metric {
            row("best metric", best.clone());
        }
        if current.total_nodes + current.good_nodes + current.buggy_nodes > 0 {
            let (good, buggy, total) = (current.good_nodes, current.buggy_nodes, current.total_nodes);
            row("nodes", format!("{good} good, {buggy} buggy, {total} total"));
        }
    }
    if let Some(request) = &run.cancel_requested.as_ref().filter(|_| !run.status.is_terminal()) {
        row("cancel", format!("requested by {} {}{}", request.by, moment(request.at, now), reason(&request.reason)));
    }
    if let Some(canceled) = &run.canceled {
        let by = canceled.by.as_deref().unwrap_or("unknown");
        row("canceled", format!("by {by} {}{}", moment(canceled.at, now), reason(&canceled.reason)));
    }
    format!("{heading}\n{}", render(&mut table))
}

fn reason(reason: &Option<String>) -> String {
    reason.as_ref().map_or(String::new(), |reason| format!(": {reason}"))
}

/// Width of a stage's progress bar, in characters.
const BAR_WIDTH: usize = 20;

fn stages(run: &Run, eta: Option<Eta>, look: Look) -> String {
    let current = run.current_stage.as_ref();
    let mut names: Vec<String> = run.stage_timing.keys().cloned().collect();
    if let Some(current) = current.filter(|current| !run.stage_timing.contains_key(current.name.as_str())) {
        names.push(current.name.to_string());
    }
    names.sort_by_key(|name| (stage_order(name), name.clone()));
    let mut table = look.table(["STAGE", "", "PROGRESS", "ITERATIONS", "ELAPSED", "DURATION", "ETA"]);
    for name in names {
        let timing = run.stage_timing.get(&name);
        let completed = timing.is_some_and(|timing| timing.completed_at.is_some());
        let live = current.filter(|current| current.name.as_str() == name);
        let progress = if completed { Some(1.0) } else { live.map(|current| current.progress) };
        let description = Stage::try_from(name.clone()).map_or("", |stage| stage.description());
        let elapsed = timing.and_then(|timing| timing.elapsed_s);
        let took = timing.filter(|_| completed).and_then(|timing| timing.duration_s.or(timing.elapsed_s));
        let eta = live.filter(|_| !completed).and(eta).map(|eta| remaining(eta.stage_s, eta.estimated));
        table.add_row(vec![
            look.line(&name).into_owned(),
            description.to_owned(),
            progress.map_or("-".into(), |progress| format!("{} {:>4}", bar(progress), percent(progress))),
            live.filter(|current| current.max_iterations > 0)
                .map_or("-".into(), |current| format!("{}/{}", current.iteration, current.max_iterations)),
            elapsed.map_or("-".into(), duration),
            took.map_or("-".into(), duration),
            eta.unwrap_or_else(|| "-".into()),
        ]);
    }
    format!("{}\n{}", look.title("Stages"), render(&mut table))
}

/// Pipeline order for known stage names; unknown names after them.
fn stage_order(name: &str) -> usize {
    Stage::try_from(name.to_owned()).map_or(Stage::ALL.len(), |stage| stage as usize)
}

fn bar(progress: f64) -> String {
    let filled = ((progress.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("{}{}", "█".repeat(filled), "░".repeat(BAR_WIDTH - filled))
}

/// The last lines of a traceback shown in the error panel.
const TRACEBACK_LINES: usize = 8;

fn error_panel(run: &Run, look: Look) -> Option<String> {
    let error = run.error.as_ref()?;
    let headline = format!("{}: {}", error.error_type, error.message);
    let mut lines = vec![look.title("Error"), look.paint(&look.line(&headline), Ansi::Red)];
    let retry = if error.retryable { "retryable (`scientist runs reset` queues it again)" } else { "not retryable" };
    let stage = error.stage.as_deref().map_or(String::new(), |stage| format!("in {}, ", look.line(stage)));
    lines.push(format!("{stage}{retry}, failed at {}", error.failed_at));
    if let Some(traceback) = &error.traceback {
        let traceback = look.lines(traceback);
        let all: Vec<&str> = traceback.lines().collect();
        let tail = &all[all.len().saturating_sub(TRACEBACK_LINES)..];
        lines.push(format!("traceback (last {} of {} lines):", tail.len(), all.len()));
        lines.extend(tail.iter().map(|line| format!("  {line}")));
    }
    Some(lines.join("\n"))
}

/// Every ended attempt, oldest first: who ran it, when, and how it ended.
fn attempts_table(run: &Run, now: Timestamp, look: Look) -> String {
    let mut table = look.table(["ATTEMPT", "WORKER", "CLAIMED", "ENDED", "OUTCOME", "ERROR"]);
    for attempt in &run.attempts {
        let worker = attempt.pod.as_deref().or(attempt.claimed_by.as_deref()).unwrap_or("-");
        let error = attempt.error.as_ref().map_or("-".to_owned(), |error| {
            let retry = if error.retryable { "retryable" } else { "not retryable" };
            format!("{}: {} ({retry})", error.error_type, error.message)
        });
        table.add_row(vec![
            attempt.attempt.to_string(),
            look.line(worker).into_owned(),
            attempt.claimed_at.map_or("-".into(), |at| moment(at, now)),
            moment(attempt.ended_at, now),
            attempt.outcome.clone(),
            look.line(&error).into_owned(),
        ]);
    }
    format!("{}\n{}", look.title(&format!("Attempts ({})", run.attempts.len())), render(&mut table))
}

/// The review the pipeline asked for: why, of which stage, when, and what was decided (or
/// how to decide it).
fn review_panel(run: &Run, now: Timestamp, look: Look) -> Option<String> {
    let review = run.review.as_ref()?;
    let mut table = look.bare_table();
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_owned(), look.line(&value).into_owned()]);
    };
    if let Some(reason) = &review.reason {
        row("reason", reason.clone());
    }
    let holds = if review.holds_worker { " (its worker waits, holding the run)" } else { " (after the last stage)" };
    row("stage", format!("{}{holds}", review.stage.as_deref().unwrap_or("-")));
    if let Some(options) = &review.options {
        row("options", scalar(options));
    }
    row("requested", moment(review.requested_at, now));
    let decision = match (review.decision, review.decided_at) {
        (Some(decision), Some(at)) => {
            let by = review.decided_by.as_deref().unwrap_or("unknown");
            format!("{} by {by} {}{}", decision.as_str(), moment(at, now), reason(&review.comment))
        }
        _ if run.status == RunStatus::AwaitingHuman => {
            format!("awaited: `scientist runs approve {0}` or `scientist runs reject {0} --reason TEXT`", run.id)
        }
        _ => "none".to_owned(),
    };
    row("decision", decision);
    Some(format!("{}\n{}", look.title("Review"), render(&mut table)))
}

fn artifacts_table(run: &Run, artifacts: &[Artifact], look: Look) -> String {
    let mut table = look.table(["KEY", "KIND", "SIZE", "REGISTERED"]);
    for artifact in artifacts {
        table.add_row(vec![
            look.line(&artifact.key).into_owned(),
            look.line(artifact.kind.as_deref().unwrap_or("-")).into_owned(),
            artifact.bytes.map_or("-".into(), bytes),
            artifact.registered_at.to_string(),
        ]);
    }
    let title = look.title(&format!("Artifacts ({})", artifacts.len()));
    let pull = format!("download: scientist runs pull {} [--kind KIND] [--out DIR]", look.line(run.id.as_str()));
    format!("{title}\n{}\n{pull}", render(&mut table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0.5).chars().filter(|c| *c == '█').count(), 10);
        assert_eq!(bar(2.0).chars().count(), BAR_WIDTH);
    }
}
