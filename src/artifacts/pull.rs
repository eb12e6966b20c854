//! Pulling one run's artifacts into a directory: for each record (of the kinds asked for),
//! the file goes to the key's path after `runs/<run id>/`, made of plain names only and
//! never through a symbolic link; a file already there with the record's sha256 is kept;
//! anything else is downloaded from a [`Source`] to a temporary file beside it while being
//! hashed, and renamed into place only when its sha256 and size match the record. A bad
//! file is reported and the others still pulled; only a refused token stops the pull.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::partial::Partial;
use super::store::relative_to_run;
use super::{KeyError, ReadError, hex, sha256_file};
use crate::run::RunId;
use crate::store::Artifact;

/// Files at least this large get a progress bar (when bars are wanted).
const PROGRESS_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// An object coming from a source: its length when the source knows it, and its bytes.
pub struct Fetched {
    pub length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, SourceError>>,
}

/// Where a run's objects come from: the object store itself, or `serve`'s API.
#[async_trait]
pub trait Source: Send + Sync {
    /// The object of the artifact `key` of run `run_id`, as a stream.
    ///
    /// # Errors
    /// `Refused` when the source refuses our credentials (no other key will fare better);
    /// any other error concerns this key only.
    async fn fetch(&self, run_id: &RunId, key: &str) -> Result<Fetched, SourceError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The token is missing or wrong (401), or lacks the scope (403).
    #[error("{url} refused the token ({status}): {message}")]
    Refused { url: String, status: u16, message: String },
    /// Any other answer than the object (404, 5xx…), with the server's message.
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("cannot reach {url}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} redirected the download to {location:?}, which is not followed: {reason}")]
    Redirect { url: String, location: String, reason: &'static str },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// What to pull and how.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The directory files go to (made if missing).
    pub out: PathBuf,
    /// Only artifacts of these kinds (`plot`, `checkpoint`…); all when empty.
    pub kinds: Vec<String>,
    /// Show a progress bar on stderr for large files (indicatif draws nothing when stderr
    /// is not a terminal).
    pub progress: bool,
}

/// What became of one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// Downloaded and renamed into place; `verified` when the record had a sha256 and it matched.
    Downloaded { key: String, path: PathBuf, bytes: u64, verified: bool },
    /// Already there with the record's sha256: not downloaded.
    Present { key: String, path: PathBuf },
    /// Not pulled (nothing is left at `path` of it): the reason says why.
    Failed { key: String, path: Option<PathBuf>, reason: String },
}

/// Every artifact's outcome, in record order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    pub files: Vec<Pulled>,
}

impl PullReport {
    pub fn downloaded(&self) -> usize {
        self.files.iter().filter(|file| matches!(file, Pulled::Downloaded { .. })).count()
    }

    pub fn unverified(&self) -> usize {
        self.files.iter().filter(|file| matches!(file, Pulled::Downloaded { verified: false, .. })).count()
    }

    pub fn present(&self) -> usize {
        self.files.iter().filter(|file| matches!(file, Pulled::Present { .. })).count()
    }

