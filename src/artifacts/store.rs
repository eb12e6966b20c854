//! [`ArtifactStore`]: where run artifacts are kept, over object_store (a local directory, or
//! S3/MinIO by `s3://` URL). Keys are `[PREFIX/]runs/<run id>/<path in the run directory>`.
//! The read side hands out an object as a stream (never whole in memory), a byte range of
//! it, or a presigned GET URL where the store offers one (S3). Writing is `upload`'s.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{Attribute, GetOptions, GetRange, GetResultPayload, ObjectStore};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::run::RunId;

/// Bytes read from a local file per chunk of a download stream.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Where a run's artifacts are stored. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    pub(super) store: Arc<dyn ObjectStore>,
    /// Presigns GET URLs (S3); `None` for a local directory.
    signer: Option<Arc<dyn Signer>>,
    /// Object keys start with this (the path part of an `s3://bucket/prefix` URL).
    prefix: Vec<String>,
    /// Whether the store keeps a content type with each object (a local directory cannot).
    pub(super) content_types: bool,
    /// Where it is, for messages (holds no secret: credentials come from the environment).
    pub(super) location: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "artifact store {url:?} is not supported: give a directory, file:///DIR, or s3://BUCKET/PREFIX \
         (S3, MinIO and other S3-compatible stores; set AWS_ENDPOINT_URL for a non-AWS endpoint)"
    )]
    Unsupported { url: String },
    #[error("cannot create the artifact directory {}: {source}; pass --artifacts DIR or URL", path.display())]
    Directory { path: PathBuf, source: std::io::Error },
    #[error(
        "the artifact directory {} does not exist ({source}): pass --artifacts the directory or URL the workers upload to",
        path.display()
    )]
    Missing { path: PathBuf, source: std::io::Error },
    #[error("cannot open the artifact store {url}: {source}")]
    Store { url: String, source: object_store::Error },
}

/// Why an artifact key cannot be read for a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty segments, `.` or `..`, or characters object paths refuse.
    #[error("artifact key {key:?} is not a valid object path ({reason}): keys are plain `/`-separated names")]
    Invalid { key: String, reason: String },
    /// A valid path, but not one of the run's own objects.
    #[error("artifact key {key:?} is not under runs/{run_id}/: only a run's own objects are read for it")]
    NotTheRuns { key: String, run_id: RunId },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{key} is missing from the artifact store {location}")]
    Missing { key: String, location: String },
    /// The object changed between looking at it and reading it.
    #[error("{key} in {location} changed while it was being read: try again")]
    Changed { key: String, location: String },
    #[error("cannot read {key} from {location}")]
    Store { key: String, location: String, source: object_store::Error },
}

/// What the store says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The type stored with the object (S3), if any.
    pub content_type: Option<String>,
    /// The store's version tag, to read exactly this version afterwards.
    pub e_tag: Option<String>,
}

/// An object being read: `range` of its `size` bytes, as a stream of chunks.
pub struct ObjectRead {
    pub size: u64,
    pub range: Range<u64>,
    pub content_type: Option<String>,
    pub body: BoxStream<'static, Result<Bytes, ReadError>>,
}

impl std::fmt::Debug for ArtifactStore {
    /// The location only: the client's configuration holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("location", &self.location).finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// Opens the store named by `spec` to write to it: `s3://BUCKET[/PREFIX]` (credentials,
    /// region and endpoint from the usual `AWS_*` variables; `endpoint` wins over
    /// `AWS_ENDPOINT_URL`), `file:///DIR`, or a directory path (made if missing).
    pub fn open(spec: &str, endpoint: Option<&str>) -> Result<ArtifactStore, OpenError> {
        match parse_spec(spec)? {
            Spec::S3(rest) => ArtifactStore::s3(spec, rest, endpoint, AmazonS3Builder::from_env()),
            Spec::Local(dir) => ArtifactStore::local(dir),
        }
    }

