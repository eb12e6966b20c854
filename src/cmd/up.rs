//! `scientist up`: the control plane and a worker in one process, on the embedded store and
//! loopback, with nothing to configure; with `--example`, the tour run enqueued and followed
//! live until it ends. The two halves are `serve` and `work` as they are, given flags built
//! here, so that what a newcomer watches is what a fleet runs.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use super::view::Look;
use super::{UsageError, default_store_path, runs, serve, work};
use crate::control::Operator;
use crate::run::NewRun;
use crate::store::{SqliteStore, Store};

/// The tour, built in: written out at each start, so that the worker runs what the repo shows.
const TOUR_PIPELINE: &str = include_str!("../../examples/tour/pipeline.toml");
const TOUR_STAGE: &str = include_str!("../../examples/tour/tour_stage.py");
const REPORT_HELPER: &str = include_str!("../../examples/python/scientist_report.py");
const TOUR_IDEA: &str = include_str!("../../examples/idea.json");
const PRICES: &str = include_str!("../../examples/prices.toml");

/// What a budget-stopped tour may spend: its LLM usage passes it during Stage_2.
const TOUR_BUDGET_USD: f64 = 0.05;

const AFTER_HELP: &str = "\
`up` is `scientist serve` and `scientist work` in one process: the control plane on loopback
(no token needed there), a worker running the tour pipeline (examples/tour/pipeline.toml, or
--config), both on the embedded store. Ctrl-C stops both; a run in flight ends as on SIGTERM
(WORKER_SHUTDOWN, retried by the next worker).

With --example it enqueues the tour run and follows it live (stage bars, progress, ETA, log
lines), prints the run with its artifacts and what to try next, and exits (--keep stays up).
Variants show one more thing each: `retry` (Stage_2 is preempted once and the run is retried),
`review` (a person approves after Stage_2: `scientist runs approve ID` in another terminal),
`budget` (a $0.05 budget: the run is stopped with BUDGET_EXCEEDED during Stage_2).

Exit codes: as `runs show --follow` with --example (0 completed, 8 failed, 9 canceled), else 0
once stopped; 2 bad flags.";

/// Flags of `scientist up`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Where the control plane listens: loopback only (`up` sets no token; use `serve` with
    /// one to listen beyond this machine). Port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Embedded store file [default: <data dir>/scientist/scientist.sqlite].
    #[arg(long, env = "SCIENTIST_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,

    /// The pipeline the worker runs [default: the tour, written to <data dir>/scientist/tour/].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Enqueue the tour run and follow it until it ends: `tour`, or a variant that also shows
    /// a retry, a review gate or a budget stop.
    #[arg(long, value_enum, value_name = "VARIANT", num_args = 0..=1, default_missing_value = "tour")]
    pub example: Option<Example>,

    /// With --example: stay up after the run ends (Ctrl-C stops).
    #[arg(long, requires = "example")]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Example {
    /// Four timed stages, about 30 s.
    Tour,
    /// Stage_2 is preempted on the first attempt; the run is retried and completes.
    Retry,
    /// The run waits for a person's approval after Stage_2.
    Review,
    /// A $0.05 budget stops the run with BUDGET_EXCEEDED.
    Budget,
}

/// Where `up` keeps what it writes (the tour, artifacts) beside the default store.
fn data_dir() -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir().context("no user data directory found (is HOME set?)")?.join("scientist"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "--listen {}: `up` listens on loopback only, where no token is needed; to serve other machines run \
             `scientist serve` with SCIENTIST_TOKEN",
            args.listen
        ))
        .into());
    }
    let data = data_dir()?;
    let store_path = match &args.store {
        Some(path) => path.clone(),
        None => default_store_path()?,
    };
    let tour = write_tour(&data.join("tour"), args.example)?;
    let config = args.config.clone().unwrap_or_else(|| tour.join("pipeline.toml"));
    let artifacts = data.join("artifacts");
    let listener = serve::bind(args.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let retry = args.example == Some(Example::Retry);
    let serve_args = serve_args(&store_path, &tour, &artifacts, retry)?;
    let work_args = work_args(&store_path, &config, &tour, &artifacts, retry)?;
    // Both halves write artifacts there or read them from there; serve wants it to exist.
    std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let mut serving = tokio::spawn(serve::run_on(serve_args, Some(listener)));
    wait_until_serving(&url, &mut serving).await?;
    let mut working = tokio::spawn(work::run(work_args));
    print_banner(&url, &store_path, &config);

    let followed = match args.example {
        Some(example) => tokio::select! {
            followed = follow_example(&store_path, example, &artifacts) => {
                if !args.keep {
                    stop_this_process();
                }
                followed
            }
            // A worker that stops first (a bad --config) would leave the run queued forever.
            worked = &mut working => {
                stop_this_process();
                let worked = worked.context("the worker's task")?;
                serving.await.context("the control plane's task")?.context("the control plane")?;
                return worked.context("the worker").and_then(|()| Err(anyhow::anyhow!("the worker stopped before the run ended")));
            }
        },
        None => Ok(()),
    };
    let served = serving.await.context("the control plane's task")?;
    let worked = working.await.context("the worker's task")?;
    served.context("the control plane")?;
    worked.context("the worker")?;
    followed
}

