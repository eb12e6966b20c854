//! `scientist ideation …`: enqueue and list ideation requests (see `crate::ideation`), on
//! either store. `scientist work --mode ideation` (or `hybrid`) serves them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value};

use super::view::{self, Look};
use super::{OperatorArgs, UsageError, display_now};
use crate::ideation::{IdeationStatus, NewIdeation};
use crate::store::{DEFAULT_LIMIT, MAX_LIMIT};

/// How a request is served, shown under `scientist ideation --help` and each subcommand's.
pub const AFTER_HELP: &str = "\
A request asks for ideas about one hypothesis. `scientist work --mode ideation` (or
`--mode hybrid`, which serves ideation requests before experiment runs) claims the oldest
QUEUED request, runs the pipeline's [ideation] command with the request's fields, and
reports the ideas as `ai.ideation.generated`: they land on the hypothesis, whose ideaJson is
the first idea. The request then ends COMPLETED, or FAILED with the error.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enqueue an ideation request for a hypothesis; prints the new request's id.
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// List ideation requests, oldest first: id, hypothesis, status, attempt, worker, age, error.
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
}

const CREATE_HELP: &str = "\
The --input file is a JSON object whose fields are handed to the ideation command as the
request, e.g. {\"hypothesis\": \"smaller learning rates help\", \"numIdeas\": 3}. The fields
scientist keeps (_id, hypothesisId, status, attempt, claimedBy, error…) may not be
given: --id and --hypothesis set the first two.

Exit codes: 0 created, 2 bad flags or input file, 4 the --id is taken, 1 any other failure.

Examples:
  scientist ideation create --hypothesis hyp-42
  echo '{\"numIdeas\": 5}' | scientist ideation create --hypothesis hyp-42 --input - --json";

const LIST_HELP: &str = "\
Examples:
  scientist ideation list --status QUEUED --status RUNNING
  scientist ideation list --status failed --json | jq '.[] | {_id, error}'";

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    source: OperatorArgs,
    /// The hypothesis to generate ideas for; the ideas land on it.
    #[arg(long = "hypothesis", value_name = "HYP_ID")]
    hypothesis_id: String,
    /// JSON object file of further request fields for the ideation command (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The request's id [default: a new UUID].
    #[arg(long)]
    id: Option<String>,
    /// Print the stored request document as JSON instead of its id.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    source: OperatorArgs,
    /// Only requests in this status (repeatable): QUEUED, RUNNING, COMPLETED, FAILED.
    #[arg(long = "status", value_parser = parse_status)]
    statuses: Vec<IdeationStatus>,
    /// At most this many requests (the oldest), 1 to 1000.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = parse_limit)]
    limit: usize,
    /// Print a JSON array of the stored request documents instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => create(args).await,
        Command::List(args) => list(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let hypothesis_id = non_empty("--hypothesis", args.hypothesis_id)?;
    let id = match args.id {
        Some(id) => non_empty("--id", id)?,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let input = match &args.input {
        Some(path) => read_input(path)?,
        None => Map::new(),
    };
    let store = args.source.open().await?;
    let new = NewIdeation { id, hypothesis_id, input };
    let request = store.enqueue_ideation(new).await.map_err(|err| {
        if super::exit_code(&err) == super::exit::CONFLICT {
            err.context("--id is taken (pass another, or leave --id out for a new UUID)")
        } else {
            err
        }
    })?;
    if args.json {
        super::print(serde_json::to_string_pretty(&request.document)?)?;
    } else {
        super::print(&request.id)?;
    }
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let requests = store.list_ideation(&args.statuses, args.limit).await?;
    if args.json {
        let documents: Vec<&Map<String, Value>> = requests.iter().map(|request| &request.document).collect();
        super::print(serde_json::to_string_pretty(&documents)?)?;
    } else {
        super::print(view::ideation_table(&requests, display_now()?, Look::for_stdout()))?;
    }
    Ok(())
}

fn non_empty(flag: &str, value: String) -> Result<String, UsageError> {
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(UsageError(format!("{flag} is empty; pass an id")));
    }
    Ok(value)
}

fn parse_status(text: &str) -> Result<IdeationStatus, String> {
    text.parse()
}

fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(limit @ 1..=MAX_LIMIT) => Ok(limit),
        _ => Err(format!("{text:?} is not a number from 1 to {MAX_LIMIT}")),
    }
}

/// The `--input` file (or standard input): a JSON object, else a usage error saying what to give.
fn read_input(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let (name, text) = if path.as_os_str() == "-" {
        let text = std::io::read_to_string(std::io::stdin()).context("reading the input from standard input")?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading input file {}", path.display()))?;
        (format!("input file {}", path.display()), text)
    };
    const EXPECTED: &str = r#"pass a JSON object of request fields, e.g. {"hypothesis": "...", "numIdeas": 3}"#;
    let value: Value = serde_json::from_str(&text)
        .map_err(|err| UsageError(format!("{name} is not valid JSON ({err}); {EXPECTED}")))?;
    let fields = match value {
        Value::Object(fields) => fields,
        other => {
            return Err(UsageError(format!(
                "{name} holds {}, not a JSON object; {EXPECTED}",
                crate::event::json_kind(&other)
            ))
            .into());
        }
    };
    let taken = NewIdeation::kept_fields_in(&fields);
    if !taken.is_empty() {
        return Err(UsageError(format!(
            "{name} sets {}, which scientist keeps; leave {} out (--id and --hypothesis set _id and hypothesisId)",
            taken.join(", "),
            if taken.len() == 1 { "it" } else { "them" }
        ))
        .into());
    }
    Ok(fields)
}

/// The request fields scientist writes (`_id`, `hypothesisId`, `status`, `claimedBy`…): every
/// one a request can hold, read off a request that has been claimed and has failed.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ideation::IdeationRequest;
    use crate::time::Timestamp;

    fn request(id: &str, error: Option<&str>) -> IdeationRequest {
        let new = NewIdeation { id: id.into(), hypothesis_id: "hyp-1".into(), input: Map::new() };
        let mut request = IdeationRequest::queued(new, Timestamp::EPOCH);
        if let Some(error) = error {
            request.claim("pod-a", Timestamp::EPOCH);
            request.finish(1, Some(error.into()), Timestamp::EPOCH);
        }
        request
    }

    #[test]
    fn table_rows_and_the_empty_line() {
        let plain = Look { color: false, width: None, raw: false };
        let now = Timestamp::EPOCH.plus_seconds(400);
        let long = format!("model unavailable {}\ntraceback", "x".repeat(100));
        let text = view::ideation_table(&[request("req-1", None), request("req-2", Some(&long))], now, plain);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID") && lines[0].ends_with("ERROR"), "{text}");
        assert!(lines[1].contains("QUEUED") && lines[1].contains("6m40s") && lines[1].ends_with('-'), "{text}");
        assert!(lines[2].contains("FAILED") && lines[2].contains("pod-a") && lines[2].ends_with('…'), "{text}");
        assert!(!text.contains("traceback") && !text.contains('\x1b'), "{text}");
        let coloured =
            view::ideation_table(&[request("req-1", None)], now, Look { color: true, width: None, raw: false });
        assert!(coloured.contains("\x1b["), "{coloured:?}");
        assert!(view::ideation_table(&[], now, plain).starts_with("no ideation requests match"));
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_limit("7"), Ok(7));
        assert!(parse_limit("0").is_err() && parse_limit("1001").is_err() && parse_limit("x").is_err());
    }
}
