//! `--artifacts` and `--artifacts-endpoint`: the artifact store, one flag group for the
//! commands that write to it (`work`) and read from it (`serve`, `runs pull`).

/// Where run artifacts are kept; shared by `work`, `serve` and `runs pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactArgs {
    /// The artifact store: a directory, file:///DIR or s3://BUCKET/PREFIX (credentials and
    /// region from AWS_* variables). `work` uploads a run directory's plots, PDFs,
    /// checkpoints, configs and metrics there (`none`: nowhere) [default: the config's
    /// `artifacts`, else <data dir>/scientist/artifacts]; `serve` serves downloads from it
    /// and `runs pull` reads it directly; give them the URL the workers upload to.
    #[arg(long, env = "SCIENTIST_ARTIFACTS", value_name = "URL")]
    pub artifacts: Option<String>,

    /// S3 endpoint for --artifacts s3://… (MinIO and other S3-compatible servers)
    /// [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, env = "SCIENTIST_ARTIFACTS_ENDPOINT", value_name = "URL")]
    pub artifacts_endpoint: Option<String>,
}

impl ArtifactArgs {
    /// Where `work` uploads when neither --artifacts nor its config names a store, and so
    /// where `runs pull` on the same machine reads: `<data dir>/scientist/artifacts`.
    pub fn default_dir() -> Option<std::path::PathBuf> {
        dirs::data_dir().map(|dir| dir.join("scientist").join("artifacts"))
    }

    /// The store to read from: --artifacts, else [`ArtifactArgs::default_dir`].
    pub fn open_to_read(&self) -> anyhow::Result<crate::artifacts::ArtifactStore> {
        let spec = match &self.artifacts {
            Some(spec) => spec.clone(),
            None => Self::default_dir()
                .ok_or_else(|| {
                    super::UsageError("no data directory (is HOME set?): pass --artifacts DIR or URL".into())
                })?
                .display()
                .to_string(),
        };
        crate::artifacts::ArtifactStore::open_to_read(&spec, self.artifacts_endpoint.as_deref())
            .map_err(|err| super::UsageError(format!("--artifacts: {err}")).into())
    }
}
