//! `scientist work`: the pod worker. Parses its flags, opens the queue (the store, or the
//! control plane's queue endpoints), the event stream and the child's local endpoint, turns
//! signals into directives and hands over to `worker::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::artifacts::ArtifactArgs;
use super::costs::CostArgs;
use super::{LeaseArgs, RetentionArgs, RetryArgs, StoreArgs, UsageError};
use crate::artifacts::ArtifactStore;
use crate::control::{ControlPlane, HttpControlPlane, StoreControlPlane};
use crate::emit::{EventStream, LocalEndpoint, StreamConfig};
use crate::gpu::Gpus;
use crate::monitor;
use crate::protocol::WorkerMode;
use crate::store::Rules;
use crate::worker::{self, Directive, Pipeline, PodFacts, PodId};

const AFTER_HELP: &str = "\
The pipeline config (--config) is TOML: one command for the whole run, or a command per stage
(Stage_1..Stage_4, plots, paper, validation), each with an optional timeout:

    [[stage]]
    name = \"Stage_1\"
    command = 'python3 \"$SCIENTIST_CONFIG_DIR/stage.py\"'    # a string runs through sh -c
    timeout = \"2h\"

See examples/pipeline.toml. Each command runs in the run's directory, in a process group of
its own, with SCIENTIST_RUN_ID, SCIENTIST_RUN_DIR, SCIENTIST_STAGE, SCIENTIST_ATTEMPT,
SCIENTIST_CONFIG_DIR, and SCIENTIST_EMIT_URL + SCIENTIST_TOKEN: the worker's local endpoint,
where `scientist emit` (or an HTTP POST to /api/ingest/event) joins the worker's event stream.

While a run goes, its directory is watched: plots (png, jpg, svg), PDFs, checkpoints (.pt,
.pth, .ckpt), configs (.yaml) and metrics (metrics.json, .npy) are uploaded to --artifacts once
they stop changing, and again when their content changes (ai.artifact.detected, then
ai.artifact.registered with key, bytes, sha256, content_type, kind; ai.artifact.failed after
retries); *.log files are tailed into ai.run.log events. When the run ends the directory is
swept once more before the run's end is reported.

With --mode ideation (or hybrid, which takes ideation requests first), the worker serves
ideation requests (`scientist ideation create`, or the web frontend): the config's [ideation]
command runs with SCIENTIST_REQUEST_FILE (the request as JSON) and writes a JSON array of
ideas to SCIENTIST_IDEAS_FILE; they are reported as ai.ideation.generated (the hypothesis's
ideaJson is the first) and the request ends COMPLETED, or FAILED with why.

Lost workers: before each claim, a worker on a store (not on --server, where `serve` does it)
flags SCHEDULED/RUNNING runs whose worker has not been heard from for --silent-after, and fails
(or requeues, --on-lost) those silent for the whole --lease.

Where runs come from: the store (--store, or MONGODB_URL), or with only --server and a token,
the control plane's queue endpoints (a pod without database credentials).

Signals: SIGTERM or SIGINT stops the current run (SIGTERM to its processes, SIGKILL after
--grace), reports it failed with code WORKER_SHUTDOWN (retryable), flushes events and exits 0;
a second one skips the waiting. SIGUSR1 (or --drain-file appearing) lets the current run
finish, then exits 0.

Exit codes: 0 stopped or drained as asked, 1 failure, 2 bad flags or config, 7 wrong token.";

