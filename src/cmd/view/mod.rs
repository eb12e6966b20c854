//! What runs, logs and stats look like at a terminal: comfy-table tables and plain text.
//! Colours only when stdout is a terminal and `NO_COLOR` is unset. Pure: data and `now` in,
//! text out, so snapshot tests pin every character. `runs show`'s sections are `detail`.
//!
//! Every text that comes from the store (events, run documents) goes through
//! [`Look::line`] or [`Look::lines`] before it is drawn: anyone who can send an event must
//! not be able to drive an operator's terminal (see [`printable`]).

mod cost;
mod detail;

use std::borrow::Cow;

use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use serde_json::Value;

use crate::event::{LogLevel, Payload};
use crate::ideation::{IdeationRequest, IdeationStatus};
use crate::run::{Eta, Run, RunStatus};
use crate::store::StoredEvent;
use crate::store::stats::Stats;
use crate::time::Timestamp;

pub(crate) use detail::run_detail;

/// How output is drawn: with colour or not, how wide, and whether stored text is escaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    pub color: bool,
    /// Table width from `COLUMNS`; unset means comfy-table asks the terminal (or does not wrap).
    pub width: Option<u16>,
    /// `--raw`: stored text is printed as stored, control characters included.
    pub raw: bool,
}

impl Look {
    pub fn for_stdout() -> Look {
        let width = std::env::var("COLUMNS").ok().and_then(|columns| columns.parse().ok());
        Look { color: crate::logging::colour_allowed(&std::io::stdout()), width, raw: false }
    }

    /// Stored text shown on one line: every control character escaped (tabs kept).
    pub fn line<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.raw { Cow::Borrowed(text) } else { printable(text, Kept::Tabs) }
    }

    /// Stored text shown over several lines (a traceback): newlines kept as well.
    pub fn lines<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.raw { Cow::Borrowed(text) } else { printable(text, Kept::TabsAndNewlines) }
    }

    /// A table cell of stored text.
    fn cell(&self, text: &str) -> Cell {
        Cell::new(self.line(text))
    }

    /// A borderless table (kubectl-like, so `awk '{print $1}'` works) with upper-case headers.
    fn table<const N: usize>(&self, header: [&str; N]) -> Table {
        let mut table = self.bare_table();
        table.set_header(header);
        table
    }

    /// A borderless table without a header, for `name  value` lists.
    fn bare_table(&self) -> Table {
        let mut table = Table::new();
        table.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
        if self.color {
            table.enforce_styling();
        }
        if let Some(width) = self.width {
            table.set_width(width);
        }
        table
    }

    fn status_cell(&self, status: RunStatus) -> Cell {
        self.colored(Cell::new(status), status)
    }

    /// A run's status, marked `(silent)` while its worker is not heard from, `(stalled)`
    /// while it makes no progress, `(retry)` while it waits out a retry's backoff.
    fn run_status_cell(&self, run: &Run) -> Cell {
        let mark = if run.status.is_terminal() {
            None
        } else if run.silent_since.is_some() {
            Some("silent")
        } else if run.stalled_since.is_some() {
            Some("stalled")
        } else if run.not_before.is_some() && run.status == RunStatus::Queued {
            Some("retry")
        } else {
            None
        };
        match mark {
            Some(mark) => self.colored(Cell::new(format!("{} ({mark})", run.status)), run.status),
            None => self.status_cell(run.status),
        }
    }

    fn colored(&self, cell: Cell, status: RunStatus) -> Cell {
        if self.color { cell.fg(status_color(status)) } else { cell }
    }

    /// `text` in `color` (ANSI) when colour is on.
    fn paint(&self, text: &str, color: Ansi) -> String {
        if self.color { format!("\x1b[{}m{text}\x1b[0m", color as u8) } else { text.to_owned() }
    }

    fn title(&self, text: &str) -> String {
        self.paint(text, Ansi::Bold)
    }
}

/// The few ANSI styles used outside tables.
#[derive(Clone, Copy)]
enum Ansi {
    Bold = 1,
    Red = 31,
    Green = 32,
    Yellow = 33,
    Blue = 34,
    Grey = 90,
}

fn status_color(status: RunStatus) -> Color {
    match status {
        RunStatus::Queued => Color::Grey,
        RunStatus::Scheduled => Color::Cyan,
        RunStatus::Running => Color::Blue,
        RunStatus::AwaitingHuman => Color::Magenta,
        RunStatus::Completed => Color::Green,
        RunStatus::Failed => Color::Red,
        RunStatus::Canceled => Color::Yellow,
    }
}