    /// As [`ArtifactStore::open`] for an `s3://BUCKET[/PREFIX]` spec, with the client's
    /// credentials and region from `builder` rather than the environment.
    pub fn open_s3(spec: &str, endpoint: Option<&str>, builder: AmazonS3Builder) -> Result<ArtifactStore, OpenError> {
        match parse_spec(spec)? {
            Spec::S3(rest) => ArtifactStore::s3(spec, rest, endpoint, builder),
            Spec::Local(_) => Err(OpenError::Unsupported { url: spec.to_owned() }),
        }
    }

    /// As [`ArtifactStore::open`], to read from it: a local directory must already exist.
    pub fn open_to_read(spec: &str, endpoint: Option<&str>) -> Result<ArtifactStore, OpenError> {
        match parse_spec(spec)? {
            Spec::S3(rest) => ArtifactStore::s3(spec, rest, endpoint, AmazonS3Builder::from_env()),
            Spec::Local(dir) => match std::fs::metadata(dir) {
                Ok(_) => ArtifactStore::local(dir),
                Err(source) => Err(OpenError::Missing { path: dir.to_owned(), source }),
            },
        }
    }

    /// A local directory (made if missing).
    pub fn local(dir: &Path) -> Result<ArtifactStore, OpenError> {
        let directory = |source| OpenError::Directory { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(directory)?;
        let dir = std::fs::canonicalize(dir).map_err(directory)?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| OpenError::Store { url: dir.display().to_string(), source })?;
        Ok(ArtifactStore {
            store: Arc::new(store),
            signer: None,
            prefix: Vec::new(),
            content_types: false,
            location: dir.display().to_string(),
        })
    }

    fn s3(url: &str, rest: &str, endpoint: Option<&str>, builder: AmazonS3Builder) -> Result<ArtifactStore, OpenError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(OpenError::Unsupported { url: url.to_owned() });
        }
        let mut builder = builder.with_bucket_name(bucket);
        let endpoint = endpoint.map(str::to_owned).or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let mut location = format!("s3://{rest}");
        if let Some(endpoint) = endpoint.filter(|endpoint| !endpoint.is_empty()) {
            // MinIO and other S3-compatible servers on a plain-HTTP address (a private network).
            builder = builder.with_endpoint(&endpoint).with_allow_http(endpoint.starts_with("http://"));
            location = format!("{location} at {endpoint}");
        }
        let store = Arc::new(builder.build().map_err(|source| OpenError::Store { url: url.to_owned(), source })?);
        Ok(ArtifactStore {
            store: store.clone(),
            signer: Some(store),
            prefix: prefix.split('/').filter(|part| !part.is_empty()).map(str::to_owned).collect(),
            content_types: true,
            location,
        })
    }

    /// Where it is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether [`ArtifactStore::presigned_get`] can hand out URLs (S3 can, a directory cannot).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// The key of a run's file: `[PREFIX/]runs/<run id>/<path in the run directory>`.
    pub fn key(&self, run_id: &RunId, relative: &Path) -> ObjectPath {
        let file_parts: Vec<String> = relative
            .components()
            .filter_map(|part| match part {
                std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let parts = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(["runs", run_id.as_str()])
            .chain(file_parts.iter().map(String::as_str));
        ObjectPath::from_iter(parts)
    }

    /// The object store itself (tests read back what was stored).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The size, type and version of the object at `key`.
    ///
    /// # Errors
    /// `Missing` when there is none; `Store` when the store fails.
    pub async fn info(&self, key: &ObjectPath) -> Result<ObjectInfo, ReadError> {
        let options = GetOptions { head: true, ..GetOptions::default() };
        let result = self.store.get_opts(key, options).await.map_err(|err| self.read_error(key, err))?;
        Ok(ObjectInfo {
            size: result.meta.size,
            content_type: result.attributes.get(&Attribute::ContentType).map(|value| value.to_string()),
            e_tag: result.meta.e_tag.clone(),
        })
    }

    /// Reads `range` of the object (all of it when `None`) as a stream; with `version` (an
    /// [`ObjectInfo::e_tag`]), only that version, else `Changed`.
    ///
    /// # Errors
    /// `Missing`, `Changed`, or `Store`; the stream itself yields `Store` when reading breaks off.
    pub async fn read(
        &self,
        key: &ObjectPath,
        range: Option<Range<u64>>,
        version: Option<&str>,
    ) -> Result<ObjectRead, ReadError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            if_match: version.map(str::to_owned),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(key, options).await.map_err(|err| self.read_error(key, err))?;
        let content_type = result.attributes.get(&Attribute::ContentType).map(|value| value.to_string());
        let (size, range) = (result.meta.size, result.range.clone());
        let (key_text, location) = (key.to_string(), self.location.clone());
        let body = match result.payload {
            GetResultPayload::File(file, path) => local_chunks(file, path, range.clone(), key_text, location),
            GetResultPayload::Stream(stream) => stream
                .map_err(move |source| ReadError::Store { key: key_text.clone(), location: location.clone(), source })
                .boxed(),
        };
        Ok(ObjectRead { size, range, content_type, body })
    }

    /// A URL anyone may GET `key` from for `expires_in`, where the store offers one (S3);
    /// `None` for a local directory.
    ///
    /// # Errors
    /// `Store` when signing fails (no credentials).
    pub async fn presigned_get(&self, key: &ObjectPath, expires_in: Duration) -> Result<Option<String>, ReadError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let url = signer
            .signed_url(object_store::signer::Method::GET, key, expires_in)
            .await
            .map_err(|err| self.read_error(key, err))?;
        Ok(Some(url.to_string()))
    }

    fn read_error(&self, key: &ObjectPath, source: object_store::Error) -> ReadError {
        let (key, location) = (key.to_string(), self.location.clone());
        match source {
            object_store::Error::NotFound { .. } => ReadError::Missing { key, location },
            object_store::Error::Precondition { .. } => ReadError::Changed { key, location },
            source => ReadError::Store { key, location, source },
        }
    }
}

