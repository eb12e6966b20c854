//! `scientist help [TOPIC | COMMAND…]`: a topic page (the event reference, the pipeline file)
//! or a command's full help. The pages are the files under `docs/`, built into the binary.

use clap::CommandFactory;

use super::UsageError;

/// A page of `scientist help TOPIC` (and of `scientist man`, as section 7).
pub struct Topic {
    pub name: &'static str,
    pub summary: &'static str,
    pub page: &'static str,
}

pub const TOPICS: &[Topic] = &[
    Topic {
        name: "events",
        summary: "every event type: its data fields and what it does to a run",
        page: include_str!("../../docs/events.md"),
    },
    Topic {
        name: "pipelines",
        summary: "the pipeline file `scientist work --config` runs: stages, limits, environment, review",
        page: include_str!("../../docs/pipelines.md"),
    },
];

/// Flags of `scientist help`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  scientist help pipelines        the pipeline file reference
  scientist help events | less    the event reference
  scientist help runs list        the same as `scientist runs list --help`")]
pub struct Args {
    /// A topic (events, pipelines) or a command (`runs list`); nothing lists both.
    #[arg(value_name = "TOPIC|COMMAND")]
    pub words: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let [word] = args.words.as_slice()
        && let Some(topic) = TOPICS.iter().find(|topic| topic.name == word)
    {
        super::print(topic.page.trim_end())?;
        return Ok(());
    }
    let command = super::Cli::command();
    let mut current = &command;
    for word in &args.words {
        current = current.find_subcommand(word).ok_or_else(|| unknown(&args.words, word))?;
    }
    // The help clap prints for `scientist WORDS… --help`, so that the two never differ.
    let argv = std::iter::once("scientist").chain(args.words.iter().map(String::as_str)).chain(["--help"]);
    match super::Cli::command().try_get_matches_from(argv) {
        Err(help) if help.kind() == clap::error::ErrorKind::DisplayHelp => {
            super::print(help.render().to_string().trim_end())?;
            Ok(())
        }
        Err(other) => Err(other.into()),
        Ok(_) => anyhow::bail!("`{} --help` printed no help", args.words.join(" ")),
    }
}

/// The topics, for the end of `scientist --help`.
pub fn topic_list() -> String {
    let mut list = String::from("Topics (scientist help TOPIC; scientist man DIR writes them as man pages):\n");
    for topic in TOPICS {
        list.push_str(&format!("  {:<11} {}\n", topic.name, topic.summary));
    }
    list
}

fn unknown(words: &[String], word: &str) -> UsageError {
    let topics: Vec<&str> = TOPICS.iter().map(|topic| topic.name).collect();
    UsageError(format!(
        "`scientist help {}`: {word:?} is neither a topic ({}) nor a command; `scientist help` lists both",
        words.join(" "),
        topics.join(", ")
    ))
}
