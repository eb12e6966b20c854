//! `scientist runs logs`: a run's log lines, filtered by level, time or count, and followed.

use std::time::Duration;

use super::{FollowArgs, ID_HELP};
use crate::cmd::follow::{self, Update};
use crate::cmd::view::{self, Look};
use crate::cmd::{OperatorArgs, display_now, resolve_run};
use crate::control::events_after;
use crate::event::LogLevel;
use crate::run::RunId;
use crate::store::{EventFilter, LOG_EVENT_TYPE, StoredEvent};
use crate::time::Timestamp;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    source: OperatorArgs,
    #[arg(help = ID_HELP)]
    id: RunId,
    /// Only lines at or above this level: debug, info, warning (warn), error. A line without a level is info.
    #[arg(long, value_parser = parse_level)]
    level: Option<LogLevel>,
    /// Only lines since this time: a duration ago (`10m`, `2h`, `1d`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<Since>,
    /// Only the last N lines (before following).
    #[arg(long)]
    tail: Option<usize>,
    /// Print NDJSON, one `{"kind":"event",…}` object a line, instead of text.
    #[arg(long)]
    json: bool,
    /// Print text from events (messages, errors, names) as stored, control characters
    /// included. Without it they are shown escaped (`\u001b`, `\r`), so that no event can
    /// drive the terminal.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    #[command(flatten)]
    follow: FollowArgs,
}

#[derive(Debug, Clone, Copy)]
enum Since {
    Ago(Duration),
    At(Timestamp),
}

impl Since {
    fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            Since::At(at) => at,
            Since::Ago(ago) => now.plus_seconds(-(ago.as_secs().min(i64::MAX as u64) as i64)),
        }
    }
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(at) = Timestamp::parse_rfc3339(text) {
        return Ok(Since::At(at));
    }
    humantime::parse_duration(text).map(Since::Ago).map_err(|_| {
        format!("{text:?} is neither a duration (`10m`, `2h`, `1d`) nor an RFC 3339 time (`2025-10-22T19:00:00Z`)")
    })
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase()))
        .map_err(|_| format!("unknown level {text:?}; expected debug, info, warning (warn) or error"))
}

pub(super) async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let store = args.source.open().await?;
    let store = store.as_ref();
    let id = resolve_run(store, &args.id).await?;
    let now = display_now()?;
    let since = args.since.map(|since| since.resolve(now));
    let look = Look { raw: args.raw, ..Look::for_stdout() };
    let print_lines = |events: &[StoredEvent]| -> anyhow::Result<()> {
        for stored in events.iter().filter(|stored| since.is_none_or(|since| stored.event.time >= since)) {
            if args.json {
                crate::cmd::print(follow::event_line(stored))?;
            } else if let Some(line) = view::log_line(stored, look) {
                crate::cmd::print_as(look, line)?;
            }
        }
        Ok(())
    };
    let mut filter = EventFilter { types: vec![LOG_EVENT_TYPE.into()], min_level: args.level, ..Default::default() };
    match args.tail {
        Some(count) => {
            let mut latest =
                store.list_recent_events(&id, &EventFilter { limit: count, ..filter.clone() }).await?.items;
            latest.reverse();
            print_lines(&latest)?;
            // None printed means none stored yet: following from the first is following from now.
            filter.cursor = latest.last().map(|last| last.cursor.clone());
        }
        None => print_lines(&events_after(store, &id, &mut filter).await?)?,
    }
    if !args.follow.follow {
        return Ok(());
    }
    let mut tail = store.tail(&id, filter).await?;
    let run = follow::watch(tail.as_mut(), args.follow.interval, |update| match update {
        Update::Events(events) => print_lines(&events),
        Update::Run(_) => Ok(()),
    })
    .await?;
    follow::outcome(&run)
}
