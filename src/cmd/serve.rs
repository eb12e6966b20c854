//! `scientist serve`: not built yet (issue 4); the flags arrive with it.

/// Flags of `scientist serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    Err(super::not_yet("serve", 4))
}
