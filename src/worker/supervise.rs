//! One claimed run, start to end: the run directory, `ai.run.started`, each step of the
//! pipeline as a supervised child (stage events around it, output relayed, timeout), the
//! claim watched for an operator's cancel or a lost claim, the reviews a step asks for
//! (`review`), and the one terminal event, or the request that leaves the run to a person.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Map;

use super::child::{self, Child, Launch, Stopped};
use super::outcome::{self, Ending, Failure, Tail};
use super::pipeline::Step;
use super::relay::{Relayed, relay};
use super::review::{self, AfterStep};
use super::{Context, Directive, heartbeat, rundir};
use crate::capture::queue;
use crate::emit::{Draft, Reported, RunStream, TraceStamp};
use crate::event::FailureCode;
use crate::event::payload::{Canceled, Completed, Failed, ReviewRequested, StageCompleted, StageStarted};
use crate::monitor::Monitor;
use crate::run::{ReviewDecision, Run, RunId, RunStatus};
use crate::sync::lock;

/// After a stage's processes are gone, its output pipes close; a process that escaped the
/// group may hold them open, so the relays get this long to finish.
const RELAY_DRAIN: Duration = Duration::from_secs(5);

/// Variables of the worker's environment the child does not inherit: the worker's
/// credentials. (`SCIENTIST_TOKEN` is replaced by the local endpoint's token.)
pub(super) const ENV_REMOVED: &[&str] =
    &["SCIENTIST_TOKEN_FILE", "MONGODB_URL", "SCIENTIST_SERVER", "SCIENTIST_ALERT_WEBHOOKS", "SCIENTIST_ALERT_SECRET"];

/// Why a run stops before its pipeline ends.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// An operator asked (`scientist runs cancel`).
    Canceled { by: String, reason: Option<String> },
    /// The claim is no longer this worker's (reset, reclaimed, or finished elsewhere).
    ClaimLost(RunStatus),
    /// The worker was told to stop (SIGTERM/SIGINT).
    Shutdown,
    /// The review the worker waited on was rejected or timed out; its record fails the run.
    ReviewEnded { decision: ReviewDecision, by: Option<String> },
    /// No claim check succeeded for the whole lease: the control plane has presumed the run
    /// lost (and may retry it on another pod), so the child is stopped rather than run twice.
    Unreachable(Duration),
}

/// How a run ended, for the worker's summary and the tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Completed,
    Failed(Failure),
    Stopped(StopReason),
    /// The last step asked for a review: the run is AWAITING_HUMAN and the worker moves on.
    AwaitingReview,
}

/// How one step ended.
enum StepEnd {
    Done,
    Failed(Failure),
    Stopped(StopReason),
}

/// Runs `run` to its end and reports it.
pub(super) async fn supervise(context: &Context<'_>, run: Run) -> Verdict {
    let run_id = run.id.clone();
    let started = Instant::now();
    let stream = match context.stream.begin(&run_id, run.attempt, run.last_event_seq).await {
        // Every event of the attempt is in its span, but those that name their own.
        Ok(stream) => {
            stream.traced(TraceStamp { traceparent: run.traceparent(None), tracestate: run.trace_state.clone() })
        }
        Err(err) => {
            tracing::error!(run = %run_id, error = %err, "cannot report the run");
            return Verdict::Stopped(StopReason::Shutdown);
        }
    };
    crate::notice!(run = %run_id, attempt = run.attempt, "scientist work: running {run_id} (attempt {})", run.attempt);
    queue(&stream, Draft::of(&context.facts.started(context.config.pod.as_str()))).await;
    let verdict = match rundir::prepare(&context.config.runs_dir, &run) {
        Ok(dir) => Supervised { context, run: &run, stream: &stream, dir: &dir, started }.run_pipeline().await,
        Err(err) => {
            let message =
                format!("cannot prepare the run directory under {}: {err}", context.config.runs_dir.display());
            let verdict = Verdict::Failed(Failure { code: FailureCode::WorkerError, message, traceback: None });
            report_failure(&stream, &verdict, None, &Arc::default()).await;
            verdict
        }
    };
    crate::notice!(
        run = %run_id,
        "scientist work: run {run_id} {} after {:.1} s",
        verdict.describe(),
        started.elapsed().as_secs_f64()
    );
    verdict
}