fn status_ansi(status: RunStatus) -> Ansi {
    match status {
        RunStatus::Queued | RunStatus::Scheduled => Ansi::Grey,
        RunStatus::Running | RunStatus::AwaitingHuman => Ansi::Blue,
        RunStatus::Completed => Ansi::Green,
        RunStatus::Failed => Ansi::Red,
        RunStatus::Canceled => Ansi::Yellow,
    }
}

/// Below this width (a terminal that reports none, such as some ptys) tables do not wrap.
const MIN_WRAP_WIDTH: u16 = 40;

/// The table's text: columns two spaces apart, no trailing blanks.
fn render(table: &mut Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    if table.width().is_some_and(|width| width < MIN_WRAP_WIDTH) {
        table.set_content_arrangement(ContentArrangement::Disabled);
    }
    table.trim_fmt()
}

/// `runs list`: one row per run, newest first as given.
pub(crate) fn runs_table(runs: &[Run], eta: impl Fn(&Run) -> Option<Eta>, now: Timestamp, look: Look) -> String {
    if runs.is_empty() {
        return "no runs match (`scientist runs create --idea FILE` enqueues one)".into();
    }
    let mut table =
        look.table(["ID", "STATUS", "STAGE", "PROGRESS", "GOOD/BUGGY", "POD", "AGE", "DURATION", "COST", "ETA"]);
    for run in runs {
        let current = run.current_stage.as_ref();
        table.add_row(vec![
            Cell::new(&run.id),
            look.run_status_cell(run),
            Cell::new(current.map_or("-".into(), |stage| stage.name.to_string())),
            Cell::new(current.map_or("-".into(), |stage| percent(stage.progress))),
            Cell::new(current.map_or("-".into(), |stage| format!("{}/{}", stage.good_nodes, stage.buggy_nodes))),
            look.cell(run.pod.as_ref().map_or("-", |pod| pod.id.as_str())),
            Cell::new(duration(now.seconds_since(run.created_at))),
            Cell::new(run.elapsed_s(now).map_or("-".into(), duration)),
            Cell::new(cost::cost_cell(run)),
            Cell::new(eta(run).map_or("-".into(), |eta| remaining(eta.run_s, eta.estimated))),
        ]);
    }
    render(&mut table)
}

/// Longest error shown in `ideation list`; `--json` has the whole of it.
const IDEATION_ERROR_CHARS: usize = 80;

/// `ideation list`: one row per request, oldest first as given.
pub(crate) fn ideation_table(requests: &[IdeationRequest], now: Timestamp, look: Look) -> String {
    if requests.is_empty() {
        return "no ideation requests match (`scientist ideation create --hypothesis HYP_ID` enqueues one)".into();
    }
    let mut table = look.table(["ID", "HYPOTHESIS", "STATUS", "ATTEMPT", "WORKER", "AGE", "ERROR"]);
    for request in requests {
        let status = Cell::new(request.status);
        table.add_row(vec![
            look.cell(&request.id),
            look.cell(&request.hypothesis_id),
            if look.color { status.fg(ideation_color(request.status)) } else { status },
            Cell::new(request.attempt),
            look.cell(request.claimed_by.as_deref().unwrap_or("-")),
            Cell::new(duration(now.seconds_since(request.created_at))),
            look.cell(&request.error.as_deref().map_or("-".into(), short_error)),
        ]);
    }
    render(&mut table)
}

/// An error's first line, cut to [`IDEATION_ERROR_CHARS`].
fn short_error(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    if line.chars().count() > IDEATION_ERROR_CHARS || error.lines().nth(1).is_some() {
        let cut: String = line.chars().take(IDEATION_ERROR_CHARS).collect();
        format!("{}…", cut.trim_end())
    } else {
        line.to_owned()
    }
}

fn ideation_color(status: IdeationStatus) -> Color {
    match status {
        IdeationStatus::Queued => Color::Grey,
        IdeationStatus::Running => Color::Blue,
        IdeationStatus::Completed => Color::Green,
        IdeationStatus::Failed => Color::Red,
    }
}

/// One `ai.run.log` event as a line: time, level, source, message. `None` for other types.
pub(crate) fn log_line(stored: &StoredEvent, look: Look) -> Option<String> {
    let Payload::Log(log) = &stored.event.payload else { return None };
    // A line without a level is info, as the level filter reads it.
    let level = log.level.unwrap_or(LogLevel::Info);
    let (name, color) = match level {
        LogLevel::Debug => ("DEBUG", Ansi::Grey),
        LogLevel::Info => ("INFO ", Ansi::Blue),
        LogLevel::Warning => ("WARN ", Ansi::Yellow),
        LogLevel::Error => ("ERROR", Ansi::Red),
    };
    let source = log.source.as_deref().map_or(String::new(), |source| format!("[{}] ", look.line(source)));
    Some(format!("{} {} {source}{}", stored.event.time, look.paint(name, color), look.line(&log.message)))
}

