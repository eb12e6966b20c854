//! Turns output lines (a child's, or a log file's) into log records: a level detected from the
//! text, and a Python traceback kept together as one record instead of a dozen unrelated lines.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use regex::Regex;

use super::lines::Piece;
use crate::event::LogLevel;

/// An open traceback with no new line for this long is reported as it stands.
pub const TRACEBACK_QUIET: Duration = Duration::from_secs(1);

/// A traceback longer than this is reported in parts (deep recursion prints thousands).
const MAX_TRACEBACK_LINES: usize = 400;

const TRACEBACK_START: &str = "Traceback (most recent call last):";

/// One record to report as an `ai.run.log` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub message: String,
    pub level: LogLevel,
    /// A whole traceback (several lines).
    pub traceback: bool,
}

impl Record {
    /// A record whose message is cut to the event limit's share (`limits::truncate_log_message`):
    /// an oversize line is reported with a marker, never dropped or refused downstream.
    pub fn new(mut message: String, level: LogLevel, traceback: bool) -> Record {
        crate::limits::truncate_log_message(&mut message);
        Record { message, level, traceback }
    }
}

static ANSI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07").expect("static regex is valid"));
static ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(?:ERROR|CRITICAL|FATAL)\b|\b[A-Z][A-Za-z0-9_.]*(?:Error|Exception)\b:?|^(?:error|fatal)\b|(?i:out of memory)|Segmentation fault|^Killed\b",
    )
    .expect("static regex is valid")
});
static WARNING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:WARNING|WARN)\b|\b[A-Z][A-Za-z0-9_.]*Warning\b:|^warning\b").expect("static regex is valid")
});
static DEBUG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(?:DEBUG|TRACE)\b").expect("static regex is valid"));

/// Words one of which any match of `ERROR`, `WARNING` or `DEBUG` holds, in some case: an
/// ASCII line with none of them announces no level, and skips the regexes.
const LEVEL_WORDS: &[&str] = &[
    "error",
    "critical",
    "fatal",
    "exception",
    "out of memory",
    "segmentation fault",
    "killed",
    "warn",
    "debug",
    "trace",
];

static ANY_LEVEL_WORD: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(LEVEL_WORDS)
        .unwrap_or_else(|err| panic!("the level words are invalid: {err}"))
});

/// The level a line announces; `info` when it announces none.
pub fn level_of(line: &str) -> LogLevel {
    // Beyond ASCII, case-insensitive matching is Unicode's: the regexes decide.
    if line.is_ascii() && !ANY_LEVEL_WORD.is_match(line) {
        return LogLevel::Info;
    }
    if ERROR.is_match(line) {
        LogLevel::Error
    } else if WARNING.is_match(line) {
        LogLevel::Warning
    } else if DEBUG.is_match(line) {
        LogLevel::Debug
    } else {
        LogLevel::Info
    }
}

/// Colour and cursor escape codes removed: logs are read in a browser, not a terminal.
pub fn strip_ansi(text: &str) -> Cow<'_, str> {
    ANSI.replace_all(text, "")
}

/// Groups the lines of one output stream (tracebacks go to stderr, so one per stream).
#[derive(Debug, Default)]
pub struct Grouper {
    traceback: Vec<String>,
    last_line_at: Option<Instant>,
}

impl Grouper {
    pub fn push(&mut self, piece: Piece, now: Instant, out: &mut Vec<Record>) {
        let (text, in_place) = match piece {
            Piece::Line(text) => (text, false),
            Piece::Progress(text) => (text, true),
        };
        let text = match strip_ansi(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(clean) => clean,
        };
        if in_place {
            // A progress bar ends no traceback, but it is its own record.
            let level = level_of(&text);
            out.push(Record::new(text, level, false));
            return;
        }
        self.last_line_at = Some(now);
        if text.trim_start().starts_with(TRACEBACK_START) {
            self.flush(out);
            self.traceback.push(text);
            return;
        }
        if self.traceback.is_empty() {
            if !text.trim().is_empty() {
                let level = level_of(&text);
                out.push(Record::new(text, level, false));
            }
            return;
        }
        // Inside a traceback every frame line is indented; the first line that is not is
        // the exception itself, which ends it.
        let ends = !text.is_empty() && !text.starts_with([' ', '\t']);
        self.traceback.push(text);
        if ends || self.traceback.len() >= MAX_TRACEBACK_LINES {
            self.flush(out);
        }
    }

    /// Reports a traceback that stopped growing.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Record>) {
        if self.last_line_at.is_some_and(|at| now.duration_since(at) >= TRACEBACK_QUIET) {
            self.flush(out);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Record>) {
        self.flush(out);
    }

