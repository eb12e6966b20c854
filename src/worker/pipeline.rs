//! The pipeline a worker runs for each claimed run, read from a TOML file (`--config`):
//! one command for the whole run, or one command per stage, each with an optional timeout
//! and an optional human review when it ends (`review = true`).
//! `examples/pipeline.toml` is the documented example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::run::Stage;

/// A command: a string runs through `sh -c` (so `$VARIABLES` and pipes work), a list runs
/// as given (program, then arguments).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(line) => vec!["sh".into(), "-c".into(), line.clone()],
            Command::Argv(argv) => argv.clone(),
        }
    }

    /// How it reads in messages.
    pub fn display(&self) -> String {
        match self {
            Command::Shell(line) => line.clone(),
            Command::Argv(argv) => argv.join(" "),
        }
    }
}

/// One child process of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The stage it is (`None` for a whole-run command: the pipeline reports its stages).
    pub stage: Option<Stage>,
    pub command: Command,
    pub timeout: Option<Duration>,
    /// How long the stage may go without progress before it counts as stalled (over
    /// `--stall-after`).
    pub stall_after: Option<Duration>,
    /// Ask a person to decide when the step ends well (AWAITING_HUMAN): after the last step
    /// the worker leaves the run to them; before it, the worker waits for the decision.
    pub review: bool,
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// What runs for an experiment run; empty in a config for ideation only.
    pub steps: Vec<Step>,
    /// What runs for an ideation request (`[ideation]`), for `--mode ideation|hybrid`.
    pub ideation: Option<Step>,
    /// Extra environment for every step.
    pub env: BTreeMap<String, String>,
    /// Where run directories are made, if the file says (relative to the file).
    pub runs_dir: Option<PathBuf>,
    /// Where artifacts go, if the file says: a URL, `none`, or a directory (relative to the file).
    pub artifacts: Option<String>,
    /// The directory of the config file, given to the child as `SCIENTIST_CONFIG_DIR`.
    pub config_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the pipeline config {path}: {source}; pass --config PATH (see examples/pipeline.toml)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the pipeline config {path} is invalid: {reason} (see examples/pipeline.toml)")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    command: Option<Command>,
    timeout: Option<String>,
    runs_dir: Option<PathBuf>,
    artifacts: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, rename = "stage")]
    stages: Vec<RawStage>,
    ideation: Option<RawIdeation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdeation {
    command: Command,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    command: Command,
    timeout: Option<String>,
    stall_after: Option<String>,
    #[serde(default)]
    review: bool,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Pipeline, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        // `pipeline.toml`'s parent is the empty path: the current directory, made absolute, so
        // that a stage's `"$SCIENTIST_CONFIG_DIR/stage.py"` never becomes `/stage.py`.
        let config_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let config_dir = std::fs::canonicalize(config_dir)
            .or_else(|_| std::path::absolute(config_dir))
            .unwrap_or_else(|_| config_dir.to_owned());
        Pipeline::parse(&text, &config_dir).map_err(|reason| Error::Invalid { path: path.to_owned(), reason })
    }

    /// Parses a config whose relative paths are relative to `config_dir`.
    pub fn parse(text: &str, config_dir: &Path) -> Result<Pipeline, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| err.to_string().trim_end().to_owned())?;
        let steps = match (raw.command, raw.stages.is_empty()) {
            (Some(_), false) => {
                return Err("give either `command` (one for the whole run) or [[stage]] tables, not both".into());
            }
            (None, true) if raw.ideation.is_some() => Vec::new(),
            (None, true) => {
                return Err("no command: set `command = \"...\"`, or add [[stage]] tables with `name` and `command` \
                            (or an [ideation] table, for an ideation worker)"
                    .into());
            }
            (Some(command), true) => {
                check_command(&command, "command")?;
                let timeout = parse_timeout(raw.timeout.as_deref(), "timeout")?;
                vec![Step { stage: None, command, timeout, stall_after: None, review: false }]
            }
            (None, false) => {
                if raw.timeout.is_some() {
                    return Err("a top-level `timeout` goes with `command`; give each [[stage]] its own".into());
                }
                let mut steps: Vec<Step> = Vec::new();
                for (index, stage) in raw.stages.into_iter().enumerate() {
                    let at = format!("stage {} ({})", index + 1, stage.name);
                    let name = Stage::try_from(stage.name.clone()).map_err(|err| format!("{at}: {err}"))?;
                    if steps.iter().any(|step| step.stage == Some(name)) {
                        return Err(format!("{at}: stage {name} appears twice"));
                    }
                    check_command(&stage.command, &format!("{at}: command"))?;
                    let timeout = parse_timeout(stage.timeout.as_deref(), &format!("{at}: timeout"))?;
                    let stall_after = parse_timeout(stage.stall_after.as_deref(), &format!("{at}: stall_after"))?;
                    if stall_after.is_some_and(|after| after.is_zero()) {
                        return Err(format!("{at}: stall_after must be above zero, e.g. \"2h\""));
                    }
                    let review = stage.review;
                    steps.push(Step { stage: Some(name), command: stage.command, timeout, stall_after, review });
                }
                steps
            }
        };
        let ideation = match raw.ideation {
            None => None,
            Some(ideation) => {
                check_command(&ideation.command, "[ideation] command")?;
                let timeout = parse_timeout(ideation.timeout.as_deref(), "[ideation] timeout")?;
                Some(Step { stage: None, command: ideation.command, timeout, stall_after: None, review: false })
            }
        };
        if let Some(name) = raw.env.keys().find(|name| name.is_empty() || name.contains(['=', '\0'])) {
            return Err(format!("[env]: {name:?} is not a valid variable name"));
        }
        let runs_dir = raw.runs_dir.map(|dir| if dir.is_relative() { config_dir.join(dir) } else { dir });
        let artifacts = raw.artifacts.map(|spec| {
            let relative_dir = !spec.contains("://") && spec != "none" && Path::new(&spec).is_relative();
            if relative_dir { config_dir.join(spec).display().to_string() } else { spec }
        });
        Ok(Pipeline { steps, ideation, env: raw.env, runs_dir, artifacts, config_dir: config_dir.to_owned() })
    }
}

