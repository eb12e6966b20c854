//! A stage's child process, started in a process group of its own so that stopping it
//! reaches everything it started: SIGTERM to the whole group, SIGKILL after the grace
//! period, and no member left behind. A process that left the group (`setsid`, Python's
//! `start_new_session`) is found through its parent and stopped with the group, as long as
//! it still descends from a member when the stop begins; one whose parent had already
//! exited (a daemon's double fork) is out of reach: containing that needs cgroups.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

/// The size asked for the child's stdout and stderr pipes (Linux's default is 64 KiB, and
/// 1 MiB the most an unprivileged process may set by default).
const PIPE_BYTES: i32 = 1024 * 1024;

/// The output rate a child may keep up without waiting on a paced pipe: the pause after a
/// read that emptied the pipe is what the pipe holds at this rate (at most [`MAX_PAUSE`]).
const UNSLOWED_BYTES_PER_SECOND: u64 = 50 * 1024 * 1024;

/// The longest pause: a line reaches the relay at most this much later.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// How often a stopping group is checked for members still alive.
const GONE_POLL: Duration = Duration::from_millis(20);

/// After SIGKILL the kernel needs a moment; a group still there after this is reported.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub struct Child {
    process: tokio::process::Child,
    /// The process group: the child's pid, since it leads its own group.
    pgid: i32,
}

/// What the child is given besides the command.
pub struct Launch<'a> {
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    /// Variables of the worker's own environment the child must not inherit.
    pub env_removed: &'a [&'a str],
}

impl Child {
    /// Starts `argv` in its own process group, stdin closed, stdout and stderr piped.
    pub fn spawn(argv: &[String], launch: &Launch<'_>) -> std::io::Result<(Child, OutputPipe, OutputPipe)> {
        let (program, args) =
            argv.split_first().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(launch.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for name in launch.env_removed {
            command.env_remove(name);
        }
        command.envs(launch.env);
        let mut process = command.spawn()?;
        let pid = process.id().ok_or_else(|| std::io::Error::other("the child exited before it could be watched"))?;
        let stdout = process.stdout.take().ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let stderr = process.stderr.take().ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
        let (stdout, stderr) = (OutputPipe::new(stdout.into_owned_fd()?)?, OutputPipe::new(stderr.into_owned_fd()?)?);
        let pgid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        Ok((Child { process, pgid }, stdout, stderr))
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Waits for the group leader to exit. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.process.wait().await
    }
}

/// The read end of one of the child's output pipes, paced: after a read that emptied the
/// pipe, the next waits a pause (what the pipe holds at [`UNSLOWED_BYTES_PER_SECOND`], at
/// most [`MAX_PAUSE`]) and then takes whatever gathered, so a child that writes line by
/// line (Python unbuffered, as the worker runs it) costs a wake-up per pause instead of one
/// per line. The pipe is in the runtime's epoll only while a read waits on an empty pipe:
/// registered for good, every write would wake the runtime, pauses or not.
pub struct OutputPipe {
    /// Dropped (deregistered) before `file` is closed: fields drop in this order.
    waiting: Option<AsyncFd<RawFd>>,
    /// Set after a read that emptied the pipe; the next read waits for it.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    pause_for: Duration,
    file: File,
}

impl OutputPipe {
    /// `fd` made non-blocking, with a capacity of [`PIPE_BYTES`] where the system allows.
    fn new(fd: OwnedFd) -> std::io::Result<OutputPipe> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL only change its flags, and
        // F_SETPIPE_SZ/F_GETPIPE_SZ only set and read the pipe's capacity.
        let capacity = unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(raw, libc::F_SETPIPE_SZ, PIPE_BYTES) < 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "the child's pipe keeps its default size");
            }
            libc::fcntl(raw, libc::F_GETPIPE_SZ)
        };
        let capacity = u64::try_from(capacity).unwrap_or(0);
        let pause_for = Duration::from_micros(capacity * 1_000_000 / UNSLOWED_BYTES_PER_SECOND).min(MAX_PAUSE);
        Ok(OutputPipe { waiting: None, pause: None, pause_for, file: File::from(fd) })
    }

    /// How long a read waits after one that emptied the pipe.
    pub fn pause(&self) -> Duration {
        self.pause_for
    }
}

