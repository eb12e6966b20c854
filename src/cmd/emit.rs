//! `scientist emit TYPE --run ID` builds one valid event and sends it; `--batch FILE`
//! sends NDJSON. With `--spool`, what cannot be delivered now is kept on disk, in the
//! spool format a worker also drains; every `emit` first sends what was kept, oldest first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::{UsageError, exit};
use crate::control::{self, ControlPlane, HttpControlPlane};
use crate::emit::{self, DrainError, SpoolDir};
use crate::event;
use crate::event::wire::Rejected;
use crate::run::RunId;
use crate::time::Timestamp;

pub use crate::control::SendError as EmitError;

/// An event as a JSON object, ready to send.
type EventObject = Map<String, Value>;

/// Flags of `scientist emit`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  scientist emit ai.run.stage_progress --run R1 --data '{\"stage\": \"Stage_1\", \"progress\": 0.4}'
  scientist emit ai.run.log --run R1 --data @line.json --spool
  scientist emit --batch events.ndjson --run R1     # lines may leave out id, time, source, subject

Exit codes: 0 accepted (or kept in the spool with --spool), 2 invalid before sending,
5 rejected by the control plane, 6 unreachable, 7 missing or wrong token.")]
pub struct Args {
    /// Event type, e.g. ai.run.stage_progress (see docs/events.md; unknown ai.* types are stored).
    #[arg(required_unless_present = "batch")]
    pub event_type: Option<String>,

    /// The run the event is about (with --batch: for lines that name none).
    #[arg(long = "run", required_unless_present = "batch")]
    pub run_id: Option<RunId>,

    /// The event's data: a JSON object, `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, default_value = "{}", conflicts_with = "batch")]
    pub data: String,

    /// Send an NDJSON file (`-` for stdin) of events instead; missing id, time, source and
    /// specversion are filled in, bad lines are reported by number and the rest is sent.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["event_type", "seq"])]
    pub batch: Option<String>,

    /// Control plane URL [default: http://127.0.0.1:8080].
    #[arg(long, env = "SCIENTIST_SERVER")]
    pub server: Option<String>,

    /// Ingest API base URL; a worker sets it for its child process and it wins over --server.
    #[arg(long, env = "SCIENTIST_EMIT_URL")]
    pub emit_url: Option<String>,

    /// Bearer token for the control plane.
    #[arg(long, env = "SCIENTIST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The event's `source` [default: pod://<RUNPOD_POD_ID or host name>].
    #[arg(long)]
    pub source: Option<String>,

    /// Per-run sequence number (`seq` extension).
    #[arg(long)]
    pub seq: Option<u64>,

    /// The worker's claim (`attempt` extension), for fencing.
    #[arg(long, env = "SCIENTIST_ATTEMPT")]
    pub attempt: Option<u32>,

    /// Keep events that cannot be delivered now on disk (exit 0); the next `emit`, or a
    /// worker started on the same spool directory (`work --spool-dir`), sends them.
    #[arg(long)]
    pub spool: bool,

