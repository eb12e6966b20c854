//! The reducer: a pure function from (run, event) to the run's new state: the "effect on
//! the run" column of `docs/events.md`.
//!
//! Events arrive late, twice and out of order, so every rule here is a merge that gives the
//! same result in any order and when repeated: counters and progress take the maximum,
//! first-seen facts the minimum, and "latest" values are chosen by the event's
//! `(time, id, source)` key stored beside them. The one deliberate exception is the terminal
//! status: the first terminal event applied wins and no later event moves the run out of it.
//! Fencing (which events may reach a run at all) lives in `queue::fence`, creation and
//! storage in `store`.

use crate::event::Event;
use crate::event::failure::UNNAMED_CODE;
use crate::event::payload::{self, NodeData, NodeStep, Payload};
use crate::run::{
    Cancellation, CurrentStage, DetailsFrom, EventKey, MetricPoint, Node, NodeState, Paper, Pod, ResourceSample,
    Review, Run, RunError, RunStatus, Stage, StageTiming, Validation, cost,
};
use crate::time::Timestamp;

/// Applies `event` to `run`. Pure: no I/O, no clock; `updatedAt` is the store's business.
pub fn apply(run: &mut Run, event: &Event) {
    let key = event.key();
    if let Some(seq) = event.seq {
        run.last_event_seq = run.last_event_seq.max(seq);
    }
    match &event.payload {
        Payload::Started(started) => on_started(run, started, event, key),
        Payload::Heartbeat(_) => on_heartbeat(run, event, key),
        Payload::StageStarted(started) => {
            let timing = stage_timing(run, started.stage);
            timing.started_at = min_time(timing.started_at, key.time);
            timing.stall_after_s = started.stall_after_s.or(timing.stall_after_s);
            touch(timing, key.time);
            enter_stage(run, started.stage);
        }
        Payload::StageProgress(progress) => on_progress(run, progress, key),
        Payload::StageMetric(metric) => on_metric(run, metric, key),
        Payload::StageCompleted(completed) => {
            let timing = stage_timing(run, completed.stage);
            timing.completed_at = max_time(timing.completed_at, key.time);
            timing.duration_s = max_f64(timing.duration_s, completed.duration_s);
            touch(timing, key.time);
            enter_stage(run, completed.stage);
            if let Some(current) = run.current_stage.as_mut().filter(|c| c.name == completed.stage) {
                current.progress = 1.0;
            }
        }
        Payload::Node(step, data) => on_node(run, *step, data, key),
        // The paper's key is final only once it is generated; `started` records the start.
        Payload::PaperStarted(_) => {
            let paper = run.paper.get_or_insert_with(Paper::default);
            paper.started_at = min_time(paper.started_at, key.time);
        }
        Payload::PaperGenerated(generated) => {
            let paper = run.paper.get_or_insert_with(Paper::default);
            paper.generated_at = max_time(paper.generated_at, key.time);
            if later(&mut paper.generated_by, &key) {
                paper.artifact_key = Some(generated.artifact_key.clone());
            }
        }
        Payload::ValidationStarted(started) => {
            let validation = run.validation.get_or_insert_with(Validation::default);
            validation.started_at = min_time(validation.started_at, key.time);
            if later(&mut validation.started_by, &key) {
                validation.model.clone_from(&started.model);
            }
        }
        Payload::ValidationCompleted(completed) => {
            let validation = run.validation.get_or_insert_with(Validation::default);
            validation.completed_at = max_time(validation.completed_at, key.time);
            if later(&mut validation.completed_by, &key) {
                validation.verdict.clone_from(&completed.verdict);
                validation.scores.clone_from(&completed.scores);
                validation.review.clone_from(&completed.review);
            }
        }
        Payload::Completed(completed) => {
            if advance(run, RunStatus::Completed) || run.status == RunStatus::Completed {
                run.completed_at = max_time(run.completed_at, key.time);
                run.duration_s = max_f64(run.duration_s, completed.duration_s);
            }
        }
        Payload::Failed(failed) => on_failed(run, failed, key),
        // Counted once whatever the status: money spent is spent (`run::cost`).
        Payload::LlmUsage(usage) => {
            let tokens = cost::Tokens {
                input: usage.input_tokens.unwrap_or(0),
                output: usage.output_tokens.unwrap_or(0),
                cached: usage.cached_tokens.unwrap_or(0),
            };
            run.cost.count_usage(cost::Usage { model: &usage.model, tokens, cost_usd: usage.cost_usd }, &key);
        }
        Payload::ReviewRequested(requested) => on_review_requested(run, requested, key),
        Payload::Canceled(canceled) => {
            if advance(run, RunStatus::Canceled) || run.status == RunStatus::Canceled {
                let replace = run.canceled.as_ref().is_none_or(|existing| key.time < existing.at);
                if replace {
                    run.canceled =
                        Some(Cancellation { by: canceled.by.clone(), reason: canceled.reason.clone(), at: key.time });
                }
            }
        }
        // Creation is the store's (it needs to know whether the run exists); logs, artifacts
        // and ideation live in their own collections; unknown types change nothing.
        Payload::Enqueued(_)
        | Payload::Log(_)
        | Payload::ArtifactDetected(_)
        | Payload::ArtifactRegistered(_)
        | Payload::ArtifactFailed(_)
        | Payload::IdeationGenerated(_)
        | Payload::Unknown => {}
    }
}