/// Flags of `scientist work`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The pipeline to run for each claimed run (TOML; see examples/pipeline.toml).
    #[arg(long, env = "SCIENTIST_WORK_CONFIG", value_name = "PATH")]
    pub config: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Before each claim, a worker on a store (not one on --server) sweeps the store's held
    /// runs for lost workers, as `serve` does.
    #[command(flatten)]
    pub lease: LeaseArgs,

    /// A worker on a store prunes its log lines as `serve` does (not one on --server).
    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub retry: RetryArgs,

    #[command(flatten)]
    pub costs: CostArgs,

    /// A worker on a store raises the alerts of the runs it ends, as `serve` does; only
    /// `serve` sends them (a worker on --server leaves both to it).
    #[command(flatten)]
    pub alerts: super::alert::RaiseArgs,

    /// Claim and report through this control plane instead of a store (needs a token
    /// beyond loopback). Used when neither --store nor MONGODB_URL is set.
    #[arg(long, env = "SCIENTIST_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token for --server (ingest scope).
    #[arg(long, env = "SCIENTIST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// This pod's id, recorded as claimedBy and in event sources [default: the host name].
    #[arg(long, env = "RUNPOD_POD_ID")]
    pub pod_id: Option<String>,

    /// The queue (pool) to claim from.
    #[arg(long, env = "SCIENTIST_QUEUE", default_value = crate::run::DEFAULT_QUEUE)]
    pub queue: String,

    /// What to serve: experiment runs, ideation requests (the pipeline's [ideation]
    /// command), or both with ideation first.
    #[arg(long, env = "WORKER_MODE", value_enum, default_value_t = ModeArg::Experiment)]
    pub mode: ModeArg,

    /// Time between claims while the queue is empty (±20% jitter), e.g. 10s, 1m.
    #[arg(long, env = "SCIENTIST_POLL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll: Duration,

    /// Run one job and exit (at once when nothing is queued).
    #[arg(long)]
    pub once: bool,

    /// Time a stopped run's processes get between SIGTERM and SIGKILL.
    #[arg(long, env = "SCIENTIST_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,

    /// Time between heartbeats (GPU and process figures) while a run goes; an ideation
    /// request's worker beats as often to keep its claim.
    #[arg(long, env = "SCIENTIST_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// How often the worker checks its run for an operator's cancel.
    #[arg(long, env = "SCIENTIST_CANCEL_POLL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub cancel_poll: Duration,

    /// A file whose appearance asks the worker to finish its run and exit.
    #[arg(long, env = "SCIENTIST_DRAIN_FILE", value_name = "PATH")]
    pub drain_file: Option<PathBuf>,

    /// Where run directories are made [default: the config's runs_dir, else <data dir>/scientist/runs].
    #[arg(long, env = "SCIENTIST_RUNS_DIR", value_name = "PATH")]
    pub runs_dir: Option<PathBuf>,

    /// The worker's event spool: every event is kept here until acknowledged
    /// [default: <data dir>/scientist/worker-spool/<pod id>].
    #[arg(long, env = "SCIENTIST_WORKER_SPOOL", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,

    /// Address of the local endpoint the child reports through (loopback; port 0 picks one).
    #[arg(long, env = "SCIENTIST_EMIT_LISTEN", default_value = "127.0.0.1:0")]
    pub emit_listen: SocketAddr,

    /// How long the worker keeps trying to deliver events when it exits; what is left
    /// stays in the spool.
    #[arg(long, env = "SCIENTIST_FLUSH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub flush_timeout: Duration,

    #[command(flatten)]
    pub artifacts: ArtifactArgs,

    /// An artifact is uploaded once it has not changed for this long.
    #[arg(long, env = "SCIENTIST_ARTIFACT_SETTLE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub artifact_settle: Duration,

    /// Artifacts uploaded at once.
    #[arg(long, env = "SCIENTIST_ARTIFACT_UPLOADS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub artifact_uploads: u16,

    /// How long the end of a run waits for its last uploads before reporting the run's end
    /// (uploads still going then are reported as ai.artifact.failed).
    #[arg(long, env = "SCIENTIST_ARTIFACT_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub artifact_wait: Duration,
}

/// `--mode`: the command line's names for `protocol::WorkerMode` (clap stays in `cmd/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Experiment runs from the run queue.
    Experiment,
    /// Ideation requests only.
    Ideation,
    /// Both: an ideation request first when one waits, else a run.
    Hybrid,
}

