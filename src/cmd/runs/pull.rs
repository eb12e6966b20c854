//! `scientist runs pull`: a run's artifact records and a source (the store and --artifacts,
//! or `serve`'s API with SCIENTIST_TOKEN), then `artifacts::pull`, printing where each file
//! went. How a command picks the store or the API is still its own here.

use std::path::PathBuf;

use super::ID_HELP;
use crate::artifacts::{self, ApiSource, PullOptions, Pulled, Source, SourceError};
use crate::cmd::artifacts::ArtifactArgs;
use crate::cmd::{StoreArgs, resolve_run};
use crate::logging::Format;
use crate::run::RunId;
pub(super) const AFTER_HELP: &str = "\
Files go to --out under their path in the run directory. A file already there with the
artifact's sha256 is not downloaded again; a download whose sha256 or size does not match is
not kept, and the command exits 1 naming it once the others are pulled.

Sources: the artifact store itself (--artifacts, with its credentials; the records come from
--store or MONGODB_URL), or with --server and no store configured, the control plane's API
with a read token in SCIENTIST_TOKEN (a refused token exits 7).

Examples:
  scientist runs pull 01JB3K --kind checkpoint --artifacts s3://bucket/experiments
  SCIENTIST_TOKEN=... scientist runs pull 01JB3K --server https://scientist.example --out ./results";

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    store: StoreArgs,
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
    /// Pull through this control plane (`scientist serve`) when no store is configured; the
    /// token is read from SCIENTIST_TOKEN only.
    #[arg(long, env = "SCIENTIST_SERVER", value_name = "URL")]
    server: Option<String>,
}

/// `runs pull`: the records and a source (the store and --artifacts, or the API), then
/// `artifacts::pull`, printing where each file went.
pub(super) async fn run(args: PullArgs) -> anyhow::Result<()> {
    let on_store = args.store.store.is_some() || args.store.mongodb_url.is_some() || args.server.is_none();
    let (id, records, source): (RunId, _, Box<dyn Source>) = match &args.server {
        Some(server) if !on_store => {
            let api = ApiSource::new(server, std::env::var("SCIENTIST_TOKEN").ok()).map_err(pull_failure)?;
            let records = api.records(&args.id).await.map_err(pull_failure)?;
            (args.id.clone(), records, Box::new(api))
        }
        _ => {
            let store = args.store.open().await?;
            let id = resolve_run(store.as_ref(), &args.id).await?;
            let records = store.artifacts(&id).await?;
            (id, records, Box::new(args.artifacts.open_to_read()?))
        }
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
    let report =
        artifacts::pull::pull(&id, &records, source.as_ref(), &options, &mut show).await.map_err(|err| match err {
            artifacts::PullError::Source(err) => pull_failure(err),
            other => other.into(),
        })?;
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

/// A refused token exits 7, with the server's reason (which scope the token lacks).
fn pull_failure(err: SourceError) -> anyhow::Error {
    match err {
        SourceError::Refused { url, status, message } => {
            anyhow::Error::new(crate::cmd::emit::EmitError::Auth { url, status }).context(message)
        }
        other => other.into(),
    }
}
