//! `scientist stats`: the store's figures (`Store::stats`) as tables, or as JSON for scripts.

use super::view::{self, Look};
use super::{OperatorArgs, display_now};

/// Flags of `scientist stats`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Active workers are those whose run showed a heartbeat, start or claim in the last 5 minutes.
Throughput counts runs finished in the last 24 hours. Stage durations are nearest-rank
percentiles over every completed stage. GPU-hours count one GPU per run, from its start to its
end (or its latest heartbeat while it runs). Cost sums the runs created within --window that
used a GPU, made an LLM call or have a budget, by queue and by hypothesis (the 10 that spent most,
the rest as one row). The --json shape is documented in the README.")]
pub struct Args {
    #[command(flatten)]
    pub source: OperatorArgs,

    /// Print the figures as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,

    /// How far back the cost section goes, by run creation: 24h, 7d, 30d.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::store::stats::cost::parse_window)]
    pub window: std::time::Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let stats = store.stats(display_now()?, args.window).await?;
    if args.json {
        super::print(serde_json::to_string_pretty(&stats)?)?;
    } else {
        super::print(view::stats_view(&stats, Look::for_stdout()))?;
    }
    Ok(())
}