impl From<ModeArg> for WorkerMode {
    fn from(arg: ModeArg) -> WorkerMode {
        match arg {
            ModeArg::Experiment => WorkerMode::Experiment,
            ModeArg::Ideation => WorkerMode::Ideation,
            ModeArg::Hybrid => WorkerMode::Hybrid,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    super::warn_of_a_typed_token();
    if !args.emit_listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "--emit-listen {} is not a loopback address: the child's endpoint must not be reachable from outside",
            args.emit_listen
        ))
        .into());
    }
    refuse_store_only_flags(&args)?;
    let lease = args.lease.policy()?;
    let pipeline = Pipeline::load(&args.config).map_err(|err| UsageError(err.to_string()))?;
    let mode = WorkerMode::from(args.mode);
    if worker::serves_ideation(mode) && pipeline.ideation.is_none() {
        return Err(UsageError(format!(
            "--mode {mode:?} serves ideation requests, but {} has no [ideation] command; add one (see examples/pipeline.toml)",
            args.config.display()
        ))
        .into());
    }
    if worker::serves_experiments(mode) && pipeline.steps.is_empty() {
        return Err(UsageError(format!(
            "--mode {mode:?} runs experiments, but {} has only an [ideation] command; add `command` or [[stage]] tables, \
             or pass --mode ideation",
            args.config.display()
        ))
        .into());
    }
    let pod = PodId::resolve(args.pod_id.as_deref());
    let data_dir = || dirs::data_dir().map(|dir| dir.join("scientist"));
    let runs_dir = args
        .runs_dir
        .clone()
        .or_else(|| pipeline.runs_dir.clone())
        .or_else(|| data_dir().map(|dir| dir.join("runs")))
        .context("no data directory (is HOME set?): pass --runs-dir")?;
    let spool_dir = args
        .spool_dir
        .clone()
        .or_else(|| data_dir().map(|dir| dir.join("worker-spool").join(pod.as_str())))
        .context("no data directory (is HOME set?): pass --spool-dir")?;
    let monitor = monitor_settings(&args, &pipeline, ArtifactArgs::default_dir())?;
    let queue = open_queue(&args).await?;
    let stream = EventStream::open(StreamConfig::new(spool_dir, pod.source()), queue.clone())?;
    let endpoint = LocalEndpoint::start(args.emit_listen)
        .await
        .with_context(|| format!("starting the local event endpoint on {}", args.emit_listen))?;
    let facts = PodFacts::detect(Gpus::open());
    let (directives, control) = watch::channel(Directive::Work);
    tokio::spawn(relay_signals(directives));
    crate::notice!(
        "scientist work: pod {pod}, queue {:?}, {}; children report to {}",
        args.queue,
        facts.gpu_facts().summary().unwrap_or_else(|| "no GPU".into()),
        endpoint.url()
    );
    let config = worker::Config {
        pod,
        queue: args.queue.clone(),
        mode,
        poll: args.poll,
        once: args.once,
        grace: args.grace,
        cancel_poll: args.cancel_poll,
        heartbeat: args.heartbeat,
        flush_timeout: args.flush_timeout,
        runs_dir,
        pipeline,
        drain_file: args.drain_file.clone(),
        monitor,
        artifact_wait: args.artifact_wait,
        lease,
    };
    match worker::run(config, queue, stream, endpoint, facts, control).await {
        Ok(_) => Ok(()),
        // A refused token exits with emit's code for it (7).
        Err(worker::Error::Claim(crate::control::Error::Send(err))) => Err(err.into()),
        Err(err) => Err(err.into()),
    }
}