    /// The keys that were not pulled.
    pub fn failed(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter_map(|file| match file {
                Pulled::Failed { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Why the pull as a whole stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot create the output directory {}: {source}; pass --out DIR", path.display())]
    Out { path: PathBuf, source: std::io::Error },
    /// The source refused the credentials: nothing more can be pulled.
    #[error(transparent)]
    Source(SourceError),
}

/// Pulls `records` (the artifacts of run `run_id`) from `source` as `options` say, calling
/// `on_file` with each outcome as it comes. With nothing to pull, nothing is made.
///
/// # Errors
/// `Out` when the directory cannot be made, `Source` when the source refuses the token;
/// everything else is a [`Pulled::Failed`] in the report.
pub async fn pull(
    run_id: &RunId,
    records: &[Artifact],
    source: &dyn Source,
    options: &PullOptions,
    on_file: &mut (dyn FnMut(&Pulled) + Send),
) -> Result<PullReport, PullError> {
    let wanted: Vec<&Artifact> = records
        .iter()
        .filter(|record| {
            options.kinds.is_empty() || record.kind.as_ref().is_some_and(|kind| options.kinds.contains(kind))
        })
        .collect();
    let mut report = PullReport::default();
    if wanted.is_empty() {
        return Ok(report);
    }
    std::fs::create_dir_all(&options.out).map_err(|source| PullError::Out { path: options.out.clone(), source })?;
    for record in wanted {
        let pulled = match pull_one(run_id, record, source, options).await {
            Ok(pulled) => pulled,
            Err(Failure::Fatal(err)) => return Err(PullError::Source(err)),
            Err(Failure::File { path, reason }) => Pulled::Failed { key: record.key.clone(), path, reason },
        };
        on_file(&pulled);
        report.files.push(pulled);
    }
    Ok(report)
}

enum Failure {
    Fatal(SourceError),
    File { path: Option<PathBuf>, reason: String },
}

impl Failure {
    fn at(path: &Path, reason: impl std::fmt::Display) -> Failure {
        Failure::File { path: Some(path.to_owned()), reason: reason.to_string() }
    }
}

async fn pull_one(
    run_id: &RunId,
    record: &Artifact,
    source: &dyn Source,
    options: &PullOptions,
) -> Result<Pulled, Failure> {
    let relative = output_path(run_id, &record.key).map_err(|reason| Failure::File { path: None, reason })?;
    let path = options.out.join(&relative);
    make_parents(&options.out, &relative).map_err(|reason| Failure::File { path: None, reason })?;
    if let Some(present) = already_present(&path, record).await? {
        return Ok(present);
    }
    let fetched = match source.fetch(run_id, &record.key).await {
        Ok(fetched) => fetched,
        Err(err @ SourceError::Refused { .. }) => return Err(Failure::Fatal(err)),
        Err(err) => return Err(Failure::at(&path, crate::errors::chain(&err))),
    };
    let partial = Partial::beside(&path);
    let temp = partial.path();
    let written = download(fetched, temp, &path, options.progress).await;
    let checked = written.and_then(|(bytes, sha256)| check(record, bytes, &sha256).map(|()| bytes));
    let renamed = match checked {
        Ok(bytes) => {
            std::fs::rename(temp, &path).map(|()| bytes).map_err(|err| format!("cannot rename into place: {err}"))
        }
        Err(reason) => Err(reason),
    };
    match renamed {
        Ok(bytes) => Ok(Pulled::Downloaded { key: record.key.clone(), path, bytes, verified: record.sha256.is_some() }),
        // Nothing of a bad or broken download is kept (`Partial` removes it).
        Err(reason) => Err(Failure::at(&path, reason)),
    }
}

/// Where the artifact `key` of run `run_id` goes under the output directory: the part of
/// the key after `runs/<run id>/` (the whole key when it has none), as plain names only.
///
/// # Errors
/// A key that is empty, absolute, or has an empty, `.` or `..` segment (it could leave the
/// directory), with the reason.
pub fn output_path(run_id: &RunId, key: &str) -> Result<PathBuf, String> {
    let relative = relative_to_run(run_id, key).unwrap_or(key);
    let refuse = |why: &str| Err(format!("not pulled: its key {key:?} {why}, so it has no safe place under --out"));
    if relative.is_empty() {
        return refuse("names no file");
    }
    if relative.starts_with('/') {
        return refuse("is an absolute path");
    }
    if relative.contains('\0') || relative.contains('\\') {
        return refuse("holds a NUL or backslash");
    }
    if relative.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return refuse("has an empty, `.` or `..` segment");
    }
    let path = PathBuf::from(relative);
    // Belt and braces: after the checks above every component is a plain name.
    if !path.components().all(|component| matches!(component, Component::Normal(_))) {
        return refuse("is not made of plain names");
    }
    Ok(path)
}

/// Makes the folders of `relative` under `out` one at a time, refusing any that is a
/// symbolic link (or not a folder): nothing is ever written through a link.
fn make_parents(out: &Path, relative: &Path) -> Result<(), String> {
    let mut at = out.to_owned();
    let Some(parent) = relative.parent() else { return Ok(()) };
    for component in parent.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("not pulled: {} is a symbolic link, which is never followed", at.display()));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("not pulled: {} is a file where a folder is needed", at.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|err| format!("cannot create {}: {err}", at.display()))?;
            }
            Err(err) => return Err(format!("cannot look at {}: {err}", at.display())),
        }
    }
    Ok(())
}

