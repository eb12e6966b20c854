//! One ideation request (`--mode ideation|hybrid`): the pipeline's `[ideation]` command runs
//! in a directory of its own (`<runs dir>/ideation/<date>_<id>/`, reused by a retry) with
//! the request as `request.json`, and writes the ideas as a JSON array to `ideas.json`. The
//! worker reports them as `ai.ideation.generated` (they land on the hypothesis; `ideaJson`
//! is the first idea), then ends the request COMPLETED, or FAILED with why.
//!
//! The command's output goes to the worker's stderr, line by line, prefixed with the request.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::child::{self, Child, Launch};
use super::pipeline::Step;
use super::{Context, Directive, rundir, supervise};
use crate::event::EventData;
use crate::event::payload::IdeationGenerated;
use crate::ideation::IdeationRequest;

pub const REQUEST_FILE: &str = "request.json";
pub const IDEAS_FILE: &str = "ideas.json";

/// Lines of the command's stderr kept for a failure's message.
const ERROR_TAIL_LINES: usize = 12;

/// How an ideation request ended, for the worker's summary and the tests.
#[derive(Debug, Clone, PartialEq)]
pub enum IdeationVerdict {
    Completed { ideas: usize },
    Failed(String),
}

/// Runs `request` to its end and reports it.
pub(super) async fn serve(context: &Context<'_>, request: IdeationRequest) -> IdeationVerdict {
    crate::notice!(
        ideation = %request.id,
        "scientist work: ideation {} for hypothesis {} (attempt {})",
        request.id, request.hypothesis_id, request.attempt
    );
    let verdict = match produce(context, &request).await {
        Ok(ideas) => {
            let count = ideas.len();
            match report_ideas(context, &request, ideas).await {
                Ok(()) => IdeationVerdict::Completed { ideas: count },
                Err(reason) => IdeationVerdict::Failed(reason),
            }
        }
        Err(reason) => IdeationVerdict::Failed(reason),
    };
    let error = match &verdict {
        IdeationVerdict::Completed { .. } => None,
        IdeationVerdict::Failed(reason) => Some(reason.clone()),
    };
    let queue = context.queue;
    let ended = retrying(context, "end the ideation request", || {
        queue.finish_ideation(&request.id, request.attempt, error.clone())
    })
    .await;
    match (&verdict, ended) {
        (_, Ok(true)) => {}
        (_, Ok(false)) => crate::notice!(
            warn,
            ideation = %request.id,
            "scientist work: ideation {} was no longer this worker's (ended or claimed again); left as it is",
            request.id
        ),
        (_, Err(reason)) => {
            crate::notice!(warn, ideation = %request.id, "scientist work: could not end ideation {}: {reason}", request.id)
        }
    }
    match &verdict {
        IdeationVerdict::Completed { ideas } => {
            crate::notice!(ideation = %request.id, "scientist work: ideation {} produced {ideas} idea(s)", request.id)
        }
        IdeationVerdict::Failed(reason) => {
            crate::notice!(ideation = %request.id, "scientist work: ideation {} failed: {reason}", request.id)
        }
    }
    verdict
}

/// Runs the command and reads its ideas; Err says why there are none.
async fn produce(context: &Context<'_>, request: &IdeationRequest) -> Result<Vec<Value>, String> {
    let step = context
        .config
        .pipeline
        .ideation
        .as_ref()
        .ok_or("the pipeline config has no [ideation] command; add one (see examples/pipeline.toml)")?;
    let root = context.config.runs_dir.join("ideation");
    let dir = rundir::prepare_named(&root, &request.id, REQUEST_FILE, &request.document)
        .map_err(|err| format!("cannot prepare the directory under {}: {err}", root.display()))?;
    let ideas_file = dir.join(IDEAS_FILE);
    // A retry's command must not find the previous attempt's ideas.
    match std::fs::remove_file(&ideas_file) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot clear {}: {err}", ideas_file.display()));
        }
        _ => {}
    }
    run_command(context, step, request, &dir).await?;
    read_ideas(&ideas_file)
}

async fn run_command(context: &Context<'_>, step: &Step, request: &IdeationRequest, dir: &Path) -> Result<(), String> {
    let env = child_env(context, request, dir);
    let mut removed = supervise::ENV_REMOVED.to_vec();
    removed.push("SCIENTIST_TOKEN");
    let launch = Launch { dir, env: &env, env_removed: &removed };
    let (mut child, stdout, stderr) = Child::spawn(&step.command.argv(), &launch)
        .map_err(|err| format!("cannot start `{}`: {err}", step.command.display()))?;
    let prefix = format!("[ideation {}]", request.id);
    let relays =
        (tokio::spawn(relay(stdout, prefix.clone(), 0)), tokio::spawn(relay(stderr, prefix, ERROR_TAIL_LINES)));
    let timeout = async {
        match step.timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let mut control = context.control.clone();
    let stop = control.wait_for(|directive| matches!(directive, Directive::Stop | Directive::StopNow));
    let ended = tokio::select! {
        status = child.wait() => Ok(status),
        () = timeout => Err(Interrupted::TimedOut),
        _ = stop => Err(Interrupted::Stopped),
        () = claim_lost(context, request) => Err(Interrupted::ClaimLost),
    };
    let pgid = child.pgid();
    if ended.is_err() || child::group_alive(pgid) {
        let mut hurry = context.control.clone();
        let hurry = async move {
            let _ = hurry.wait_for(|directive| *directive == Directive::StopNow).await;
        };
        child::stop_group(pgid, context.config.grace, hurry).await;
        let _ = child.wait().await;
    }
    let _ = relays.0.await;
    let tail = relays.1.await.unwrap_or_default();
    let tail = if tail.is_empty() { String::new() } else { format!(": {}", tail.join(" | ")) };
    match ended {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("`{}` ended with {status}{tail}", step.command.display())),
        Ok(Err(err)) => Err(format!("lost track of `{}`: {err}", step.command.display())),
        Err(Interrupted::TimedOut) => {
            Err(format!("timed out after {}", humantime::format_duration(step.timeout.unwrap_or_default())))
        }
        Err(Interrupted::Stopped) => Err("the worker was stopped (SIGTERM) before the ideation ended".into()),
        Err(Interrupted::ClaimLost) => {
            Err("the request is no longer this worker's (it was ended, lost or claimed again); stopped its command"
                .into())
        }
    }
}

