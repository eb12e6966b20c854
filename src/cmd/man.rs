//! `scientist man DIR`: man pages, one per command (`DIR/man1`, from the clap definitions, so
//! they always match the binary) and one per help topic (`DIR/man7`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::help::TOPICS;

/// Flags of `scientist man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Install for this user, then read:
  scientist man ~/.local/share/man && man scientist-runs-list
Elsewhere: scientist man ./man && man -M ./man scientist-events")]
pub struct Args {
    /// The directory to write into: pages go to DIR/man1 (commands) and DIR/man7 (topics).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let commands = args.dir.join("man1");
    let topics = args.dir.join("man7");
    for dir in [&commands, &topics] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cli = super::Cli::command();
    let written = pages(&cli) + TOPICS.len();
    clap_mangen::generate_to(cli, &commands)
        .with_context(|| format!("cannot write the command pages into {}", commands.display()))?;
    for topic in TOPICS {
        write_topic(&topics, topic.name, topic.summary, topic.page)?;
    }
    super::print(format!("{written} man pages in {} (man1, man7)", args.dir.display()))?;
    Ok(())
}

/// The pages `generate_to` writes for `command`: its own and one per subcommand, all the way down.
fn pages(command: &clap::Command) -> usize {
    1 + command.get_subcommands().map(pages).sum::<usize>()
}

/// A topic's markdown as a section-7 page: shown as written (no filling), which keeps its
/// tables and code blocks readable in `man`.
fn write_topic(dir: &Path, name: &str, summary: &str, page: &str) -> anyhow::Result<()> {
    let title = format!("scientist-{name}");
    let mut roff = format!(
        ".TH {title} 7 \"\" \"scientist {}\"\n.SH NAME\n{title} \\- {}\n.SH DESCRIPTION\n.nf\n",
        env!("CARGO_PKG_VERSION"),
        escape(summary)
    );
    for line in page.lines() {
        roff.push_str(&escape(line));
        roff.push('\n');
    }
    roff.push_str(".fi\n");
    let path = dir.join(format!("{title}.7"));
    std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))
}

/// Text roff shows as written: backslashes escaped, and a line that starts with a control
/// character (`.` or `'`) guarded by a zero-width character.
fn escape(line: &str) -> String {
    let line = line.replace('\\', "\\e");
    if line.starts_with(['.', '\'']) { format!("\\&{line}") } else { line }
}