    /// The spool directory [default: <data dir>/scientist/spool].
    #[arg(long, env = "SCIENTIST_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Print the server's answer as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl EmitError {
    pub fn exit_code(&self) -> u8 {
        match self {
            EmitError::Rejected { .. } => exit::REJECTED,
            EmitError::Auth { .. } => exit::AUTH,
            EmitError::Unreachable { .. } => exit::UNREACHABLE,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    super::warn_of_a_typed_token();
    let source = args.source.clone().unwrap_or_else(emit::default_source);
    let (events, invalid) = match &args.batch {
        Some(batch) => read_batch(batch, &args, &source)?,
        None => (vec![single(&args, &source)?], Vec::new()),
    };
    let base = match (&args.emit_url, &args.server) {
        (Some(url), _) | (None, Some(url)) => url.clone(),
        (None, None) => "http://127.0.0.1:8080".to_owned(),
    };
    let plane = HttpControlPlane::new(&base, args.token.clone())?;
    let spool = spool_for(&args)?;
    let backlog = match &spool {
        Some(spool) => drain(spool, &plane).await?,
        None => Ok(()),
    };
    let lines: Vec<Arc<str>> = events.iter().map(|event| Arc::from(Value::Object(event.clone()).to_string())).collect();
    let sent = match backlog {
        // Behind older events that are still waiting: queue up after them.
        Err(err) if args.spool => Err(err),
        _ => send(&plane, &events, &lines, args.batch.is_some()).await,
    };
    let answer = match sent {
        Ok(answer) => answer,
        Err(err) if args.spool && err.is_retryable() => {
            let spool = spool.context("no spool directory: pass --spool-dir")?;
            let path =
                spool.write_segment(&lines).with_context(|| format!("keeping events in {}", spool.dir().display()))?;
            crate::notice!(
                warn,
                kept = events.len(),
                path = %path.display(),
                "kept {} event(s) in {} ({err}); the next emit or worker sends them",
                events.len(),
                path.display()
            );
            if args.json {
                super::print(json!({ "spooled": events.len(), "path": path }))?;
            }
            // A wrong token will not fix itself: say so with its exit code, the events are safe.
            return match err {
                EmitError::Auth { .. } => Err(err.into()),
                _ => Ok(()),
            };
        }
        Err(err) => return Err(err.into()),
    };
    report(&args, &answer, &invalid)
}

/// The spool to drain and keep in: the named or default directory; with no `--spool`,
/// only when it already exists (nothing is created for a plain emit).
fn spool_for(args: &Args) -> anyhow::Result<Option<SpoolDir>> {
    let Some(dir) = args.spool_dir.clone().or_else(SpoolDir::default_dir) else { return Ok(None) };
    if !args.spool && !dir.is_dir() {
        return Ok(None);
    }
    Ok(Some(SpoolDir::open(&dir).with_context(|| format!("opening the spool {}", dir.display()))?))
}

/// Sends what was kept in the spool. Ok(Err) when the control plane cannot take it now. A
/// spool a worker holds is that worker's to send: the new events go straight out.
async fn drain(spool: &SpoolDir, plane: &HttpControlPlane) -> anyhow::Result<Result<(), EmitError>> {
    let reading = || format!("reading the spool {}", spool.dir().display());
    let Some(lock) = spool.try_lock().with_context(reading)? else {
        tracing::info!(spool = %spool.dir().display(), "a worker holds the spool; it sends what is kept there");
        return Ok(Ok(()));
    };
    match spool.drain(&lock, plane).await {
        Ok(drained) => {
            if drained.delivered + drained.refused > 0 {
                crate::notice!(
                    sent = drained.delivered,
                    spool = %spool.dir().display(),
                    "sent {} event(s) kept in {} earlier",
                    drained.delivered,
                    spool.dir().display()
                );
            }
            if drained.refused > 0 {
                tracing::warn!(refused = drained.refused, spool = %spool.dir().display(),
                    "the control plane refused spooled events; they are kept in {}", emit::spool::REJECTED_FILE);
            }
            Ok(Ok(()))
        }
        Err(DrainError::Send(err)) => Ok(Err(send_error(plane, err))),
        Err(DrainError::Io(err)) => Err(err).with_context(reading),
    }
}

async fn send(
    plane: &HttpControlPlane,
    events: &[Map<String, Value>],
    lines: &[Arc<str>],
    batch: bool,
) -> Result<Value, EmitError> {
    let answer = match events.first() {
        Some(event) if !batch => plane.send_event(event).await.map(serde_json::to_value),
        _ => plane.send_lines(lines).await.map(serde_json::to_value),
    };
    Ok(answer.map_err(|err| send_error(plane, err))?.unwrap_or_default())
}

/// Over HTTP every failure is a [`EmitError`], which picks the exit code.
fn send_error(plane: &HttpControlPlane, err: control::Error) -> EmitError {
    match err {
        control::Error::Send(err) => err,
        other => EmitError::Unreachable { url: plane.base().to_owned(), reason: crate::errors::chain(&other) },
    }
}

fn report(args: &Args, answer: &Value, invalid: &[Rejected]) -> anyhow::Result<()> {
    let mut answer = answer.clone();
    // Lines refused before sending join the server's list, in line order.
    if let Some(rejected) = answer.get_mut("rejected").and_then(Value::as_array_mut) {
        rejected.extend(invalid.iter().map(|line| json!({ "line": line.line, "reason": line.reason })));
        rejected.sort_by_key(|line| line["line"].as_u64());
    }
    if args.json {
        super::print(&answer)?;
    }
    let count = |name: &str| answer.get(name).and_then(Value::as_u64).unwrap_or(0);
    match (&args.event_type, &args.batch) {
        (Some(event_type), None) => {
            let outcome = answer.get("outcome").and_then(Value::as_str).unwrap_or("accepted");
            let id = answer.get("id").and_then(Value::as_str).unwrap_or_default();
            crate::notice!(event_type, id, outcome, "{event_type} {id}: {outcome}");
        }
        _ => {
            let rejected = answer.get("rejected").and_then(Value::as_array).cloned().unwrap_or_default();
            let (accepted, duplicate) = (count("accepted"), count("duplicate"));
            crate::notice!(
                accepted,
                duplicate,
                rejected = rejected.len(),
                "{accepted} accepted, {duplicate} duplicate, {} rejected",
                rejected.len()
            );
            for line in &rejected {
                let (number, reason) = (&line["line"], line["reason"].as_str().unwrap_or_default());
                crate::notice!(warn, line = %number, reason, "  line {number}: {reason}");
            }
            if !rejected.is_empty() {
                let message = format!("{} line(s) rejected; the others were sent", rejected.len());
                return Err(EmitError::Rejected { status: 400, message }.into());
            }
        }
    }
    Ok(())
}

/// The one event of `emit TYPE --run ID`, validated here so a bad event fails fast with
/// the same message the server gives.
fn single(args: &Args, source: &str) -> anyhow::Result<Map<String, Value>> {
    let (Some(event_type), Some(run_id)) = (&args.event_type, &args.run_id) else {
        return Err(UsageError("give an event TYPE and --run ID, or --batch FILE".into()).into());
    };
    let mut data = read_data(&args.data)?;
    data.insert("run_id".into(), Value::from(run_id.as_str()));
    let mut object = Map::new();
    object.insert("type".into(), Value::from(event_type.as_str()));
    object.insert("subject".into(), Value::from(format!("run/{run_id}")));
    object.insert("data".into(), Value::Object(data));
    if let Some(seq) = args.seq {
        object.insert("seq".into(), json!(seq));
    }
    if let Some(attempt) = args.attempt {
        object.insert("attempt".into(), json!(attempt));
    }
    emit::fill_envelope(&mut object, source);
    event::from_json_object(object.clone(), Timestamp::now())
        .map_err(|err| UsageError(format!("the event is invalid: {err}")))?;
    Ok(object)
}

/// The lines of `--batch`: each completed like a single event and checked; the good ones
/// to send and the bad ones with their line numbers.
fn read_batch(batch: &str, args: &Args, source: &str) -> anyhow::Result<(Vec<EventObject>, Vec<Rejected>)> {
    let text = match batch {
        "-" => std::io::read_to_string(std::io::stdin()).context("reading the batch from standard input")?,
        file => std::fs::read_to_string(Path::new(file)).with_context(|| format!("reading the batch file {file}"))?,
    };
    let (mut events, mut invalid) = (Vec::new(), Vec::new());
    for (index, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let reject = |reason: String| Rejected { line: index + 1, reason };
        let mut object = match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                invalid.push(reject("not a JSON object".into()));
                continue;
            }
            Err(err) => {
                invalid.push(reject(format!("invalid JSON: {err}")));
                continue;
            }
        };
        let names_a_run = object.contains_key("subject")
            || object.get("data").and_then(|data| data.get("run_id")).is_some_and(|id| !id.is_null());
        if let (false, Some(run_id)) = (names_a_run, &args.run_id) {
            object.insert("subject".into(), Value::from(format!("run/{run_id}")));
        }
        if let Some(attempt) = args.attempt {
            object.entry("attempt").or_insert(json!(attempt));
        }
        emit::fill_envelope(&mut object, source);
        match event::from_json_object(object.clone(), Timestamp::now()) {
            Ok(_) => events.push(object),
            Err(err) => invalid.push(reject(err.to_string())),
        }
    }
    if events.is_empty() && invalid.is_empty() {
        return Err(UsageError(format!("the batch {batch} has no events: give one JSON event a line")).into());
    }
    Ok((events, invalid))
}

/// The event's data from `--data`: inline JSON, `@FILE`, or `-` for stdin.
fn read_data(data: &str) -> anyhow::Result<Map<String, Value>> {
    let (text, origin) = match data {
        "-" => (std::io::read_to_string(std::io::stdin()).context("reading data from standard input")?, "stdin"),
        file if file.starts_with('@') => {
            let path = Path::new(&file[1..]);
            (std::fs::read_to_string(path).with_context(|| format!("reading data file {}", path.display()))?, "file")
        }
        inline => (inline.to_owned(), "--data"),
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => {
            Err(UsageError(format!("the data from {origin} must be a JSON object, e.g. '{{\"stage\": \"Stage_1\"}}'"))
                .into())
        }
        Err(err) => Err(UsageError(format!("the data from {origin} is not valid JSON: {err}")).into()),
    }
}
