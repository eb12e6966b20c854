//! The disk spool: events that could not be delivered, kept until the control plane takes
//! them. Each undelivered batch is one NDJSON file named by a ULID, so names sort in the
//! order they were kept and the spool drains oldest first. A file is written to a temporary
//! name, synced, then renamed: a crash leaves either the whole file or none of it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::client::{Client, SendError};

const EXTENSION: &str = "ndjson";

/// Files the control plane refused whole (invalid, too large) are moved here, never lost
/// and never retried.
const REJECTED_DIR: &str = "rejected";

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// What draining the spool delivered.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Drained {
    /// Events the control plane stored (or already had).
    pub delivered: usize,
    /// Events it refused; they were set aside under `rejected/`, or dropped when the
    /// control plane named them as invalid lines of an accepted batch.
    pub refused: usize,
}

impl Spool {
    /// The spool in `dir`, created when missing.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        Ok(Spool { dir: dir.to_owned() })
    }

    /// `<data dir>/scientist/spool`, shared by every `emit` and worker of this user.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|dir| dir.join("scientist").join("spool"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durably keeps `events` as the newest file; returns its path.
    pub fn keep(&self, events: &[Map<String, Value>]) -> io::Result<PathBuf> {
        let name = next_name();
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(format!("{name}.{EXTENSION}"));
        let mut file = fs::File::create(&temporary)?;
        for event in events {
            serde_json::to_writer(&mut file, event)?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        // The rename itself must survive a crash too.
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// The kept files, oldest first.
    pub fn pending(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == EXTENSION))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Sends every kept file, oldest first, removing each once acknowledged. Stops at the
    /// first file that cannot be delivered now and returns that error; the rest stays.
    pub async fn drain(&self, client: &Client) -> Result<Drained, DrainError> {
        let mut drained = Drained::default();
        for path in self.pending().map_err(DrainError::Io)? {
            let events = match read(&path) {
                Ok(events) => events,
                // Another process delivered and removed it meanwhile.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(DrainError::Io(err)),
            };
            match client.send_batch(&events).await {
                Ok(answer) => {
                    for rejected in &answer.rejected {
                        tracing::warn!(file = %path.display(), line = rejected.line, reason = %rejected.reason,
                            "the control plane refused a spooled event; dropped");
                    }
                    drained.delivered += events.len() - answer.rejected.len();
                    drained.refused += answer.rejected.len();
                    remove(&path).map_err(DrainError::Io)?;
                }
                Err(err) if err.is_retryable() => return Err(DrainError::Send(err)),
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "the control plane refused a spooled file; set aside");
                    drained.refused += events.len();
                    self.set_aside(&path).map_err(DrainError::Io)?;
                }
            }
        }
        Ok(drained)
    }

    fn set_aside(&self, path: &Path) -> io::Result<()> {
        let rejected = self.dir.join(REJECTED_DIR);
        fs::create_dir_all(&rejected)?;
        let Some(name) = path.file_name() else { return Ok(()) };
        fs::rename(path, rejected.join(name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("reading the spool")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Send(SendError),
}

/// A ULID that sorts after every one made before by this process.
fn next_name() -> String {
    static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut generator = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let generator = generator.get_or_insert_with(ulid::Generator::new);
    generator.generate().unwrap_or_else(|_| ulid::Ulid::generate()).to_string()
}

fn read(path: &Path) -> io::Result<Vec<Map<String, Value>>> {
    let text = fs::read_to_string(path)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|err| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not an event: {err}", path.display()))
            })
        })
        .collect()
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str) -> Map<String, Value> {
        match json!({"specversion": "1.0", "id": id}) {
            Value::Object(object) => object,
            _ => unreachable!(),
        }
    }

    #[test]
    fn kept_files_come_back_in_order_and_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Spool::open(&dir.path().join("spool")).expect("open");
        let first = spool.keep(&[event("a"), event("b")]).expect("keep");
        let second = spool.keep(&[event("c")]).expect("keep");
        assert_eq!(spool.pending().expect("list"), [first.clone(), second]);
        assert_eq!(read(&first).expect("read"), [event("a"), event("b")]);
        let leftovers: Vec<_> = fs::read_dir(spool.dir()).expect("list").filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 2, "no temporary files stay behind");
    }
}
