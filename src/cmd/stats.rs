//! `scientist stats`: the store's figures (`Store::stats`) as tables, or as JSON for scripts.

use super::view::{self, Look};
use super::{OperatorArgs, display_now};

/// Flags of `scientist stats`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Active workers are those whose run showed a heartbeat, start or claim in the last 5 minutes.
Throughput counts runs finished in the last 24 hours. Stage durations are nearest-rank
percentiles over every completed stage. GPU-hours count one GPU per run, from its start to its
end (or its latest heartbeat while it runs). The --json shape is documented in the README.")]
pub struct Args {
    #[command(flatten)]
    pub source: OperatorArgs,

    /// Print the figures as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let stats = store.stats(display_now()?).await?;
    if args.json {
        super::print(serde_json::to_string_pretty(&stats)?)?;
    } else {
        super::print(view::stats_view(&stats, Look::for_stdout()))?;
    }
    Ok(())
}
