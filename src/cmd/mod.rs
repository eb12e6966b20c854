//! The command line: `Cli`, one thin module per subcommand, and the flag groups they share.
//! Each module parses its flags, opens what it needs and calls into the library.

pub mod alert;
pub mod artifacts;
pub mod completions;
pub mod costs;
pub mod emit;
mod eta;
mod follow;
pub mod help;
pub mod ideation;
pub mod man;
pub mod runs;
pub mod serve;
pub mod stats;
pub mod up;
mod view;
pub mod work;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::control::{ApiFailure, ApiOperator, HttpControlPlane, Operator, contexts};
use crate::queue::lease::{self, OnLost};
use crate::queue::retry;
use crate::queue::stall::{self, OnStall};
use crate::run::{RunId, RunStatus};
use crate::store::{MongoStore, Rules, SqliteStore, Store};
use crate::time::Timestamp;

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Something went wrong (store unreachable, I/O error…).
    pub const FAILURE: u8 = 1;
    /// Bad usage or input: an unknown flag, a malformed file, an invalid id.
    pub const USAGE: u8 = 2;
    /// The run (or other object) named does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The action is not allowed in the run's current state (e.g. reset of a RUNNING run).
    pub const CONFLICT: u8 = 4;
    /// `emit`: the control plane rejected the event (invalid); resending it will not help.
    pub const REJECTED: u8 = 5;
    /// `emit`, or a command on --server: the control plane could not be reached or failed;
    /// trying again later may work.
    pub const UNREACHABLE: u8 = 6;
    /// `emit`, or a command on --server: the token was missing or wrong, or lacks the scope.
    pub const AUTH: u8 = 7;
    /// `--follow`: the run ended FAILED.
    pub const RUN_FAILED: u8 = 8;
    /// `--follow`: the run ended CANCELED.
    pub const RUN_CANCELED: u8 = 9;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure, 2 bad usage or input, 3 not found, 4 not allowed in the run's state;
emit: 5 event rejected; emit and commands on --server: 6 control plane unreachable, 7 missing or
wrong token, or one without the scope the command needs;
runs show/logs --follow: 0 when the run completed, 8 when it failed, 9 when it was canceled.

Storage: with no MongoDB configured, everything runs on an embedded SQLite file shared by
serve, work and runs on this machine (see --store). Set MONGODB_URL for many pods.
Operators without database credentials: --server URL (or a --context) with SCIENTIST_TOKEN.";

/// Queue, run and watch long AI-research experiment runs on GPU pods.
#[derive(Debug, Parser)]
#[command(name = "scientist", version, about, after_help = after_help(), disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The control plane and a worker in one process on this machine; `up --example` runs
    /// and follows the tour.
    Up(up::Args),
    /// Run the control plane: event ingest and health checks over HTTP.
    Serve(serve::Args),
    /// Run the pod worker: claim queued runs and run them.
    Work(work::Args),
    /// List, inspect, create, reset and cancel runs.
    #[command(subcommand)]
    Runs(runs::Command),
    /// Enqueue and list ideation requests (ideas for a hypothesis, served by `work --mode ideation`).
    #[command(subcommand, after_help = ideation::AFTER_HELP)]
    Ideation(ideation::Command),
    /// Counts by status, active workers, queue depth, throughput, durations, failures, GPU-hours.
    Stats(stats::Args),
    /// Send one event to the control plane.
    Emit(emit::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// A topic page (events, pipelines) or a command's full help.
    Help(help::Args),
    /// Write man pages for every command and topic into a directory.
    Man(man::Args),
}

fn after_help() -> String {
    format!("{AFTER_HELP}\n\n{}", help::topic_list().trim_end())
}

/// Where runs are stored; shared by every subcommand that reads or writes them.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Embedded store file [default: <data dir>/scientist/scientist.sqlite].
    #[arg(long, env = "SCIENTIST_STORE", global = true)]
    pub store: Option<PathBuf>,

    /// MongoDB connection string; when set, MongoDB is used instead of the embedded store.
    #[arg(long, env = "MONGODB_URL", hide_env_values = true, global = true)]
    pub mongodb_url: Option<String>,

    /// MongoDB database [default: the one named in the URL, else `scientist`].
    #[arg(long, env = "SCIENTIST_MONGODB_DB", global = true)]
    pub mongodb_db: Option<String>,
}