/// `Present` when `path` is a regular file with the record's sha256; `None` when it must be
/// downloaded (missing, different, or the record has no sha256 to compare with).
async fn already_present(path: &Path, record: &Artifact) -> Result<Option<Pulled>, Failure> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Failure::at(path, format!("cannot look at it: {err}"))),
    };
    if meta.file_type().is_symlink() {
        return Err(Failure::at(path, "it is a symbolic link, which is never followed or replaced: remove it"));
    }
    if !meta.is_file() {
        return Err(Failure::at(path, "something that is not a file is in its place"));
    }
    let Some(expected) = &record.sha256 else { return Ok(None) };
    if record.bytes.is_some_and(|bytes| bytes != meta.len()) {
        return Ok(None);
    }
    let owned = path.to_owned();
    let sha256 = tokio::task::spawn_blocking(move || sha256_file(&owned))
        .await
        .map_err(|err| Failure::at(path, format!("hashing it failed: {err}")))?
        .map_err(|err| Failure::at(path, format!("cannot read it: {err}")))?;
    Ok((sha256.eq_ignore_ascii_case(expected))
        .then(|| Pulled::Present { key: record.key.clone(), path: path.to_owned() }))
}

/// Streams `fetched` into a new file at `temp` (never an existing one, never through a
/// link), hashing as it goes; the bytes written and their sha256.
async fn download(fetched: Fetched, temp: &Path, shown: &Path, progress: bool) -> Result<(u64, String), String> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .await
        .map_err(|err| format!("cannot create {}: {err}", temp.display()))?;
    let mut file = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
    let bar = progress_bar(fetched.length, progress, shown);
    let (mut hasher, mut bytes) = (Sha256::new(), 0u64);
    let mut body = fetched.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|err| format!("the download broke off after {bytes} bytes: {}", crate::errors::chain(&err)))?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|err| format!("cannot write {}: {err}", temp.display()))?;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
    }
    file.flush().await.map_err(|err| format!("cannot write {}: {err}", temp.display()))?;
    bar.finish_and_clear();
    if let Some(length) = fetched.length.filter(|length| *length != bytes) {
        return Err(format!("the download ended after {bytes} of its {length} bytes"));
    }
    Ok((bytes, hex(&hasher.finalize())))
}

/// Whether what arrived is what the record says was stored.
fn check(record: &Artifact, bytes: u64, sha256: &str) -> Result<(), String> {
    if let Some(expected) = &record.sha256
        && !expected.eq_ignore_ascii_case(sha256)
    {
        return Err(format!(
            "sha256 mismatch: the record says {expected}, the {bytes} bytes received hash to {sha256}; not kept"
        ));
    }
    if let Some(expected) = record.bytes.filter(|expected| *expected != bytes) {
        return Err(format!("size mismatch: the record says {expected} bytes, {bytes} arrived; not kept"));
    }
    Ok(())
}

