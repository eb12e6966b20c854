//! A stage's child process, started in a process group of its own so that stopping it
//! reaches everything it started: SIGTERM to the whole group, SIGKILL after the grace
//! period, and no member left behind. (A process that leaves the group with `setsid`
//! escapes this; containing that needs cgroups.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{ChildStderr, ChildStdout};

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
    pub fn spawn(argv: &[String], launch: &Launch<'_>) -> std::io::Result<(Child, ChildStdout, ChildStderr)> {
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
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else { continue };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|field| field.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") && state != Some("X") {
            members.extend(name.parse::<i32>().ok());
        }
    }
    Some(members)
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
/// `hurry` completes: a second signal to the worker).
pub async fn stop_group(pgid: i32, grace: Duration, hurry: impl std::future::Future<Output = ()>) -> Stopped {
    signal_group(pgid, libc::SIGTERM);
    // SIGCONT too: a stopped process (Ctrl-Z, a debugger) cannot act on SIGTERM.
    signal_group(pgid, libc::SIGCONT);
    let gone = tokio::select! {
        gone = wait_gone(pgid, grace) => gone,
        () = hurry => false,
    };
    if gone {
        return Stopped::Terminated;
    }
    signal_group(pgid, libc::SIGKILL);
    if wait_gone(pgid, KILL_WAIT).await { Stopped::Killed } else { Stopped::Stuck }
}

async fn wait_gone(pgid: i32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}