impl Verdict {
    /// How the run ended, in the worker's words.
    fn describe(&self) -> String {
        match self {
            Verdict::Completed => "completed".to_owned(),
            Verdict::Failed(failure) => format!("failed ({}: {})", failure.code, failure.message),
            Verdict::Stopped(StopReason::Canceled { by, .. }) => format!("canceled by {by}"),
            Verdict::Stopped(StopReason::ClaimLost(status)) => format!("stopped: the claim was lost (run is {status})"),
            Verdict::Stopped(StopReason::Shutdown) => "stopped: the worker is shutting down".to_owned(),
            Verdict::Stopped(StopReason::ReviewEnded { decision, by }) => {
                format!("stopped: its review was {} by {}", decision.as_str(), by.as_deref().unwrap_or("(unknown)"))
            }
            Verdict::AwaitingReview => "awaits a review (AWAITING_HUMAN); the worker moves on".to_owned(),
            Verdict::Stopped(StopReason::Unreachable(lease)) => format!(
                "stopped: the control plane was unreachable for the whole lease ({}); the run is presumed lost there",
                humantime::format_duration(*lease)
            ),
        }
    }
}

/// One run whose directory is ready.
struct Supervised<'a> {
    context: &'a Context<'a>,
    run: &'a Run,
    stream: &'a RunStream,
    dir: &'a Path,
    started: Instant,
}

impl Supervised<'_> {
    /// The pipeline's steps with heartbeats, the monitor and the claim watched around them;
    /// then the monitor's last uploads and the run's terminal event (unless the child sent
    /// its own).
    async fn run_pipeline(&self) -> Verdict {
        let context = self.context;
        let reported = context.endpoint.attach(self.stream.clone());
        let group = Arc::new(AtomicI32::new(0));
        let beats = tokio::spawn(heartbeat::beat(
            self.stream.clone(),
            context.config.heartbeat,
            context.facts.clone(),
            group.clone(),
        ));
        let monitor =
            Monitor::start(context.config.monitor.clone(), self.run.id.clone(), self.dir.into(), self.stream.clone());
        let ended = self.run_steps(&group, &reported).await;
        let verdict = ended.verdict;
        // The last artifacts and log lines go before the terminal event; heartbeats go on
        // meanwhile, since a long final upload is not a lost worker.
        self.finish_monitor(monitor, &verdict).await;
        // Awaited: a heartbeat being sent on another thread must be in the stream before
        // the terminal event, never after it.
        beats.abort();
        let _ = beats.await;
        context.endpoint.detach();
        if let Some(request) = ended.review {
            // After the last uploads, as a terminal event would be: the reviewer sees it all.
            queue(self.stream, Draft::of(&request)).await;
        } else if verdict != Verdict::Completed {
            report_failure(self.stream, &verdict, ended.stage, &reported).await;
        } else if lock(&reported).terminal.is_none() {
            let completed = Completed { duration_s: Some(self.started.elapsed().as_secs_f64()), extra: Map::new() };
            queue(self.stream, Draft::of(&completed)).await;
        }
        verdict
    }

    /// Each step in turn until one does not end well, or the last asks for a review.
    async fn run_steps(&self, group: &Arc<AtomicI32>, reported: &Arc<Mutex<Reported>>) -> StepsEnded {
        let watcher = watch_claim(self.context, &self.run.id, self.run.attempt);
        tokio::pin!(watcher);
        let steps = Steps { context: self.context, stream: self.stream, dir: self.dir, run: self.run, group };
        let pipeline = &self.context.config.pipeline.steps;
        for (index, step) in pipeline.iter().enumerate() {
            let holds = index + 1 < pipeline.len();
            {
                let mut reported = lock(reported);
                (reported.review_holds, reported.step_stage) = (holds, step.stage);
            }
            let verdict = match steps.run(step, &mut watcher).await {
                StepEnd::Done => {
                    match review::after_step(self.context, self.run, self.stream, step, holds, reported, &mut watcher)
                        .await
                    {
                        Ok(AfterStep::GoOn) => continue,
                        Ok(AfterStep::AwaitsReview(review)) => {
                            return StepsEnded { verdict: Verdict::AwaitingReview, stage: None, review };
                        }
                        Err(reason) => Verdict::Stopped(reason),
                    }
                }
                StepEnd::Failed(failure) => Verdict::Failed(failure),
                StepEnd::Stopped(reason) => Verdict::Stopped(reason),
            };
            let stage = step.stage.map(|stage| stage.as_str().to_owned()).or_else(|| lock(reported).stage.clone());
            return StepsEnded { verdict, stage, review: None };
        }
        StepsEnded { verdict: Verdict::Completed, stage: None, review: None }
    }

    /// Waits for the monitor's last uploads as long as the run's end allows.
    async fn finish_monitor(&self, monitor: Monitor, verdict: &Verdict) {
        let config = self.context.config;
        let within = match *self.context.control.borrow() {
            _ if matches!(verdict, Verdict::Stopped(StopReason::ClaimLost(_) | StopReason::Unreachable(_))) => {
                Duration::ZERO
            }
            Directive::StopNow => Duration::ZERO,
            Directive::Stop => config.artifact_wait.min(config.grace),
            Directive::Work | Directive::Drain => config.artifact_wait,
        };
        let report = monitor.finish(within).await;
        if report.unfinished > 0 {
            crate::notice!(
                warn,
                run = %self.run.id,
                "scientist work: {} artifact upload(s) of run {} did not finish within {}",
                report.unfinished,
                self.run.id,
                humantime::format_duration(within)
            );
        }
    }
}

