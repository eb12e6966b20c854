//! What the monitor reported for a run, kept in its run directory for the next attempt: each
//! artifact's stored version (size, modification time, sha256) and how far each log was
//! read. A retry tells an earlier attempt's file from a new one by this record, never by
//! what happens to be in the directory when it starts: a child that writes at once would
//! otherwise have its file taken for an old one and never uploaded.
//!
//! The record is `.scientist/monitor.json` (hidden, so never collected itself), read and
//! replaced whole only through [`RunDir`]. One that is missing, unreadable or not
//! understood counts as empty: everything is then uploaded and tailed again, which costs
//! time but loses nothing. It lags by design (written at most every second, and at the
//! end): what a crash keeps it from saying is sent again, never missed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::beneath::{BeneathError, RunDir};

/// Where the record is, relative to the run directory.
pub const RECORD_FILE: &str = ".scientist/monitor.json";

/// A record larger than this is not read (it is the monitor's own, a few KiB per 100 files).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

const FORMAT: u32 = 1;

/// One version of a file, as seen on the opened file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub bytes: u64,
    pub modified: Option<SystemTime>,
    pub sha256: Option<String>,
}

impl Version {
    pub fn of(metadata: &std::fs::Metadata) -> Version {
        Version { bytes: metadata.len(), modified: metadata.modified().ok(), sha256: None }
    }

    /// The same file as far as size and modification time tell.
    pub fn same_file(&self, other: &Version) -> bool {
        self.bytes == other.bytes && self.modified == other.modified
    }
}

/// What earlier attempts reported, by path in the run directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Artifacts and the version last stored (or detected, with no store).
    pub files: BTreeMap<PathBuf, Version>,
    /// Logs and the byte offset up to which their lines were reported.
    pub logs: BTreeMap<PathBuf, u64>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: u32,
    #[serde(default)]
    files: BTreeMap<String, WireVersion>,
    #[serde(default)]
    logs: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct WireVersion {
    bytes: u64,
    /// Nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// The record in `dir`, or an empty one (said on stderr when one was there but unusable).
pub fn load(dir: &RunDir) -> Record {
    match read(dir) {
        Ok(record) => record,
        Err(BeneathError::Missing { .. }) => Record::default(),
        Err(err) => {
            crate::notice!(
                warn,
                "scientist work: ignoring the monitor's record in {} ({err}); the run directory's files \
                 are uploaded again",
                dir.path().display()
            );
            Record::default()
        }
    }
}

fn read(dir: &RunDir) -> Result<Record, BeneathError> {
    let file = dir.open_file(Path::new(RECORD_FILE))?;
    let invalid = |reason: String| BeneathError::Io {
        path: PathBuf::from(RECORD_FILE),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|source| BeneathError::Io { path: PathBuf::from(RECORD_FILE), source })?;
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?;
    if wire.format != FORMAT {
        return Err(invalid(format!("format {} is not {FORMAT}, written by another version", wire.format)));
    }
    let files = wire
        .files
        .into_iter()
        .map(|(path, version)| {
            let modified = version.modified_ns.map(|nanos| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos));
            (PathBuf::from(path), Version { bytes: version.bytes, modified, sha256: version.sha256 })
        })
        .collect();
    let logs = wire.logs.into_iter().map(|(path, offset)| (PathBuf::from(path), offset)).collect();
    Ok(Record { files, logs })
}

/// Replaces the record in `dir`.
///
/// # Errors
/// When it cannot be written (a linked `.scientist` folder, a full disk).
pub fn save(dir: &RunDir, record: &Record) -> Result<(), BeneathError> {
    let files = record
        .files
        .iter()
        .map(|(path, version)| {
            let modified_ns = version
                .modified
                .and_then(|modified| modified.duration_since(SystemTime::UNIX_EPOCH).ok())
                .and_then(|since| u64::try_from(since.as_nanos()).ok());
            let wire = WireVersion { bytes: version.bytes, modified_ns, sha256: version.sha256.clone() };
            (text(path), wire)
        })
        .collect();
    let logs = record.logs.iter().map(|(path, offset)| (text(path), *offset)).collect();
    let wire = Wire { format: FORMAT, files, logs };
    let bytes = serde_json::to_vec(&wire)
        .map_err(|err| BeneathError::Io { path: PathBuf::from(RECORD_FILE), source: std::io::Error::other(err) })?;
    dir.replace(Path::new(RECORD_FILE), &bytes)
}

/// A path as the record keys it (a name that is not UTF-8 does not map back: such a file is
/// uploaded again on a retry, never missed).
fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_record_loads_as_it_was() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = RunDir::open(root.path()).expect("open");
        assert_eq!(load(&dir), Record::default(), "no record yet");
        std::fs::write(root.path().join("loss.png"), b"png").expect("write");
        let metadata = std::fs::metadata(root.path().join("loss.png")).expect("stat");
        let mut record = Record::default();
        let mut version = Version::of(&metadata);
        version.sha256 = Some("ab".repeat(32));
        record.files.insert(PathBuf::from("plots/loss.png"), version.clone());
        record.files.insert(PathBuf::from("m.pt"), Version { bytes: 1, modified: None, sha256: None });
        record.logs.insert(PathBuf::from("train.log"), 1234);
        save(&dir, &record).expect("save");
        let loaded = load(&dir);
        assert_eq!(loaded, record);
        assert!(loaded.files[Path::new("plots/loss.png")].same_file(&Version::of(&metadata)));
    }

    #[test]
    fn an_unusable_record_is_an_empty_one() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = RunDir::open(root.path()).expect("open");
        std::fs::create_dir(root.path().join(".scientist")).expect("mkdir");
        for text in ["{not json", r#"{"format": 99, "files": {}}"#, "[]"] {
            std::fs::write(root.path().join(RECORD_FILE), text).expect("write");
            assert_eq!(load(&dir), Record::default(), "{text}");
        }
    }

    #[test]
    fn a_linked_record_is_not_read() {
        let root = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        let forged = r#"{"format": 1, "files": {"loss.png": {"bytes": 3}}}"#;
        std::fs::write(outside.path().join("monitor.json"), forged).expect("write");
        std::fs::create_dir(root.path().join(".scientist")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path().join("monitor.json"), root.path().join(RECORD_FILE)).expect("link");
        let dir = RunDir::open(root.path()).expect("open");
        assert_eq!(load(&dir), Record::default());
    }
}
