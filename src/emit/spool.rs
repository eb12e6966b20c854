//! The spool directory: one on-disk format for every writer and every drainer, so that
//! whatever `scientist emit --spool` or a worker's event stream kept is sent by the next
//! `emit` or worker on the same directory.
//!
//! Events wait in segment files, `seg-<ULID>.ndjson`: one structured CloudEvent JSON object
//! a line, names sorting oldest first. A worker's stream appends to its open segment (synced
//! per group of events); `emit --spool` writes a whole segment at once (a temporary name,
//! synced, renamed). A segment is removed once every event in it was acknowledged; events
//! refused for good are appended to `rejected.ndjson`, never lost and never retried.
//!
//! Whoever drains holds the directory's lock (`flock` on the directory itself): a worker
//! for as long as it runs, an `emit` while it drains. Writing a whole segment takes no lock,
//! so `emit --spool` may keep events while a worker runs; that worker sends them when it
//! next starts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use ulid::Ulid;

use crate::control::{self, ControlPlane};
use crate::run::RunId;

/// Events refused for good, appended one a line.
pub const REJECTED_FILE: &str = "rejected.ndjson";

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_EXTENSION: &str = "ndjson";

/// A segment's place in the spool's order (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegmentName {
    /// `seg-000000000001.ndjson`, a worker's segment from before segments were named by
    /// ULID: older than any ULID name, so sent first.
    Numbered(u64),
    /// `seg-<ULID>.ndjson`; also `<ULID>.ndjson`, kept by `emit --spool` before it wrote
    /// segments.
    Ulid(Ulid),
}

impl SegmentName {
    /// A new name that sorts after every one made before by this process (and, clocks
    /// permitting, by any other).
    pub fn generate() -> SegmentName {
        static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
        let mut generator = crate::sync::lock(&GENERATOR);
        let generator = generator.get_or_insert_with(ulid::Generator::new);
        SegmentName::Ulid(generator.generate().unwrap_or_else(|_| Ulid::generate()))
    }

    fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(&format!(".{SEGMENT_EXTENSION}"))?;
        match stem.strip_prefix(SEGMENT_PREFIX) {
            Some(rest) if !rest.is_empty() && rest.bytes().all(|byte| byte.is_ascii_digit()) => {
                rest.parse().ok().map(SegmentName::Numbered)
            }
            Some(rest) => Ulid::from_string(rest).ok().map(SegmentName::Ulid),
            None => Ulid::from_string(stem).ok().map(SegmentName::Ulid),
        }
    }

    fn file_name(&self) -> String {
        match self {
            SegmentName::Numbered(number) => format!("{SEGMENT_PREFIX}{number:012}.{SEGMENT_EXTENSION}"),
            SegmentName::Ulid(ulid) => format!("{SEGMENT_PREFIX}{ulid}.{SEGMENT_EXTENSION}"),
        }
    }
}

/// One event read back from a segment.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// The event's JSON line, as it will be sent.
    pub line: Arc<str>,
    /// Its run and `seq`, when it has them.
    pub run_seq: Option<(RunId, u64)>,
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct SpoolDir {
    dir: PathBuf,
}

/// The directory's lock: only its holder removes segments. Released when dropped.
#[derive(Debug)]
pub struct SpoolLock {
    _dir: File,
}

/// What draining the spool delivered.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Drained {
    /// Events the control plane stored (or already had).
    pub delivered: usize,
    /// Events it refused for good; they were appended to [`REJECTED_FILE`].
    pub refused: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("reading the spool")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Send(control::Error),
}

impl SpoolDir {
    /// The spool in `dir`, created when missing.
    pub fn open(dir: &Path) -> io::Result<SpoolDir> {
        fs::create_dir_all(dir)?;
        Ok(SpoolDir { dir: dir.to_owned() })
    }