/// The object path of the artifact `key` of run `run_id`: a valid object path (no empty,
/// `.` or `..` segments) of the form `[PREFIX/]runs/<run id>/<path>`, so that a record can
/// only ever name one of its run's own objects, never a file elsewhere.
///
/// # Errors
/// `Invalid` or `NotTheRuns`.
pub fn run_object(run_id: &RunId, key: &str) -> Result<ObjectPath, KeyError> {
    let invalid = |reason: String| KeyError::Invalid { key: key.to_owned(), reason };
    if key.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if key.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(invalid("it has an empty, `.` or `..` segment".into()));
    }
    let path = ObjectPath::parse(key).map_err(|err| invalid(err.to_string()))?;
    if relative_to_run(run_id, key).is_none() {
        return Err(KeyError::NotTheRuns { key: key.to_owned(), run_id: run_id.clone() });
    }
    Ok(path)
}

/// The part of `key` after its first `runs/<run id>/`, when there is one and it is not empty.
pub fn relative_to_run<'k>(run_id: &RunId, key: &'k str) -> Option<&'k str> {
    let marker = format!("runs/{run_id}/");
    let at = if key.starts_with(&marker) { Some(0) } else { key.find(&format!("/{marker}")).map(|at| at + 1) }?;
    Some(&key[at + marker.len()..]).filter(|rest| !rest.is_empty())
}

enum Spec<'a> {
    S3(&'a str),
    Local(&'a Path),
}

fn parse_spec(spec: &str) -> Result<Spec<'_>, OpenError> {
    if let Some(rest) = spec.strip_prefix("s3://").or_else(|| spec.strip_prefix("s3a://")) {
        return Ok(Spec::S3(rest));
    }
    if let Some(path) = spec.strip_prefix("file://") {
        return Ok(Spec::Local(Path::new(path)));
    }
    if spec.contains("://") || spec.is_empty() {
        return Err(OpenError::Unsupported { url: spec.to_owned() });
    }
    Ok(Spec::Local(Path::new(spec)))
}

