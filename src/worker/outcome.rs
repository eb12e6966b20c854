//! How a run ended, in the terms of `ai.run.failed`: a code (`OOM`, `TIMEOUT`, `EXIT_<n>`,
//! `SIGNAL_<n>`, `WORKER_SHUTDOWN`, …), a message, the traceback tail and whether a retry
//! may help. The evidence is the exit status and the tail of the child's output.

use std::collections::VecDeque;
use std::time::Duration;

use crate::capture::Record;
use crate::event::FailureCode;

/// Lines of output kept for the failure message.
const TAIL_LINES: usize = 40;

/// The traceback tail sent with a failure: its last lines, within this size.
const TRACEBACK_TAIL_BYTES: usize = 8 * 1024;

static OOM_MARKERS: &[&str] = &[
    "CUDA out of memory",
    "OutOfMemoryError",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
    "MemoryError",
    "Cannot allocate memory",
    "std::bad_alloc",
];

/// What the output of a stage showed, kept as it streams by.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    traceback: Option<String>,
    oom: Option<String>,
}

impl Tail {
    pub fn observe(&mut self, record: &Record) {
        if record.traceback {
            self.traceback = Some(record.message.clone());
        }
        if self.oom.is_none()
            && let Some(line) =
                record.message.lines().find(|line| OOM_MARKERS.iter().any(|marker| line.contains(marker)))
        {
            self.oom = Some(line.trim().to_owned());
        }
        for line in record.message.lines().filter(|line| !line.trim().is_empty()) {
            if self.lines.len() == TAIL_LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(line.to_owned());
        }
    }

    /// The last traceback, else the last lines of output, cut to the size sent.
    pub fn traceback_tail(&self) -> Option<String> {
        let text = match &self.traceback {
            Some(traceback) => traceback.clone(),
            None if self.lines.is_empty() => return None,
            None => self.lines.iter().cloned().collect::<Vec<_>>().join("\n"),
        };
        if text.len() <= TRACEBACK_TAIL_BYTES {
            return Some(text);
        }
        let mut cut = text.len() - TRACEBACK_TAIL_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        Some(format!("…{}", &text[cut..]))
    }

    /// The exception line of the last traceback, else the last line of output.
    fn last_word(&self) -> Option<&str> {
        self.traceback
            .as_deref()
            .and_then(|traceback| traceback.lines().last())
            .or(self.lines.back().map(String::as_str))
    }
}

/// How a stage's child process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Exited(i32),
    /// Killed by a signal the worker did not send.
    Signaled(i32),
    /// The stage ran past its timeout and was stopped.
    TimedOut(Duration),
}

/// What `ai.run.failed` says; whether a retry may help is the code's (`code.retryable()`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
    pub traceback: Option<String>,
}

/// The failure a non-zero ending stands for; `None` for a clean exit.
pub fn judge(ending: &Ending, tail: &Tail) -> Option<Failure> {
    let traceback = tail.traceback_tail();
    let failure = |code, message| Some(Failure { code, message, traceback: traceback.clone() });
    match ending {
        Ending::Exited(0) => None,
        Ending::TimedOut(limit) => failure(
            FailureCode::Timeout,
            format!("the stage ran past its timeout of {} and was stopped", humantime::format_duration(*limit)),
        ),
        // An out-of-memory death is said by the output, or by a SIGKILL nobody here sent
        // (the kernel's OOM killer; 137 is a shell reporting it).
        _ if tail.oom.is_some() => {
            let line = tail.oom.clone().unwrap_or_default();
            failure(FailureCode::Oom, format!("out of memory: {line}"))
        }
        Ending::Signaled(9) | Ending::Exited(137) => failure(
            FailureCode::Oom,
            "killed by SIGKILL, most likely by the out-of-memory killer (check `dmesg` on the pod)".into(),
        ),
        Ending::Exited(code) => {
            let message = match tail.last_word() {
                Some(line) => format!("exited with status {code}: {line}"),
                None => format!("exited with status {code}"),
            };
            failure(FailureCode::Exit(*code), message)
        }
        // A signal from outside (a pod being preempted, a segfault) may well pass next time.
        Ending::Signaled(signal) => {
            failure(FailureCode::Signal(*signal), format!("killed by signal {} ({signal})", signal_name(*signal)))
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogLevel;

    fn record(message: &str, traceback: bool) -> Record {
        Record { message: message.into(), level: LogLevel::Error, traceback }
    }

    #[test]
    fn codes() {
        let mut tail = Tail::default();
        tail.observe(&record("loading", false));
        tail.observe(&record("Traceback (most recent call last):\n  File \"x\"\nKeyError: 'lr'", true));
        assert_eq!(judge(&Ending::Exited(0), &tail), None);
        let failed = judge(&Ending::Exited(1), &tail).expect("failure");
        assert_eq!(failed.code.to_string(), "EXIT_1");
        assert_eq!(failed.message, "exited with status 1: KeyError: 'lr'");
        assert!(failed.traceback.expect("tail").ends_with("KeyError: 'lr'"));
        assert_eq!(judge(&Ending::Signaled(11), &tail).expect("failure").code.to_string(), "SIGNAL_11");
        assert!(judge(&Ending::Signaled(11), &tail).expect("failure").code.retryable());
        assert_eq!(judge(&Ending::Signaled(9), &tail).expect("failure").code.to_string(), "OOM");
        let timed_out = judge(&Ending::TimedOut(Duration::from_secs(90)), &tail).expect("failure");
        assert_eq!((timed_out.code.to_string().as_str(), timed_out.message.contains("1m 30s")), ("TIMEOUT", true));

        tail.observe(&record("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", false));
        let oom = judge(&Ending::Exited(1), &tail).expect("failure");
        assert_eq!(oom.code.to_string(), "OOM");
        assert!(oom.message.contains("Tried to allocate"), "{}", oom.message);
    }

    #[test]
    fn the_traceback_tail_is_bounded() {
        let mut tail = Tail::default();
        let huge = format!("Traceback (most recent call last):\n{}\nValueError: x", "  frame\n".repeat(5000));
        tail.observe(&record(&huge, true));
        let sent = tail.traceback_tail().expect("tail");
        assert!(sent.len() <= TRACEBACK_TAIL_BYTES + 4);
        assert!(sent.ends_with("ValueError: x"));
    }
}