/// How the steps ended: the verdict, the stage it came in, and the review request that is
/// still to be sent (after the last step; the child's own went through the endpoint).
struct StepsEnded {
    verdict: Verdict,
    stage: Option<String>,
    review: Option<ReviewRequested>,
}

/// The terminal event of a run that did not complete, unless the child already sent one
/// (its own code, e.g. ALL_NODES_BUGGY, wins) or the claim is no longer ours.
async fn report_failure(stream: &RunStream, verdict: &Verdict, stage: Option<String>, reported: &Arc<Mutex<Reported>>) {
    if lock(reported).terminal.is_some() {
        return;
    }
    let draft = match verdict {
        // A review's end is recorded by the store (`queue::review`), as a lost claim is elsewhere.
        Verdict::Completed
        | Verdict::AwaitingReview
        | Verdict::Stopped(StopReason::ClaimLost(_) | StopReason::ReviewEnded { .. } | StopReason::Unreachable(_)) => {
            return;
        }
        Verdict::Failed(failure) => failed_event(failure, stage),
        // The store asks a run over its budget to stop; the stop is its failure (`queue::budget`).
        Verdict::Stopped(StopReason::Canceled { by, reason }) if by == crate::queue::budget::BUDGET_BY => {
            let message = reason.clone().unwrap_or_else(|| "the run spent its budget".into());
            Draft::of(&Failed { stage, ..Failed::of(FailureCode::BudgetExceeded, message) })
        }
        Verdict::Stopped(StopReason::Canceled { by, reason }) => {
            Draft::of(&Canceled { by: Some(by.clone()), reason: reason.clone(), extra: Map::new() })
        }
        Verdict::Stopped(StopReason::Shutdown) => {
            let failure = Failure {
                code: FailureCode::WorkerShutdown,
                message: "the worker was stopped (SIGTERM or SIGINT) while the run was going; it can be retried".into(),
                traceback: None,
            };
            failed_event(&failure, stage)
        }
    };
    queue(stream, draft).await;
}

fn failed_event(failure: &Failure, stage: Option<String>) -> Draft {
    Draft::of(&Failed {
        stage,
        traceback: failure.traceback.clone(),
        ..Failed::of(failure.code, failure.message.clone())
    })
}

/// One step's child, from spawn to the last line of its output.
struct Steps<'a> {
    context: &'a Context<'a>,
    stream: &'a RunStream,
    dir: &'a Path,
    run: &'a Run,
    /// The process group of the running step (0: none), for heartbeats.
    group: &'a Arc<AtomicI32>,
}

/// How a step's child stopped running.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Stopped(StopReason),
}

/// The relays of a step's stdout and stderr, and the tail of output they keep for its verdict.
struct Relays {
    handles: [tokio::task::JoinHandle<Relayed>; 2],
    tail: Arc<Mutex<Tail>>,
}

