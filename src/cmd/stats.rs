//! `scientist stats`: counts by status. Throughput, workers and durations arrive with issue 5.

use comfy_table::Table;

use super::StoreArgs;

/// Flags of `scientist stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let counts = store.counts().await?;
    if args.json {
        let by_status: serde_json::Map<String, serde_json::Value> =
            counts.iter().map(|(status, n)| (status.to_string(), (*n).into())).collect();
        super::print(serde_json::json!({ "byStatus": by_status }))?;
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["status", "runs"]);
    for (status, n) in counts {
        table.add_row([status.to_string(), n.to_string()]);
    }
    super::print(table)?;
    Ok(())
}
