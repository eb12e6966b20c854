//! Run directories: `<runs dir>/<UTC date and time>_<run id>/` made on a run's first
//! attempt and reused by every retry, so a retried pipeline finds its checkpoints. The
//! run's idea is written there as `idea.json` for the pipeline to read (replacing what is
//! there, never writing through a link an earlier attempt left in its place).

use std::io;
use std::path::{Path, PathBuf};

use crate::monitor::RunDir;
use crate::run::Run;

/// The idea/config of the run, as the pipeline reads it.
pub const IDEA_FILE: &str = "idea.json";

/// The run's directory under `root`: the existing one for this run, else a new dated one.
pub fn prepare(root: &Path, run: &Run) -> io::Result<PathBuf> {
    prepare_named(root, run.id.as_str(), IDEA_FILE, &run.idea)
}

/// The directory of the job `id` under `root` (reused, else new and dated), with `value`
/// written there as `file` for the job's command to read.
pub fn prepare_named(root: &Path, id: &str, file: &str, value: &impl serde::Serialize) -> io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let dir = match existing(root, id)? {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Utc::now().format("%Y-%m-%d_%H-%M-%S");
            let dir = root.join(format!("{stamp}_{id}"));
            std::fs::create_dir_all(&dir)?;
            dir
        }
    };
    let text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    RunDir::open(&dir)?.replace(Path::new(file), &text).map_err(io::Error::other)?;
    Ok(dir)
}

/// The newest directory made for this job before, if any.
fn existing(root: &Path, id: &str) -> io::Result<Option<PathBuf>> {
    let suffix = format!("_{id}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.ends_with(&suffix)))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    Ok(found.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::NewRun;
    use crate::time::Timestamp;

    #[test]
    fn a_retry_reuses_the_first_attempts_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let run = Run::queued(NewRun::new(serde_json::json!({"title": "t"})), Timestamp::now());
        let first = prepare(root.path(), &run).expect("first");
        std::fs::write(first.join("checkpoint.pt"), b"x").expect("write");
        let again = prepare(root.path(), &run).expect("again");
        assert_eq!(first, again);
        assert!(again.join("checkpoint.pt").exists());
        let idea: serde_json::Value =
            serde_json::from_slice(&std::fs::read(again.join(IDEA_FILE)).expect("idea")).expect("json");
        assert_eq!(idea["title"], "t");
        let other = Run::queued(NewRun::new(serde_json::Value::Null), Timestamp::now());
        assert_ne!(prepare(root.path(), &other).expect("other"), first);
    }

    #[test]
    fn a_retry_replaces_a_linked_idea_file_instead_of_writing_through_it() {
        let root = tempfile::tempdir().expect("temp dir");
        let run = Run::queued(NewRun::new(serde_json::json!({"title": "t"})), Timestamp::now());
        let dir = prepare(root.path(), &run).expect("first");
        let outside = root.path().join("bashrc");
        std::fs::write(&outside, "keep me").expect("write");
        std::fs::remove_file(dir.join(IDEA_FILE)).expect("remove");
        std::os::unix::fs::symlink(&outside, dir.join(IDEA_FILE)).expect("link");
        prepare(root.path(), &run).expect("again");
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "keep me");
        let idea = std::fs::symlink_metadata(dir.join(IDEA_FILE)).expect("stat");
        assert!(idea.is_file(), "idea.json is a file of the run directory again");
    }
}