fn progress_bar(length: Option<u64>, wanted: bool, shown: &Path) -> ProgressBar {
    let Some(length) = length.filter(|length| wanted && *length >= PROGRESS_MIN_BYTES) else {
        return ProgressBar::hidden();
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(shown.display().to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose objects send one chunk and then nothing more, ever.
    struct Stalling;

    #[async_trait]
    impl Source for Stalling {
        async fn fetch(&self, _run_id: &RunId, _key: &str) -> Result<Fetched, SourceError> {
            let first = futures_util::stream::iter([Ok(Bytes::from_static(b"the first megabyte"))]);
            let body = first.chain(futures_util::stream::pending());
            Ok(Fetched { length: Some(1 << 30), body: Box::pin(body) })
        }
    }

    #[tokio::test]
    async fn a_pull_dropped_part_way_leaves_no_partial_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = Artifact {
            run_id: run_id(),
            key: "runs/run-1/checkpoints/model.pt".into(),
            bytes: Some(1 << 30),
            sha256: None,
            content_type: None,
            kind: None,
            registered_at: crate::time::Timestamp::from_millis(0),
            at: crate::run::EventKey {
                time: crate::time::Timestamp::from_millis(0),
                id: "e-1".into(),
                source: "pod://a".into(),
            },
        };
        let options = PullOptions { out: dir.path().to_owned(), kinds: Vec::new(), progress: false };
        let folder = dir.path().join("checkpoints");
        let (id, mut on_file) = (run_id(), |_: &Pulled| {});
        let mut pulling = Box::pin(pull(&id, std::slice::from_ref(&record), &Stalling, &options, &mut on_file));
        // Polled until its temporary file is there, then dropped, as Ctrl-C in `runs pull` does.
        let started = async {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut pulling => panic!("a stalled download cannot end"),
                    () = tokio::task::yield_now() => {}
                }
                if std::fs::read_dir(&folder).into_iter().flatten().flatten().next().is_some() {
                    break;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), started).await.expect("the download started");
        drop(pulling);
        let left: Vec<_> =
            std::fs::read_dir(&folder).expect("its folder").flatten().map(|entry| entry.file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn run_id() -> RunId {
        "run-1".parse().expect("valid run id")
    }

    #[test]
    fn output_paths_are_the_key_after_the_run_in_plain_names() {
        let id = run_id();
        let cases = [
            ("runs/run-1/plots/loss.png", "plots/loss.png"),
            ("team/exp/runs/run-1/checkpoints/model.pt", "checkpoints/model.pt"),
            ("elsewhere/report.pdf", "elsewhere/report.pdf"),
            ("runs/run-2/x.png", "runs/run-2/x.png"),
        ];
        for (key, expected) in cases {
            assert_eq!(output_path(&id, key), Ok(PathBuf::from(expected)), "{key}");
        }
    }

    #[test]
    fn keys_that_could_leave_the_directory_are_refused() {
        let id = run_id();
        for key in [
            "",
            "/etc/passwd",
            "runs/run-1//etc/passwd",
            "runs/run-1/../../x",
            "../x",
            "a/./b",
            "a/",
            "runs/run-1/",
            "a\\..\\b",
            "a\0b",
        ] {
            let err = output_path(&id, key).expect_err(key);
            assert!(err.contains("no safe place under --out"), "{key:?}: {err}");
        }
    }

    #[test]
    fn folders_that_are_links_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("plots")).expect("symlink");
        let err = make_parents(dir.path(), Path::new("plots/loss.png")).expect_err("a link");
        assert!(err.contains("symbolic link"), "{err}");
        make_parents(dir.path(), Path::new("a/b/c.png")).expect("plain folders");
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn a_mismatch_names_both_hashes() {
        let record = Artifact {
            run_id: run_id(),
            key: "runs/run-1/m.pt".into(),
            bytes: Some(3),
            sha256: Some("ab".into()),
            content_type: None,
            kind: None,
            registered_at: crate::time::Timestamp::from_millis(0),
            at: crate::run::EventKey {
                time: crate::time::Timestamp::from_millis(0),
                id: "e1".into(),
                source: "pod://p".into(),
            },
        };
        let err = check(&record, 3, "cd").expect_err("mismatch");
        assert!(err.contains("ab") && err.contains("cd") && err.contains("not kept"), "{err}");
        assert!(check(&record, 4, "ab").expect_err("size").contains("size mismatch"));
        assert_eq!(check(&record, 3, "AB"), Ok(()));
    }
}
