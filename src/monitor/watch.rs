//! The notify side of the monitor: a recursive watch on a run directory (inotify on Linux;
//! no polling) whose events arrive as [`Change`]s on a bounded channel. notify calls us on
//! its own thread, which must never block: when the channel is full, the paths are dropped
//! and the next change read says [`Change::Rescan`], so a storm is coalesced, never lost.
//! Linked folders are not watched (notify is told not to follow links, in the first walk
//! and for folders made later); the paths reported are only names, opened through
//! [`super::RunDir`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{Config, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Batches of paths that may wait for the monitor. Each notify event is one batch (usually
/// one path); a pipeline writing thousands of files a second overflows it, and a rescan of
/// the directory, which the overflow triggers, is then cheaper than the events were.
pub const CHANNEL_CAPACITY: usize = 4096;

/// What changed in the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These files were created, written or renamed away: they wait to settle.
    Files(Vec<PathBuf>),
    /// These files were closed after writing (inotify's IN_CLOSE_WRITE: the last descriptor
    /// of one open was closed) or renamed into place: their writer may be done. Backends
    /// without close events never say it, and their files wait to settle.
    Closed(Vec<PathBuf>),
    /// A folder appeared. notify adds its watch only after reporting it, so files written
    /// into it before that raise no event: the monitor scans it at once, and again shortly
    /// after.
    Folder(PathBuf),
    /// Events were lost (the channel or the kernel's queue overflowed): scan everything.
    Rescan,
}

/// Watches while it lives.
pub struct DirWatcher {
    watcher: RecommendedWatcher,
}

impl DirWatcher {
    /// Stops watching `folder` and what is below it: a folder swapped for a link before
    /// notify added its watch, which notify then followed.
    pub fn unwatch(&mut self, folder: &Path) {
        if let Err(err) = self.watcher.unwatch(folder) {
            tracing::debug!(folder = %folder.display(), error = %err, "cannot remove a watch");
        }
    }
}

/// Starts watching `dir` and everything below it.
///
/// # Errors
/// notify's, e.g. when the inotify watch limit (`fs.inotify.max_user_watches`) is reached.
pub fn watch(dir: &Path) -> notify::Result<(DirWatcher, Changes)> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(event) if event.need_rescan() => Change::Rescan,
            Ok(event) => match change_of(event) {
                Some(change) => change,
                None => return,
            },
            Err(err) => {
                tracing::debug!(error = %err, "file watch error; rescanning the run directory");
                Change::Rescan
            }
        };
        if tx.try_send(change).is_err() {
            flag.store(true, Ordering::Release);
        }
    };
    let mut watcher = RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((DirWatcher { watcher }, Changes { rx, overflowed }))
}

/// The receiving end.
pub struct Changes {
    rx: mpsc::Receiver<Change>,
    overflowed: Arc<AtomicBool>,
}

impl Changes {
    /// The next change; `None` once the watcher is gone and everything was read.
    /// Cancel-safe (an mpsc receive).
    pub async fn recv(&mut self) -> Option<Change> {
        if self.overflowed.swap(false, Ordering::AcqRel) {
            return Some(Change::Rescan);
        }
        let change = self.rx.recv().await;
        // A change dropped while this one waited is made up for by a rescan, right after.
        if change.is_some() && self.overflowed.load(Ordering::Acquire) {
            self.overflowed.store(false, Ordering::Release);
            return Some(Change::Rescan);
        }
        change
    }

    /// A change already waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Change> {
        if self.overflowed.swap(false, Ordering::AcqRel) {
            return Some(Change::Rescan);
        }
        self.rx.try_recv().ok()
    }
}

/// The events that can mean new content. Opens, reads and removals do not.
fn change_of(event: notify::Event) -> Option<Change> {
    match event.kind {
        EventKind::Create(CreateKind::Folder) => event.paths.into_iter().next().map(Change::Folder),
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Change::Closed(event.paths)),
        // inotify reports a rename's two paths as `From` and `To` as well.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
            Some(Change::Files(event.paths))
        }
        EventKind::Access(_) | EventKind::Remove(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads changes until `wanted` is among them, failing after a deadline.
    async fn wait_for(changes: &mut Changes, mut wanted: impl FnMut(&Change) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Some(change)) if wanted(&change) => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the watcher stopped"),
                Err(_) => panic!("no matching change within 10 s"),
            }
        }
    }

    #[tokio::test]
    async fn writes_closes_renames_and_new_folders_are_seen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        let (_watcher, mut changes) = watch(&root).expect("watch");
        let plot = root.join("loss.png");
        std::fs::write(&plot, b"png").expect("write");
        wait_for(&mut changes, |change| matches!(change, Change::Files(paths) if paths.contains(&plot))).await;
        wait_for(&mut changes, |change| matches!(change, Change::Closed(paths) if paths.contains(&plot))).await;
        let renamed = root.join("model.pt");
        std::fs::write(root.join(".model.pt.tmp"), b"pt").expect("write");
        std::fs::rename(root.join(".model.pt.tmp"), &renamed).expect("rename");
        wait_for(&mut changes, |change| matches!(change, Change::Closed(paths) if paths.contains(&renamed))).await;
        let folder = root.join("Stage_1");
        std::fs::create_dir(&folder).expect("mkdir");
        wait_for(&mut changes, |change| *change == Change::Folder(folder.clone())).await;
    }

    /// A linked folder, there before the watch (a retry's) or made after, is not entered:
    /// a write outside raises nothing, while the marker written after it does (inotify keeps
    /// one queue, in order, for all of a watcher's folders).
    #[tokio::test]
    async fn linked_folders_are_not_watched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        let outside = std::fs::canonicalize(outside.path()).expect("canonical");
        std::os::unix::fs::symlink(&outside, root.join("before")).expect("link");
        let (_watcher, mut changes) = watch(&root).expect("watch");
        std::os::unix::fs::symlink(&outside, root.join("after")).expect("link");
        std::fs::write(outside.join("secret.png"), b"secret").expect("write outside");
        let marker = root.join("marker.png");
        std::fs::write(&marker, b"png").expect("write");
        let mut seen = Vec::new();
        wait_for(&mut changes, |change| {
            if let Change::Files(paths) = change {
                seen.extend(paths.iter().cloned());
            }
            matches!(change, Change::Files(paths) if paths.contains(&marker))
        })
        .await;
        let links = [root.join("before"), root.join("after")];
        let leaked: Vec<&PathBuf> =
            seen.iter().filter(|path| links.iter().any(|link| path.starts_with(link) && *path != link)).collect();
        assert!(leaked.is_empty(), "changes from beneath a link: {leaked:?}");
    }

    #[test]
    fn an_overflow_becomes_one_rescan() {
        let (tx, rx) = mpsc::channel(1);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut changes = Changes { rx, overflowed: overflowed.clone() };
        tx.try_send(Change::Files(vec![PathBuf::from("a")])).expect("room for one");
        assert!(tx.try_send(Change::Files(vec![PathBuf::from("b")])).is_err());
        overflowed.store(true, Ordering::Release);
        assert_eq!(changes.try_recv(), Some(Change::Rescan));
        assert_eq!(changes.try_recv(), Some(Change::Files(vec![PathBuf::from("a")])));
        assert_eq!(changes.try_recv(), None);
    }
}
