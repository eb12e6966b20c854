//! The failure codes scientist itself puts in `ai.run.failed` (`data.code`), each with
//! whether a retry may help (`data.retryable`). Pipelines send codes of their own
//! (`ALL_NODES_BUGGY`); those travel as the strings they are and are not parsed here.
//!
//! The strings are stored (the run's `error.type`, read by the web frontend): a code's
//! string never changes.

use std::fmt;
use std::str::FromStr;

/// A failure code scientist reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The worker could not go on with the run (its stream, its run directory): not the
    /// pipeline's fault, so another worker may well succeed. `WORKER_ERROR`.
    WorkerError,
    /// A stage's command could not be started (missing program, bad config): the same
    /// config fails the same way. `SPAWN_FAILED`.
    SpawnFailed,
    /// The worker was told to stop (SIGTERM) and ended its run. `WORKER_SHUTDOWN`.
    WorkerShutdown,
    /// A stage ran past its timeout: it would again. `TIMEOUT`.
    Timeout,
    /// Out of memory (the output said so, or a SIGKILL nobody here sent): needs a bigger
    /// machine or a smaller run, not a retry. `OOM`.
    Oom,
    /// The control plane heard nothing from the run's worker for the whole lease: the pod
    /// may be gone, the run may not be at fault. `WORKER_LOST`.
    WorkerLost,
    /// Its worker was heard but the run made no progress for the stall time, and
    /// `--on-stall cancel` stopped it: a hung step may well pass next time. `STALLED`.
    Stalled,
    /// The stage exited with this non-zero status: the pipeline's own error. `EXIT_<n>`.
    Exit(i32),
    /// The stage was killed by this signal from outside (preemption, a segfault): may pass
    /// next time. `SIGNAL_<n>`.
    Signal(i32),
    /// A person reviewing the run (`scientist runs reject`) turned it down: a verdict, not
    /// an accident. `REJECTED`.
    Rejected,
    /// Nobody decided a review within `--review-timeout`: running the pipeline again would
    /// only ask again. `REVIEW_TIMEOUT`.
    ReviewTimeout,
    /// The run spent its budget (`runs create --budget-usd`, `--queue-budget`): another try
    /// would spend more. `BUDGET_EXCEEDED`.
    BudgetExceeded,
}

/// The code a run's error gets when its `ai.run.failed` named none.
pub const UNNAMED_CODE: &str = "UNKNOWN";

impl FailureCode {
    /// Whether a retry may help (`data.retryable`): for what went wrong around the pipeline,
    /// not for what the pipeline or its config does every time.
    pub fn retryable(self) -> bool {
        match self {
            FailureCode::WorkerError | FailureCode::WorkerShutdown | FailureCode::WorkerLost | FailureCode::Stalled => {
                true
            }
            FailureCode::Signal(_) => true,
            FailureCode::SpawnFailed | FailureCode::Timeout | FailureCode::Oom | FailureCode::Exit(_) => false,
            FailureCode::Rejected | FailureCode::ReviewTimeout | FailureCode::BudgetExceeded => false,
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCode::WorkerError => f.write_str("WORKER_ERROR"),
            FailureCode::SpawnFailed => f.write_str("SPAWN_FAILED"),
            FailureCode::WorkerShutdown => f.write_str("WORKER_SHUTDOWN"),
            FailureCode::Timeout => f.write_str("TIMEOUT"),
            FailureCode::Oom => f.write_str("OOM"),
            FailureCode::WorkerLost => f.write_str("WORKER_LOST"),
            FailureCode::Stalled => f.write_str("STALLED"),
            FailureCode::Exit(status) => write!(f, "EXIT_{status}"),
            FailureCode::Signal(signal) => write!(f, "SIGNAL_{signal}"),
            FailureCode::Rejected => f.write_str("REJECTED"),
            FailureCode::ReviewTimeout => f.write_str("REVIEW_TIMEOUT"),
            FailureCode::BudgetExceeded => f.write_str("BUDGET_EXCEEDED"),
        }
    }
}

/// Not one of scientist's codes (a pipeline's own, or a misspelling).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of scientist's failure codes")]
pub struct NotOurCode(pub String);

impl FromStr for FailureCode {
    type Err = NotOurCode;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        let numbered = |prefix: &str| code.strip_prefix(prefix).and_then(|number| number.parse::<i32>().ok());
        Ok(match code {
            "WORKER_ERROR" => FailureCode::WorkerError,
            "SPAWN_FAILED" => FailureCode::SpawnFailed,
            "WORKER_SHUTDOWN" => FailureCode::WorkerShutdown,
            "TIMEOUT" => FailureCode::Timeout,
            "OOM" => FailureCode::Oom,
            "WORKER_LOST" => FailureCode::WorkerLost,
            "STALLED" => FailureCode::Stalled,
            "REJECTED" => FailureCode::Rejected,
            "REVIEW_TIMEOUT" => FailureCode::ReviewTimeout,
            "BUDGET_EXCEEDED" => FailureCode::BudgetExceeded,
            _ => {
                let numbered = match (numbered("EXIT_"), numbered("SIGNAL_")) {
                    (Some(status), _) => FailureCode::Exit(status),
                    (_, Some(signal)) => FailureCode::Signal(signal),
                    _ => return Err(NotOurCode(code.to_owned())),
                };
                // One spelling per code (`EXIT_+1` and `EXIT_01` are not `EXIT_1`).
                if numbered.to_string() != code {
                    return Err(NotOurCode(code.to_owned()));
                }
                numbered
            }
        })
    }
}

impl serde::Serialize for FailureCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FailureCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_strings_and_parse_back() {
        let cases = [
            (FailureCode::WorkerError, "WORKER_ERROR", true),
            (FailureCode::SpawnFailed, "SPAWN_FAILED", false),
            (FailureCode::WorkerShutdown, "WORKER_SHUTDOWN", true),
            (FailureCode::Timeout, "TIMEOUT", false),
            (FailureCode::Oom, "OOM", false),
            (FailureCode::WorkerLost, "WORKER_LOST", true),
            (FailureCode::Stalled, "STALLED", true),
            (FailureCode::Exit(1), "EXIT_1", false),
            (FailureCode::Exit(-1), "EXIT_-1", false),
            (FailureCode::Signal(11), "SIGNAL_11", true),
            (FailureCode::Rejected, "REJECTED", false),
            (FailureCode::ReviewTimeout, "REVIEW_TIMEOUT", false),
            (FailureCode::BudgetExceeded, "BUDGET_EXCEEDED", false),
        ];
        for (code, text, retryable) in cases {
            assert_eq!(code.to_string(), text);
            assert_eq!(text.parse::<FailureCode>(), Ok(code));
            assert_eq!(code.retryable(), retryable, "{text}");
            assert_eq!(serde_json::to_value(code).ok(), Some(serde_json::Value::from(text)));
        }
        for other in ["ALL_NODES_BUGGY", "EXIT_", "EXIT_x", "EXIT_+1", "EXIT_01", "SIGNAL_9x", "oom", UNNAMED_CODE] {
            assert!(other.parse::<FailureCode>().is_err(), "{other}");
        }
    }
}