/// An artifact as `--follow` shows it when it registers.
pub(crate) fn artifact_line(stored: &StoredEvent, look: Look) -> Option<String> {
    let Payload::ArtifactRegistered(artifact) = &stored.event.payload else { return None };
    let size = artifact.bytes.map_or(String::new(), |size| format!(" ({})", bytes(size)));
    Some(format!("{} {} {}{size}", stored.event.time, look.paint("FILE ", Ansi::Green), look.line(&artifact.key)))
}

/// `stats`: the headline figures, then one table per breakdown.
pub(crate) fn stats_view(stats: &Stats, look: Look) -> String {
    let mut sections = Vec::new();
    let mut headline = look.bare_table();
    let queue = match (stats.queue.oldest_age_s, stats.queue.oldest_created_at) {
        (Some(age), Some(created_at)) => {
            format!("{} queued, oldest waiting {} (since {created_at})", stats.queue.depth, duration(age))
        }
        _ => "empty".into(),
    };
    let throughput = &stats.throughput;
    headline.add_row(vec!["runs".to_owned(), stats.total_runs.to_string()]);
    headline.add_row(vec!["queue".to_owned(), queue]);
    headline.add_row(vec![
        "throughput".to_owned(),
        format!(
            "{} completed ({:.2}/h), {} failed in the last {}h",
            throughput.completed, throughput.completed_per_hour, throughput.failed, throughput.window_hours
        ),
    ]);
    headline.add_row(vec!["GPU-hours".to_owned(), format!("{:.2}", stats.gpu_hours)]);
    let reviews = &stats.reviews;
    headline.add_row(vec![
        "reviews".to_owned(),
        format!(
            "{} awaiting; {} approved, {} rejected, {} timed out",
            reviews.awaiting, reviews.approved, reviews.rejected, reviews.timed_out
        ),
    ]);
    let flagged = stats.flagged;
    // Only when there is something to look at: `runs list` names them.
    if flagged.silent + flagged.stalled > 0 {
        headline.add_row(vec![
            "flagged".to_owned(),
            format!(
                "{} silent (worker not heard from), {} stalled (no progress); `scientist runs list` marks them",
                flagged.silent, flagged.stalled
            ),
        ]);
    }
    sections.push(format!("{}\n{}", look.title(&format!("Stats at {}", stats.generated_at)), render(&mut headline)));

    let mut by_status = look.table(["STATUS", "RUNS"]);
    for status in RunStatus::ALL {
        by_status.add_row(vec![look.status_cell(status), Cell::new(stats.by_status.get(status))]);
    }
    sections.push(render(&mut by_status));

    let workers = if stats.active_workers.is_empty() {
        "none seen in the last 5 minutes".to_owned()
    } else {
        let mut table = look.table(["WORKER", "RUN", "STATUS", "STAGE", "PROGRESS", "GPU", "LAST SEEN"]);
        for worker in &stats.active_workers {
            table.add_row(vec![
                look.cell(&worker.worker),
                Cell::new(&worker.run_id),
                match worker.stalled_since {
                    Some(_) => look.colored(Cell::new(format!("{} (stalled)", worker.status)), worker.status),
                    None => look.status_cell(worker.status),
                },
                Cell::new(worker.stage.map_or("-".into(), |stage| stage.to_string())),
                Cell::new(worker.progress.map_or("-".into(), percent)),
                look.cell(worker.gpu.as_deref().unwrap_or("-")),
                Cell::new(format!("{} ago", duration(stats.generated_at.seconds_since(worker.last_seen_at)))),
            ]);
        }
        render(&mut table)
    };
    sections.push(format!("{}\n{workers}", look.title(&format!("Active workers ({})", stats.active_workers.len()))));

    if !stats.stage_durations.is_empty() {
        let mut table = look.table(["STAGE", "RUNS", "P50", "P90", "MAX"]);
        for stage in &stats.stage_durations {
            table.add_row(vec![
                look.line(&stage.stage).into_owned(),
                stage.count.to_string(),
                duration(stage.p50_s),
                duration(stage.p90_s),
                duration(stage.max_s),
            ]);
        }
        sections.push(format!("{}\n{}", look.title("Stage durations"), render(&mut table)));
    }
    if !stats.failure_codes.is_empty() {
        let mut table = look.table(["CODE", "RUNS"]);
        for failure in &stats.failure_codes {
            table.add_row(vec![look.line(&failure.code).into_owned(), failure.count.to_string()]);
        }
        sections.push(format!("{}\n{}", look.title("Most common failures"), render(&mut table)));
    }
    sections.push(cost::cost_section(&stats.cost, look));
    sections.join("\n\n")
}