fn check_command(command: &Command, at: &str) -> Result<(), String> {
    let empty = match command {
        Command::Shell(line) => line.trim().is_empty(),
        Command::Argv(argv) => argv.first().is_none_or(|program| program.is_empty()),
    };
    if empty { Err(format!("{at} is empty")) } else { Ok(()) }
}

fn parse_timeout(text: Option<&str>, at: &str) -> Result<Option<Duration>, String> {
    text.map(|text| {
        humantime::parse_duration(text)
            .map_err(|err| format!("{at} {text:?} is not a duration like \"90m\" or \"2h\": {err}"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_may_set_its_stall_time_above_zero() {
        let text =
            |stall: &str| format!("[[stage]]\nname = \"Stage_1\"\ncommand = \"true\"\nstall_after = \"{stall}\"\n");
        let pipeline = Pipeline::parse(&text("2h"), Path::new("/")).expect("valid");
        assert_eq!(pipeline.steps[0].stall_after, Some(Duration::from_secs(7200)));
        let err = Pipeline::parse(&text("0s"), Path::new("/")).expect_err("zero");
        assert!(err.contains("stall_after must be above zero"), "{err}");
        let err = Pipeline::parse(&text("soon"), Path::new("/")).expect_err("not a duration");
        assert!(err.contains("stall_after \"soon\" is not a duration"), "{err}");
    }

    #[test]
    fn stages_with_timeouts() {
        let text = r#"
            runs_dir = "runs"
            [env]
            PYTHONUNBUFFERED = "1"
            [[stage]]
            name = "Stage_1"
            command = ["python3", "train.py"]
            timeout = "2h"
            [[stage]]
            name = "Stage_2_baseline_tuning"
            command = "python3 tune.py | tee tune.log"
            review = true
        "#;
        let pipeline = Pipeline::parse(text, Path::new("/cfg")).expect("valid");
        assert_eq!(pipeline.steps.len(), 2);
        assert_eq!(pipeline.steps[0].stage, Some(Stage::Stage1));
        assert_eq!(pipeline.steps[0].timeout, Some(Duration::from_secs(7200)));
        assert_eq!(pipeline.steps[1].stage, Some(Stage::Stage2));
        assert_eq!(pipeline.steps[1].command.argv()[..2], ["sh", "-c"]);
        assert_eq!((pipeline.steps[0].review, pipeline.steps[1].review), (false, true));
        assert_eq!(pipeline.runs_dir, Some(PathBuf::from("/cfg/runs")));
        assert_eq!(pipeline.artifacts, None);
    }

    #[test]
    fn artifacts_by_url_or_directory() {
        let parse = |line: &str| {
            let text = format!("{line}\ncommand = \"true\"");
            Pipeline::parse(&text, Path::new("/cfg")).expect("valid").artifacts
        };
        assert_eq!(parse("artifacts = \"s3://bucket/exp\"").as_deref(), Some("s3://bucket/exp"));
        assert_eq!(parse("artifacts = \"store\"").as_deref(), Some("/cfg/store"));
        assert_eq!(parse("artifacts = \"/data/a\"").as_deref(), Some("/data/a"));
        assert_eq!(parse("artifacts = \"none\"").as_deref(), Some("none"));
    }

    #[test]
    fn an_ideation_command_alone_or_beside_stages() {
        let alone = Pipeline::parse("[ideation]\ncommand = \"python3 ideas.py\"\ntimeout = \"20m\"", Path::new("/"))
            .expect("valid");
        assert!(alone.steps.is_empty());
        assert_eq!(alone.ideation.map(|step| step.timeout), Some(Some(Duration::from_secs(1200))));
        let both = Pipeline::parse("command = \"run.sh\"\n[ideation]\ncommand = [\"ideas.sh\"]", Path::new("/"))
            .expect("valid");
        assert_eq!(
            (both.steps.len(), both.ideation.map(|step| step.command.argv())),
            (1, Some(vec!["ideas.sh".into()]))
        );
        let err = Pipeline::parse("[ideation]\ncommand = \"\"", Path::new("/")).expect_err("empty");
        assert!(err.contains("[ideation] command is empty"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("", "no command"),
            ("command = \"a\"\n[[stage]]\nname = \"Stage_1\"\ncommand = \"b\"", "not both"),
            ("[[stage]]\nname = \"Stage_9\"\ncommand = \"b\"", "unknown stage \"Stage_9\""),
            ("command = \"a\"\ntimeout = \"soon\"", "not a duration"),
            ("command = []", "command is empty"),
            ("comand = \"a\"", "unknown field `comand`"),
        ];
        for (text, expected) in cases {
            let err = Pipeline::parse(text, Path::new("/")).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