impl StoreArgs {
    /// Opens the configured store: MongoDB when a URL is given, else the embedded file.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        self.open_with(Rules::default()).await
    }

    /// As [`StoreArgs::open`], applying `rules` in its writes (`serve`, a worker on a store).
    pub async fn open_with(&self, rules: Rules) -> anyhow::Result<Arc<dyn Store>> {
        if let Some(url) = &self.mongodb_url {
            let store = MongoStore::connect(url, self.mongodb_db.as_deref())
                .await
                .context("connecting to MongoDB (check MONGODB_URL / --mongodb-url)")?;
            MONGO_CLIENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(store.client());
            return Ok(Arc::new(store.with_rules(rules)));
        }
        let path = match &self.store {
            Some(path) => path.clone(),
            None => default_store_path()?,
        };
        let store = SqliteStore::open_with(&path, rules)
            .await
            .with_context(|| format!("opening the embedded store at {}", path.display()))?;
        Ok(Arc::new(store))
    }
}

/// Where an operator's commands (`runs …`, `stats`, `ideation …`) find the runs: a store,
/// as for every command, or a control plane's API with a token. Precedence: a store when
/// --store or MONGODB_URL is given; else --server or --context; else the config's `current`
/// context; else the embedded store.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Ask this control plane (`scientist serve`) instead of a store, with the token in
    /// SCIENTIST_TOKEN: read scope to read, admin to change. Used when neither --store nor
    /// MONGODB_URL is set.
    #[arg(long, env = "SCIENTIST_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,

    /// Ask the control plane of this context in the config file (~/.config/scientist/config.toml,
    /// or SCIENTIST_CONFIG): its server and token file.
    #[arg(long, env = "SCIENTIST_CONTEXT", value_name = "NAME", global = true)]
    pub context: Option<String>,
}

/// Where an operator's command goes, as [`OperatorArgs`] decided.
pub enum Target {
    /// The store of the `StoreArgs`.
    Store,
    /// A control plane's API.
    Api { server: String, token: Option<String> },
}

impl OperatorArgs {
    /// The store or control plane these flags name.
    pub async fn open(&self) -> anyhow::Result<Box<dyn Operator>> {
        self.open_target(self.target()?).await
    }

    /// What [`OperatorArgs::target`] decided, opened.
    pub async fn open_target(&self, target: Target) -> anyhow::Result<Box<dyn Operator>> {
        match target {
            Target::Store => Ok(Box::new(self.store.open().await?)),
            Target::Api { server, token } => {
                let plane =
                    HttpControlPlane::new(&server, token).map_err(|err| UsageError(format!("--server: {err}")))?;
                Ok(Box::new(ApiOperator::new(plane)))
            }
        }
    }

    /// Where the runs are: see [`OperatorArgs`] for the order.
    pub fn target(&self) -> anyhow::Result<Target> {
        if self.store.store.is_some() || self.store.mongodb_url.is_some() {
            return Ok(Target::Store);
        }
        if self.server.is_some() && self.context.is_some() {
            return Err(UsageError(
                "both --server (or SCIENTIST_SERVER) and --context (or SCIENTIST_CONTEXT) are set: give one".into(),
            )
            .into());
        }
        let env_token = std::env::var("SCIENTIST_TOKEN").ok().filter(|token| !token.is_empty());
        if let Some(server) = &self.server {
            return Ok(Target::Api { server: server.clone(), token: env_token });
        }
        let config = match contexts::Config::default_path() {
            Some(path) => contexts::Config::load(&path).map_err(|err| UsageError(err.to_string()))?,
            None => contexts::Config::default(),
        };
        match config.choose(self.context.as_deref(), env_token).map_err(|err| UsageError(err.to_string()))? {
            Some(chosen) => Ok(Target::Api { server: chosen.server, token: chosen.token }),
            None => Ok(Target::Store),
        }
    }
}

