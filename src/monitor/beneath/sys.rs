//! The system calls of `beneath`, each wrapped once: descriptors come back owned, errors as
//! `io::Error`. The `unsafe` blocks of the walk are all here, each with its SAFETY note.

use super::*;

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a file name"))
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

pub fn openat(at: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated and outlives the call; `at` is an open descriptor.
    let fd = check(unsafe { libc::openat(at.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn readlinkat(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<PathBuf> {
    let name = c_name(name)?;
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buffer` is writable for its length; `name` is NUL-terminated.
    let read = unsafe { libc::readlinkat(at.as_raw_fd(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    buffer.truncate(read);
    Ok(PathBuf::from(OsString::from_vec(buffer)))
}

pub fn mkdirat(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated; mkdirat never follows a link at `name`.
    check(unsafe { libc::mkdirat(at.as_raw_fd(), name.as_ptr(), 0o755) }).map(drop)
}

pub fn renameat(at: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: both names are NUL-terminated; a link at `to` is replaced, not followed.
    check(unsafe { libc::renameat(at.as_raw_fd(), from.as_ptr(), at.as_raw_fd(), to.as_ptr()) }).map(drop)
}

pub fn unlinkat(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(at.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

/// The entries of the open folder `fd` with their `d_type`, `.` and `..` left out.
pub fn read_dir(fd: OwnedFd) -> io::Result<Vec<(OsString, u8)>> {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open folder descriptor we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(err);
    }
    let mut entries = Vec::new();
    let ended = loop {
        // SAFETY: errno is thread-local; cleared, it tells readdir's end from its failure.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is open until closedir below.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error() == Some(0) { Ok(()) } else { Err(err) };
        }
        // SAFETY: readdir returned an entry valid until the next call on this stream, whose
        // d_name is NUL-terminated; both are copied out before that.
        let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec(), (*entry).d_type) };
        if name != b"." && name != b".." {
            entries.push((OsString::from_vec(name), d_type));
        }
    };
    // SAFETY: closes the stream and the descriptor it owns; neither is used again.
    unsafe { libc::closedir(stream) };
    ended.map(|()| entries)
}