/// `range` of a local file in large chunks (object_store's own stream reads 8 KiB at a time,
/// a blocking task each, which a multi-GiB checkpoint does not want).
fn local_chunks(
    file: std::fs::File,
    path: PathBuf,
    range: Range<u64>,
    key: String,
    location: String,
) -> BoxStream<'static, Result<Bytes, ReadError>> {
    let failed = move |source: std::io::Error| ReadError::Store {
        key: key.clone(),
        location: location.clone(),
        source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) },
    };
    let state = (tokio::fs::File::from_std(file), range.start, range.end - range.start, false);
    futures_util::stream::try_unfold(state, move |(mut file, start, left, seeked)| {
        let (failed, path) = (failed.clone(), path.clone());
        async move {
            if left == 0 {
                return Ok(None);
            }
            if !seeked {
                file.seek(std::io::SeekFrom::Start(start)).await.map_err(&failed)?;
            }
            let mut chunk = vec![0u8; READ_CHUNK_BYTES.min(left as usize)];
            let read = file.read(&mut chunk).await.map_err(&failed)?;
            if read == 0 {
                // Truncated while being sent: the answer must break off, not end short.
                let message = format!("{} ended {left} bytes early", path.display());
                return Err(failed(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message)));
            }
            chunk.truncate(read);
            Ok(Some((Bytes::from(chunk), (file, start, left - read as u64, true))))
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_id() -> RunId {
        "run-1".parse().expect("valid run id")
    }

    #[test]
    fn keys_put_the_run_under_the_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = ArtifactStore::local(dir.path()).expect("local store");
        assert_eq!(local.key(&run_id(), Path::new("plots/loss.png")).as_ref(), "runs/run-1/plots/loss.png");
        let mut prefixed = local.clone();
        prefixed.prefix = vec!["team".into(), "exp".into()];
        assert_eq!(prefixed.key(&run_id(), Path::new("m.pt")).as_ref(), "team/exp/runs/run-1/m.pt");
    }

    #[test]
    fn unsupported_urls_say_what_is() {
        for spec in ["gs://bucket/x", "az://c/x", "", "s3://"] {
            let err = ArtifactStore::open(spec, None).expect_err(spec).to_string();
            assert!(err.contains("s3://BUCKET/PREFIX"), "{spec}: {err}");
        }
    }

    #[test]
    fn reading_a_missing_directory_does_not_make_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nowhere");
        let err = ArtifactStore::open_to_read(missing.to_str().expect("utf-8"), None).expect_err("missing");
        assert!(err.to_string().contains("--artifacts"), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn only_plain_keys_under_the_run_are_its_objects() {
        let id = run_id();
        for good in ["runs/run-1/loss.png", "team/exp/runs/run-1/plots/a b.png"] {
            assert_eq!(run_object(&id, good).expect(good).as_ref(), good);
        }
        for invalid in ["", "/runs/run-1/x", "runs/run-1/../x", "runs//run-1/x", "runs/run-1/./x", "runs/run-1/x/"] {
            assert!(matches!(run_object(&id, invalid), Err(KeyError::Invalid { .. })), "{invalid:?}");
        }
        for other in ["runs/run-2/x", "runs/run-1", "x/myruns/run-1/y", "secrets/token"] {
            assert!(matches!(run_object(&id, other), Err(KeyError::NotTheRuns { .. })), "{other:?}");
        }
        assert_eq!(relative_to_run(&id, "p/runs/run-1/ckpt/m.pt"), Some("ckpt/m.pt"));
        assert_eq!(relative_to_run(&id, "runs/run-10/m.pt"), None);
    }
}