/// Moves the status up (never down, never out of a terminal state). True when it moved.
fn advance(run: &mut Run, to: RunStatus) -> bool {
    if run.status.is_terminal() || to.rank() <= run.status.rank() {
        return false;
    }
    run.status = to;
    true
}

fn on_started(run: &mut Run, started: &payload::Started, event: &Event, key: EventKey) {
    advance(run, RunStatus::Running);
    run.started_at = min_time(run.started_at, key.time);
    if run.pod.as_ref().is_none_or(|pod| key < pod.at) {
        let pod_id = started.pod_id.clone().unwrap_or_else(|| pod_id_from_source(&event.source));
        run.pod = Some(Pod {
            id: pod_id,
            at: key,
            gpu: started.gpu.clone(),
            gpu_model: started.gpu_model.clone(),
            gpu_count: started.gpu_count,
            region: started.region.clone(),
            image: started.image.clone(),
        });
    }
}

fn pod_id_from_source(source: &str) -> String {
    source.strip_prefix("pod://").unwrap_or(source).to_owned()
}

fn on_heartbeat(run: &mut Run, event: &Event, key: EventKey) {
    run.heartbeat_at = max_time(run.heartbeat_at, key.time);
    if run.resources.as_ref().is_none_or(|latest| key > latest.at) {
        let mut sample = event.data.clone();
        sample.remove("run_id");
        run.resources = Some(ResourceSample { at: key, sample });
    }
}

fn on_progress(run: &mut Run, progress: &payload::StageProgress, key: EventKey) {
    touch(stage_timing(run, progress.stage), key.time);
    enter_stage(run, progress.stage);
    let Some(current) = run.current_stage.as_mut().filter(|c| c.name == progress.stage) else {
        return; // progress of a stage the run has already left
    };
    current.progress = current.progress.max(progress.progress.unwrap_or(0.0));
    let counters = [
        (&mut current.iteration, progress.iteration),
        (&mut current.max_iterations, progress.max_iterations),
        (&mut current.good_nodes, progress.good_nodes),
        (&mut current.buggy_nodes, progress.buggy_nodes),
        (&mut current.total_nodes, progress.total_nodes),
    ];
    for (counter, reported) in counters {
        *counter = (*counter).max(reported.unwrap_or(0));
    }
    if later(&mut current.latest, &key) {
        current.best_metric.clone_from(&progress.best_metric);
        current.eta_seconds = progress.eta_s;
    }
}

fn on_metric(run: &mut Run, metric: &payload::StageMetric, key: EventKey) {
    if let Some(stage) = metric.stage {
        touch(stage_timing(run, stage), key.time);
    }
    let point =
        MetricPoint { name: metric.name.clone(), value: metric.value, step: metric.step, stage: metric.stage, at: key };
    let order = |p: &MetricPoint| (p.step.unwrap_or(0), p.at.clone());
    match run.metrics.binary_search_by(|existing| existing.name.cmp(&point.name)) {
        Ok(index) if order(&point) > order(&run.metrics[index]) => run.metrics[index] = point,
        Ok(_) => {}
        Err(index) => run.metrics.insert(index, point),
    }
}

