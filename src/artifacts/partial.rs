//! The temporary file a download is written to beside its target (`.NAME.pull-PID-RANDOM`, in
//! the same folder so that the rename into place is atomic), and what cleans it up: dropped
//! unfinished (an error, Ctrl-C) it is removed, and one left by a pull that was killed (no
//! destructor ran) is removed by the next pull of the same file.

use std::path::{Path, PathBuf};

/// A download's temporary file, removed when it goes out of scope unless it was renamed into
/// place: after a bad or broken download, and when the pull is dropped part-way (Ctrl-C in
/// `runs pull`), so no `.NAME.pull-…` file is left behind.
pub(super) struct Partial(PathBuf);

impl Partial {
    /// A new temporary path for `target`, after removing those that killed pulls left for it.
    pub(super) fn beside(target: &Path) -> Partial {
        remove_abandoned(target);
        let name = file_name(target);
        Partial(target.with_file_name(format!(".{name}.pull-{}-{:08x}", std::process::id(), fastrand::u32(..))))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Renamed into place, it is gone already; anything else is left by an unfinished pull.
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file_name(target: &Path) -> String {
    target.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Removes the temporary files of `target` whose process is gone (SIGKILL, a crash, a power
/// cut). One whose process still runs is another pull at work, and is left to it.
fn remove_abandoned(target: &Path) {
    let prefix = format!(".{}.pull-", file_name(target));
    let Some(Ok(entries)) = target.parent().map(std::fs::read_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|pid| pid.parse::<libc::pid_t>().ok()) else { continue };
        if pid > 0 && !process_exists(pid) {
            // A link with such a name is removed itself; what it points to is never touched.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only asks whether the process exists; no memory is involved.
    let answer = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists, under another user.
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_killed_pull_left_is_removed_and_a_live_pulls_file_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("model.pt");
        // Above any pid_max: no such process.
        let abandoned = dir.path().join(".model.pt.pull-2147483646-0badf00d");
        let live = dir.path().join(format!(".model.pt.pull-{}-00c0ffee", std::process::id()));
        let other = dir.path().join(".other.pt.pull-2147483646-0badf00d");
        for file in [&abandoned, &live, &other] {
            std::fs::write(file, b"part of a download").expect("write");
        }
        let partial = Partial::beside(&target);
        assert!(!abandoned.exists(), "a dead process's partial file is removed");
        assert!(live.exists() && other.exists(), "a live pull's, and another file's, are kept");
        assert!(partial.path().file_name().is_some_and(|name| name.to_string_lossy().starts_with(".model.pt.pull-")));
    }
}
