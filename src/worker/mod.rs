//! The body of `scientist work`: claim a run, run its pipeline as supervised child
//! processes, report everything through one ordered, spooled event stream, repeat.
//!
//! `supervise` (one run), `review` (a review a step asks for), `child` (process groups),
//! `relay` (a child's output to log events, through `capture`), `outcome` (failure codes),
//! `heartbeat`, `rundir`, `pipeline` (the TOML config), `identity`. The event stream and
//! the child's local endpoint live in `emit`. Signals are `cmd::work`'s business: this
//! module only sees [`Directive`]s.

pub mod child;
pub mod heartbeat;
pub mod ideation;
pub mod identity;
pub mod outcome;
pub mod pipeline;
pub mod relay;
mod review;
pub mod rundir;
pub mod supervise;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

pub use heartbeat::PodFacts;
pub use identity::PodId;
pub use pipeline::Pipeline;
pub use supervise::{StopReason, Verdict};

use crate::control::{self, ControlPlane};
use crate::emit::{EventStream, LocalEndpoint};
use crate::protocol::WorkerMode;

/// What the worker is asked to do, from its signals and drain file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Claim and run.
    Work,
    /// Finish the current run, claim nothing more, exit.
    Drain,
    /// Stop the current run (SIGTERM, grace, SIGKILL), report it, flush, exit.
    Stop,
    /// As `Stop`, without waiting out the grace period or the flush.
    StopNow,
}

/// Whether a worker of `mode` claims ideation requests.
pub fn serves_ideation(mode: WorkerMode) -> bool {
    matches!(mode, WorkerMode::Ideation | WorkerMode::Hybrid)
}

/// Whether a worker of `mode` claims experiment runs.
pub fn serves_experiments(mode: WorkerMode) -> bool {
    matches!(mode, WorkerMode::Experiment | WorkerMode::Hybrid)
}

/// The next job a worker claimed.
// One at a time, moved once: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Job {
    Run(crate::run::Run),
    Ideation(crate::ideation::IdeationRequest),
}

/// The worker's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub pod: PodId,
    /// The queue (pool) to claim runs from.
    pub queue: String,
    pub mode: WorkerMode,
    /// Time between claims when the queue is empty (±20% jitter).
    pub poll: Duration,
    /// Run one job, then exit (also at once when nothing is queued).
    pub once: bool,
    /// Between SIGTERM and SIGKILL when a run is stopped.
    pub grace: Duration,
    /// How often the claim is checked for a cancel request.
    pub cancel_poll: Duration,
    pub heartbeat: Duration,
    /// How long the worker tries to deliver what is left when it exits.
    pub flush_timeout: Duration,
    pub runs_dir: PathBuf,
    pub pipeline: Pipeline,
    /// A file whose appearance asks for a drain.
    pub drain_file: Option<PathBuf>,
    /// The run-directory monitor: artifacts and log files.
    pub monitor: crate::monitor::Settings,
    /// How long the end of a run waits for its last artifact uploads.
    pub artifact_wait: Duration,
    /// What becomes of other workers' runs when they fall silent (swept before each claim).
    pub lease: crate::queue::lease::Policy,
}

/// What a worker did before it exited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub verdicts: Vec<Verdict>,
    pub ideations: Vec<ideation::IdeationVerdict>,
    /// Events left in the spool for the next start.
    pub undelivered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Claim(#[from] control::Error),
}

/// What a run's supervision borrows from the worker.
pub(crate) struct Context<'a> {
    pub config: &'a Config,
    pub queue: &'a dyn ControlPlane,
    pub stream: &'a EventStream,
    pub endpoint: &'a LocalEndpoint,
    pub facts: &'a PodFacts,
    pub control: watch::Receiver<Directive>,
}

/// Claims and runs until told to stop or drain (or after one run with `once`), then
/// delivers what it can of the stream and returns.
pub async fn run(
    config: Config,
    queue: std::sync::Arc<dyn ControlPlane>,
    stream: EventStream,
    endpoint: LocalEndpoint,
    facts: PodFacts,
    mut control: watch::Receiver<Directive>,
) -> Result<Summary, Error> {
    let mut summary = Summary::default();
    let mut claim_failing = false;
    let result = loop {
        if *control.borrow() != Directive::Work || drain_requested(&config) {
            break Ok(());
        }
        match claim_next(queue.as_ref(), &config).await {
            Ok(Some(job)) => {
                claim_failing = false;
                let context = Context {
                    config: &config,
                    queue: queue.as_ref(),
                    stream: &stream,
                    endpoint: &endpoint,
                    facts: &facts,
                    control: control.clone(),
                };
                match job {
                    Job::Run(run) => summary.verdicts.push(supervise::supervise(&context, run).await),
                    Job::Ideation(request) => summary.ideations.push(ideation::serve(&context, request).await),
                }
                if config.once {
                    break Ok(());
                }
                // Look for the next job at once: a busy queue is not polled.
                continue;
            }
            Ok(None) if config.once => {
                crate::notice!("scientist work: nothing queued for {}; --once exits", describe_mode(&config));
                break Ok(());
            }
            Ok(None) => claim_failing = false,
            Err(err) if err.is_auth() => break Err(err.into()),
            Err(err) => {
                if !claim_failing {
                    crate::notice!(
                        warn,
                        "scientist work: cannot claim runs ({}); retrying every poll",
                        crate::errors::chain(&err)
                    );
                }
                claim_failing = true;
            }
        }
        let pause = crate::backoff::jitter(config.poll, 0.2);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // Cancel-safe: only wakes the loop, which reads the directive again.
            _ = control.changed() => {}
        }
    };
    let within = if *control.borrow() == Directive::StopNow { Duration::ZERO } else { config.flush_timeout };
    drop(endpoint);
    let closing = stream.close(within).await;
    summary.undelivered = closing.undelivered;
    if closing.undelivered > 0 {
        crate::notice!(
            warn,
            "scientist work: {} event(s) not delivered yet; they stay in the spool and the next start sends them",
            closing.undelivered
        );
    }
    result.map(|()| summary)
}

/// Claims the next job the mode serves: an ideation request first, then a run (sweeping
/// lost workers' runs before claiming one).
async fn claim_next(queue: &dyn ControlPlane, config: &Config) -> Result<Option<Job>, control::Error> {
    if serves_ideation(config.mode)
        && let Some(request) = queue.claim_ideation(config.pod.as_str()).await?
    {
        return Ok(Some(Job::Ideation(request)));
    }
    if !serves_experiments(config.mode) {
        return Ok(None);
    }
    queue.sweep(&config.lease).await;
    Ok(queue.claim(config.pod.as_str(), &config.queue).await?.map(Job::Run))
}

fn describe_mode(config: &Config) -> String {
    match config.mode {
        WorkerMode::Experiment => format!("queue {:?}", config.queue),
        WorkerMode::Ideation => "ideation".into(),
        WorkerMode::Hybrid => format!("ideation or queue {:?}", config.queue),
    }
}

fn drain_requested(config: &Config) -> bool {
    let requested = config.drain_file.as_ref().is_some_and(|file| file.exists());
    if requested {
        crate::notice!("scientist work: drain file found; claiming nothing more");
    }
    requested
}