fn on_node(run: &mut Run, step: NodeStep, data: &NodeData, key: EventKey) {
    let state = match step {
        NodeStep::Created | NodeStep::SelectedBest => NodeState::Created,
        NodeStep::CodeGenerated => NodeState::CodeGenerated,
        NodeStep::Executing => NodeState::Executing,
        NodeStep::Completed => NodeState::Completed,
    };
    let index = match run.nodes.binary_search_by(|node| node.id.cmp(&data.node_id)) {
        Ok(index) => index,
        Err(index) => {
            let node = Node {
                id: data.node_id.clone(),
                stage: None,
                parent_id: None,
                state,
                is_buggy: None,
                metric: None,
                summary: None,
                selected_best: false,
                created_at: key.time,
                details_from: None,
            };
            run.nodes.insert(index, node);
            index
        }
    };
    let node = &mut run.nodes[index];
    node.state = node.state.max(state);
    node.created_at = node.created_at.min(key.time);
    node.selected_best |= step == NodeStep::SelectedBest;
    // Stage and parent are fixed for a node; min keeps a conflicting report deterministic.
    node.stage = min_option(node.stage, data.stage);
    node.parent_id = min_option(node.parent_id.take(), data.parent_id.clone());
    let carries_details = data.is_buggy.is_some() || data.metric.is_some() || data.summary.is_some();
    let from = DetailsFrom { state, at: key };
    if step != NodeStep::SelectedBest && carries_details && node.details_from.as_ref().is_none_or(|d| from > *d) {
        node.details_from = Some(from);
        node.is_buggy = data.is_buggy;
        node.metric = data.metric.clone();
        node.summary.clone_from(&data.summary);
    }
}

fn on_failed(run: &mut Run, failed: &payload::Failed, key: EventKey) {
    if !(advance(run, RunStatus::Failed) || run.status == RunStatus::Failed) {
        return;
    }
    if run.error.as_ref().is_some_and(|existing| existing.at <= key) {
        return; // the earliest failure is the cause; later ones are its echoes
    }
    let error = RunError {
        error_type: failed.code.clone().unwrap_or_else(|| UNNAMED_CODE.into()),
        message: failed.message.clone().unwrap_or_default(),
        traceback: failed.traceback.clone(),
        stage: failed.stage.clone(),
        retryable: failed.retryable.unwrap_or(false),
        failed_at: key.time,
        at: key,
    };
    run.error_type = Some(error.error_type.clone());
    run.error_message = Some(error.message.clone());
    run.failed_at = Some(error.failed_at);
    run.error = Some(error);
}

/// The latest request is the run's review (replacing a decided one: a later stage asks again)
/// and puts the run in AWAITING_HUMAN; an older or repeated one changes nothing. The status
/// moves up only, so a request never reopens an ended run (it is kept on the document, so
/// that any order of events gives the same one); the way back to RUNNING is an approval's
/// (`queue::review`), never an event's.
fn on_review_requested(run: &mut Run, requested: &payload::ReviewRequested, key: EventKey) {
    if run.review.as_ref().is_some_and(|review| review.at >= key) {
        return;
    }
    advance(run, RunStatus::AwaitingHuman);
    run.review = Some(Review {
        requested_at: key.time,
        reason: Some(requested.reason.clone()),
        stage: requested.stage.map(|stage| stage.as_str().to_owned()),
        options: requested.options.clone(),
        holds_worker: requested.holds_worker.unwrap_or(false),
        decision: None,
        decided_by: None,
        decided_at: None,
        comment: None,
        at: key,
    });
}

/// Makes `stage` current when it is further along than the current one.
fn enter_stage(run: &mut Run, stage: Stage) {
    if run.current_stage.as_ref().is_none_or(|current| current.name < stage) {
        run.current_stage = Some(CurrentStage::new(stage));
    }
}

fn stage_timing(run: &mut Run, stage: Stage) -> &mut StageTiming {
    run.stage_timing.entry(stage.as_str().to_owned()).or_default()
}

/// Records activity in a stage and re-derives `elapsed_s` from order-independent inputs.
fn touch(timing: &mut StageTiming, at: Timestamp) {
    timing.last_activity_at = max_time(timing.last_activity_at, at);
    let end = timing.completed_at.into_iter().chain(timing.last_activity_at).max();
    timing.elapsed_s = match (timing.started_at, end) {
        (Some(start), Some(end)) => Some(end.seconds_since(start).max(0.0)),
        _ => None,
    };
}

/// Stores `key` and returns true when it is later than the stored one.
fn later(slot: &mut Option<EventKey>, key: &EventKey) -> bool {
    if slot.as_ref().is_some_and(|existing| existing >= key) {
        return false;
    }
    *slot = Some(key.clone());
    true
}

fn min_time(current: Option<Timestamp>, new: Timestamp) -> Option<Timestamp> {
    Some(current.map_or(new, |current| current.min(new)))
}

fn max_time(current: Option<Timestamp>, new: Timestamp) -> Option<Timestamp> {
    Some(current.map_or(new, |current| current.max(new)))
}

fn max_f64(current: Option<f64>, new: Option<f64>) -> Option<f64> {
    match (current, new) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_option<T: Ord>(current: Option<T>, new: Option<T>) -> Option<T> {
    match (current, new) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