    fn flush(&mut self, out: &mut Vec<Record>) {
        if self.traceback.is_empty() {
            return;
        }
        while self.traceback.last().is_some_and(|line| line.trim().is_empty()) {
            self.traceback.pop();
        }
        let message = std::mem::take(&mut self.traceback).join("\n");
        out.push(Record::new(message, LogLevel::Error, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        let cases = [
            ("ERROR:root:failed to load", LogLevel::Error),
            ("ValueError: bad shape", LogLevel::Error),
            ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", LogLevel::Error),
            ("2025-10-22 12:00:00 WARNING something odd", LogLevel::Warning),
            ("/x.py:3: UserWarning: deprecated", LogLevel::Warning),
            ("DEBUG loading shard 3", LogLevel::Debug),
            ("epoch 3 loss 0.12", LogLevel::Info),
            ("Mean Squared Error: 0.12", LogLevel::Info),
            ("0 errors", LogLevel::Info),
        ];
        for (line, level) in cases {
            assert_eq!(level_of(line), level, "{line}");
        }
    }

    /// `level_of` as it was before its prefilter: the regexes alone.
    fn level_by_regexes(line: &str) -> LogLevel {
        if ERROR.is_match(line) {
            LogLevel::Error
        } else if WARNING.is_match(line) {
            LogLevel::Warning
        } else if DEBUG.is_match(line) {
            LogLevel::Debug
        } else {
            LogLevel::Info
        }
    }

    /// Lines of pieces near every level pattern: their words in any case, cut short, glued
    /// to others, at the start of the line or not, and plain printable runs.
    fn near_levels() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const WORDS: &[&str] = &[
            "ERROR",
            "CRITICAL",
            "FATAL",
            "ValueError",
            "Exception",
            "error",
            "fatal",
            "out of memory",
            "Segmentation fault",
            "Killed",
            "WARNING",
            "WARN",
            "UserWarning:",
            "warning",
            "DEBUG",
            "TRACE",
            ":",
            " ",
        ];
        let word = (proptest::sample::select(WORDS), proptest::option::weighted(0.3, any::<u64>()), any::<bool>())
            .prop_map(|(word, cases, cut)| {
                let kept = if cut && word.len() > 1 { &word[..word.len() - 1] } else { word };
                match cases {
                    None => kept.to_owned(),
                    Some(cases) => {
                        kept.chars()
                            .enumerate()
                            .map(|(at, c)| {
                                if cases >> (at % 64) & 1 == 1 {
                                    c.to_ascii_uppercase()
                                } else {
                                    c.to_ascii_lowercase()
                                }
                            })
                            .collect()
                    }
                }
            });
        let piece = prop_oneof![3 => word, 1 => "[ -~]{0,10}"];
        proptest::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2048))]
        #[test]
        fn the_level_prefilter_changes_no_level(line in near_levels()) {
            proptest::prop_assert_eq!(level_of(&line), level_by_regexes(&line), "{:?}", line);
        }
    }

    #[test]
    fn a_traceback_is_one_record() {
        let lines = [
            "step 1",
            "Traceback (most recent call last):",
            "  File \"train.py\", line 3, in <module>",
            "    main()",
            "    ~~~~^^",
            "ZeroDivisionError: division by zero",
            "after",
        ];
        let mut grouper = Grouper::default();
        let mut out = Vec::new();
        let now = Instant::now();
        for line in lines {
            grouper.push(Piece::Line(line.into()), now, &mut out);
        }
        grouper.finish(&mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[1].traceback);
        assert_eq!(out[1].level, LogLevel::Error);
        assert_eq!(out[1].message.lines().count(), 5);
        assert!(out[1].message.ends_with("ZeroDivisionError: division by zero"));
        assert_eq!(out[2].message, "after");
    }

    #[test]
    fn an_unfinished_traceback_is_reported_when_output_goes_quiet() {
        let mut grouper = Grouper::default();
        let mut out = Vec::new();
        let now = Instant::now();
        grouper.push(Piece::Line(TRACEBACK_START.into()), now, &mut out);
        grouper.push(Piece::Line("  File \"x.py\", line 1".into()), now, &mut out);
        grouper.tick(now + Duration::from_millis(100), &mut out);
        assert!(out.is_empty());
        grouper.tick(now + TRACEBACK_QUIET, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].traceback);
    }

    #[test]
    fn colours_are_removed() {
        assert_eq!(strip_ansi("\x1b[31mred\x1b[0m plain"), "red plain");
    }
}
