//! `scientist help TOPIC`, `scientist help COMMAND…` and `scientist man DIR`, through the
//! built binary; and `docs/pipelines.md`, whose examples must stay valid pipeline files.

use std::path::Path;

use assert_cmd::Command;
use clap::CommandFactory;
use scientist::event::FailureCode;
use scientist::worker::pipeline::Pipeline;

fn scientist() -> Command {
    let mut command = Command::cargo_bin("scientist").expect("binary is built");
    command.env_clear().env("NO_COLOR", "1").env("COLUMNS", "100");
    command
}

fn stdout(command: &mut Command) -> String {
    let assert = command.assert().success();
    String::from_utf8(assert.get_output().stdout.clone()).expect("utf-8")
}

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

#[test]
fn a_topic_prints_its_page_from_docs() {
    for (topic, file) in [("events", "events.md"), ("pipelines", "pipelines.md")] {
        let page = stdout(scientist().args(["help", topic]));
        assert_eq!(page.trim_end(), doc(file).trim_end(), "scientist help {topic} is docs/{file}");
    }
}

#[test]
fn help_of_a_command_is_its_help_and_the_root_lists_the_topics() {
    let by_help = stdout(scientist().args(["help", "runs", "list"]));
    let by_flag = stdout(scientist().args(["runs", "list", "--help"]));
    assert_eq!(by_help, by_flag);
    assert!(by_help.contains("Usage: scientist runs list"), "{by_help}");

    let root = stdout(scientist().arg("--help"));
    assert_eq!(stdout(scientist().arg("help")), root, "`scientist help` is `scientist --help`");
    for topic in ["events", "pipelines"] {
        assert!(root.lines().any(|line| line.trim_start().starts_with(topic)), "{topic} missing from:\n{root}");
    }
}

#[test]
fn an_unknown_topic_is_a_usage_error_naming_the_topics() {
    let assert = scientist().args(["help", "runs", "nosuch"]).assert().code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).expect("utf-8");
    assert!(stderr.contains("\"nosuch\" is neither a topic (events, pipelines) nor a command"), "{stderr}");
    assert!(assert.get_output().stdout.is_empty(), "nothing on stdout");
}

/// Every command path of the CLI, as man page names (`scientist-runs-list`).
fn page_names(command: &clap::Command, prefix: &str, names: &mut Vec<String>) {
    names.push(prefix.to_owned());
    for sub in command.get_subcommands() {
        page_names(sub, &format!("{prefix}-{}", sub.get_name()), names);
    }
}

#[test]
fn man_writes_a_page_per_command_and_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = stdout(scientist().arg("man").arg(dir.path()));

    let mut expected = Vec::new();
    page_names(&scientist::cmd::Cli::command(), "scientist", &mut expected);
    assert!(expected.len() > 20, "the CLI has its subcommands: {expected:?}");
    let mut written: Vec<String> = std::fs::read_dir(dir.path().join("man1"))
        .expect("man1")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut wanted: Vec<String> = expected.iter().map(|name| format!("{name}.1")).collect();
    wanted.sort();
    assert_eq!(written, wanted, "one page per command, no `help` pseudo-commands");
    assert!(printed.contains(&format!("{} man pages", wanted.len() + 2)), "{printed}");

    // A command's page names every flag its --help names.
    let page = std::fs::read_to_string(dir.path().join("man1/scientist-runs-list.1")).expect("runs list page");
    let help = stdout(scientist().args(["runs", "list", "--help"]));
    let flags: Vec<&str> = help.split_whitespace().filter_map(|word| word.strip_prefix("--")).collect();
    assert!(flags.len() > 5, "{help}");
    for flag in flags {
        let flag = flag.trim_end_matches([',', '.', ')']).split(['=', '<']).next().expect("name");
        assert!(page.contains(&format!("\\-\\-{}", flag.replace('-', "\\-"))), "--{flag} missing from the man page");
    }

    // A topic's page holds its whole text, every line shown as written.
    let events = std::fs::read_to_string(dir.path().join("man7/scientist-events.7")).expect("events page");
    assert!(events.starts_with(".TH scientist-events 7"), "{}", &events[..80.min(events.len())]);
    let body: Vec<&str> =
        events.lines().skip_while(|line| *line != ".nf").skip(1).take_while(|line| *line != ".fi").collect();
    assert_eq!(body.len(), doc("events.md").lines().count());
    assert!(body.iter().all(|line| !line.starts_with(['.', '\''])), "no line is read as a roff request");
    assert!(events.contains("### `ai.run.stage_progress`"));
}

/// The fenced ```toml blocks of a markdown page.
fn toml_blocks(page: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match (&mut current, line.trim()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_example_in_the_pipeline_page_is_a_valid_pipeline() {
    let blocks = toml_blocks(&doc("pipelines.md"));
    assert!(blocks.len() >= 3, "the page has its examples: {}", blocks.len());
    for block in &blocks {
        if let Err(err) = Pipeline::parse(block, Path::new("/pipelines")) {
            panic!("docs/pipelines.md example does not parse: {err}\n{block}");
        }
    }
    let staged =
        blocks.iter().find_map(|block| Pipeline::parse(block, Path::new("/p")).ok().filter(|p| p.steps.len() == 3));
    let staged = staged.expect("the three-stage example");
    assert!(staged.steps[2].review, "its last stage is a review gate");
    assert_eq!(staged.runs_dir.as_deref(), Some(Path::new("/p/runs")), "runs_dir is relative to the file");
}

#[test]
fn the_pipeline_page_names_real_failure_codes_and_their_retry_rule() {
    let page = doc("pipelines.md");
    let line = page.lines().find(|line| line.contains("Codes:")).expect("the codes line");
    let codes = |label: &str| -> Vec<FailureCode> {
        let part = line.split(label).next().expect("part").rsplit(';').next().expect("part");
        part.split('`')
            .skip(1)
            .step_by(2)
            .map(|code| code.replace("<n>", "1").parse().unwrap_or_else(|err| panic!("{err}")))
            .collect()
    };
    let fatal = codes("(final)");
    let retryable = codes("(retryable)");
    assert!(fatal.len() >= 4 && retryable.len() >= 3, "{line}");
    assert!(fatal.iter().all(|code| !code.retryable()), "{fatal:?}");
    assert!(retryable.iter().all(|code| code.retryable()), "{retryable:?}");
}