/// What becomes of a run whose worker falls silent; shared by `serve` and `work`, which
/// both sweep (see `queue::lease`). Set them alike everywhere (the environment variables
/// make that easy).
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// A SCHEDULED or RUNNING run whose worker has not been heard from (claim, heartbeat or
    /// any event) for this long is flagged silent; nothing else changes.
    #[arg(long, env = "SCIENTIST_SILENT_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    pub silent_after: std::time::Duration,

    /// ...and after this long without word it is lost: see --on-lost. A RUNNING ideation
    /// request whose worker is silent this long is lost the same way.
    #[arg(long, env = "SCIENTIST_LEASE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub lease: std::time::Duration,

    /// What becomes of a lost run or ideation request: `fail` (FAILED, code WORKER_LOST,
    /// retryable; an operator resets a run) or `requeue` (QUEUED again for another worker; the
    /// old attempt is fenced out).
    #[arg(long, env = "SCIENTIST_ON_LOST", value_enum, default_value_t = OnLostArg::Fail)]
    pub on_lost: OnLostArg,

    /// A RUNNING run whose worker is heard but which shows no progress (no stage, progress,
    /// node, metric or artifact event, no log line) for this long is flagged stalled
    /// (`stalledSince`); its status is unchanged and the next progress clears the flag. A
    /// pipeline stage may set its own (`stall_after = "2h"` in the pipeline file).
    #[arg(long, env = "SCIENTIST_STALL_AFTER", default_value = "30m", value_parser = positive_duration)]
    pub stall_after: std::time::Duration,

    /// What becomes of a stalled run: `flag` (only flagged) or `cancel` (failed with code
    /// STALLED, retryable, so --retry-max applies; its worker stops the child).
    #[arg(long, env = "SCIENTIST_ON_STALL", value_enum, default_value_t = OnStallArg::Flag)]
    pub on_stall: OnStallArg,

    /// A run AWAITING_HUMAN whose review nobody approved or rejected this long after it was
    /// asked for is FAILED with code REVIEW_TIMEOUT (not retryable), e.g. 3d.
    /// [default: a review waits however long it takes]
    #[arg(long, env = "SCIENTIST_REVIEW_TIMEOUT", value_name = "AGE", value_parser = humantime::parse_duration)]
    pub review_timeout: Option<std::time::Duration>,
}

/// Automatic retries, applied by the store in the write that stores a failure; shared by
/// `serve` and a worker on a store. Off by default.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// Put a run that fails retryably (`retryable: true`: a lost worker, a killed or stalled
    /// process…) back in the queue up to N times, after a backoff; a run's own
    /// `runs create --retry-max` overrides it. Non-retryable failures and cancels are never
    /// retried, and a run failing retryably 4 times within 10 minutes is thrashing and stops.
    /// [default: 0, never]
    #[arg(long, env = "SCIENTIST_RETRY_MAX", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=crate::run::MAX_RETRIES as i64))]
    pub retry_max: Option<u32>,

    /// The first retry waits this long, each next one twice as long (at most 1h, or this if
    /// it is longer), with up to half of it added at random.
    #[arg(long, env = "SCIENTIST_RETRY_BACKOFF", default_value = "1m", value_parser = positive_duration)]
    pub retry_backoff: std::time::Duration,
}

impl RetryArgs {
    pub fn policy(&self) -> retry::Policy {
        let cap = self.retry_backoff.max(std::time::Duration::from_secs(60 * 60));
        retry::Policy { max: self.retry_max.unwrap_or(0), backoff: self.retry_backoff, cap }
    }
}

/// A duration above zero, for flags where zero would mean "at once, always".
pub(crate) fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be above zero, e.g. 10s".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err}: write a duration such as 10s, 1m or 500ms")),
    }
}

/// Log retention for a process that owns a store (`serve`, a worker on a store).
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Delete log lines (`ai.run.log` events) received longer ago than this, e.g. 30d, in the
    /// background, a batch at a time; run documents, their other events and artifacts are
    /// kept. SQLite reuses the freed pages (the file stops growing; `VACUUM` shrinks it).
    /// [default: keep every log line]
    #[arg(long, env = "SCIENTIST_RETAIN_LOGS", value_name = "AGE", value_parser = retention_age)]
    pub retain_logs: Option<std::time::Duration>,
}

impl RetentionArgs {
    /// Starts pruning in the background when a retention is set.
    pub fn spawn(&self, store: &Arc<dyn Store>) -> Option<tokio::task::JoinHandle<()>> {
        let retain = self.retain_logs?;
        crate::notice!("log lines older than {} are deleted every hour", humantime::format_duration(retain));
        Some(tokio::spawn(crate::retention::keep_pruning(store.clone(), retain)))
    }
}

