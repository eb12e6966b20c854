//! `scientist runs pull`: a run's artifact records and a source (the artifact store itself,
//! or `serve`'s API with the operator's token), then `artifacts::pull`, printing where each
//! file went.

use std::path::PathBuf;

use super::ID_HELP;
use crate::artifacts::{self, ApiSource, PullOptions, Pulled, Source, SourceError};
use crate::cmd::artifacts::ArtifactArgs;
use crate::cmd::{OperatorArgs, Target, resolve_run};
use crate::control::ApiFailure;
use crate::logging::Format;
use crate::run::RunId;
pub(super) const AFTER_HELP: &str = "\
Files go to --out under their path in the run directory. A file already there with the
artifact's sha256 is not downloaded again; a download whose sha256 or size does not match is
not kept, and the command exits 1 naming it once the others are pulled.

Sources: over --server (or a --context), the control plane's API with a read token (a
refused token exits 7); with --artifacts, the artifact store itself, with its credentials
(the records still come from wherever the runs are); on a store, --artifacts or the default
artifact directory.

Examples:
  scientist runs pull 01JB3K --kind checkpoint --artifacts s3://bucket/experiments
  SCIENTIST_TOKEN=... scientist runs pull 01JB3K --server https://scientist.example --out ./results";

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    source: OperatorArgs,
    /// The artifact store to read straight from, with its credentials, instead of through
    /// `--server`: also where a store's artifacts are looked for.
    #[command(flatten)]
    artifacts: ArtifactArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Only artifacts of this kind (repeatable): plot, pdf, checkpoint, config, metrics, or
    /// any other kind a run registered.
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Where the files go [default: ./<run id>/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `runs pull`: the records and a source (the artifact store itself when --artifacts is
/// given or the runs are on a store, else the API), then `artifacts::pull`, printing where
/// each file went.
pub(super) async fn run(args: PullArgs) -> anyhow::Result<()> {
    let target = args.source.target()?;
    let over_api = match &target {
        Target::Api { server, token } if args.artifacts.artifacts.is_none() => Some((server.clone(), token.clone())),
        _ => None,
    };
    let operator = args.source.open_target(target).await?;
    let id = resolve_run(operator.as_ref(), &args.id).await?;
    let records = operator.artifacts(&id).await?;
    let source: Box<dyn Source> = match over_api {
        Some((server, token)) => Box::new(ApiSource::new(&server, token).map_err(pull_failure)?),
        None => Box::new(args.artifacts.open_to_read()?),
    };
    let out = args.out.unwrap_or_else(|| PathBuf::from(id.as_str()));
    let options = PullOptions { out, kinds: args.kinds, progress: Format::from_env() == Format::Text };
    let mut show = |pulled: &Pulled| {
        let line = match pulled {
            Pulled::Downloaded { path, bytes, verified: true, .. } => {
                format!("{}  downloaded, {bytes} bytes, sha256 verified", path.display())
            }
            Pulled::Downloaded { path, bytes, verified: false, .. } => {
                format!("{}  downloaded, {bytes} bytes, unverified (no sha256 recorded)", path.display())
            }
            Pulled::Present { path, .. } => format!("{}  already present, sha256 verified", path.display()),
            Pulled::Failed { key, reason, .. } => return crate::notice!(warn, "{key}: {reason}"),
        };
        // A closed stdout must not stop the pull: the summary on stderr still says what happened.
        let _ = crate::cmd::print(line);
    };
    let pulling = artifacts::pull::pull(&id, &records, source.as_ref(), &options, &mut show);
    // Ctrl-C drops the pull, which removes the file it was writing; the finished ones stay.
    let report = tokio::select! {
        report = pulling => report.map_err(|err| match err {
            artifacts::PullError::Source(err) => pull_failure(err),
            other => other.into(),
        })?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!(
            "interrupted: the files already pulled are in {}; run it again for the rest",
            options.out.display()
        ),
    };
    if report.files.is_empty() {
        let kinds =
            if options.kinds.is_empty() { String::new() } else { format!(" of kind {}", options.kinds.join(", ")) };
        crate::notice!("run {id} has no artifacts{kinds} (`scientist runs show {id}` lists them): nothing to pull");
        return Ok(());
    }
    crate::notice!(
        "run {id}: {} downloaded ({} unverified), {} already present, {} failed, into {}",
        report.downloaded(),
        report.unverified(),
        report.present(),
        report.failed().len(),
        options.out.display()
    );
    match report.failed().as_slice() {
        [] => Ok(()),
        failed => anyhow::bail!("{} of run {id}'s artifacts not pulled: {}", failed.len(), failed.join(", ")),
    }
}

/// A refused token exits 7, with the server's reason (which scope the token lacks), as for
/// every command over `--server`.
fn pull_failure(err: SourceError) -> anyhow::Error {
    match err {
        SourceError::Refused { url, status, message } => ApiFailure::Auth { url, status, message }.into(),
        other => other.into(),
    }
}