impl Steps<'_> {
    /// One step: its stage's events around it, its child spawned, waited for (or stopped),
    /// its output relayed to the last line, and its ending judged.
    async fn run(&self, step: &Step, watcher: &mut (impl Future<Output = StopReason> + Unpin)) -> StepEnd {
        let started = Instant::now();
        if let Some(stage) = step.stage {
            let started = StageStarted {
                stage,
                desc: Some(stage.description().into()),
                stall_after_s: step.stall_after.map(|after| after.as_secs_f64()),
                extra: Map::new(),
            };
            let span = self.run.traceparent(Some(stage.as_str()));
            queue(self.stream, self.stream.in_span(Draft::of(&started), &span)).await;
        }
        let (mut child, relays) = match self.spawn(step) {
            Ok(spawned) => spawned,
            Err(failure) => return StepEnd::Failed(failure),
        };
        let ended = self.wait(&mut child, step, watcher).await;
        self.reap(&mut child, &ended).await;
        let tail = drain(relays).await;
        let ending = match ended {
            Ended::Stopped(reason) => return StepEnd::Stopped(reason),
            Ended::TimedOut => Ending::TimedOut(step.timeout.unwrap_or_default()),
            Ended::Exited(Ok(status)) => ending_of(status),
            Ended::Exited(Err(err)) => {
                let message = format!("lost track of the stage's process: {err}");
                return StepEnd::Failed(Failure { code: FailureCode::WorkerError, message, traceback: None });
            }
        };
        if let Some(failure) = outcome::judge(&ending, &tail) {
            return StepEnd::Failed(failure);
        }
        if let Some(stage) = step.stage {
            let completed =
                StageCompleted { stage, duration_s: Some(started.elapsed().as_secs_f64()), extra: Map::new() };
            let span = self.run.traceparent(Some(stage.as_str()));
            queue(self.stream, self.stream.in_span(Draft::of(&completed), &span)).await;
        }
        StepEnd::Done
    }

    /// Starts the step's child in its own process group, its output relayed.
    fn spawn(&self, step: &Step) -> Result<(Child, Relays), Failure> {
        let env = self.child_env(step);
        let launch = Launch { dir: self.dir, env: &env, env_removed: ENV_REMOVED };
        let (child, stdout, stderr) = Child::spawn(&step.command.argv(), &launch).map_err(|err| Failure {
            code: FailureCode::SpawnFailed,
            message: format!("cannot start `{}`: {err}", step.command.display()),
            traceback: None,
        })?;
        // Heartbeats sample this group's processes.
        self.group.store(child.pgid(), Ordering::Relaxed);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let handles = [
            tokio::spawn(relay(stdout, "stdout", self.stream.clone(), tail.clone())),
            tokio::spawn(relay(stderr, "stderr", self.stream.clone(), tail.clone())),
        ];
        Ok((child, Relays { handles, tail }))
    }

    /// Until the child exits, its timeout passes, or the run must stop.
    async fn wait(
        &self,
        child: &mut Child,
        step: &Step,
        watcher: &mut (impl Future<Output = StopReason> + Unpin),
    ) -> Ended {
        let deadline = step.timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Cancel-safe: waiting on a child can be resumed.
            status = child.wait() => Ended::Exited(status),
            () = timeout => Ended::TimedOut,
            // Not cancelled: the watcher is polled by reference and lives for the whole run.
            reason = &mut *watcher => Ended::Stopped(reason),
        }
    }

    /// No process of the step's group outlives it: what an exited leader left behind, or
    /// the whole group of a step timed out or stopped.
    async fn reap(&self, child: &mut Child, ended: &Ended) {
        let pgid = child.pgid();
        match ended {
            Ended::Exited(_) => {
                if child::group_alive(pgid) {
                    tracing::warn!(pgid, "the stage's command exited but left processes in its group; stopping them");
                    self.stop(pgid).await;
                }
            }
            _ => {
                self.stop(pgid).await;
                // Reaps the leader; its status no longer matters.
                let _ = child.wait().await;
            }
        }
        self.group.store(0, Ordering::Relaxed);
    }

    /// Stops the step's process group: SIGTERM, then SIGKILL after the grace period (at
    /// once on a second signal to the worker).
    async fn stop(&self, pgid: i32) {
        let mut control = self.context.control.clone();
        let hurry = async move {
            let _ = control.wait_for(|directive| *directive == Directive::StopNow).await;
        };
        match child::stop_group(pgid, self.context.config.grace, hurry).await {
            Stopped::Terminated => {}
            Stopped::Killed => crate::notice!(
                warn,
                "scientist work: the stage's processes outlived the grace period of {}; killed them",
                humantime::format_duration(self.context.config.grace)
            ),
            Stopped::Stuck => {
                tracing::error!(pgid, "processes of the stage survive SIGKILL (stuck in the kernel?); leaving them")
            }
        }
    }

    /// The child's environment besides what it inherits (see `ENV_REMOVED`).
    fn child_env(&self, step: &Step) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // Python block-buffers a pipe; line buffering makes logs arrive as they happen.
        if std::env::var_os("PYTHONUNBUFFERED").is_none() {
            env.insert("PYTHONUNBUFFERED".into(), "1".into());
        }
        env.extend(self.context.config.pipeline.env.clone());
        let mut set = |name: &str, value: String| {
            env.insert(name.into(), value);
        };
        set("SCIENTIST_RUN_ID", self.run.id.to_string());
        set("SCIENTIST_RUN_DIR", self.dir.display().to_string());
        set("SCIENTIST_ATTEMPT", self.run.attempt.to_string());
        set("SCIENTIST_EMIT_URL", self.context.endpoint.url().to_owned());
        set("SCIENTIST_TOKEN", self.context.endpoint.token().to_owned());
        set("SCIENTIST_CONFIG_DIR", self.context.config.pipeline.config_dir.display().to_string());
        if let Some(stage) = step.stage {
            set("SCIENTIST_STAGE", stage.as_str().to_owned());
        }
        // The OpenTelemetry convention: an SDK in the stage starts its spans under ours.
        set("TRACEPARENT", self.run.traceparent(step.stage.map(|stage| stage.as_str())));
        if let Some(tracestate) = &self.run.trace_state {
            set("TRACESTATE", tracestate.clone());
        }
        env
    }
}