/// Writes the tour pipeline (as the variant needs it), its stage and the reporting helper it
/// imports, its idea and the example prices under `dir`.
fn write_tour(dir: &Path, example: Option<Example>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pipeline = TOUR_PIPELINE.to_owned();
    match example {
        Some(Example::Review) => pipeline = pipeline.replace("# review = true ", "review = true   "),
        Some(Example::Retry) => pipeline = pipeline.replace("[env]\n", "[env]\nTOUR_PREEMPT = \"Stage_2\"\n"),
        _ => {}
    }
    for (name, text) in [
        ("pipeline.toml", pipeline.as_str()),
        ("tour_stage.py", TOUR_STAGE),
        ("scientist_report.py", REPORT_HELPER),
        ("idea.json", TOUR_IDEA),
        ("prices.toml", PRICES),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.to_owned())
}

/// `serve`'s flags as `up` runs it (its environment still applies, as for `scientist serve`).
fn serve_args(store: &Path, tour: &Path, artifacts: &Path, retry: bool) -> anyhow::Result<serve::Args> {
    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: serve::Args,
    }
    let mut line: Vec<OsString> =
        vec!["serve".into(), "--store".into(), store.into(), "--artifacts".into(), artifacts.into()];
    line.extend(["--prices".into(), tour.join("prices.toml").into_os_string()]);
    if retry {
        line.extend(["--retry-max", "1", "--retry-backoff", "1s"].map(Into::into));
    }
    let mut args = Line::try_parse_from(line).context("the control plane's flags")?.args;
    // The embedded store, whatever the environment says.
    args.store.mongodb_url = None;
    Ok(args)
}

/// `work`'s flags as `up` runs it: on the same store, so that it needs no token.
fn work_args(store: &Path, config: &Path, tour: &Path, artifacts: &Path, retry: bool) -> anyhow::Result<work::Args> {
    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: work::Args,
    }
    let mut line: Vec<OsString> = vec!["work".into(), "--config".into(), config.into(), "--store".into(), store.into()];
    line.extend(["--artifacts".into(), artifacts.into(), "--prices".into(), tour.join("prices.toml").into()]);
    line.extend(["--poll", "500ms"].map(Into::into));
    if retry {
        line.extend(["--retry-max", "1", "--retry-backoff", "1s"].map(Into::into));
    }
    let mut args: work::Args = Line::try_parse_from(line).context("the worker's flags")?.args;
    args.store.mongodb_url = None;
    args.server = None;
    Ok(args)
}

/// Returns once the control plane answers `/health`, or with its error if it stopped.
async fn wait_until_serving(
    url: &str,
    serving: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let health = format!("{url}/health");
    loop {
        if serving.is_finished() {
            let ended = serving.await.context("the control plane's task")?;
            return Err(ended.err().unwrap_or_else(|| anyhow::anyhow!("the control plane stopped at once")));
        }
        if client.get(&health).send().await.is_ok_and(|answer| answer.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(url: &str, store: &Path, config: &Path) {
    crate::notice!(
        "scientist up: control plane on {url} (API {url}/api, metrics {url}/metrics), store {}, worker running {}\n\
         Ctrl-C stops both. Another pod's worker joins through the API with a token, after `serve` is given one:\n  \
         SCIENTIST_TOKEN=... scientist serve --listen 0.0.0.0:8080 --store {}\n  \
         SCIENTIST_SERVER=http://<this host>:8080 SCIENTIST_TOKEN=... scientist work --config PIPELINE",
        store.display(),
        config.display(),
        store.display(),
    );
}

/// Enqueues the tour run, follows it live until it ends, and prints where it went and what to
/// try next. The follow's outcome (the run's end) is the command's.
async fn follow_example(store_path: &Path, example: Example, artifacts: &Path) -> anyhow::Result<()> {
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        SqliteStore::open(store_path)
            .await
            .with_context(|| format!("opening the embedded store at {}", store_path.display()))?,
    );
    let idea: serde_json::Value = serde_json::from_str(TOUR_IDEA).context("the tour's idea")?;
    let mut new_run = NewRun::new(idea);
    if example == Example::Budget {
        new_run.budget_usd = Some(TOUR_BUDGET_USD);
    }
    let operator: &dyn Operator = &store;
    let run = operator.enqueue(new_run).await?;
    let id = run.id.clone();
    let variant = clap::ValueEnum::to_possible_value(&example).map(|value| value.get_name().to_owned());
    crate::notice!("scientist up: enqueued the {} example, run {id}", variant.unwrap_or_default());
    if example == Example::Review {
        crate::notice!(
            "after Stage_2 it waits for you: `scientist runs approve {id}` (or `runs reject {id} --reason …`)"
        );
    }
    let look = Look::for_stdout();
    let followed = runs::follow_live(operator, id.clone(), 5, Duration::from_secs(1), look).await;
    super::print_as(look, runs::detail(operator, &id, 0, look).await?)?;
    super::print(format!(
        "\nIts artifacts are in {} (and `scientist runs pull {id}` fetches them).\nTry next:\n  \
         scientist runs list\n  scientist runs logs {id}\n  scientist stats",
        artifacts.join("runs").join(id.as_str()).display()
    ))?;
    followed
}

/// Asks this process to stop as Ctrl-C would: `serve` and `work` each end on SIGTERM, the
/// worker's run (if any) as on any SIGTERM.
fn stop_this_process() {
    // SAFETY: kill(2) on our own pid with a signal both halves handle; no memory is involved.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}