fn retention_age(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(age) if age < std::time::Duration::from_secs(60) => {
            Err("must be at least 1m (a shorter retention would delete lines still being followed), e.g. 30d".into())
        }
        Ok(age) => Ok(age),
        Err(err) => Err(format!("{err}: write an age such as 30d, 12h or 90m")),
    }
}

/// `--on-lost`: the command line's names for `lease::OnLost` (clap stays in `cmd/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLostArg {
    /// FAILED with code WORKER_LOST, retryable: an operator decides (`runs reset`).
    Fail,
    /// Back to QUEUED for the next worker (`retryCount` + 1); the old attempt is fenced out.
    Requeue,
}

impl From<OnLostArg> for OnLost {
    fn from(arg: OnLostArg) -> OnLost {
        match arg {
            OnLostArg::Fail => OnLost::Fail,
            OnLostArg::Requeue => OnLost::Requeue,
        }
    }
}

/// `--on-stall`: the command line's names for `stall::OnStall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStallArg {
    /// Only flagged `stalledSince`.
    Flag,
    /// Failed with code STALLED (retryable); its worker stops the child.
    Cancel,
}

impl From<OnStallArg> for OnStall {
    fn from(arg: OnStallArg) -> OnStall {
        match arg {
            OnStallArg::Flag => OnStall::Flag,
            OnStallArg::Cancel => OnStall::Cancel,
        }
    }
}

impl LeaseArgs {
    pub fn policy(&self) -> Result<lease::Policy, UsageError> {
        let mut policy = lease::Policy::new(self.silent_after, self.lease, self.on_lost.into())
            .map_err(|reason| UsageError(format!("--silent-after/--lease: {reason}")))?;
        policy.stall = stall::Policy { after: self.stall_after, on_stall: self.on_stall.into() };
        policy.review_timeout = self.review_timeout;
        Ok(policy)
    }
}

fn default_store_path() -> anyhow::Result<PathBuf> {
    let data_dir = dirs::data_dir()
        .context("no user data directory found (is HOME set?): pass --store PATH or set SCIENTIST_STORE")?;
    Ok(data_dir.join("scientist").join("scientist.sqlite"))
}

/// Runs the parsed command line; `main` maps the error to an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let done = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Work(args) => work::run(args).await,
        Command::Runs(command) => runs::run(command).await,
        Command::Ideation(command) => ideation::run(command).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Emit(args) => emit::run(args).await,
        Command::Completions(args) => completions::run(args),
        Command::Help(args) => help::run(args),
        Command::Man(args) => man::run(args),
    };
    close_stores().await;
    done
}

/// MongoDB clients this process opened (one or two per command).
static MONGO_CLIENTS: std::sync::Mutex<Vec<mongodb::Client>> = std::sync::Mutex::new(Vec::new());

