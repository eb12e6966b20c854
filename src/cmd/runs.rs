//! `scientist runs …`: list, show, follow, read the logs of, create, reset, cancel, approve
//! and reject runs, on either store. Tables and text come from `view`, live watching from `follow`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

mod logs;
mod pull;

use super::eta::{Histories, with_eta};
use super::follow::{self, LiveView, Update};
use super::view::{self, Look};
use super::{OperatorArgs, UsageError, display_now, resolve_run};
use crate::control::Operator;
use crate::event::EventType;
use crate::queue::review::Decision;
use crate::run::{DEFAULT_QUEUE, NewRun, ReviewDecision, Run, RunId, RunStatus};
use crate::store::{DEFAULT_LIMIT, EventFilter, LOG_EVENT_TYPE, MAX_LIMIT, RunFilter};

const ID_HELP: &str = "The run id, or a unique prefix of it (like a short git hash)";

const FOLLOW_HELP: &str = "\
With --follow the command exits when the run ends: 0 when it COMPLETED, 8 when it FAILED,
9 when it was CANCELED (3 when the run does not exist, 1 when the store fails).";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List runs, newest first: id, status, stage, progress, nodes, pod, age, duration.
    #[command(after_help = "Examples:\n  scientist runs list --status RUNNING --status QUEUED\n  \
                            scientist runs list --limit 500 --json | jq '.[] | select(.errorType == \"OOM\") | ._id'")]
    List(ListArgs),
    /// Show everything about one run: pod, stages, timing, error, artifacts, recent logs.
    #[command(after_help = FOLLOW_HELP)]
    Show(ShowArgs),
    /// Print a run's log lines (`ai.run.log` events), oldest first.
    #[command(after_help = FOLLOW_HELP)]
    Logs(logs::LogsArgs),
    /// Enqueue a run from an idea file (JSON); prints the new run's id.
    Create(CreateArgs),
    /// Put a FAILED or CANCELED run back in the queue (claim and error cleared, retryCount + 1).
    Reset(ResetArgs),
    /// Cancel a run: at once when queued, through its worker when scheduled or running.
    Cancel(CancelArgs),
    /// Approve a run AWAITING_HUMAN: it completes, or its waiting worker goes on with the next stage.
    Approve(ApproveArgs),
    /// Reject a run AWAITING_HUMAN: it fails with code REJECTED (not retried) and a waiting worker stops.
    Reject(RejectArgs),
    /// Download a run's artifacts into a directory, each checked against its sha256.
    #[command(after_help = pull::AFTER_HELP)]
    Pull(pull::PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    source: OperatorArgs,
    /// Only runs in this status (repeatable): QUEUED, SCHEDULED, RUNNING, AWAITING_HUMAN, COMPLETED, FAILED, CANCELED.
    #[arg(long = "status", value_parser = parse_status)]
    statuses: Vec<RunStatus>,
    /// Only runs of this worker pool.
    #[arg(long)]
    queue: Option<String>,
    /// At most this many runs (the newest).
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Print a JSON array of run documents (the stored shape) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Print the run document as JSON; with --follow, an NDJSON stream of everything new.
    #[arg(long)]
    json: bool,
    /// How many of the latest log lines to show.
    #[arg(long, default_value_t = 10)]
    logs: usize,
    /// Print text from events (messages, errors, names) as stored, control characters
    /// included. Without it they are shown escaped (`\u001b`, `\r`), so that no event can
    /// drive the terminal.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    #[command(flatten)]
    follow: FollowArgs,
}

