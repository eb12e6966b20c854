//! What reaches stderr besides command output: diagnostics through `tracing`, and
//! people-facing progress lines ("scientist serve: listening on …") through [`notice!`], the
//! one path for them. Also the one rule for colour ([`colour_allowed`]) and the log format
//! (`LOG_FORMAT`). The subscriber itself is built in `main.rs`; library code only emits.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of every notice: `main.rs` shows these whatever `LOG_LEVEL` says, as the bare
/// message in text mode and as a JSON line like any other under `LOG_FORMAT=json`.
pub const NOTICE_TARGET: &str = "scientist::notice";

/// A line for the person running the command (progress, what was done), as opposed to a
/// diagnostic. Info level by default; `notice!(warn, …)` and `notice!(error, …)` for the
/// ones that are a warning or the command's error. Fields may be given before the message,
/// as with `tracing::info!`: JSON logs carry them, text mode shows the message alone, so the
/// message must say everything.
#[macro_export]
macro_rules! notice {
    (warn, $($rest:tt)+) => { ::tracing::warn!(target: $crate::logging::NOTICE_TARGET, $($rest)+) };
    (error, $($rest:tt)+) => { ::tracing::error!(target: $crate::logging::NOTICE_TARGET, $($rest)+) };
    ($($rest:tt)+) => { ::tracing::info!(target: $crate::logging::NOTICE_TARGET, $($rest)+) };
}

/// How logs are written: `LOG_FORMAT=json` makes every stderr line a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn from_env() -> Format {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => Format::Json,
            _ => Format::Text,
        }
    }
}

/// Whether ANSI colour may be written to `stream`: only to a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn colour_allowed(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// The live bars being drawn on stderr (`--follow`, `up --example`), if any.
static LIVE_BARS: std::sync::Mutex<Option<indicatif::MultiProgress>> = std::sync::Mutex::new(None);

/// Makes every log line and notice step around `bars` (cleared, the line written, redrawn)
/// while they are drawn, and write plainly again once they are gone (`None`). In `up` the
/// worker's notices share stderr with the follow view's bars, and would draw through them.
pub fn draw_around(bars: Option<indicatif::MultiProgress>) {
    *LIVE_BARS.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = bars;
}

/// Stderr for the log layers in `main.rs`: a line at a time, around the live bars.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let bars = LIVE_BARS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let write = || std::io::stderr().lock().write_all(line);
        match bars {
            Some(bars) => bars.suspend(write)?,
            None => write()?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Formats a notice as its message alone: no time, level, target or fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainMessage;

impl<S, N> FormatEvent<S, N> for PlainMessage
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut message = Message(String::new());
        event.record(&mut message);
        writeln!(writer, "{}", message.0)
    }
}

/// Picks the `message` field out of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_notice_in_text_mode_is_its_message_alone() {
        let captured = Captured::default();
        let layer =
            tracing_subscriber::fmt::layer().event_format(PlainMessage).with_ansi(false).with_writer(captured.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            crate::notice!(run = "r-1", "scientist work: running {} (attempt {})", "r-1", 2);
            crate::notice!(warn, "a warning: {}", "plain");
        });
        let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
        assert_eq!(text, "scientist work: running r-1 (attempt 2)\na warning: plain\n");
    }
}