    /// `<data dir>/scientist/spool`, where `emit --spool` keeps events by default.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|dir| dir.join("scientist").join("spool"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the directory's lock; `None` when another process holds it.
    pub fn try_lock(&self) -> io::Result<Option<SpoolLock>> {
        use std::os::fd::AsRawFd;
        let dir = File::open(&self.dir)?;
        // SAFETY: flock on a file descriptor we own; the lock goes with the descriptor.
        let locked = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(SpoolLock { _dir: dir }))
    }

    pub fn segment_path(&self, name: SegmentName) -> PathBuf {
        self.dir.join(name.file_name())
    }

    /// The segments in the spool, oldest first.
    pub fn segments(&self) -> io::Result<Vec<(SegmentName, PathBuf)>> {
        let mut segments = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()).and_then(SegmentName::parse) else {
                continue;
            };
            segments.push((name, path));
        }
        segments.sort_by_key(|(name, _)| *name);
        Ok(segments)
    }

    /// The events of a segment, in order. A line that is not a JSON object (the torn end of
    /// a write a crash interrupted, never acknowledged to anyone) is skipped.
    pub fn read_segment(path: &Path) -> io::Result<Vec<Spooled>> {
        let text = fs::read_to_string(path)?;
        let mut events = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
                tracing::warn!(file = %path.display(), "skipping a torn line in the spool");
                continue;
            };
            let run_seq = object
                .get("data")
                .and_then(|data| data.get("run_id"))
                .and_then(Value::as_str)
                .and_then(|id| id.parse::<RunId>().ok())
                .zip(object.get("seq").and_then(Value::as_u64));
            events.push(Spooled { line: Arc::from(line), run_seq });
        }
        Ok(events)
    }

    /// Durably keeps `lines` (one JSON event each) as a new, whole segment; returns its path.
    pub fn write_segment(&self, lines: &[impl AsRef<str>]) -> io::Result<PathBuf> {
        let path = self.segment_path(SegmentName::generate());
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            return Err(io::Error::other("a segment name that is not text"));
        };
        // A dot name with another extension: never taken for a segment, even half-written.
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&temporary)?;
        for line in lines {
            file.write_all(line.as_ref().as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        // The rename itself must survive a crash too.
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Appends events refused for good to [`REJECTED_FILE`], synced.
    pub fn set_aside<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(self.dir.join(REJECTED_FILE))?;
        for line in lines {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.sync_data()
    }

    /// Removes a segment whose events were all acknowledged (or set aside).
    pub fn remove_segment(path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Sends every segment, oldest first, removing each once acknowledged (the lock proves
    /// no worker is appending to one). Stops at the first segment that cannot be delivered
    /// now and returns that error; the rest stays.
    pub async fn drain(&self, _lock: &SpoolLock, plane: &dyn ControlPlane) -> Result<Drained, DrainError> {
        let mut drained = Drained::default();
        for (_, path) in self.segments().map_err(DrainError::Io)? {
            let events = Self::read_segment(&path).map_err(DrainError::Io)?;
            let lines: Vec<Arc<str>> = events.into_iter().map(|event| event.line).collect();
            let refused: Vec<&str> = match plane.send_lines(&lines).await {
                Ok(answer) => {
                    for rejected in &answer.rejected {
                        tracing::warn!(file = %path.display(), line = rejected.line, reason = %rejected.reason,
                            "the control plane refused a spooled event; kept in {REJECTED_FILE}");
                    }
                    answer
                        .rejected
                        .iter()
                        .filter_map(|rejected| lines.get(rejected.line.wrapping_sub(1)))
                        .map(|line| &**line)
                        .collect()
                }
                Err(err) if err.is_retryable() => return Err(DrainError::Send(err)),
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err,
                        "the control plane refused a spooled segment; kept in {REJECTED_FILE}");
                    lines.iter().map(|line| &**line).collect()
                }
            };
            if !refused.is_empty() {
                self.set_aside(refused.iter().copied()).map_err(DrainError::Io)?;
            }
            drained.delivered += lines.len() - refused.len();
            drained.refused += refused.len();
            Self::remove_segment(&path).map_err(DrainError::Io)?;
        }
        Ok(drained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_segments_come_back_in_order_and_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = SpoolDir::open(&dir.path().join("spool")).expect("open");
        let first = spool.write_segment(&[r#"{"id":"a"}"#, r#"{"id":"b"}"#]).expect("keep");
        let second = spool.write_segment(&[r#"{"id":"c"}"#]).expect("keep");
        let paths: Vec<PathBuf> = spool.segments().expect("list").into_iter().map(|(_, path)| path).collect();
        assert_eq!(paths, [first.clone(), second]);
        let lines: Vec<String> =
            SpoolDir::read_segment(&first).expect("read").into_iter().map(|event| event.line.to_string()).collect();
        assert_eq!(lines, [r#"{"id":"a"}"#, r#"{"id":"b"}"#]);
        let leftovers: Vec<_> = fs::read_dir(spool.dir()).expect("list").filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 2, "no temporary files stay behind");
    }

    #[test]
    fn older_names_sort_first_and_other_files_are_not_segments() {
        let numbered = SegmentName::parse("seg-000000000007.ndjson").expect("numbered");
        assert_eq!(numbered, SegmentName::Numbered(7));
        let fresh = SegmentName::generate();
        let SegmentName::Ulid(ulid) = fresh else { panic!("a new name is a ULID") };
        assert_eq!(SegmentName::parse(&fresh.file_name()), Some(fresh));
        assert_eq!(SegmentName::parse(&format!("{ulid}.ndjson")), Some(fresh), "emit's files before segments");
        assert!(numbered < fresh);
        for other in [REJECTED_FILE, "notes.txt", ".seg-x.ndjson.tmp", "seg-.ndjson"] {
            assert_eq!(SegmentName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn one_holder_of_the_lock_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = SpoolDir::open(dir.path()).expect("open");
        let held = spool.try_lock().expect("lock").expect("free");
        assert!(spool.try_lock().expect("lock").is_none(), "held by another descriptor");
        drop(held);
        assert!(spool.try_lock().expect("lock").is_some(), "released when dropped");
    }
}