/// Lets each MongoDB client finish its clean-up (a cursor dropped before its end is killed by a
/// task the driver spawns) before the runtime stops: a runtime stopping under that task makes
/// the driver panic on stderr. Bounded, so that a stuck server never holds up the exit.
async fn close_stores() {
    let clients = std::mem::take(&mut *MONGO_CLIENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for client in clients {
        if tokio::time::timeout(std::time::Duration::from_secs(2), client.shutdown()).await.is_err() {
            tracing::debug!("a MongoDB client did not shut down within 2 s");
        }
    }
}

pub use view::{Kept, printable};

/// Writes one piece of command output to stdout. Unlike `println!`, a closed pipe
/// (`scientist runs list | head`) comes back as an error, which `main` treats as success.
/// DEL, C1 and Unicode controls are escaped whatever the output (JSON included: serde_json
/// leaves them as they are); C0 controls are the views' business, as they add colours.
pub(crate) fn print(text: impl std::fmt::Display) -> std::io::Result<()> {
    print_raw(printable(&text.to_string(), Kept::C0))
}

/// [`print`] without any escaping: for `--raw`.
pub(crate) fn print_raw(text: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{text}")
}

/// [`print`] for a view drawn with `look`: as it is under `--raw`.
pub(crate) fn print_as(look: view::Look, text: impl std::fmt::Display) -> std::io::Result<()> {
    if look.raw { print_raw(text) } else { print(text) }
}

/// Warns when `--token` was typed on this process's command line, where `ps` and shell history
/// show it to anyone on the machine; the environment variable does the same unseen.
pub(crate) fn warn_of_a_typed_token() {
    let typed = std::env::args_os().any(|arg| arg == "--token" || arg.to_string_lossy().starts_with("--token="));
    if typed {
        crate::notice!(
            warn,
            "--token on the command line shows in `ps` and shell history: set SCIENTIST_TOKEN instead"
        );
    }
}

/// Bad input from the user (exit code 2): the message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The time commands compute ages, durations and windows against: `SCIENTIST_NOW` (RFC 3339)
/// when set, for reproducible output, else the clock. Writes always use the clock.
pub(crate) fn display_now() -> anyhow::Result<Timestamp> {
    match std::env::var("SCIENTIST_NOW") {
        Ok(text) => Timestamp::parse_rfc3339(&text).map_err(|err| {
            UsageError(format!(
                "SCIENTIST_NOW={text:?} is not an RFC 3339 time ({err}); unset it or pass e.g. 2025-10-22T19:00:00Z"
            ))
            .into()
        }),
        Err(_) => Ok(Timestamp::now()),
    }
}

/// Why a run named on the command line could not be picked.
#[derive(Debug, thiserror::Error)]
pub enum RunLookupError {
    #[error("run {0} not found: no run id starts with {0:?}; `scientist runs list` shows the ids")]
    Unknown(String),
    #[error("run id prefix {typed:?} is ambiguous: it matches {first}, {second} and maybe more; type more characters")]
    Ambiguous { typed: String, first: RunId, second: RunId },
}

/// The run an operator means: the exact id when it exists, else the one run whose id starts
/// with what was typed (like a short git hash).
pub(crate) async fn resolve_run(store: &dyn Operator, typed: &RunId) -> anyhow::Result<RunId> {
    if store.get(typed).await?.is_some() {
        return Ok(typed.clone());
    }
    let mut matches = store.resolve_prefix(typed.as_str()).await?.into_iter();
    match (matches.next(), matches.next()) {
        (Some(only), None) => Ok(only),
        (Some(first), Some(second)) => {
            Err(RunLookupError::Ambiguous { typed: typed.to_string(), first, second }.into())
        }
        (None, _) => Err(RunLookupError::Unknown(typed.to_string()).into()),
    }
}

/// The ending a `--follow` reports through the exit code: FAILED (8) or CANCELED (9).
#[derive(Debug, thiserror::Error)]
#[error("run {id} ended {status}{detail}")]
pub struct RunEnded {
    pub id: RunId,
    pub status: RunStatus,
    /// `: <error type>: <message>` or ` (canceled by …)`, already formatted.
    pub detail: String,
}

/// The exit code for an error returned by [`run`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use crate::store::Error as StoreError;
    if err.downcast_ref::<UsageError>().is_some() {
        return exit::USAGE;
    }
    if let Some(failure) = err.downcast_ref::<emit::EmitError>() {
        return failure.exit_code();
    }
    match err.downcast_ref::<RunLookupError>() {
        Some(RunLookupError::Unknown(_)) => return exit::NOT_FOUND,
        Some(RunLookupError::Ambiguous { .. }) => return exit::USAGE,
        None => {}
    }
    if let Some(ended) = err.downcast_ref::<RunEnded>() {
        return if ended.status == RunStatus::Canceled { exit::RUN_CANCELED } else { exit::RUN_FAILED };
    }
    match err.downcast_ref::<ApiFailure>() {
        Some(ApiFailure::Refused { status: 404, .. }) => return exit::NOT_FOUND,
        Some(ApiFailure::Refused { status: 409, .. }) => return exit::CONFLICT,
        Some(ApiFailure::Refused { .. }) => return exit::USAGE,
        Some(ApiFailure::Auth { .. }) => return exit::AUTH,
        Some(ApiFailure::Unreachable { .. }) => return exit::UNREACHABLE,
        None => {}
    }
    match err.downcast_ref::<StoreError>() {
        Some(StoreError::NotFound(_)) => exit::NOT_FOUND,
        Some(StoreError::InvalidTransition { .. } | StoreError::AlreadyExists(_) | StoreError::IdeationExists(_)) => {
            exit::CONFLICT
        }
        Some(StoreError::InvalidCursor(_)) => exit::USAGE,
        _ => exit::FAILURE,
    }
}
