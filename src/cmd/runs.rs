//! `scientist runs …`: list, show, create, reset and cancel runs, on either store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use comfy_table::Table;

use super::{StoreArgs, UsageError};
use crate::run::{DEFAULT_QUEUE, NewRun, Run, RunId, RunStatus};
use crate::store::{DEFAULT_LIMIT, RunFilter};
use crate::time::Timestamp;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List runs, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only runs in this status (repeatable): QUEUED, SCHEDULED, RUNNING, AWAITING_HUMAN, COMPLETED, FAILED, CANCELED.
        #[arg(long = "status", value_parser = parse_status)]
        statuses: Vec<RunStatus>,
        /// At most this many runs.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Print JSON (one array of run documents) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one run.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The run id.
        id: RunId,
        /// Print the run document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a run from an idea file (JSON); prints the new run's id.
    Create {
        #[command(flatten)]
        store: StoreArgs,
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
        /// Print the run document as JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Put a FAILED or CANCELED run back in the queue.
    Reset {
        #[command(flatten)]
        store: StoreArgs,
        id: RunId,
    },
    /// Cancel a run: at once when queued, through its worker when running.
    Cancel {
        #[command(flatten)]
        store: StoreArgs,
        id: RunId,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    text.parse()
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { store, statuses, limit, json } => {
            let store = store.open().await?;
            let page = store.list(&RunFilter { statuses, limit, ..Default::default() }).await?;
            if json {
                super::print(serde_json::to_string_pretty(&page.items)?)?;
            } else {
                super::print(list_table(&page.items, Timestamp::now()))?;
            }
        }
        Command::Show { store, id, json } => {
            let store = store.open().await?;
            let run = store.get(&id).await?.ok_or(crate::store::Error::NotFound(id))?;
            if json {
                super::print(serde_json::to_string_pretty(&run)?)?;
            } else {
                super::print(show_table(&run))?;
            }
        }
        Command::Create { store, idea, priority, hypothesis_id, queue, json } => {
            let idea = read_idea(&idea)?;
            let store = store.open().await?;
            let new_run = NewRun { hypothesis_id, priority, queue, ..NewRun::new(idea) };
            let run = store.enqueue(new_run, Timestamp::now()).await?;
            if json {
                super::print(serde_json::to_string_pretty(&run)?)?;
            } else {
                super::print(run.id)?;
            }
        }
        Command::Reset { store, id } => {
            let run = store.open().await?.reset(&id, Timestamp::now()).await?;
            eprintln!("run {} is QUEUED again (retry {})", run.id, run.retry_count);
        }
        Command::Cancel { store, id, reason } => {
            let run = store.open().await?.request_cancel(&id, &operator(), reason, Timestamp::now()).await?;
            match run.status {
                RunStatus::Canceled => eprintln!("run {} canceled", run.id),
                _ => eprintln!("cancel requested: run {}'s worker will stop it", run.id),
            }
        }
    }
    Ok(())
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

fn list_table(runs: &[Run], now: Timestamp) -> Table {
    let mut table = Table::new();
    table.set_header(["id", "status", "stage", "progress", "good/buggy", "pod", "age"]);
    for run in runs {
        let (stage, progress, nodes) = match &run.current_stage {
            Some(stage) => (
                stage.name.to_string(),
                format!("{:.0}%", stage.progress * 100.0),
                format!("{}/{}", stage.good_nodes, stage.buggy_nodes),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let pod = run.pod.as_ref().map_or("-".into(), |pod| pod.id.clone());
        let age = human_duration(now.seconds_since(run.created_at));
        table.add_row([run.id.to_string(), run.status.to_string(), stage, progress, nodes, pod, age]);
    }
    table
}

fn show_table(run: &Run) -> Table {
    let mut table = Table::new();
    let mut row = |name: &str, value: String| {
        table.add_row([name.to_owned(), value]);
    };
    row("id", run.id.to_string());
    row("status", run.status.to_string());
    row("queue", format!("{} (priority {})", run.queue, run.priority));
    row("attempt", format!("{} (retries {})", run.attempt, run.retry_count));
    if let Some(worker) = &run.claimed_by {
        row("claimed by", worker.clone());
    }
    if let Some(stage) = &run.current_stage {
        row(
            "stage",
            format!(
                "{} {:.0}% ({}/{} iterations)",
                stage.name,
                stage.progress * 100.0,
                stage.iteration,
                stage.max_iterations
            ),
        );
    }
    if let Some(error) = &run.error {
        row("error", format!("{}: {}", error.error_type, error.message));
    }
    row("created", run.created_at.to_string());
    table
}

fn human_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}