/// `--follow` and its polling interval, shared by `show` and `logs`.
#[derive(Debug, clap::Args)]
struct FollowArgs {
    /// Keep watching until the run ends, then exit with its outcome (see below).
    #[arg(long, short = 'f')]
    pub(super) follow: bool,
    /// How often --follow polls the store.
    #[arg(long, env = "SCIENTIST_FOLLOW_INTERVAL", value_parser = humantime::parse_duration, default_value = follow::DEFAULT_INTERVAL)]
    pub(super) interval: Duration,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    source: OperatorArgs,
    /// JSON file with the idea/config the pipeline runs (`-` for standard input).
    #[arg(long)]
    idea: PathBuf,
    /// Higher runs first; equal priorities run oldest first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// The hypothesis this run tests.
    #[arg(long = "hypothesis")]
    hypothesis_id: Option<String>,
    /// Worker pool that may claim it.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    queue: String,
    /// Retry it up to N times when it fails retryably, whatever `serve --retry-max` says
    /// (0: never).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=crate::run::MAX_RETRIES as i64))]
    retry_max: Option<u32>,
    /// The most it may cost, in dollars (GPU time and LLM calls, all attempts): at 80% an
    /// alert, at 100% it is stopped with BUDGET_EXCEEDED [default: its queue's
    /// `serve --queue-budget`, else none].
    #[arg(long, value_name = "USD", value_parser = budget)]
    budget_usd: Option<f64>,
    /// Print the run document as JSON instead of its id.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Print the run document as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Why, for the record.
    #[arg(long)]
    reason: Option<String>,
    /// Print the run document as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// A comment, for the record.
    #[arg(long)]
    comment: Option<String>,
    /// Print the run document as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Why, for the record (the run's error message).
    #[arg(long)]
    reason: String,
    /// Print the run document as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(args) => list(args).await,
        Command::Show(args) => show(args).await,
        Command::Logs(args) => logs::logs(args).await,
        Command::Create(args) => create(args).await,
        Command::Reset(args) => reset(args).await,
        Command::Cancel(args) => cancel(args).await,
        Command::Approve(args) => decide(args.source, args.id, ReviewDecision::Approved, args.comment, args.json).await,
        Command::Reject(args) => {
            decide(args.source, args.id, ReviewDecision::Rejected, Some(args.reason), args.json).await
        }
        Command::Pull(args) => pull::run(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let filter = RunFilter { statuses: args.statuses, queue: args.queue, ..Default::default() };
    let runs = newest_runs(store.as_ref(), filter, args.limit).await?;
    let mut histories = Histories::default();
    histories.load(store.as_ref(), &runs).await;
    let now = display_now()?;
    let eta = |run: &Run| histories.eta(run, now).filter(|_| run.status == RunStatus::Running);
    if args.json {
        let runs: Vec<serde_json::Value> = runs.iter().map(|run| with_eta(run, eta(run))).collect::<Result<_, _>>()?;
        super::print(serde_json::to_string_pretty(&runs)?)?;
    } else {
        super::print(view::runs_table(&runs, eta, now, Look::for_stdout()))?;
    }
    Ok(())
}

/// Up to `limit` runs matching `filter`, newest first, over as many pages as that takes.
async fn newest_runs(store: &dyn Operator, mut filter: RunFilter, limit: usize) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    while runs.len() < limit {
        filter.limit = (limit - runs.len()).min(MAX_LIMIT);
        let page = store.list(&filter).await?;
        runs.extend(page.items);
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => break,
        }
    }
    Ok(runs)
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let id = resolve_run(store.as_ref(), &args.id).await?;
    let look = Look { raw: args.raw, ..Look::for_stdout() };
    match (args.follow.follow, args.json) {
        (false, true) => {
            let run = get_run(store.as_ref(), &id).await?;
            let mut histories = Histories::default();
            histories.load(store.as_ref(), std::slice::from_ref(&run)).await;
            super::print(serde_json::to_string_pretty(&with_eta(&run, histories.eta(&run, display_now()?))?)?)?
        }
        (false, false) => super::print_as(look, detail(store.as_ref(), &id, args.logs, look).await?)?,
        (true, true) => follow_json(store.as_ref(), id, args.follow.interval).await?,
        (true, false) => follow_live(store.as_ref(), id, args.logs, args.follow.interval, look).await?,
    }
    Ok(())
}

async fn get_run(store: &dyn Operator, id: &RunId) -> anyhow::Result<Run> {
    Ok(store.get(id).await?.ok_or_else(|| crate::store::Error::NotFound(id.clone()))?)
}

/// The `runs show` text: the run, its artifacts and its latest `log_lines` log lines.
pub(crate) async fn detail(store: &dyn Operator, id: &RunId, log_lines: usize, look: Look) -> anyhow::Result<String> {
    let run = get_run(store, id).await?;
    let mut histories = Histories::default();
    histories.load(store, std::slice::from_ref(&run)).await;
    let now = display_now()?;
    let eta = histories.eta(&run, now);
    let artifacts = store.artifacts(id).await?;
    let mut logs = Vec::new();
    if log_lines > 0 {
        let latest = EventFilter { types: vec![LOG_EVENT_TYPE.into()], limit: log_lines, ..Default::default() };
        logs = store.list_recent_events(id, &latest).await?.items;
        logs.reverse();
    }
    Ok(view::run_detail(&run, &artifacts, &logs, eta, now, look))
}

/// `runs show --follow --json`: the run, every event stored after it (NDJSON), the final run.
async fn follow_json(store: &dyn Operator, id: RunId, interval: Duration) -> anyhow::Result<()> {
    // The cursor first, then the document: nothing stored in between is lost (at worst an
    // event shows in both).
    let mut tail = follow::tail_from_latest(store, &id, EventFilter::default()).await?;
    super::print(follow::run_line(&get_run(store, &id).await?)?)?;
    let run = follow::watch(tail.as_mut(), interval, |update| {
        if let Update::Events(events) = update {
            for stored in &events {
                super::print(follow::event_line(stored))?;
            }
        }
        Ok(())
    })
    .await?;
    super::print(follow::run_line(&run)?)?;
    follow::outcome(&run)
}