impl AsRawFd for OutputPipe {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsyncRead for OutputPipe {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let pipe = self.get_mut();
        if let Some(pause) = &mut pipe.pause {
            std::task::ready!(pause.as_mut().poll(cx));
            pipe.pause = None;
        }
        loop {
            let room = buf.remaining();
            match (&pipe.file).read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    pipe.waiting = None;
                    // Less than asked for: the pipe is empty now. At its end, nothing to wait for.
                    if read > 0 && read < room && !pipe.pause_for.is_zero() {
                        pipe.pause = Some(Box::pin(tokio::time::sleep(pipe.pause_for)));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let waiting = match &mut pipe.waiting {
                        Some(waiting) => waiting,
                        None => {
                            // Registering reports data that came since the read just tried.
                            // SAFETY: the descriptor is `file`'s, which stays open and the
                            // same until after `waiting` is dropped (field order, and
                            // `waiting` is only ever replaced while `file` lives).
                            let waiting =
                                unsafe { AsyncFd::register_with_interest(pipe.file.as_raw_fd(), Interest::READABLE)? };
                            pipe.waiting.insert(waiting)
                        }
                    };
                    match waiting.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(mut ready)) => ready.clear_ready(),
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

/// Sends `signal` to every process of the group.
pub fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of the group is still alive (zombies waiting to be reaped are not).
pub fn group_alive(pgid: i32) -> bool {
    match group_members(pgid) {
        Some(members) => !members.is_empty(),
        // No /proc: fall back on kill(2), which also counts zombies.
        // SAFETY: signal 0 only checks that the group exists.
        None => unsafe { libc::kill(-pgid, 0) == 0 },
    }
}

/// The live processes of a group (empty where /proc cannot be read).
pub fn group_pids(pgid: i32) -> Vec<i32> {
    group_members(pgid).unwrap_or_default()
}

/// Live members of a process group, from /proc (Linux).
fn group_members(pgid: i32) -> Option<Vec<i32>> {
    let table = processes()?;
    Some(table.iter().filter(|process| process.pgrp == pgid && process.alive()).map(|process| process.pid).collect())
}

/// One process as /proc/PID/stat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: i32,
    state: char,
    ppid: i32,
    pgrp: i32,
    /// Clock ticks after boot: with the pid, names the process even once its pid is reused.
    start: u64,
}

impl Stat {
    fn read(pid: i32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime …": comm may
        // hold spaces and parentheses.
        let (_, after) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some(Stat {
            pid,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// Zombies waiting to be reaped are not alive.
    fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }

    /// Whether this very process (not another that got its pid) is still alive.
    fn still_alive(&self) -> bool {
        Stat::read(self.pid).is_some_and(|now| now.start == self.start && now.alive())
    }
}

/// Every process, from /proc (Linux); `None` where /proc cannot be read.
fn processes() -> Option<Vec<Stat>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let pids = entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok());
    Some(pids.filter_map(Stat::read).collect())
}

/// Live processes outside group `pgid` that descend from one of its members: they left the
/// group (a new session or group) but are still the stage's.
fn escaped(pgid: i32) -> Vec<Stat> {
    let Some(table) = processes() else { return Vec::new() };
    let mut tree: std::collections::HashSet<i32> =
        table.iter().filter(|process| process.pgrp == pgid).map(|process| process.pid).collect();
    // Parents before children is not guaranteed by pid order (pids wrap), so grow to a fixpoint.
    loop {
        let before = tree.len();
        for process in &table {
            if tree.contains(&process.ppid) {
                tree.insert(process.pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    table.into_iter().filter(|process| process.pgrp != pgid && process.alive() && tree.contains(&process.pid)).collect()
}

/// Sends `signal` to each process that is still the one that was found.
fn signal_each(processes: &[Stat], signal: i32) {
    for process in processes.iter().filter(|process| process.still_alive()) {
        // SAFETY: kill(2) of one pid, checked just now to be the process found (same start time).
        unsafe {
            libc::kill(process.pid, signal);
        }
    }
}

/// How stopping a group went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every member exited within the grace period.
    Terminated,
    /// Some had to be killed.
    Killed,
    /// Still there after SIGKILL (stuck in the kernel, e.g. on a dead NFS mount).
    Stuck,
}

/// SIGTERM to the group, then SIGKILL to what is left after `grace` (or as soon as
/// `hurry` completes: a second signal to the worker). Processes that left the group but
/// descend from it get the same signals.
pub async fn stop_group(pgid: i32, grace: Duration, hurry: impl std::future::Future<Output = ()>) -> Stopped {
    // Looked for before anything is signalled: once a parent exits, the kernel hands its
    // children to init and nothing shows they were the stage's.
    let mut escaped = escaped(pgid);
    // SIGCONT too: a stopped process (Ctrl-Z, a debugger) cannot act on SIGTERM.
    for signal in [libc::SIGTERM, libc::SIGCONT] {
        signal_group(pgid, signal);
        signal_each(&escaped, signal);
    }
    let gone = tokio::select! {
        gone = wait_gone(pgid, &escaped, grace) => gone,
        () = hurry => false,
    };
    if gone {
        return Stopped::Terminated;
    }
    // Any that left the group during the grace period, too.
    for late in self::escaped(pgid) {
        if !escaped.iter().any(|known| (known.pid, known.start) == (late.pid, late.start)) {
            escaped.push(late);
        }
    }
    signal_group(pgid, libc::SIGKILL);
    signal_each(&escaped, libc::SIGKILL);
    if wait_gone(pgid, &escaped, KILL_WAIT).await { Stopped::Killed } else { Stopped::Stuck }
}

async fn wait_gone(pgid: i32, escaped: &[Stat], within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !group_alive(pgid) && !escaped.iter().any(Stat::still_alive) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a failing test leaves is killed.
    struct Cleanup {
        pgid: i32,
        escaped: i32,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            signal_group(self.pgid, libc::SIGKILL);
            if Stat::read(self.escaped).is_some_and(|stat| stat.alive()) {
                // SAFETY: kill(2) of the process this test started.
                unsafe {
                    libc::kill(self.escaped, libc::SIGKILL);
                }
            }
        }
    }

    #[tokio::test]
    async fn an_output_pipe_reads_everything_through_bursts_and_silences() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let env = BTreeMap::new();
        let launch = Launch { dir: dir.path(), env: &env, env_removed: &[] };
        // A burst, a silence in which a read waits on an empty pipe, then the end.
        let script =
            "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; sleep 0.2; echo last; echo err >&2";
        let argv = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let (mut child, mut stdout, mut stderr) = Child::spawn(&argv, &launch).expect("spawn");
        let (mut out, mut err) = (String::new(), String::new());
        stdout.read_to_string(&mut out).await.expect("read stdout");
        stderr.read_to_string(&mut err).await.expect("read stderr");
        let expected: String = (0..2000).map(|i| format!("line {i}\n")).chain(["last\n".to_owned()]).collect();
        assert_eq!(out, expected);
        assert_eq!(err, "err\n");
        child.wait().await.expect("reap");
    }

    #[tokio::test]
    async fn the_childs_pipes_hold_a_megabyte_and_pause_for_what_it_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = BTreeMap::new();
        let launch = Launch { dir: dir.path(), env: &env, env_removed: &[] };
        let (mut child, stdout, stderr) = Child::spawn(&["true".to_owned()], &launch).expect("spawn");
        for pipe in [&stdout, &stderr] {
            // SAFETY: F_GETPIPE_SZ reads the capacity of a pipe this test holds open.
            let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
            assert_eq!(size, PIPE_BYTES);
            assert_eq!(pipe.pause(), MAX_PAUSE, "a megabyte is 20 ms at 50 MB/s");
        }
        child.wait().await.expect("reap");
    }

    #[tokio::test]
    async fn stopping_a_group_stops_what_left_it_with_setsid() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Both ignore SIGTERM; the second runs in a session (and group) of its own.
        let script = "trap '' TERM; setsid sh -c 'echo $$ > escaped.tmp; mv escaped.tmp escaped; while :; do sleep 1; done' & while :; do sleep 1; done";
        let argv = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let env = BTreeMap::new();
        let launch = Launch { dir: dir.path(), env: &env, env_removed: &[] };
        let (mut child, _stdout, _stderr) = Child::spawn(&argv, &launch).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let escaped: i32 = loop {
            if let Some(pid) =
                std::fs::read_to_string(dir.path().join("escaped")).ok().and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the escapee never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let _cleanup = Cleanup { pgid: child.pgid(), escaped };
        assert_ne!(Stat::read(escaped).expect("the escapee").pgrp, child.pgid(), "it left the group");

        let stopped = stop_group(child.pgid(), Duration::from_millis(200), std::future::pending()).await;
        assert_eq!(stopped, Stopped::Killed);
        assert!(Stat::read(escaped).is_none_or(|stat| !stat.alive()), "the escapee outlived the stop");
        child.wait().await.expect("reap the leader");
    }
}
