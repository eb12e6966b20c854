//! `scientist completions SHELL`: a completion script for the shell, on stdout.

use clap::CommandFactory;
use clap_complete::Shell;

/// Flags of `scientist completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Install, for example:
  bash: scientist completions bash > ~/.local/share/bash-completion/completions/scientist
  zsh:  scientist completions zsh > ~/.zfunc/_scientist   (with ~/.zfunc in $fpath)
  fish: scientist completions fish > ~/.config/fish/completions/scientist.fish")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "scientist", &mut script);
    // Through `print` so that a closed pipe is not an error.
    super::print(String::from_utf8_lossy(&script).trim_end())?;
    Ok(())
}
