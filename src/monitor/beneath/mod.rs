//! The one way the monitor reaches a file of a run directory: opened beneath the directory's
//! descriptor one component at a time with `O_NOFOLLOW`, so that no symbolic link is ever
//! followed (a link to `/etc/passwd`, a folder linked to `$HOME`, a link within the run
//! directory alike), and checked on the opened descriptor (`fstat`), never on the path. A path
//! swapped for a link between a look and the open cannot escape: there is no look apart from
//! the open. Uploads, sha256, log tails, `metrics.json`, folder scans and the monitor's own
//! record all go through [`RunDir`].
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` would do the walk in one call, but it
//! needs Linux 5.6 and container seccomp profiles refuse it unpredictably (ENOSYS or EPERM),
//! so it would be a second code path to keep right; the walk below is race-free on its own.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A run directory, held open: renaming or replacing its path later changes nothing for the
/// monitor. The directory itself is trusted (the worker made it, possibly under a linked
/// runs folder); everything beneath it is not. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// Why a path beneath the run directory was not opened.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error(
        "{} does not name a file inside the run directory: give a relative path without `..`, a root or NUL bytes",
        path.display()
    )]
    NotBeneath { path: PathBuf },
    /// `link` (relative to the run directory) is a symbolic link: the path it is on was not
    /// followed. `outside`: its target names a place outside the run directory (read from
    /// the link itself, lexically: nothing it points to is looked at).
    #[error(
        "{} is a symbolic link to {} ({}): links are never followed, so it was not read; \
         to have it collected, copy the file into the run directory instead of linking it",
        link.display(),
        target.display(),
        if *outside { "outside the run directory" } else { "within the run directory" }
    )]
    Link { link: PathBuf, target: PathBuf, outside: bool },
    #[error("{} is {kind}, not a regular file: it was not read", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{} is gone", path.display())]
    Missing { path: PathBuf },
    #[error("cannot open {} in the run directory: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What a folder entry is, from the entry itself (a link is a link, whatever it points to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Folder,
    Link,
    /// A FIFO, socket or device.
    Other,
}

/// Opens `relative` beneath `dir` for reading: a regular file reached without following any
/// symbolic link, or an error saying why not. The check fuzzing and tests call; the monitor
/// holds a [`RunDir`] open instead of opening `dir` each time.
///
/// # Errors
/// [`BeneathError::NotBeneath`] for an absolute path, `..`, an empty path or a NUL byte;
/// [`BeneathError::Link`] when any component is a link; [`BeneathError::NotAFile`] for a
/// folder, FIFO, socket or device; [`BeneathError::Missing`] and [`BeneathError::Io`] else.
pub fn open_beneath(dir: &Path, relative: &Path) -> Result<File, BeneathError> {
    let dir = RunDir::open(dir).map_err(|source| BeneathError::Io { path: dir.to_owned(), source })?;
    dir.open_file(relative)
}

/// The names `relative` is made of, checked: relative, no `..`, no NUL byte (`.` parts are
/// dropped). Empty for the run directory itself. Pure: no file is touched.
///
/// # Errors
/// [`BeneathError::NotBeneath`].
pub fn components(relative: &Path) -> Result<Vec<&OsStr>, BeneathError> {
    let not_beneath = || BeneathError::NotBeneath { path: relative.to_owned() };
    let mut names = Vec::new();
    for part in relative.components() {
        match part {
            Component::Normal(name) if !name.as_bytes().contains(&0) => names.push(name),
            Component::CurDir => {}
            Component::Normal(_) | Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(not_beneath());
            }
        }
    }
    Ok(names)
}

impl RunDir {
    /// Opens the run directory `path` (a link to it is fine: the directory itself is trusted).
    ///
    /// # Errors
    /// When `path` is not a directory that can be opened.
    pub fn open(path: &Path) -> io::Result<RunDir> {
        let path = std::fs::canonicalize(path)?;
        let fd = File::open(&path)?;
        if !fd.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", path.display())));
        }
        Ok(RunDir { fd: Arc::new(OwnedFd::from(fd)), path })
    }

    /// Where it was when it was opened (canonical), for watching and messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `relative` for reading (see [`open_beneath`]).
    ///
    /// # Errors
    /// As [`open_beneath`].
    pub fn open_file(&self, relative: &Path) -> Result<File, BeneathError> {
        let names = components(relative)?;
        let Some((name, folders)) = names.split_last() else {
            return Err(BeneathError::NotBeneath { path: relative.to_owned() });
        };
        let shown: PathBuf = names.iter().collect();
        let folder = self.folder(folders, false)?;
        // O_NONBLOCK: a FIFO named like an artifact must not hold the open until a writer comes
        // (it is refused below); it changes nothing for a regular file.
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let fd = sys::openat(folder.as_fd(), name, flags, 0)
            .map_err(|err| refusal(&self.path, &folder, name, &shown, err))?;
        let file = File::from(fd);
        let metadata = file.metadata().map_err(|source| BeneathError::Io { path: shown.clone(), source })?;
        match kind_of(&metadata.file_type()) {
            EntryKind::File => Ok(file),
            _ => Err(BeneathError::NotAFile { path: shown, kind: describe(&metadata.file_type()) }),
        }
    }

    /// The entries of the folder `relative` (empty: the run directory itself), reached like a
    /// file is, with what each entry is in itself. `.` and `..` are left out.
    ///
    /// # Errors
    /// As [`open_beneath`], for the folder.
    pub fn list(&self, relative: &Path) -> Result<Vec<(OsString, EntryKind)>, BeneathError> {
        let names = components(relative)?;
        let shown: PathBuf = names.iter().collect();
        let io_error = |source| BeneathError::Io { path: shown.clone(), source };
        let folder = self.folder(&names, false)?;
        // A new open file description: its read position is this listing's alone.
        let readable =
            sys::openat(folder.as_fd(), OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
                .map_err(io_error)?;
        let entries = sys::read_dir(readable).map_err(io_error)?;
        Ok(entries
            .into_iter()
            .map(|(name, d_type)| {
                let kind = match d_type {
                    libc::DT_REG => EntryKind::File,
                    libc::DT_DIR => EntryKind::Folder,
                    libc::DT_LNK => EntryKind::Link,
                    libc::DT_UNKNOWN => entry_kind(&folder, &name),
                    _ => EntryKind::Other,
                };
                (name, kind)
            })
            .collect())
    }

    /// Replaces `relative` beneath the run directory with `bytes`: written to a new temporary
    /// file and renamed over it (a reader sees the old content or the new, whole), with its
    /// folders made when missing. Never writes through a link: a linked folder on the way is
    /// refused, and the rename replaces a link at `relative` rather than its target.
    ///
    /// # Errors
    /// As [`open_beneath`], for the folders on the way and the file.
    pub fn replace(&self, relative: &Path, bytes: &[u8]) -> Result<(), BeneathError> {
        let names = components(relative)?;
        let Some((name, folders)) = names.split_last() else {
            return Err(BeneathError::NotBeneath { path: relative.to_owned() });
        };
        let shown: PathBuf = names.iter().collect();
        let io_error = |source| BeneathError::Io { path: shown.clone(), source };
        let folder = self.folder(folders, true)?;
        let mut temporary = OsString::from(".");
        temporary.push(name);
        temporary.push(format!(".{}.tmp", ulid::Ulid::generate()));
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut file = File::from(sys::openat(folder.as_fd(), &temporary, flags, 0o644).map_err(io_error)?);
        let written = file.write_all(bytes).and_then(|()| sys::renameat(folder.as_fd(), &temporary, name));
        if let Err(source) = written {
            let _ = sys::unlinkat(folder.as_fd(), &temporary);
            return Err(io_error(source));
        }
        Ok(())
    }

    /// Opens the folders `names` one below the other from the run directory, none of them a
    /// link (an `O_PATH` descriptor: usable only to open what is beneath it). With `create`,
    /// missing folders are made.
    fn folder(&self, names: &[&OsStr], create: bool) -> Result<OwnedFd, BeneathError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut walked = PathBuf::new();
        let mut folder = sys::openat(self.fd.as_fd(), OsStr::new("."), flags, 0)
            .map_err(|source| BeneathError::Io { path: walked.clone(), source })?;
        for name in names {
            walked.push(name);
            if create
                && let Err(source) = sys::mkdirat(folder.as_fd(), name)
                && source.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(BeneathError::Io { path: walked, source });
            }
            folder = sys::openat(folder.as_fd(), name, flags, 0)
                .map_err(|err| refusal(&self.path, &folder, name, &walked, err))?;
        }
        Ok(folder)
    }
}

/// The error for `name` in `folder` (shown as `shown`) that could not be opened. Opening a
/// link with `O_NOFOLLOW` fails (ELOOP for a file, ENOTDIR for a folder): whether it was one
/// is learnt from the link itself, never from what it points to.
fn refusal(root: &Path, folder: &OwnedFd, name: &OsStr, shown: &Path, err: io::Error) -> BeneathError {
    if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
        && let Ok(target) = sys::readlinkat(folder.as_fd(), name)
    {
        let outside = points_outside(root, shown, &target);
        return BeneathError::Link { link: shown.to_owned(), target, outside };
    }
    match err.raw_os_error() {
        // Gone, or a file where the path wants a folder: nothing there to open.
        Some(libc::ENOENT | libc::ENOTDIR) => BeneathError::Missing { path: shown.to_owned() },
        _ => BeneathError::Io { path: shown.to_owned(), source: err },
    }
}

/// Whether the link at `link` (relative to the run directory `root`) with `target` names a
/// place outside the run directory, read lexically (only for the message: no link is
/// followed either way): an absolute target unless it starts with `root`, a relative one
/// when its `..` climb above `root`.
fn points_outside(root: &Path, link: &Path, target: &Path) -> bool {
    let (mut depth, rest) = match target.strip_prefix(root) {
        Ok(rest) => (0, rest),
        Err(_) if target.has_root() => return true,
        Err(_) => (link.components().count().saturating_sub(1), target),
    };
    for part in rest.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::ParentDir if depth == 0 => return true,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// What `name` in `folder` is in itself, for file systems whose listings do not say.
fn entry_kind(folder: &OwnedFd, name: &OsStr) -> EntryKind {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match sys::openat(folder.as_fd(), name, flags, 0).and_then(|fd| File::from(fd).metadata()) {
        Ok(metadata) => kind_of(&metadata.file_type()),
        Err(_) => EntryKind::Other,
    }
}

fn kind_of(file_type: &std::fs::FileType) -> EntryKind {
    if file_type.is_symlink() {
        EntryKind::Link
    } else if file_type.is_dir() {
        EntryKind::Folder
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

mod sys;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(file: File) -> String {
        let mut text = String::new();
        let mut file = file;
        file.read_to_string(&mut text).expect("read");
        text
    }

    /// A run directory with a file, a folder, and an outside directory with a secret.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let run = root.path().join("run");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(run.join("plots")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(run.join("plots/loss.png"), "plot").expect("write");
        std::fs::write(outside.join("secret.yaml"), "secret").expect("write");
        (root, run, outside)
    }

    #[test]
    fn plain_paths_open_and_odd_names_are_just_names() {
        let (_root, run, _) = setup();
        assert_eq!(read(open_beneath(&run, Path::new("plots/loss.png")).expect("open")), "plot");
        assert_eq!(read(open_beneath(&run, Path::new("./plots/./loss.png")).expect("open")), "plot");
        assert_eq!(read(open_beneath(&run, Path::new("plots//loss.png")).expect("open")), "plot");
        for odd in ["with space.png", "new\nline.png", "...png", "-dash.png", "ünï.png", "a:b;c|d.png"] {
            std::fs::write(run.join(odd), odd).expect("write");
            assert_eq!(read(open_beneath(&run, Path::new(odd)).expect(odd)), odd);
        }
        let not_utf8 = OsStr::from_bytes(b"bytes-\xff.png");
        std::fs::write(run.join(not_utf8), "raw").expect("write");
        assert_eq!(read(open_beneath(&run, Path::new(not_utf8)).expect("non-UTF-8")), "raw");
    }

    #[test]
    fn paths_that_leave_or_name_nothing_are_refused_before_any_open() {
        let (_root, run, outside) = setup();
        let secret = outside.join("secret.yaml");
        let escapes = [
            PathBuf::from("../outside/secret.yaml"),
            PathBuf::from("plots/../../outside/secret.yaml"),
            PathBuf::from("plots/.."),
            secret.clone(),
            PathBuf::from("/etc/passwd"),
            PathBuf::new(),
            PathBuf::from("."),
        ];
        for path in &escapes {
            let err = open_beneath(&run, path).expect_err(&path.display().to_string());
            assert!(matches!(err, BeneathError::NotBeneath { .. }), "{}: {err}", path.display());
        }
        let nul = Path::new(OsStr::from_bytes(b"a\0b.png"));
        assert!(matches!(open_beneath(&run, nul), Err(BeneathError::NotBeneath { .. })));
        assert!(components(Path::new("a/../b")).is_err());
        assert_eq!(components(Path::new("./a/b")).expect("fine"), [OsStr::new("a"), OsStr::new("b")]);
    }

    #[test]
    fn links_are_never_followed_and_say_where_they_point() {
        let (_root, run, outside) = setup();
        symlink(outside.join("secret.yaml"), run.join("leak.yaml")).expect("link");
        symlink("../outside/secret.yaml", run.join("relative.yaml")).expect("link");
        symlink(&outside, run.join("data")).expect("link");
        symlink("plots/loss.png", run.join("inside.png")).expect("link");
        symlink("plots", run.join("figures")).expect("link");
        symlink("nowhere.png", run.join("dangling.png")).expect("link");
        let canonical = std::fs::canonicalize(&run).expect("canonical");
        symlink(canonical.join("plots/loss.png"), run.join("absolute.png")).expect("link");
        symlink(canonical.join("../outside"), run.join("climb")).expect("link");

        let cases: &[(&str, &str, bool)] = &[
            ("leak.yaml", "leak.yaml", true),
            ("relative.yaml", "relative.yaml", true),
            ("data/secret.yaml", "data", true),
            ("inside.png", "inside.png", false),
            ("figures/loss.png", "figures", false),
            ("dangling.png", "dangling.png", false),
            ("absolute.png", "absolute.png", false),
            ("climb/secret.yaml", "climb", true),
        ];
        for (path, link, outside) in cases {
            match open_beneath(&run, Path::new(path)) {
                Err(BeneathError::Link { link: found, outside: found_outside, .. }) => {
                    assert_eq!(found, Path::new(link), "{path}");
                    assert_eq!(found_outside, *outside, "{path}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        let err = open_beneath(&run, Path::new("leak.yaml")).expect_err("a link").to_string();
        assert!(err.contains("symbolic link") && err.contains("outside the run directory"), "{err}");
        assert!(err.contains(&outside.join("secret.yaml").display().to_string()), "{err}");
    }

    #[test]
    fn folders_fifos_and_missing_files_are_not_files() {
        let (_root, run, _) = setup();
        assert!(matches!(open_beneath(&run, Path::new("plots")), Err(BeneathError::NotAFile { .. })));
        assert!(matches!(open_beneath(&run, Path::new("gone.png")), Err(BeneathError::Missing { .. })));
        assert!(matches!(open_beneath(&run, Path::new("plots/loss.png/x")), Err(BeneathError::Missing { .. })));
        let fifo = CString::new(run.join("pipe.png").as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
        // Refused at once: opening it does not wait for a writer.
        let err = open_beneath(&run, Path::new("pipe.png")).expect_err("a FIFO");
        assert!(matches!(err, BeneathError::NotAFile { kind: "a FIFO", .. }), "{err}");
    }

    #[test]
    fn listings_say_what_each_entry_is_in_itself() {
        let (_root, run, outside) = setup();
        symlink(&outside, run.join("data")).expect("link");
        let dir = RunDir::open(&run).expect("open");
        let mut entries = dir.list(Path::new("")).expect("list");
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(entries, [(OsString::from("data"), EntryKind::Link), (OsString::from("plots"), EntryKind::Folder)]);
        assert_eq!(dir.list(Path::new("plots")).expect("list"), [(OsString::from("loss.png"), EntryKind::File)]);
        assert!(matches!(dir.list(Path::new("data")), Err(BeneathError::Link { .. })), "a linked folder is not listed");
    }

    #[test]
    fn replace_writes_whole_files_and_never_through_a_link() {
        let (_root, run, outside) = setup();
        let dir = RunDir::open(&run).expect("open");
        dir.replace(Path::new(".state/record.json"), b"one").expect("write");
        dir.replace(Path::new(".state/record.json"), b"two").expect("rewrite");
        assert_eq!(std::fs::read_to_string(run.join(".state/record.json")).expect("read"), "two");
        assert_eq!(std::fs::read_dir(run.join(".state")).expect("list").count(), 1, "no temporary file left");

        // A link in place of the file is replaced, its target untouched.
        symlink(outside.join("secret.yaml"), run.join(".state/linked.json")).expect("link");
        dir.replace(Path::new(".state/linked.json"), b"mine").expect("write");
        assert_eq!(std::fs::read_to_string(outside.join("secret.yaml")).expect("read"), "secret");
        assert!(!std::fs::symlink_metadata(run.join(".state/linked.json")).expect("stat").is_symlink());
        // A linked folder on the way is refused.
        symlink(&outside, run.join(".other")).expect("link");
        let err = dir.replace(Path::new(".other/record.json"), b"x").expect_err("linked folder");
        assert!(matches!(err, BeneathError::Link { .. }), "{err}");
        assert!(!outside.join("record.json").exists());
    }

    /// A folder swapped for a link to the outside, over and over, while the same path is
    /// opened: whatever the timing, the outside file is never what was opened. The opens go
    /// on until the swapper has swapped enough times (bounded), not for a fixed time. A
    /// check-then-open (lstat each part, then open the path) fails here in most runs; the
    /// deterministic proofs are the link tests above.
    #[test]
    fn a_path_swapped_for_a_link_between_opens_never_escapes() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        const SWAPS: u32 = 20_000;
        let (_root, run, outside) = setup();
        std::fs::write(outside.join("loss.png"), "secret").expect("write");
        let dir = RunDir::open(&run).expect("open");
        let (stop, swaps) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let swapper = {
            let (run, outside, stop, swaps) = (run.clone(), outside.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let (real, link, parked) = (run.join("plots"), run.join("plots.link"), run.join("plots.real"));
                symlink(&outside, &link).expect("link");
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&real, &parked).expect("park");
                    std::fs::rename(&link, &real).expect("link in");
                    std::fs::rename(&real, &link).expect("link out");
                    std::fs::rename(&parked, &real).expect("unpark");
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let (mut opened, mut refused) = (0u64, 0u64);
        while swaps.load(Ordering::Relaxed) < SWAPS && opened + refused < 10_000_000 {
            match dir.open_file(Path::new("plots/loss.png")) {
                Ok(file) => {
                    assert_eq!(read(file), "plot", "opened the outside file");
                    opened += 1;
                }
                Err(BeneathError::Link { .. } | BeneathError::Missing { .. }) => refused += 1,
                Err(other) => panic!("{other}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().expect("swapper");
        let swaps = swaps.load(Ordering::Relaxed);
        assert!(swaps >= SWAPS, "the race ran: {swaps} swaps, {opened} opened, {refused} refused");
    }
}
