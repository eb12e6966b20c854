//! `scientist work`: not built yet (issue 6); the flags arrive with it.

/// Flags of `scientist work`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    Err(super::not_yet("work", 6))
}