/// What [`printable`] leaves as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Tabs: for text shown on one line.
    Tabs,
    /// Tabs and newlines: for text shown over several lines.
    TabsAndNewlines,
    /// Every C0 control: for output whose C0 controls are ours (colours, layout) or
    /// already escaped (JSON), where only DEL, C1 and the Unicode controls remain to catch.
    C0,
}

/// `text` as it may reach a person's terminal: control characters (C0 but what `kept`
/// keeps, DEL, C1 such as the one-byte CSI U+009B) and the Unicode controls that reorder or
/// break lines (bidirectional overrides and isolates, U+2028/U+2029) are written as escapes
/// (`\r`, `\n`, `\u001b`, `\u202e`), so no stored value can move the cursor, clear the
/// screen, retitle the window or make one line read as another. The escapes are valid in
/// JSON strings too. Borrowed when there is nothing to escape.
pub fn printable(text: &str, kept: Kept) -> Cow<'_, str> {
    let escaped = |c: char| match c {
        '\t' => false,
        '\n' => kept == Kept::Tabs,
        '\u{0}'..='\u{1f}' => kept != Kept::C0,
        '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    };
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !escaped(c) => shown.push(c),
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            c => shown.push_str(&format!("\\u{:04x}", u32::from(c))),
        }
    }
    Cow::Owned(shown)
}

fn percent(progress: f64) -> String {
    format!("{:.0}%", progress.clamp(0.0, 1.0) * 100.0)
}

/// A time and how long ago it was: `2025-10-22T19:00:00.000Z (6m40s ago)`.
fn moment(at: Timestamp, now: Timestamp) -> String {
    let seconds = now.seconds_since(at);
    if seconds >= 0.0 {
        format!("{at} ({} ago)", duration(seconds))
    } else {
        format!("{at} (in {})", duration(-seconds))
    }
}

/// A short human duration: `45s`, `6m40s`, `2h05m`, `3d04h`.
/// A remaining time: `~15m00s` when estimated, as `duration` when the pipeline said so.
pub(crate) fn remaining(seconds: f64, estimated: bool) -> String {
    if estimated { format!("~{}", duration(seconds)) } else { duration(seconds) }
}

pub(crate) fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{count} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A JSON value as it reads in a `name=value` list: strings bare, numbers as written.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        let cases =
            [(0.0, "0s"), (59.4, "59s"), (60.0, "1m00s"), (400.0, "6m40s"), (7500.0, "2h05m"), (273_600.0, "3d04h")];
        for (seconds, text) in cases {
            assert_eq!(duration(seconds), text);
        }
    }

    #[test]
    fn colour_only_when_asked() {
        let run = crate::run::Run::queued(crate::run::NewRun::new(Value::Null), Timestamp::EPOCH);
        let plain = runs_table(
            std::slice::from_ref(&run),
            |_| None,
            Timestamp::EPOCH,
            Look { color: false, width: None, raw: false },
        );
        let coloured = runs_table(&[run], |_| None, Timestamp::EPOCH, Look { color: true, width: None, raw: false });
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(coloured.contains("\x1b[") && coloured.contains("QUEUED"), "{coloured:?}");
    }

    /// The `flagged` line shows only when the sweep flagged a run, with both counts.
    #[tokio::test]
    async fn stats_names_flagged_runs_only_when_there_are_some() {
        use crate::store::Store;
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::store::SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open");
        let mut stats = store.stats(Timestamp::EPOCH, std::time::Duration::from_secs(3600)).await.expect("stats");
        let look = Look { color: false, width: None, raw: false };
        assert!(!stats_view(&stats, look).contains("flagged"), "nothing flagged, no line");
        stats.flagged = crate::store::stats::Flagged { silent: 2, stalled: 1 };
        let view = stats_view(&stats, look);
        let line = view.lines().find(|line| line.contains("flagged")).expect("a flagged line");
        assert!(line.contains("2 silent") && line.contains("1 stalled"), "{line}");
    }

    #[test]
    fn sizes() {
        assert_eq!(
            (bytes(512), bytes(1536), bytes(5 * 1024 * 1024)),
            ("512 B".into(), "1.5 KiB".into(), "5.0 MiB".into())
        );
    }
}
