//! The `scientist` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use scientist::cmd::{self, Cli};
use scientist::logging::{self, Format, NOTICE_TARGET, PlainMessage};
use scientist::notice;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match runtime_for(&cli.command) {
        Ok(runtime) => runtime,
        Err(err) => {
            notice!(error, "error: cannot start the async runtime: {err}");
            return ExitCode::from(cmd::exit::FAILURE);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::from(cmd::exit::OK),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(cmd::exit::OK),
        Err(err) => {
            // An error may quote stored text (a run's failure message): escaped as any view's.
            notice!(error, "error: {}", cmd::printable(&format!("{err:#}"), cmd::Kept::TabsAndNewlines));
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}

/// A one-shot `emit` is one request at a time: a single thread, with no workers to start
/// (one per core on a large pod). Everything else serves or watches many things at once.
fn runtime_for(command: &cmd::Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        cmd::Command::Emit(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

/// Logs go to stderr; `LOG_LEVEL` (or `RUST_LOG`) picks the level of diagnostics, `warn` by
/// default. Notices (`logging::notice!`) are always written: in text mode as their bare
/// message, beside diagnostics with time and level; with `LOG_FORMAT=json` every line, notices
/// included, is one JSON object for log collectors. Colour only where `colour_allowed` says.
fn init_tracing() {
    let level = std::env::var("LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn".into());
    let diagnostics = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let notices = Targets::new().with_target(NOTICE_TARGET, tracing::Level::TRACE);
    let not_notice = filter_fn(|metadata| metadata.target() != NOTICE_TARGET);
    match Format::from_env() {
        Format::Json => {
            let logs = fmt::layer().json().with_writer(|| logging::Stderr).with_filter(notices.or(diagnostics));
            tracing_subscriber::registry().with(logs).init();
        }
        Format::Text => {
            let colour = logging::colour_allowed(&std::io::stderr());
            let logs =
                fmt::layer().with_ansi(colour).with_writer(|| logging::Stderr).with_filter(not_notice.and(diagnostics));
            let notices = fmt::layer()
                .event_format(PlainMessage)
                .with_ansi(false)
                .with_writer(|| logging::Stderr)
                .with_filter(notices);
            tracing_subscriber::registry().with(logs).with(notices).init();
        }
    }
}

/// `scientist runs list | head` closes our stdout early; that is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