/// Waits for the relays to reach the end of the output, and returns its tail.
async fn drain(relays: Relays) -> Tail {
    // One deadline for both pipes: a process holding one open usually holds both.
    let drained_by = tokio::time::Instant::now() + RELAY_DRAIN;
    for handle in relays.handles {
        if tokio::time::timeout_at(drained_by, handle).await.is_err() {
            tracing::warn!("a process outside the stage's group holds its output open; stopped relaying it");
        }
    }
    lock(&relays.tail).clone()
}

fn ending_of(status: std::process::ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signaled(signal),
        (None, None) => Ending::Exited(-1),
    }
}

/// Completes when the run must stop: an operator's cancel, a lost claim, or the worker
/// shutting down. Checks the claim every `cancel_poll`; a failed check changes nothing
/// (unreachable is not dead), until no check has succeeded for the whole lease: by then the
/// control plane has presumed the run lost, and going on would run it twice.
async fn watch_claim(context: &Context<'_>, run_id: &RunId, attempt: u32) -> StopReason {
    let mut control = context.control.clone();
    let mut ticks = tokio::time::interval(context.config.cancel_poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut last_checked = Instant::now();
    let lease = context.config.lease.lease;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // Cancel-safe: wait_for can be called again.
            _ = control.wait_for(|directive| matches!(directive, Directive::Stop | Directive::StopNow)) => {
                return StopReason::Shutdown;
            }
        }
        match context.queue.check(run_id, attempt).await {
            Ok(state) => {
                (failing, last_checked) = (false, Instant::now());
                if !state.live {
                    return StopReason::ClaimLost(state.status);
                }
                if let Some(request) = state.cancel_requested {
                    return StopReason::Canceled { by: request.by, reason: request.reason };
                }
            }
            Err(_) if last_checked.elapsed() >= lease => return StopReason::Unreachable(lease),
            Err(err) if !failing => {
                tracing::warn!(run = %run_id, error = %err, "cannot check the claim; the run goes on (for at most the lease)");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