/// Why the command was stopped before it exited.
enum Interrupted {
    TimedOut,
    Stopped,
    ClaimLost,
}

/// Tells the queue at every heartbeat that the claim's worker is alive, so the lease sweep
/// leaves the request alone; returns once the claim is no longer live. A queue out of reach
/// is logged and tried again at the next beat: the lease is what tolerates an outage.
async fn claim_lost(context: &Context<'_>, request: &IdeationRequest) {
    let mut beats = tokio::time::interval(context.config.heartbeat);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once, and the claim itself was just heard.
    beats.tick().await;
    loop {
        beats.tick().await;
        match context.queue.hear_ideation(&request.id, request.attempt).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => tracing::warn!(
                error = %crate::errors::chain(&err),
                "could not tell the queue ideation {} is alive; trying again at the next heartbeat", request.id
            ),
        }
    }
}

fn child_env(context: &Context<'_>, request: &IdeationRequest, dir: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if std::env::var_os("PYTHONUNBUFFERED").is_none() {
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
    }
    env.extend(context.config.pipeline.env.clone());
    let path = |file: &str| dir.join(file).display().to_string();
    for (name, value) in [
        ("SCIENTIST_IDEATION_ID", request.id.clone()),
        ("SCIENTIST_HYPOTHESIS_ID", request.hypothesis_id.clone()),
        ("SCIENTIST_ATTEMPT", request.attempt.to_string()),
        ("SCIENTIST_RUN_DIR", dir.display().to_string()),
        ("SCIENTIST_REQUEST_FILE", path(REQUEST_FILE)),
        ("SCIENTIST_IDEAS_FILE", path(IDEAS_FILE)),
        ("SCIENTIST_CONFIG_DIR", context.config.pipeline.config_dir.display().to_string()),
    ] {
        env.insert(name.into(), value);
    }
    env
}

/// Copies the command's lines to the worker's stderr; returns the last `keep` of them.
async fn relay(output: impl AsyncRead + Unpin, prefix: String, keep: usize) -> Vec<String> {
    let mut lines = BufReader::new(output).lines();
    let mut tail = VecDeque::with_capacity(keep);
    while let Ok(Some(line)) = lines.next_line().await {
        crate::notice!("{prefix} {line}");
        if keep > 0 {
            if tail.len() == keep {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    tail.into()
}

/// The ideas the command wrote: a JSON array, or an object with an `ideas` array.
fn read_ideas(file: &PathBuf) -> Result<Vec<Value>, String> {
    let text = std::fs::read(file).map_err(|err| {
        format!(
            "the command exited 0 but wrote no ideas to {} ({err}): write a JSON array of ideas there",
            file.display()
        )
    })?;
    let ideas = match serde_json::from_slice(&text) {
        Ok(Value::Array(ideas)) => ideas,
        Ok(Value::Object(mut object)) => match object.remove("ideas") {
            Some(Value::Array(ideas)) => ideas,
            _ => return Err(format!("{} holds an object without an `ideas` array", file.display())),
        },
        Ok(_) => return Err(format!("{} is not a JSON array of ideas", file.display())),
        Err(err) => return Err(format!("{} is not valid JSON: {err}", file.display())),
    };
    if ideas.is_empty() {
        return Err(format!("{} holds no ideas", file.display()));
    }
    Ok(ideas)
}

/// Sends the ideas as `ai.ideation.generated`. Its id is the same for every try of this
/// claim, so a retry after a lost answer is a duplicate, not a second report.
async fn report_ideas(context: &Context<'_>, request: &IdeationRequest, ideas: Vec<Value>) -> Result<(), String> {
    let generated = IdeationGenerated {
        hypothesis_id: request.hypothesis_id.clone(),
        ideas,
        extra: Map::from_iter([("request_id".to_owned(), json!(request.id))]),
    };
    let mut event = Map::new();
    for (name, value) in [
        ("specversion", json!("1.0")),
        ("id", json!(format!("ideas:{}:{}", request.id, request.attempt))),
        ("source", json!(context.config.pod.source())),
        ("type", json!(generated.event_type().name())),
        ("subject", json!(format!("hypothesis/{}", request.hypothesis_id))),
        ("time", json!(crate::time::Timestamp::now().to_string())),
        ("data", Value::Object(generated.to_data())),
    ] {
        event.insert(name.into(), value);
    }
    let queue = context.queue;
    retrying(context, "report the ideas", || queue.deliver(event.clone())).await
}

/// Tries `attempt` until it succeeds, with backoff, for up to the worker's flush timeout
/// (at once only, when told to stop now). Err is the last failure.
async fn retrying<T, F, Fut>(context: &Context<'_>, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::control::Error>>,
{
    let deadline = Instant::now() + context.config.flush_timeout;
    let mut pause = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let reason = crate::errors::chain(&err);
                let stop_now = *context.control.borrow() == Directive::StopNow;
                if stop_now || Instant::now() + pause > deadline || !err.is_retryable() {
                    return Err(format!("could not {what}: {reason}"));
                }
                tracing::warn!(error = %reason, "could not {what}; retrying in {}", humantime::format_duration(pause));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}