/// Where artifacts go: --artifacts, else the pipeline's `artifacts`, else `default_dir`.
fn monitor_settings(
    args: &Args,
    pipeline: &Pipeline,
    default_dir: Option<PathBuf>,
) -> anyhow::Result<monitor::Settings> {
    let spec = match args.artifacts.artifacts.clone().or_else(|| pipeline.artifacts.clone()) {
        Some(spec) => spec,
        None => {
            default_dir.context("no data directory (is HOME set?): pass --artifacts DIR or URL")?.display().to_string()
        }
    };
    let artifacts = if spec == "none" {
        None
    } else {
        let store = ArtifactStore::open(&spec, args.artifacts.artifacts_endpoint.as_deref())
            .map_err(|err| UsageError(format!("--artifacts: {err}")))?;
        crate::notice!("scientist work: artifacts go to {}", store.location());
        Some(store)
    };
    let mut settings = monitor::Settings::new(artifacts);
    settings.settle = args.artifact_settle;
    settings.uploads = usize::from(args.artifact_uploads);
    Ok(settings)
}

impl Args {
    /// A store is used when one is configured, or when no --server is given.
    fn on_store(&self) -> bool {
        self.store.store.is_some() || self.store.mongodb_url.is_some() || self.server.is_none()
    }
}

/// The flags only a worker on a store acts on: with --server, `serve`'s store does that work,
/// so a worker given one would silently ignore it.
fn refuse_store_only_flags(args: &Args) -> Result<(), UsageError> {
    if args.on_store() {
        return Ok(());
    }
    let store_only = [
        (
            args.retry.retry_max.is_some(),
            "--retry-max applies to a worker on a store; with --server, pass it to `scientist serve`, whose store \
             decides retries",
        ),
        (
            args.costs.any(),
            "--prices and --queue-budget apply to a worker on a store; with --server, pass them to `scientist serve`, \
             whose store prices runs",
        ),
        (
            args.alerts.otlp_endpoint.is_some(),
            "--otlp-endpoint applies to a worker on a store; with --server, pass it to `scientist serve`, which sends \
             the spans",
        ),
        (
            args.retention.retain_logs.is_some(),
            "--retain-logs applies to a worker on a store; with --server, pass it to `scientist serve`",
        ),
    ];
    match store_only.into_iter().find(|(given, _)| *given) {
        Some((_, refusal)) => Err(UsageError(refusal.into())),
        None => Ok(()),
    }
}

/// The store when one is configured, else the control plane named by --server.
async fn open_queue(args: &Args) -> anyhow::Result<Arc<dyn ControlPlane>> {
    match &args.server {
        Some(server) if !args.on_store() => Ok(Arc::new(HttpControlPlane::new(server, args.token.clone())?)),
        _ => {
            let rules = Rules { retries: args.retry.policy(), alerts: args.alerts.raise(), costs: args.costs.costs()? };
            let store = args.store.open_with(rules).await?;
            // Detached: it ends with the process.
            drop(args.retention.spawn(&store));
            let name = if args.store.mongodb_url.is_some() { "MongoDB" } else { "the embedded store" };
            Ok(Arc::new(StoreControlPlane::new(store, name)))
        }
    }
}

/// SIGTERM/SIGINT: stop (a second one: stop now). SIGUSR1: drain.
async fn relay_signals(directives: watch::Sender<Directive>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut user1)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::user_defined1()))
    else {
        tracing::error!("cannot listen for signals; stop the worker with SIGKILL");
        return;
    };
    loop {
        let stop = tokio::select! {
            _ = terminate.recv() => true,
            _ = interrupt.recv() => true,
            _ = user1.recv() => false,
        };
        directives.send_modify(|directive| {
            *directive = match (stop, *directive) {
                (true, Directive::Stop | Directive::StopNow) => Directive::StopNow,
                (true, _) => Directive::Stop,
                (false, Directive::Work) => Directive::Drain,
                (false, other) => other,
            };
            crate::notice!(
                "scientist work: {}",
                match *directive {
                    Directive::StopNow => "stopping now",
                    Directive::Stop =>
                        "stopping: the current run is stopped and reported; a second signal skips the waiting",
                    Directive::Drain => "draining: the current run finishes, nothing new is claimed",
                    Directive::Work => "working",
                }
            );
        });
    }
}
