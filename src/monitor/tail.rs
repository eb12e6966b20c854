//! Tailing one `*.log` file of a run directory: what was appended since the last read,
//! split into lines and grouped (tracebacks kept together, levels detected) by `capture`, as the
//! worker does with the child's stdout and stderr. A file that shrank was truncated or
//! replaced: it is read again from its start. Each read opens the file through the run
//! directory ([`RunDir::open_file`]), so a log that is (or becomes) a link is never read.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::beneath::{BeneathError, RunDir};
use crate::capture::{Capture, Record};

/// A rewritten line (a progress bar in a log file) is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes read from one file per call, so one huge log cannot hold the monitor up.
pub const READ_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct LogTail {
    /// Relative to the run directory.
    path: PathBuf,
    offset: u64,
    capture: Capture,
}

impl LogTail {
    /// Tails `path` (relative to the run directory) from byte `offset` (0 for a new file;
    /// where an earlier attempt of the run stopped reporting, for one it read).
    pub fn new(path: PathBuf, offset: u64) -> LogTail {
        LogTail { path, offset, capture: Capture::new(PROGRESS_INTERVAL) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes read so far: everything before this offset was turned into records.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads what was appended (up to `READ_BYTES`) and returns the finished records;
    /// `more` tells whether unread bytes remain. Blocking file I/O: call it off the
    /// async threads. A file that is gone reads as nothing.
    ///
    /// # Errors
    /// [`RunDir::open_file`]'s (a link is refused), or a failed read.
    pub fn read(&mut self, dir: &RunDir, now: Instant, out: &mut Vec<Record>) -> Result<bool, BeneathError> {
        let mut file = match dir.open_file(&self.path) {
            Ok(file) => file,
            Err(BeneathError::Missing { .. }) => return Ok(false),
            Err(err) => return Err(err),
        };
        let io_error = |source| BeneathError::Io { path: self.path.clone(), source };
        let length = file.metadata().map_err(io_error)?.len();
        if length < self.offset {
            // Truncated or replaced: what is there now is new.
            self.offset = 0;
        }
        if length == self.offset {
            self.tick(now, out);
            return Ok(false);
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io_error)?;
        let mut buffer = Vec::with_capacity(READ_BYTES.min((length - self.offset) as usize));
        file.take(READ_BYTES as u64).read_to_end(&mut buffer).map_err(io_error)?;
        self.offset += buffer.len() as u64;
        self.capture.feed(&buffer, now, out);
        Ok(self.offset < length)
    }

    /// Reports what waited for time to pass (a progress bar's latest state, a traceback
    /// that stopped growing).
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Record>) {
        self.capture.tick(now, out);
    }

    /// The run ended: a last line without its newline is a line too.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        self.capture.finish(Instant::now(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogLevel;
    use std::io::Write;

    fn messages(records: &[Record]) -> Vec<&str> {
        records.iter().map(|record| record.message.as_str()).collect()
    }

    #[test]
    fn appended_lines_are_read_once_and_a_partial_line_waits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("train.log");
        let mut file = std::fs::File::create(&path).expect("create");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from(path.file_name().expect("a name")), 0);
        let now = Instant::now();
        let mut out = Vec::new();
        write!(file, "epoch 1 loss 0.9\nWARNING: lr too high\npart").expect("write");
        assert!(!tail.read(&run, now, &mut out).expect("read"));
        assert_eq!(messages(&out), ["epoch 1 loss 0.9", "WARNING: lr too high"]);
        assert_eq!(out[1].level, LogLevel::Warning);
        out.clear();
        tail.read(&run, now, &mut out).expect("read again");
        assert!(out.is_empty(), "nothing new");
        writeln!(file, "ial line").expect("write");
        tail.read(&run, now, &mut out).expect("read");
        assert_eq!(messages(&out), ["partial line"]);
    }

    #[test]
    fn a_truncated_file_is_read_from_its_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\n").expect("write");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from(path.file_name().expect("a name")), 0);
        let mut out = Vec::new();
        tail.read(&run, Instant::now(), &mut out).expect("read");
        std::fs::write(&path, "three\n").expect("rewrite");
        tail.read(&run, Instant::now(), &mut out).expect("read");
        assert_eq!(messages(&out), ["one", "two", "three"]);
    }

    #[test]
    fn an_offset_skips_what_was_reported_before_and_finish_flushes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "old\n").expect("write");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from(path.file_name().expect("a name")), 4);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        write!(file, "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\nlast").expect("w");
        let mut out = Vec::new();
        tail.read(&run, Instant::now(), &mut out).expect("read");
        tail.finish(&mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].traceback && out[0].message.ends_with("ValueError: bad"));
        assert_eq!(out[0].level, LogLevel::Error);
        assert_eq!(out[1].message, "last");
    }

    #[test]
    fn a_large_log_is_read_in_bounded_steps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.log");
        let line = "x".repeat(99) + "\n";
        std::fs::write(&path, line.repeat(READ_BYTES / 100 * 3)).expect("write");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from(path.file_name().expect("a name")), 0);
        let mut out = Vec::new();
        let mut reads = 1;
        while tail.read(&run, Instant::now(), &mut out).expect("read") {
            reads += 1;
        }
        assert!(reads >= 3, "{reads} reads");
        assert_eq!(out.len(), READ_BYTES / 100 * 3);
    }

    #[test]
    fn a_missing_file_reads_as_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from("x.log"), 0);
        let mut out = Vec::new();
        assert!(!tail.read(&run, Instant::now(), &mut out).expect("read"));
        assert!(out.is_empty());
    }

    #[test]
    fn a_log_that_is_a_link_is_refused_not_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("secret.log"), "secret line\n").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret.log"), dir.path().join("leak.log")).expect("link");
        let run = RunDir::open(dir.path()).expect("run dir");
        let mut tail = LogTail::new(PathBuf::from("leak.log"), 0);
        let mut out = Vec::new();
        let err = tail.read(&run, Instant::now(), &mut out).expect_err("a link");
        assert!(matches!(err, BeneathError::Link { outside: true, .. }), "{err}");
        tail.finish(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
