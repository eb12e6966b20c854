//! Whether anyone holds a file open for writing, asked of the kernel on the monitor's own
//! read-only descriptor. Linux grants a read lease (`F_SETLEASE` with `F_RDLCK`) only while
//! no descriptor anywhere has the file open for writing (a writable shared mapping counts),
//! and refuses it with EAGAIN otherwise; the lease is given back at once, it is only a
//! question. A file the kernel does not answer for (another user's, without CAP_LEASE; a
//! file system without leases, such as NFS; `fs.leases-enable` off) is [`Writers::Unknown`].

use std::fs::File;
use std::os::fd::AsRawFd;

/// What the kernel says about a file's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Nobody has it open for writing now.
    None,
    /// Some descriptor (another process's, or another of the writer's) has it open for writing.
    Some,
    /// The kernel would not say.
    Unknown,
}

/// `F_SETSIG` from asm-generic/fcntl.h (the libc crate has it only for musl).
const F_SETSIG: libc::c_int = 10;

/// The signal a lease break sends its holder, instead of SIGIO, whose default ends the
/// process: one whose default is to be ignored, and that nothing here handles. A break
/// happens only when a writer opens the file in the moment between taking the lease and
/// giving it back (its open waits for that moment to end).
const BREAK_SIGNAL: libc::c_int = libc::SIGURG;

/// Who writes `file` now. `file` must be open read-only (the kernel's rule for read leases),
/// as every file the monitor opens is.
pub fn writers(file: &File) -> Writers {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor that `file` keeps open; F_SETSIG only sets which signal
    // this open file description raises.
    if unsafe { libc::fcntl(fd, F_SETSIG, BREAK_SIGNAL) } != 0 {
        return Writers::Unknown;
    }
    // SAFETY: as above; a read lease changes nothing for readers.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::c_int::from(libc::F_RDLCK)) } != 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Writers::Some,
            _ => Writers::Unknown,
        };
    }
    // SAFETY: as above; gives the lease back, so that no writer's open waits on it.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::c_int::from(libc::F_UNLCK)) } != 0 {
        // The lease goes with the descriptor; until then a writer's open waits for the lease
        // break time (`fs.lease-break-time`), so the file is not trusted to be done.
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot give a file lease back");
        return Writers::Unknown;
    }
    Writers::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_open_for_writing_anywhere_has_writers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.pt");
        let mut first = File::create(&path).expect("create");
        first.write_all(b"half").expect("write");
        let reader = File::open(&path).expect("open");
        assert_eq!(writers(&reader), Writers::Some);
        let second = std::fs::OpenOptions::new().append(true).open(&path).expect("open to append");
        drop(first);
        assert_eq!(writers(&reader), Writers::Some, "another descriptor still writes");
        drop(second);
        assert_eq!(writers(&reader), Writers::None);
        // Asking twice leaves nothing behind: a writer can open it again at once.
        assert_eq!(writers(&reader), Writers::None);
        let again = std::fs::OpenOptions::new().append(true).open(&path).expect("reopen");
        assert_eq!(writers(&reader), Writers::Some);
        drop(again);
        assert_eq!(writers(&reader), Writers::None);
    }

    #[test]
    fn a_descriptor_open_for_writing_never_finds_the_file_free() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = File::create(dir.path().join("a.png")).expect("create");
        assert_ne!(writers(&file), Writers::None);
    }
}
