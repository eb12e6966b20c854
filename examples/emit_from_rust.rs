//! Reporting a run from Rust with the library's emit API, as a Rust training loop or tool
//! would: typed event data (`scientist::event::payload`), the envelope filled in
//! (`emit::fill_envelope`), one batch delivered (`control::HttpControlPlane`), and what cannot
//! be delivered now kept in the spool (`emit::SpoolDir`), which the next run of this program,
//! the next `scientist emit`, or a worker started on the same directory sends.
//!
//! ```sh
//! cargo run --example emit_from_rust -- RUN_ID
//! ```
//!
//! It posts to `SCIENTIST_EMIT_URL` when set (a worker sets it for its pipeline's stages, with
//! `SCIENTIST_TOKEN` and `SCIENTIST_RUN_ID`), else to `SCIENTIST_SERVER` (default
//! `http://127.0.0.1:8080`) with `SCIENTIST_TOKEN`; the spool is `SCIENTIST_SPOOL_DIR` or
//! `<data dir>/scientist/spool`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use scientist::control::{ControlPlane, HttpControlPlane};
use scientist::emit::{self, SpoolDir};
use scientist::event::EventData;
use scientist::event::payload::{LlmUsage, StageCompleted, StageMetric, StageProgress, StageStarted};
use scientist::run::{RunId, Stage};
use serde_json::{Map, Value};

/// Steps of the toy training loop below.
pub const STEPS: u64 = 3;

/// One event of `run`: `data`'s type and fields, with the envelope filled in.
pub fn envelope(run: &RunId, data: &impl EventData, source: &str) -> Arc<str> {
    let mut fields = data.to_data();
    fields.insert("run_id".into(), Value::from(run.as_str()));
    let mut event = Map::new();
    event.insert("type".into(), Value::from(data.event_type().name()));
    event.insert("subject".into(), Value::from(format!("run/{run}")));
    event.insert("data".into(), Value::Object(fields));
    emit::fill_envelope(&mut event, source);
    Arc::from(Value::Object(event).to_string())
}

/// What a small training loop reports: its stage's start, progress and loss each step, the
/// tokens its agent used, and the stage's end.
pub fn training_events(run: &RunId, source: &str) -> Vec<Arc<str>> {
    let stage = Stage::Stage1;
    let mut lines = vec![envelope(
        run,
        &StageStarted { stage, desc: Some("toy training loop".into()), stall_after_s: None, extra: Map::new() },
        source,
    )];
    for step in 1..=STEPS {
        let loss = 1.0 / step as f64;
        lines.push(envelope(
            run,
            &StageProgress {
                stage,
                iteration: Some(step),
                max_iterations: Some(STEPS),
                progress: Some(step as f64 / STEPS as f64),
                good_nodes: Some(step),
                buggy_nodes: Some(0),
                total_nodes: Some(step),
                best_metric: Some(format!("{loss:.3}")),
                eta_s: None,
                extra: Map::new(),
            },
            source,
        ));
        lines.push(envelope(
            run,
            &StageMetric {
                stage: Some(stage),
                name: "val_loss".into(),
                value: loss,
                step: Some(step),
                extra: Map::new(),
            },
            source,
        ));
    }
    lines.push(envelope(
        run,
        &LlmUsage {
            model: "gpt-5-mini".into(),
            input_tokens: Some(1200),
            output_tokens: Some(300),
            cached_tokens: Some(800),
            cost_usd: None,
            stage: Some(stage),
            node_id: None,
            extra: Map::new(),
        },
        source,
    ));
    lines.push(envelope(run, &StageCompleted { stage, duration_s: Some(1.5), extra: Map::new() }, source));
    lines
}

/// How `deliver` ended.
#[derive(Debug, PartialEq)]
pub enum Delivered {
    /// The control plane took them; `rejected` were refused for good (with the reasons).
    Sent { accepted: usize, rejected: Vec<String> },
    /// It could not be reached: they wait in this spool segment.
    Spooled(PathBuf),
}

/// Sends what an earlier run left in `spool` (oldest first), then `lines`, in one batch;
/// keeps `lines` in `spool` when the control plane cannot take them now.
pub async fn deliver(plane: &dyn ControlPlane, spool: &SpoolDir, lines: &[Arc<str>]) -> anyhow::Result<Delivered> {
    // Another process draining the same spool holds its lock: leave the backlog to it.
    if let Some(lock) = spool.try_lock().context("locking the spool")?
        && let Err(err) = spool.drain(&lock, plane).await
    {
        eprintln!("the spooled events wait for the next try: {err}");
    }
    match plane.send_lines(lines).await {
        Ok(answer) => Ok(Delivered::Sent {
            accepted: answer.accepted,
            rejected: answer.rejected.into_iter().map(|rejected| rejected.reason).collect(),
        }),
        Err(err) if err.is_retryable() => {
            let path =
                spool.write_segment(lines).with_context(|| format!("keeping events in {}", spool.dir().display()))?;
            Ok(Delivered::Spooled(path))
        }
        Err(err) => Err(err.into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let run: RunId = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SCIENTIST_RUN_ID").ok())
        .context("usage: emit_from_rust RUN_ID (or set SCIENTIST_RUN_ID)")?
        .parse()
        .map_err(|err: String| anyhow::anyhow!(err))?;
    let base = std::env::var("SCIENTIST_EMIT_URL")
        .or_else(|_| std::env::var("SCIENTIST_SERVER"))
        .unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("SCIENTIST_TOKEN").ok().filter(|token| !token.is_empty());
    let plane = HttpControlPlane::new(&base, token)?;
    let spool_dir = std::env::var_os("SCIENTIST_SPOOL_DIR")
        .map(PathBuf::from)
        .or_else(SpoolDir::default_dir)
        .context("no spool directory: set SCIENTIST_SPOOL_DIR")?;
    let spool = SpoolDir::open(&spool_dir).with_context(|| format!("opening the spool {}", spool_dir.display()))?;
    let lines = training_events(&run, &emit::default_source());
    match deliver(&plane, &spool, &lines).await? {
        Delivered::Sent { accepted, rejected } => {
            println!("{accepted} of {} events accepted by {base}", lines.len());
            for reason in &rejected {
                eprintln!("refused: {reason}");
            }
            if !rejected.is_empty() {
                std::process::exit(5);
            }
        }
        Delivered::Spooled(path) => {
            println!("{base} is unreachable: {} events kept in {}", lines.len(), path.display())
        }
    }
    Ok(())
}
