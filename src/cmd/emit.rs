//! `scientist emit TYPE --run ID`: build one valid event and send it to the control plane.
//! Batching, retries and the disk spool of the pod side arrive with `emit/` (issue 4, 6).

use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::{UsageError, exit};
use crate::event::{self, EventId};
use crate::run::RunId;
use crate::time::Timestamp;

/// Flags of `scientist emit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Event type, e.g. ai.run.stage_progress (see SPEC's table; unknown ai.* types are stored).
    pub event_type: String,

    /// The run the event is about.
    #[arg(long = "run")]
    pub run_id: RunId,

    /// The event's data: a JSON object, `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, default_value = "{}")]
    pub data: String,

    /// Control plane URL [default: http://127.0.0.1:8080].
    #[arg(long, env = "SCIENTIST_SERVER")]
    pub server: Option<String>,

    /// Full ingest URL; a worker sets it for its child process and it wins over --server.
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

    /// Print the server's answer as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Why an event was not accepted; each maps to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the control plane rejected the event ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the control plane at {url} refused the token ({status}): set SCIENTIST_TOKEN or --token")]
    Auth { url: String, status: u16 },
    #[error("the control plane at {url} could not take the event: {reason}; nothing was stored, send it again")]
    Unreachable { url: String, reason: String },
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
    let data = read_data(&args.data)?;
    let object = build(&args, data);
    // Validate here too, so a bad event fails fast with the same message the server gives.
    event::from_json_object(object.clone(), Timestamp::now())
        .map_err(|err| UsageError(format!("the event is invalid: {err}")))?;
    let url = match (&args.emit_url, &args.server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => format!("{}/api/ingest/event", server.trim_end_matches('/')),
        (None, None) => "http://127.0.0.1:8080/api/ingest/event".to_owned(),
    };
    let mut request = reqwest::Client::new()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/cloudevents+json")
        .body(Value::Object(object).to_string());
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let unreachable = |reason: String| EmitError::Unreachable { url: url.clone(), reason };
    let response = request.send().await.map_err(|err| unreachable(err.to_string()))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let message = answer.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
    match status.as_u16() {
        200..=299 => {}
        401 | 403 => return Err(EmitError::Auth { url, status: status.as_u16() }.into()),
        400..=499 => return Err(EmitError::Rejected { status: status.as_u16(), message }.into()),
        _ => return Err(unreachable(format!("{status}: {message}")).into()),
    }
    if args.json {
        super::print(&answer)?;
    } else {
        let outcome = answer.get("outcome").and_then(Value::as_str).unwrap_or("accepted");
        eprintln!("{} {}: {outcome}", args.event_type, answer.get("id").and_then(Value::as_str).unwrap_or_default());
    }
    Ok(())
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

fn build(args: &Args, mut data: Map<String, Value>) -> Map<String, Value> {
    data.insert("run_id".into(), Value::from(args.run_id.as_str()));
    let source = args.source.clone().unwrap_or_else(default_source);
    let mut object = json!({
        "specversion": "1.0",
        "id": EventId::generate().to_string(),
        "source": source,
        "type": args.event_type,
        "subject": format!("run/{}", args.run_id),
        "time": Timestamp::now().to_string(),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(seq) = args.seq {
        object["seq"] = json!(seq);
    }
    if let Some(attempt) = args.attempt {
        object["attempt"] = json!(attempt);
    }
    match object {
        Value::Object(object) => object,
        _ => unreachable!("built as an object literal"),
    }
}

/// `pod://<pod id>`, from RUNPOD_POD_ID or the host name.
fn default_source() -> String {
    let pod = std::env::var("RUNPOD_POD_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|name| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("pod://{pod}")
}