/// `runs show --follow`: the run's detail, then new log lines and artifacts on stdout under
/// live bars on stderr, then one line with how it ended.
pub(crate) async fn follow_live(
    store: &dyn Operator,
    id: RunId,
    log_lines: usize,
    interval: Duration,
    look: Look,
) -> anyhow::Result<()> {
    let shown = EventFilter {
        types: vec![LOG_EVENT_TYPE.into(), EventType::ArtifactRegistered.name().into()],
        ..Default::default()
    };
    let mut tail = follow::tail_from_latest(store, &id, shown).await?;
    super::print_as(look, detail(store, &id, log_lines, look).await?)?;
    // Read once: the estimate moves with the run's own progress, the history only as other
    // runs of the queue complete.
    let mut histories = Histories::default();
    histories.load_queue(store, &get_run(store, &id).await?.queue).await;
    crate::notice!("following run {id} until it ends (Ctrl-C stops watching; the run goes on)");
    let mut live = LiveView::new();
    let watched = follow::watch(tail.as_mut(), interval, |update| {
        match update {
            Update::Events(events) => {
                let lines = events
                    .iter()
                    .filter_map(|stored| view::log_line(stored, look).or_else(|| view::artifact_line(stored, look)));
                for line in lines {
                    live.println(&line, look)?;
                }
            }
            Update::Run(run) => {
                let now = display_now()?;
                live.update(run, histories.eta(run, now), now)
            }
        }
        Ok(())
    })
    .await;
    live.finish();
    let run = watched?;
    let took = run.elapsed_s(display_now()?).map_or(String::new(), |took| format!(" after {}", view::duration(took)));
    super::print(format!("run {} {}{took}", run.id, run.status))?;
    follow::outcome(&run)
}

/// When `--since` starts.
fn budget(text: &str) -> Result<f64, String> {
    let usd: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of dollars, such as 50"))?;
    crate::run::cost::check_budget(usd, "--budget-usd")?;
    Ok(usd)
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let idea = read_idea(&args.idea)?;
    let store = args.source.open().await?;
    let new_run = NewRun {
        hypothesis_id: args.hypothesis_id,
        priority: args.priority,
        queue: args.queue,
        retry_max: args.retry_max,
        budget_usd: args.budget_usd,
        ..NewRun::new(idea)
    };
    let run = store.enqueue(new_run).await?;
    if args.json {
        super::print(serde_json::to_string_pretty(&run)?)?;
    } else {
        super::print(run.id)?;
    }
    Ok(())
}

async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let id = resolve_run(store.as_ref(), &args.id).await?;
    let run = store.reset(&id).await?;
    if args.json {
        super::print(serde_json::to_string_pretty(&run)?)?;
    }
    crate::notice!("run {} is QUEUED again (retry {})", run.id, run.retry_count);
    Ok(())
}

async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let id = resolve_run(store.as_ref(), &args.id).await?;
    let run = store.request_cancel(&id, &operator(), args.reason).await?;
    if args.json {
        super::print(serde_json::to_string_pretty(&run)?)?;
    }
    match run.status {
        RunStatus::Canceled => crate::notice!("run {} canceled", run.id),
        _ => crate::notice!(
            "cancel requested: run {}'s worker will stop it (`scientist runs show {} --follow` to watch)",
            run.id,
            run.id
        ),
    }
    Ok(())
}

/// `runs approve` and `runs reject`: the decision goes through `Store::decide_review`.
async fn decide(
    source: OperatorArgs,
    id: RunId,
    verdict: ReviewDecision,
    comment: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let store = source.open().await?;
    let id = resolve_run(store.as_ref(), &id).await?;
    let decision = Decision { verdict, by: operator(), comment };
    let run = store.decide_review(&id, decision).await?;
    if json {
        super::print(serde_json::to_string_pretty(&run)?)?;
    }
    match run.status {
        RunStatus::Running => crate::notice!("run {} approved: its worker goes on with the next stage", run.id),
        status => crate::notice!("run {} {}: it is {status}", run.id, verdict.as_str()),
    }
    Ok(())
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    text.parse()
}

fn read_idea(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the idea from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading idea file {}", path.display()))?
    };
    serde_json::from_str(&text).map_err(|err| {
        UsageError(format!("idea file {} is not valid JSON ({err}); pass a JSON object", path.display())).into()
    })
}

/// Who an operator action is recorded as.
fn operator() -> String {
    std::env::var("USER").map(|user| format!("operator:{user}")).unwrap_or_else(|_| "operator".into())
}
